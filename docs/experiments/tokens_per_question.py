# Tokens per answered question of the default's packed rows (caption + up to 7 questions, max_rounds 8), per
# text tokenizer: TOKENIZER_FOLDER [N] [FILE] (default data/shapes/train/sft_cloze.jsonl; the curriculum's
# rows: data/shapes/train/sft_attributes.jsonl).
import json
import random
import sys
from dataclasses import replace

import torch

from mmvid.prompting import pack_rounds
from mmvid.sft.config import SFTConfig
from mmvid.sft.data import split_rounds
from mmvid.videollm import VideoLLM

torch.set_num_threads(1)
random.seed(0)
tok, N = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200
FILE = sys.argv[3] if len(sys.argv) > 3 else "data/shapes/train/sft_cloze.jsonl"
cfg = SFTConfig()
model = VideoLLM.build(replace(cfg.model, text_tokenizer=tok, generation_head=None))
rows = split_len = answered = 0
with open(FILE) as f:
    for _, line in zip(range(N), f):
        rounds = split_rounds(json.loads(line)["conversations"])
        rounds = [rounds[0]] + random.sample(rounds[1:], min(7, len(rounds) - 1))
        enc = [model.processor.encode_sample(r, num_videos=1) for r in rounds]
        rows += len(pack_rounds(enc, model.video_ids))
        split_len += sum(len(e) for e in enc)
        answered += len(enc)
print(f"{tok}: {answered} answered rounds; tokens per answered question packed {rows / answered:.1f}, "
      f"split {split_len / answered:.1f}; video positions {model.tokens_per_video}")

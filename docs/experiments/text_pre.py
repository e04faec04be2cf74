# Text pretraining variants: OUT MINUTES TOKENIZER; env LC (JSON llm_config overrides), LR, BS. Then
# text_alone.py OUT.
import json
import os
import sys

from mmvid.sft.config import SFTConfig
from mmvid.sft.text_pretrain import TextPretrainConfig, pretrain_llm
from mmvid.sft.world_data import reading_comprehension

out, minutes, tok = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lc = dict(SFTConfig().model.llm_config)
lc.update(json.loads(os.environ.get("LC", "{}")))
pretrain_llm(TextPretrainConfig(out=out, tokenizer=tok, llm_config=lc, minutes=minutes,
                                lr=float(os.environ.get("LR", 1e-3)),
                                batch_size=int(os.environ.get("BS", 32))),
             reading_comprehension("data/shapes", "train", seed=0))

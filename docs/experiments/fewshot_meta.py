# Lever for the few-shot claim (issue 19): can episode meta-training teach the default's LLM to copy a label
# in context? Episodes are built from the TRAINING split's single-object videos and its 10 training actions
# (the 5 held-out actions are never seen): half with each video's SweetTok words, half with a random 3-word
# code per class drawn afresh for every episode (a label can only be found by matching query and support).
# The LLM (and nothing else) trains on every assistant turn for MINUTES, then is saved for the fewshot bench:
#   .venv/bin/python docs/experiments/fewshot_meta.py MINUTES [OUT] [CODES]
# CODES (default 0.5) is the share of episodes with random per-episode class codes; with CODES = 1 the
# episodes are text only (short, so many more of them per minute) and half of them also draw random labels
# (1-2 world words), so that copying, not a label prior, is what pays.
#   python eval/run.py --bench fewshot --model OUT --option video_as=oracle --option episodes=50
#   python eval/run.py --bench fewshot --model OUT --video-as words --option words_tokenizer=TOK \
#       --option words_top=30 --option episodes=50
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from mmvid.data.shapes.text import ACTION_PHRASES
from mmvid.evaluation.fewshot import QUESTION, most_frequent_words
from mmvid.processor import VideoProcessor, VideoProcessorConfig
from mmvid.video_tokenizers import video_tokenizer_from
from mmvid.videollm import VideoLLM

minutes = float(sys.argv[1])
out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/exp/fewshot-meta")
codes_share = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
TOK = "runs/claims/sweettok/dqae_mlc-s0/final"
torch.manual_seed(0)
rng = random.Random(0)
torch.set_num_threads(2)

# 1. words of single-object training videos, 40 per training action
by_action = defaultdict(list)
for meta in sorted(Path("data/shapes/train/videos").glob("*.json")):
    objects = json.loads(meta.read_text())["scene"]["objects"]
    if len(objects) == 1 and len(by_action[objects[0]["action"]]) < 40:
        by_action[objects[0]["action"]].append(meta.with_suffix(".mp4"))
tokenizer = video_tokenizer_from(TOK).eval()
processor = VideoProcessor(None, VideoProcessorConfig.for_video_tokenizer(tokenizer, tokenizer.clip_frames))
words = {}
start = time.time()
with torch.no_grad():
    for action, paths in by_action.items():
        for path in paths:
            text = tokenizer.video_to_text(processor.load_video(str(path))[None])
            words[path] = (most_frequent_words(text, 30), ACTION_PHRASES[action])
print(f"words for {len(words)} videos of {len(by_action)} actions in {time.time() - start:.0f} s", flush=True)

# 2. episodes
actions = sorted(by_action)
vocab = sorted({w for text, _ in words.values() for w in text.split()} | {"red", "blue", "star", "circle",
                                                                         "large", "small", "green", "square"})


def episode() -> list[dict]:
    classes = rng.sample(actions, 5)
    shots = rng.choice([1, 5])
    codes = {c: " ".join(rng.sample(vocab, 3)) for c in classes} if rng.random() < codes_share else None
    names = dict(ACTION_PHRASES)
    if codes and codes_share >= 1 and rng.random() < 0.5:  # random labels: only copying finds them
        names = {c: " ".join(rng.sample(vocab, rng.choice([1, 2]))) for c in classes}
    items = [(c, p) for c in classes for p in rng.sample(by_action[c], shots)]
    rng.shuffle(items)
    items.append((q := rng.choice(classes), rng.choice(by_action[q])))
    turns = []
    for c, p in items:
        text = codes[c] if codes else words[p][0]
        turns += [{"from": "human", "value": f"{text}\n{QUESTION}"},
                  {"from": "gpt", "value": names[c]}]
    return turns


# 3. train the LLM on every assistant turn
model = VideoLLM.from_pretrained("runs/sft-default/final")
model.train()
for p in model.parameters():
    p.requires_grad_(False)
params = list(model.llm.parameters())
for p in params:
    p.requires_grad_(True)
optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
steps, start, losses = 0, time.time(), []
while time.time() - start < minutes * 60:
    batch = [model.processor.encode_sample(episode()) for _ in range(4)]
    width = max(len(b) for b in batch)
    pad = model.processor.text_tokenizer.pad_token_id
    ids = torch.tensor([b.input_ids + [pad] * (width - len(b)) for b in batch])
    labels = torch.tensor([b.labels + [-100] * (width - len(b)) for b in batch])
    mask = (torch.arange(width)[None] < torch.tensor([len(b) for b in batch])[:, None]).long()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    steps += 1
    losses.append(loss.item())
    if steps % 20 == 0:
        print(f"step {steps}: loss {sum(losses[-20:]) / 20:.3f} ({time.time() - start:.0f} s)", flush=True)
model.eval()
model.save_pretrained(out)
print(json.dumps({"out": str(out), "steps": steps, "minutes": minutes, "episodes_seen": 4 * steps,
                  "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "words_tokenizer": TOK,
                  "codes_share": codes_share}))

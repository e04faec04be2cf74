# Does the answer's first token matter for text binding? Pretrain the default LLM on reading comprehension for
# MINUTES with answers as the world writes them ("cyan": a piece never seen inside a caption) or, with SP=1,
# after a space (" cyan": the same piece as in the caption), then score val questions with a val caption in
# context (cloze, options formatted the same way). Usage: SP=0|1 python docs/experiments/text_space.py OUT
# MINUTES
import json
import os
import random
import sys
import time
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmvid.sft.config import SFTConfig
from mmvid.sft.text_pretrain import TextPretrainConfig, pretrain_llm
from mmvid.sft.world_data import reading_comprehension

torch.set_num_threads(int(os.environ.get("THREADS", 2)))
out, minutes = sys.argv[1], float(sys.argv[2])
SP = os.environ.get("SP", "0") == "1"
conv = reading_comprehension("data/shapes", "train", seed=0)
if SP:
    conv = [[t if t["from"] != "gpt" else {**t, "value": " " + t["value"]} for t in c] for c in conv]
lc = dict(SFTConfig().model.llm_config)
lc.update(json.loads(os.environ.get("LC", "{}")))
t0 = time.time()
pretrain_llm(TextPretrainConfig(out=out, tokenizer="runs/sft-default/text-tokenizer", llm_config=lc,
                                minutes=minutes, lr=float(os.environ.get("LR", 1e-3))), conv)
tok = AutoTokenizer.from_pretrained(out); llm = AutoModelForCausalLM.from_pretrained(out).eval(); random.seed(
    0)
caps = {json.loads(l)["video"]: json.loads(l)["captions"] for l in open("data/shapes/val/captions.jsonl")}
qs = [q for q in map(json.loads, open("data/shapes/val/tv_align.jsonl")) if q["category"] != "spatial"][:600]
acc = defaultdict(list)
with torch.no_grad():
    for q in qs:
        ctx = tok.apply_chat_template([{"role": "user",
                                        "content": f"{random.choice(caps[q['video']])}\n{q['question']}"}],
                                      tokenize=True, add_generation_prompt=True)
        ctx = list(ctx["input_ids"] if hasattr(ctx, "keys") else ctx)
        scores = []
        for o in q["options"]:
            p = tok((" " if SP else "") + o, add_special_tokens=False)["input_ids"]
            lp = llm(input_ids=torch.tensor([ctx + p])).logits[0].log_softmax(-1)
            scores.append(sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(p)))
        acc[q["category"]].append(
            int(q["options"][max(range(4), key=scores.__getitem__)] == q["answer_text"]))
r = {k: round(sum(v) / len(v), 3) for k, v in sorted(acc.items())}
r["ALL"] = round(sum(sum(v) for v in acc.values()) / len(qs), 3)
print(json.dumps({"SP": SP, "minutes": minutes, "LC": os.environ.get("LC", "{}"), "text_alone_val": r,
                  "steps": json.load(open(f"{out}/pretrain.json"))["steps"]}), flush=True)

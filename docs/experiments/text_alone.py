# Text alone: the pretrained LLM stand-in answering val questions with a val caption in place of the video
# (cloze).
import json
import random
import sys
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
random.seed(0)
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
llm = AutoModelForCausalLM.from_pretrained(path).eval()
caps = {json.loads(l)["video"]: json.loads(l)["captions"] for l in open("data/shapes/val/captions.jsonl")}
qs = [json.loads(l) for l in open("data/shapes/val/tv_align.jsonl")][:600]
acc = defaultdict(list)
with torch.no_grad():
    for q in qs:
        msgs = [{"role": "user", "content": f"{random.choice(caps[q['video']])}\n{q['question']}"}]
        ctx = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        ctx = list(ctx["input_ids"] if hasattr(ctx, "keys") else ctx)
        scores = []
        for o in q["options"]:
            p = tok(o, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + p])
            lp = llm(input_ids=ids).logits[0].log_softmax(-1)
            scores.append(sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(p)))
        acc[q["category"]].append(
            int(q["options"][max(range(4), key=scores.__getitem__)] == q["answer_text"]))
print({k: round(sum(v) / len(v), 2) for k, v in sorted(acc.items())}, "overall",
      round(sum(sum(v) for v in acc.values()) / len(qs), 3))

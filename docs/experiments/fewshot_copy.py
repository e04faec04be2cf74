# Text alone for the few-shot claim (issue 19): can an LLM copy a label from the context at all, when the
# labels are words its text tokenizer knows? Episodes of random 3-word codes (world words, drawn afresh per
# episode), 5-way, with three label sets: the held-out actions' labels (which the world's text tokenizer
# writes with byte-fallback pieces it never trained on), training actions' labels (in the vocabulary), and
# the letters A-E. Each label is scored as the whole answer (end_of_answer), as the bench does.
#   .venv/bin/python docs/experiments/fewshot_copy.py MODEL [OUT.json]
import json
import random
import sys
from pathlib import Path

import torch

from mmvid.evaluation.fewshot import QUESTION
from mmvid.evaluation.scoring import continuation_logprobs
from mmvid.videollm import VideoLLM

model_path = sys.argv[1]
out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/exp/fewshot-copy.json")
torch.set_num_threads(2)
model = VideoLLM.from_pretrained(model_path).eval()
tok = model.text_tokenizer
vocab = "red blue green yellow purple orange star circle square triangle cross diamond large small".split()
rng = random.Random(0)
label_sets = {"held_out": ["spins", "zigzags", "pulses", "shakes", "circles around"],
              "training": ["moves left", "grows", "blinks", "bounces", "shrinks"],
              "letters": ["A", "B", "C", "D", "E"]}
results = {}
for name, labels in label_sets.items():
    pieces = {label: tok.convert_ids_to_tokens(tok(label, add_special_tokens=False)["input_ids"])
              for label in labels}
    for shots in (1, 5):
        hits = []
        for e in range(40):
            codes = {label: " ".join(rng.sample(vocab, 3)) for label in labels}
            support = [label for label in labels for _ in range(shots)]
            rng.shuffle(support)
            query = labels[e % len(labels)]
            messages = []
            for label in support:
                messages += [{"role": "user", "content": f"{codes[label]}\n{QUESTION}"},
                             {"role": "assistant", "content": label}]
            messages.append({"role": "user", "content": f"{codes[query]}\n{QUESTION}"})
            scores = continuation_logprobs(model, messages, labels, None, end_of_answer=True)
            hits.append(float(labels[max(range(len(labels)), key=scores.__getitem__)] == query))
        results[f"{name}/{shots}shot"] = sum(hits) / len(hits)
        print(f"{name:9s} {shots}-shot {results[f'{name}/{shots}shot']:.2f}  pieces {pieces}", flush=True)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"model": model_path, "episodes": 40, "ways": 5, "seed": 0,
                           "label_sets": label_sets, "results": results}, indent=1))

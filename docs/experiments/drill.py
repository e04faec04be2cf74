# Text binding drill: short contexts ("a small red star and a large blue circle.") + colour/shape questions,
# 150 s, then the text-alone check with real captions.
import logging
import random
import sys

logging.basicConfig(level=logging.INFO)
from pathlib import Path

from mmvid.sft.config import TINY_LLAMA
from mmvid.sft.text_pretrain import TextPretrainConfig, pretrain_llm
from mmvid.sft.world_data import _scene, object_questions, reading_comprehension

random.seed(0)
W = Path("data/shapes")
convs = []
for i in range(5000):
    sc = _scene(W, "train", f"videos/{i:06d}.mp4")
    objs = list(sc.objects)
    random.shuffle(objs)
    ctx = " and ".join(f"a {o.size} {o.colour} {o.shape}" for o in objs) + "."
    for cat, q, a in object_questions(sc):
        if cat in ("colour", "shape"):
            convs.append([{"from": "human", "value": f"{ctx}\n{q}"}, {"from": "gpt", "value": a}])
rc = reading_comprehension(W, "train")
mix = convs + rc
print(len(convs), len(rc))
pretrain_llm(TextPretrainConfig(out="runs/exp/llm-drill", tokenizer="runs/sft-default/text-tokenizer",
                                llm_config=dict(TINY_LLAMA), minutes=float(sys.argv[1])), mix)

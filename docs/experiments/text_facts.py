# Text pretraining with "fact" conversations mixed in (caption -> "the square is red; the red object is a
# square; ..."): OUT MINUTES TOKENIZER; env FR, LC (JSON llm_config overrides), LR.
import json
import os
import random
import sys

from mmvid.sft import world_data as wd
from mmvid.sft.config import SFTConfig
from mmvid.sft.text_pretrain import TextPretrainConfig, pretrain_llm
from mmvid.sft.world_data import reading_comprehension

out, minutes, tok = sys.argv[1], float(sys.argv[2]), sys.argv[3]
FR = float(os.environ.get("FR", 1.0))
convs = reading_comprehension("data/shapes", "train", seed=0)
world, questions, caps, rng = wd._training_split("data/shapes", "train", 0)
r = random.Random(0)
facts = []
for video, options in sorted(caps.items()):
    objs = list(wd._scene(world, "train", video).objects)
    for rep in range(2):
        r.shuffle(objs); fs = []
        for o in objs:
            f = [f"the {o.shape} is {o.colour}", f"the {o.colour} object is a {o.shape}"]
            r.shuffle(f)
            fs += f
        facts.append([{"from": "human",
                       "value": options[r.randrange(len(options))]
                       + "\nWhat colour and shape is each object?"},
                      {"from": "gpt", "value": "; ".join(fs) + "."}])
r.shuffle(facts)
convs = convs + facts[: int(FR * len(convs))] if FR <= 1 else convs + facts
print(len(convs), "conversations", len(facts), "facts", facts[0], flush=True)
lc = dict(SFTConfig().model.llm_config)
lc.update(json.loads(os.environ.get("LC", "{}")))
pretrain_llm(TextPretrainConfig(out=out, tokenizer=tok, llm_config=lc, minutes=minutes,
                                lr=float(os.environ.get("LR", 1e-3))), convs)

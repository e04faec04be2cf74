import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mmvid.sft.config import TINY_LLAMA

torch.manual_seed(0)
d = dict(TINY_LLAMA)
d["vocab_size"] = 403
llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(d.pop("model_type"), **d))
B, L = 10, 276
ids = torch.randint(0, 400, (B, L))
labels = ids.clone()
m2 = torch.ones(B, L, dtype=torch.long)
m4 = torch.tril(torch.ones(L, L, dtype=torch.bool))[None, None].expand(B, 1, L, L).clone()
pos = torch.arange(L)[None].expand(B, L)
for name, kw in (("2d", dict(attention_mask=m2)), ("4d bool", dict(attention_mask=m4, position_ids=pos)),
                 ("none", {})):
    for i in range(4):
        if i == 1: t = time.perf_counter()
        out = llm(input_ids=ids, labels=labels, **kw)
        out.loss.backward()
    print(name, (time.perf_counter() - t) / 3)
B, L = 32, 70
ids = torch.randint(0, 400, (B, L))
for i in range(4):
    if i == 1: t = time.perf_counter()
    out = llm(input_ids=ids, labels=ids)
    out.loss.backward()
print("32x70", (time.perf_counter() - t) / 3)

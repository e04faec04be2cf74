import time

import torch

from mmvid.sft.config import SFTConfig
from mmvid.sft.data import SFTDataset, collate
from mmvid.sft.trainer import use_pretrained_llm
from mmvid.videollm import VideoLLM

torch.manual_seed(0)
cfg = use_pretrained_llm(SFTConfig())
model = VideoLLM.build(cfg.model)
ds = SFTDataset(cfg.data.train, model, split_turns=True, pack_questions=True, prompt_dropout=0.1,
                t2v_fraction=0.25, max_rounds=8)
for i in range(24):
    ds[i]
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
def timeit(name, f):
    t = time.perf_counter(); r = f(); print(f"{name}: {time.perf_counter()-t:.3f}s", flush=True); return r
for it in range(3):
    items = timeit("load 8", lambda: [ds[i + 8 * it] for i in range(8)])
    batch = timeit("collate", lambda: collate(model, items))
    batch.pop("index")
    print({k: tuple(v.shape) for k, v in batch.items()})
    with torch.no_grad():
        timeit("video tokens", lambda: model.video_tokens(batch["videos"]))
    out = timeit("forward", lambda: model(**batch))
    timeit("backward", lambda: out.loss.backward())
    timeit("step", lambda: (opt.step(), opt.zero_grad()))
    with torch.no_grad():
        b2 = {k: v for k, v in batch.items() if k != "video_targets"}
        timeit("forward (no gen head)", lambda: model(**b2))

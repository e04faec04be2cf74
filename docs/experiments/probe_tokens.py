# Probe: does a frozen tokenizer's key-frame token keep the per-cell labels (colour/shape)? linear probe per
# token.
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmvid.video_tokenizers import video_tokenizer_from
from mmvid.vision_tower import TowerConfig, cell_labels

torch.set_num_threads(2)
tok = video_tokenizer_from(sys.argv[1]).eval()
cfg = TowerConfig()
W = Path("data/shapes")
def data(split, n):
    from mmvid.data import frames_to_tensor, read_video
    X, Y = [], []
    for i in range(n):
        p = W / split / "videos" / f"{i:06d}.mp4"
        v = read_video(p, num_frames=8, size=64)
        X.append(frames_to_tensor(np.asarray(v.frames)))
        Y.append(cell_labels(json.loads(p.with_suffix(".json").read_text()), [int(v.indices[0])], 64, 8)[0])
    return torch.stack(X), torch.from_numpy(np.stack(Y))
Xtr, Ytr = data("train", 1500)
Xva, Yva = data("val", 300)
@torch.no_grad()
def key_tokens(X):
    out = []
    for i in range(0, len(X), 50):
        t = tok.encode(X[i:i+50]); out.append(t[:, :tok.config.key_tokens])
    return torch.cat(out)
Ktr, Kva = key_tokens(Xtr), key_tokens(Xva)
g = int(Ktr.shape[1] ** 0.5)
print("key tokens", Ktr.shape)
def cells(Y):  # labels pooled to the key grid (nearest: take the label at the cell's top-left sub-cell)
    step = 8 // g
    return Y[:, :, ::step, ::step].reshape(len(Y), 4, -1)
Ctr, Cva = cells(Ytr), cells(Yva)
for li, name, ncls in ((0, "colour", 9), (1, "shape", 7)):
    probe = torch.nn.Linear(Ktr.shape[-1], ncls); opt = torch.optim.Adam(probe.parameters(), 1e-2)
    x = Ktr.reshape(-1, Ktr.shape[-1])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    y = Ctr[:, li].reshape(-1)
    for s in range(300):
        loss = F.cross_entropy(probe(x), y); opt.zero_grad(); loss.backward(); opt.step()
    xv = (Kva.reshape(-1, Kva.shape[-1]) - mu) / sd
    yv = Cva[:, li].reshape(-1)
    pred = probe(xv).argmax(-1)
    occ = yv > 0
    print(f"{name}: object-cell acc {(pred == yv)[occ].float().mean():.3f} (majority among objects "
          f"{torch.bincount(yv[occ]).max().item()/occ.sum().item():.3f})")

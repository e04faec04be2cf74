"""Do the key-frame tokens carry an object's geometry, or only its class? (issue 20)

    python docs/experiments/roundtrip_geometry.py TOKENIZER [N]

For each object found in the real key frame (N train videos to fit, N test videos to score): ridge
regression from the token at the object's centroid cell (and from the frozen tower's features there,
before `to_tokens`) to its sub-cell centroid offset (x, y) and its sqrt(area); logistic regression to its
shape. R^2 near 1: the decoder has what it needs to draw the object's outline; near 0: it can only
draw a blob at the cell.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from torch.utils.data import DataLoader

from mmvid.data import tensor_to_frames
from mmvid.data.shapes.analyzer import analyze
from mmvid.data.shapes.world import SHAPES
from mmvid.data.video_dataset import VideoClipDataset, list_videos
from mmvid.evaluation.recon import RoundTrip
from mmvid.video_tokenizers import video_tokenizer_from

FRAMES = 8


def collect(tok, split: str, n: int):
    grid, key = tok.config.grid, tok.key_index(FRAMES)
    videos = list_videos("data/shapes", split)[:n]
    loader = DataLoader(VideoClipDataset(videos, FRAMES, tok.image_size, seed=0), batch_size=8)
    rows = {"token": [], "tower": [], "geometry": [], "shape": []}
    with torch.no_grad():
        for batch in loader:
            x = batch["video"]
            tokens = tok.encode(x)
            tower = tok.frame_features(x[:, :, key:key + 1])[:, 0]  # (B, S, dim)
            for p, xv, tv, fv in zip(batch["path"], x, tokens, tower, strict=True):
                objects = RoundTrip.objects(p)
                if objects is None:
                    continue
                shapes = {o["colour"]: o["shape"] for o in objects}
                a = analyze(tensor_to_frames(xv[:, key:key + 1].expand(-1, FRAMES, -1, -1)).numpy())
                for t in a.objects:
                    if t.colour not in shapes or not t.present[0]:
                        continue
                    gx, gy = t.x[0] * grid, t.y[0] * grid
                    cell = min(grid - 1, int(gy)) * grid + min(grid - 1, int(gx))
                    rows["token"].append(tv[cell].numpy())
                    rows["tower"].append(fv[cell].numpy())
                    rows["geometry"].append([gx % 1, gy % 1, np.sqrt(t.area[0])])
                    rows["shape"].append(SHAPES.index(shapes[t.colour]))
    return {k: np.asarray(v) for k, v in rows.items()}


def main(path: str, n: int) -> dict:
    tok = video_tokenizer_from(path).eval()
    train, test = collect(tok, "train", n), collect(tok, "test", n)
    out = {"tokenizer": path, "videos": n, "objects": [len(train["shape"]), len(test["shape"])]}
    for source in ("token", "tower"):
        reg = Ridge(alpha=1.0).fit(train[source], train["geometry"])
        pred = reg.predict(test[source])
        y = test["geometry"]
        r2 = 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
        clf = LogisticRegression(max_iter=3000).fit(train[source], train["shape"])
        shape_acc = clf.score(test[source], test["shape"])
        out[source] = {"r2_offset_x": round(float(r2[0]), 3), "r2_offset_y": round(float(r2[1]), 3),
                       "r2_sqrt_area": round(float(r2[2]), 3), "shape_acc": round(shape_acc, 3)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300), indent=1))

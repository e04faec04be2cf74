"""Where does the round trip lose shapes and actions? (issue 20)

    python docs/experiments/roundtrip_probe.py TOKENIZER [N] [OUT.json]

Separates the suspects on N test videos (and N train videos), 8 frames each, as `--bench recon`:
  full       the analyzer on the reconstruction (what `recon`'s roundtrip/* reports)
  train      the same on training videos (underfitting or not generalising?)
  key_static the reconstructed key frame alone, repeated: shape without any motion
  real_key   the real key frame repeated: the ceiling of one view
  probe      features alone: logistic regression for each object's shape from the key-frame token
             at its centroid cell (fit on train, scored on test) — is the shape in the tokens?
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch.utils.data import DataLoader

from mmvid.data import tensor_to_frames
from mmvid.data.shapes.analyzer import analyze
from mmvid.data.shapes.world import SHAPES
from mmvid.data.video_dataset import VideoClipDataset, list_videos
from mmvid.evaluation.recon import RoundTrip
from mmvid.evaluation.tv_align_gen import category_metrics, score_objects
from mmvid.video_tokenizers import video_tokenizer_from

FRAMES = 8


def scores(hits):
    return {m.name: round(m.value, 3) for m in category_metrics(hits)}


def run(path: str, n: int) -> dict:
    tok = video_tokenizer_from(path).eval()
    grid = tok.config.grid
    out, probe_xy = {}, {}
    for split in ("train", "test"):
        videos = list_videos("data/shapes", split)[:n]
        loader = DataLoader(VideoClipDataset(videos, FRAMES, tok.image_size, seed=0), batch_size=8)
        hits = {k: [] for k in ("full", "key_static", "real_key")}
        X, Y = [], []
        with torch.no_grad():
            for batch in loader:
                x = batch["video"]
                tokens, state = tok.encode_with_state(x)
                y = tok.decode(tokens, num_frames=FRAMES, **state).clamp(-1, 1)
                key = tok.key_index(FRAMES)
                for p, xv, yv, tv in zip(batch["path"], x, y, tokens, strict=True):
                    objects = RoundTrip.objects(p)
                    if objects is None:
                        continue
                    views = {"full": yv,
                             "key_static": yv[:, key:key + 1].expand(-1, FRAMES, -1, -1),
                             "real_key": xv[:, key:key + 1].expand(-1, FRAMES, -1, -1)}
                    for name, v in views.items():
                        a = analyze(tensor_to_frames(v).numpy())
                        hits[name].append(score_objects(objects, a))
                        if name == "real_key":  # object centroids in the key frame -> token cell
                            shapes = {o["colour"]: o["shape"] for o in objects}
                            for t in a.objects:
                                if t.colour in shapes and t.present[0]:
                                    r = min(grid - 1, int(t.y[0] * grid))
                                    c = min(grid - 1, int(t.x[0] * grid))
                                    X.append(tv[r * grid + c].numpy())
                                    Y.append(SHAPES.index(shapes[t.colour]))
        out[split] = {k: scores(v) for k, v in hits.items()}
        probe_xy[split] = (np.stack(X), np.array(Y))
    clf = LogisticRegression(max_iter=2000).fit(*probe_xy["train"])
    out["probe_shape_from_key_token"] = {
        "train": round(clf.score(*probe_xy["train"]), 3), "test": round(clf.score(*probe_xy["test"]), 3),
        "objects": [len(probe_xy["train"][1]), len(probe_xy["test"][1])], "chance": round(1 / len(SHAPES), 3)}
    return out


if __name__ == "__main__":
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    start = time.time()
    result = {"tokenizer": path, "videos": n, "frames": FRAMES, **run(path, n),
              "seconds": round(time.time() - start)}
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            json.dump(result, f, indent=1)

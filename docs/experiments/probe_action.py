# Can the frozen video tokens tell an object's action? Logistic-regression probes on cached VTok tokens of
# train videos (fast.py's cache) for scenes with one object: the action from the residual tokens alone, and
# from all tokens.
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

toks = torch.load(sys.argv[1], weights_only=True)
X, Xr, y = [], [], []
for v, t in toks.items():
    rec = json.load(open("data/shapes/train/" + v.replace(".mp4", ".json")))
    objs = rec["scene"]["objects"]
    if len(objs) != 1:
        continue
    X.append(t.flatten().numpy())
    Xr.append(t[64:].flatten().numpy())
    y.append(objs[0]["action"])
X, Xr, y = np.array(X), np.array(Xr), np.array(y)
n = int(len(y) * 0.8)
print(len(y), "one-object videos;", "majority", round(max(np.mean(y[n:] == a) for a in set(y)), 3))
for name, F in (("residual tokens", Xr), ("all tokens", X)):
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(F[:n], y[:n])
    print(name, "val acc", round(clf.score(F[n:], y[n:]), 3))

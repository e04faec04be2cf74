# Does the trained default use the video? Val cloze with the right video, another video's tokens, and zeros.
import json
import random
import sys

import torch

from mmvid.data import frames_to_tensor, read_video
from mmvid.evaluation.scoring import continuation_logprobs
from mmvid.videollm import VideoLLM

torch.set_num_threads(2)
random.seed(0)
model = VideoLLM.from_pretrained(sys.argv[1]).eval()
val = [json.loads(l) for l in open("data/shapes/val/tv_align.jsonl")][
    :int(sys.argv[2]) if len(sys.argv) > 2 else 300]
vids = sorted({q["video"] for q in val})
with torch.no_grad():
    tok = {v: model.video_tokens(
        frames_to_tensor(read_video("data/shapes/val/" + v, num_frames=8, size=64).frames)[None])
        for v in vids}
perm = {v: vids[(i + 7) % len(vids)] for i, v in enumerate(vids)}
res = {}
for mode in ["real", "other", "zero"]:
    acc = {}
    for q in val:
        t = (tok[q["video"]] if mode == "real" else tok[perm[q["video"]]] if mode == "other"
             else torch.zeros_like(tok[q["video"]]))
        with torch.no_grad():
            f = model.project(t)
            s = continuation_logprobs(model, [{"role": "user", "content": f"<video>\n{q['question']}"}],
                                      q["options"], f, end_of_answer=True)
        acc.setdefault(q["category"], []).append(
            int(q["options"][max(range(4), key=s.__getitem__)] == q["answer_text"]))
    r = {k: round(sum(v) / len(v), 2) for k, v in sorted(acc.items())}; r["ALL"] = round(
        sum(sum(v) for v in acc.values()) / len(val), 3)
    print(mode, r, flush=True)

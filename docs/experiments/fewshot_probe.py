# Features alone for the few-shot claim (issue 19): which part of a SweetTok's tokens separates the HELD-OUT
# actions? The bench's own fixed episodes (seed 0) with the nearest-prototype scorer, for several views of
# the same cached tokens: continuous vectors or bags of words; all tokens, the 16 spatial ones, or the 64
# temporal ones; temporal vectors kept per location or mean-pooled over locations (position-invariant);
# and the temporal latents before quantization ("latents/*"), which tells the encoder from the quantizer.
# Ceiling: "pixels/trajectory", no tokenizer, the object's mask read from the pixels (anything far from the
# corner colour): its centroid's steps between frames and its area relative to frame 0.
#   .venv/bin/python docs/experiments/fewshot_probe.py [TOKENIZER] [OUT.json]
import json
import sys
from pathlib import Path

import torch

from mmvid.evaluation.fewshot import episodes, prototype_choice
from mmvid.processor import VideoProcessor, VideoProcessorConfig
from mmvid.video_tokenizers import video_tokenizer_from

tok_path = sys.argv[1] if len(sys.argv) > 1 else "runs/claims/sweettok/dqae_mlc-s0/final"
out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/exp/fewshot-probe.json")
torch.set_num_threads(2)
root = Path("data/shapes/fewshot")
items = [json.loads(line) for line in (root / "fewshot.jsonl").read_text().splitlines() if line.strip()]
tok = video_tokenizer_from(tok_path).eval()
proc = VideoProcessor(None, VideoProcessorConfig.for_video_tokenizer(tok, tok.clip_frames))
S, G = tok.config.num_spatial_queries, tok.config.num_temporal_queries
vocab = tok.codebook_size
views: dict[str, dict[str, torch.Tensor]] = {}


def trajectory(video: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) in [-1, 1] -> centroid steps (T-1, 2) and relative area (T), flattened."""
    bg = video[:, 0, 0, 0]
    mask = ((video - bg[:, None, None, None]).abs().sum(0) > 0.3).float()  # (T, H, W)
    H, W = mask.shape[1:]
    ys, xs = torch.arange(H).float(), torch.arange(W).float()
    area = mask.sum((1, 2)).clamp_min(1)
    cy = (mask.sum(2) * ys).sum(1) / area
    cx = (mask.sum(1) * xs).sum(1) / area
    steps = torch.stack([cx.diff(), cy.diff()], 1) / 4
    return torch.cat([steps.flatten(), area / area[0] - 1])


with torch.no_grad():
    for item in items:
        video = proc.load_video(str(root / item["video"]))
        views.setdefault("pixels/trajectory", {})[item["video"]] = trajectory(video)
        z_s, z_t = tok.encode_latents(video[None])  # before quantization
        views.setdefault("latents/temporal", {})[item["video"]] = z_t[0].flatten()
        views.setdefault("latents/temporal_pooled", {})[item["video"]] = z_t[0].mean(0)
        q = tok.quantize(video[None])
        vec, ids = q["vectors"][0], q["ids"][0]
        bag = lambda x: torch.bincount(x, minlength=vocab).float()  # noqa: E731
        v = {"vectors/all": vec.flatten(), "vectors/spatial": vec[:S].flatten(),
             "vectors/temporal": vec[S:].flatten(), "vectors/temporal_pooled": vec[S:].mean(0),
             "vectors/temporal_pooled+std": torch.cat([vec[S:].mean(0), vec[S:].std(0)]),
             "words/all": bag(ids), "words/spatial": bag(ids[:3 * S]), "words/temporal": bag(ids[3 * S:])}
        for k, x in v.items():
            views.setdefault(k, {})[item["video"]] = x
results = {}
for view, vectors in views.items():
    for shots in (1, 5):
        hits = []
        for support, query, labels in episodes(items, 5, shots, 100, 0):
            choice, _ = prototype_choice([vectors[i["video"]] for i in support],
                                         [i["label"] for i in support], vectors[query["video"]], labels)
            hits.append(float(labels[choice] == query["label"]))
        results[f"{view}/{shots}shot"] = sum(hits) / len(hits)
        print(f"{view:28s} 5-way {shots}-shot {results[f'{view}/{shots}shot']:.2f}", flush=True)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"tokenizer": tok_path, "episodes": 100, "seed": 0, "ways": 5, "results": results},
                          indent=1))

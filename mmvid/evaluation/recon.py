"""Reconstruction bench: how well a video tokenizer reproduces videos, how many tokens it spends, how fast.

    python eval/run.py --bench recon                                  # the VideoLLM's own video tokenizer
    python eval/run.py --bench recon --tokenizer runs/vtok/final      # a folder written by save_pretrained
    python eval/run.py --bench recon --tokenizer vtok_tiny --data my_videos/ --split none --frames 16
    python eval/run.py --bench recon --tokenizer runs/vtok/final --fvd_model i3d_torchscript.pt

Each video is read at `frames` frames (uniform sampling) and the tokenizer's `image_size`, encoded,
decoded and clamped to [-1, 1]. Metrics:

    psnr, ssim                  mean over videos (with stderr), on [-1, 1] (data range 2), see mmvid.metrics
    tokens_per_video            tokenizer.num_tokens(frames, size, size), before any projector
    encode_videos_per_s         videos / seconds spent in encode (data loading and metrics excluded)
    decode_videos_per_s         videos / seconds spent in decode
    videos                      how many videos were scored
    roundtrip/*                 the synthetic world's analyzer on each reconstruction, scored against the
                                video's own scene (its `.json` beside the mp4) as tv_align_gen scores a
                                generation: colour, shape, count, action and overall (their mean). Only for
                                videos with a scene file; `roundtrip_real/*` is the same analyzer on the input
                                clip (same frames and size), the ceiling. A head that generates tokens can
                                draw no better than the tokenizer's roundtrip. `--option roundtrip=off`
                                skips it
    frechet_proxy               the Frechet distance between the real videos and their reconstructions on
                                tv_align_gen's model-free features (4x4-pooled RGB + an 8-colour histogram
                                per frame, mean and std over time); 0 for a perfect round trip
    fvd                         only with --fvd_model: the Frechet distance between features of the real
                                videos and of their reconstructions (a reconstruction FVD, "rFVD")

FVD needs a feature extractor that mmvid does not ship or download: a TorchScript module (e.g. an I3D
exported with `torch.jit.script`/`torch.jit.trace` and `.save(path)`) that maps a float video batch
(B, 3, T, H, W) in [-1, 1], H = W = `fvd_size` (default 224; `none` keeps the tokenizer's size), to
features (B, D). Exporting it, and matching the frame count, size and value range the original network was
trained with (I3D: 224x224, [-1, 1], >= 9 frames), is the user's job. The estimate is biased for small
sets: compare FVDs only at the same number of videos (standard practice uses thousands).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmvid.data import tensor_to_frames
from mmvid.data.video_dataset import VideoClipDataset, list_videos
from mmvid.evaluation.runner import DEFAULT_DATA, BenchContext, BenchResult, Metric, mean_stderr
from mmvid.evaluation.tv_align_gen import category_metrics, frame_features, score_objects, video_feature
from mmvid.metrics import frechet_distance, psnr, ssim
from mmvid.video_tokenizers import VideoTokenizer, video_tokenizer_from

DEFAULT_FRAMES = 16  # when no VideoLLM says how many frames it reads
DEFAULT_FVD_SIZE = 224  # I3D's input size
NO_VALUE = ("", "none", "null")


def run(ctx: BenchContext) -> BenchResult:
    """Reconstruct `ctx.limit` videos of `ctx.data` (split `--split`) through a tokenizer; score them."""
    tokenizer, source = _tokenizer(ctx)
    model_frames = ctx.model.processor.config.num_frames if ctx.model is not None else DEFAULT_FRAMES
    frames = int(ctx.option("frames") or model_frames)
    size = tokenizer.image_size
    split = ctx.option("split", "test")
    split = None if split is None or split.lower() in NO_VALUE else split
    extractor, fvd_size = _fvd_extractor(ctx)  # fails on a bad path before any work is done

    data = ctx.data or DEFAULT_DATA
    videos = list_videos(data, split)[: ctx.limit]
    loader = DataLoader(VideoClipDataset(videos, frames, size, seed=ctx.seed), batch_size=ctx.batch_size)
    device = _device(tokenizer)
    dtype = next(tokenizer.parameters()).dtype

    was_training = tokenizer.training
    tokenizer.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    paths: list[str] = []
    encode_s = decode_s = 0.0
    real_features, fake_features = [], []
    real_proxy, fake_proxy = [], []  # model-free video features, for frechet_proxy
    roundtrip = RoundTrip(ctx.option("roundtrip", "auto"))
    try:
        with torch.no_grad():
            for batch in loader:
                x = batch["video"].to(device, dtype)  # (B, 3, T, H, W)
                start = _now(device)
                tokens, state = tokenizer.encode_with_state(x)  # state: what decode needs (VTok "max_change")
                middle = _now(device)
                y = tokenizer.decode(tokens, num_frames=frames, **state)
                encode_s += middle - start
                decode_s += _now(device) - middle
                y = y.clamp(-1, 1)
                scores["psnr"] += psnr(y, x).tolist()
                scores["ssim"] += ssim(y, x).tolist()
                paths += list(batch["path"])
                real_proxy += _proxy_features(x)
                fake_proxy += _proxy_features(y)
                roundtrip.add(batch["path"], x, y)
                if extractor is not None:
                    real_features.append(_features(extractor, x, fvd_size))
                    fake_features.append(_features(extractor, y, fvd_size))
    finally:
        tokenizer.train(was_training)

    n = len(paths)
    metrics = [Metric(name, *mean_stderr(values), n=n) for name, values in scores.items()]
    metrics += [
        Metric("tokens_per_video", float(tokenizer.num_tokens(frames, size, size))),
        Metric("encode_videos_per_s", n / encode_s if encode_s > 0 else float("inf"), n=n),
        Metric("decode_videos_per_s", n / decode_s if decode_s > 0 else float("inf"), n=n),
        Metric("videos", float(n)),
    ]
    if n > 1:
        metrics.append(Metric("frechet_proxy", frechet_distance(np.stack(real_proxy), np.stack(fake_proxy)),
                              n=n))
    metrics += roundtrip.metrics()
    if extractor is not None:
        fvd = frechet_distance(torch.cat(real_features), torch.cat(fake_features))
        metrics.append(Metric("fvd", fvd, n=n))
    settings = {
        "tokenizer": source,
        "preset": tokenizer.preset,
        "data": str(data),
        "split": split,
        "frames": frames,
        "size": size,
        "device": str(device),
        "fvd_model": ctx.option("fvd_model"),
        "fvd_size": fvd_size if extractor is not None else None,
        "roundtrip_videos": len(roundtrip.hits["recon"]),
    }
    samples = None
    if ctx.log_samples:
        samples = [{"path": p, "psnr": a, "ssim": b, **roundtrip.sample(p)}
                   for p, a, b in zip(paths, scores["psnr"], scores["ssim"], strict=True)]
    return BenchResult("recon", metrics, settings, samples)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class RoundTrip:
    """The analyzer's round-trip score: each reconstruction (and its input clip) against the scene of the
    video, read from the `.json` beside it. `mode`: auto (score the videos that have a scene file), off."""

    def __init__(self, mode: str):
        if mode not in ("auto", "off"):
            raise ValueError(f"roundtrip must be auto or off, got {mode!r}")
        self.on = mode == "auto"
        self.hits: dict[str, list[dict]] = {"recon": [], "real": []}
        self.by_path: dict[str, dict] = {}

    @staticmethod
    def objects(path: str) -> list[dict] | None:
        meta = Path(path).with_suffix(".json")
        if not meta.is_file():
            return None
        try:
            objects = json.loads(meta.read_text()).get("scene", {}).get("objects")
        except (json.JSONDecodeError, AttributeError):
            return None
        keys = {"colour", "shape", "action"}
        if not isinstance(objects, list) or not all(isinstance(o, dict) and keys <= set(o) for o in objects):
            return None
        return objects

    def add(self, paths: list[str], real: torch.Tensor, recon: torch.Tensor) -> None:
        """One batch: the input clips and their reconstructions (B, 3, T, H, W) in [-1, 1]."""
        if not self.on:
            return
        from mmvid.data.shapes.analyzer import analyze  # scipy set-up: only when a scene is there

        for path, x, y in zip(paths, real, recon, strict=True):
            objects = self.objects(path)
            if objects is None:
                continue
            hits = {name: score_objects(objects, analyze(tensor_to_frames(v.float().cpu()).numpy()))
                    for name, v in (("recon", y), ("real", x))}
            for name, h in hits.items():
                self.hits[name].append(h)
            self.by_path[path] = {"roundtrip_hits": hits["recon"], "roundtrip_real_hits": hits["real"]}

    def metrics(self) -> list[Metric]:
        if not self.hits["recon"]:
            return []
        return category_metrics(self.hits["recon"], "roundtrip/") + category_metrics(self.hits["real"],
                                                                                     "roundtrip_real/")

    def sample(self, path: str) -> dict:
        return self.by_path.get(path, {})


def _tokenizer(ctx: BenchContext) -> tuple[VideoTokenizer, str]:
    """The `--tokenizer` (a save_pretrained folder or a preset name), else the VideoLLM's own."""
    name = ctx.option("tokenizer")
    if name is None:  # the model's tokenizer stays where the model is
        return ctx.load_model().video_tokenizer, f"videollm:{ctx.model_path or 'live model'}"
    tokenizer = video_tokenizer_from(name)
    return tokenizer.to("cuda" if torch.cuda.is_available() else "cpu"), name


def _fvd_extractor(ctx: BenchContext) -> tuple[torch.jit.ScriptModule | None, int | None]:
    path = ctx.option("fvd_model")
    if path is None:
        return None, None
    if not Path(path).is_file():
        raise FileNotFoundError(f"FVD feature extractor not found: {path}; --fvd_model takes a TorchScript "
                                f"file (e.g. an I3D exported with torch.jit) mapping (B, 3, T, H, W) "
                                f"in [-1, 1] to (B, D)")
    size = ctx.option("fvd_size")
    size = DEFAULT_FVD_SIZE if size is None else None if size.lower() in NO_VALUE else int(size)
    extractor = torch.jit.load(path, map_location="cpu").eval()
    return extractor.to("cuda" if torch.cuda.is_available() else "cpu"), size


def _features(extractor: torch.jit.ScriptModule, video: torch.Tensor, size: int | None) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> features (B, D) in float64 on the CPU."""
    B, T = video.shape[0], video.shape[2]
    if size is not None and video.shape[-2:] != (size, size):
        flat = video.float().permute(0, 2, 1, 3, 4).reshape(B * T, 3, *video.shape[-2:])  # (B T, 3, H, W)
        flat = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
        video = flat.reshape(B, T, 3, size, size).permute(0, 2, 1, 3, 4)  # (B, 3, T, size, size)
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    features = extractor(video.float().to(device))
    if features.ndim != 2 or features.shape[0] != B:
        raise ValueError(f"the FVD feature extractor must return (B, D) = ({B}, D), "
                         f"got {tuple(features.shape)}")
    return features.detach().double().cpu()


def _proxy_features(videos: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, T, H, W) in [-1, 1] -> one tv_align_gen video feature per video."""
    return [video_feature(frame_features(tensor_to_frames(v.float().cpu()))) for v in videos]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _now(device: torch.device) -> float:
    """perf_counter after the device's queued work has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()

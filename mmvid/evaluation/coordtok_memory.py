r"""CoordTok training cost against video length: random-patch sampling vs decoding every patch.

    python eval/run.py --bench coordtok_memory          # coordtok_base at 16,32,64,128 frames
    python eval/run.py --bench coordtok_memory --frames 16,128 --option preset=coordtok_tiny \
        --option threads=1
    python eval/run.py --bench coordtok_memory --option preset=coordtok_l --option videos=4   # on a GPU

For each frame count T of `--frames` (default 16,32,64,128; each at most the preset's clip length), one
training step of the preset (untrained, seeded by `--seed`) on `videos` (default 1) random clips of T
frames at its image size, done two ways:

    sampled   CoordTok's stage-1 step: encode, decode num_samples random patches (a fixed N:
              3.125 % of a full clip's patches, whatever T is), MSE on them
    full      the same model decoding every patch of the T frames in one sequence, MSE on the video

Each is forward + backward + an AdamW step; its time is the median of `repeats` (default 3) timed runs
after one warm-up. `threads` sets torch's CPU threads for the bench (default: torch's; on a CPU shared
with other work, threads=1 gives steadier times).

Memory. On CUDA: torch.cuda.max_memory_allocated over the step (after reset_peak_memory_stats), the
allocator's true peak. A CPU has no such counter (and tracemalloc does not see torch's allocations), so
there the bench counts what a step must hold when backward starts: every distinct storage saved for
backward (seen through torch.autograd.graph.saved_tensors_hooks, each storage once, parameters left
out) + 4 x the parameter bytes (weights, grads, AdamW's two moments). That is a lower bound of the peak
(forward temporaries that are not saved, and backward's own buffers, are not counted), and it is the
part that grows with T. settings["memory"] names the method used.

Metrics: "T{n}/sampled_mib", "T{n}/full_mib", "T{n}/sampled_ms", "T{n}/full_ms", "T{n}/full_patches";
"sampled_patches"; at the largest T, "full_over_sampled_mib" and "full_over_sampled_ms"; and
"sampled_growth_mib", "full_growth_mib" (memory at the largest T / at the smallest).
settings["table"] is the same as a markdown table.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from mmvid.evaluation.runner import BenchContext, BenchResult, Metric
from mmvid.video_tokenizers import build_video_tokenizer
from mmvid.video_tokenizers.coordtok import CoordTok
from mmvid.video_tokenizers.objectives import coordtok_training_loss, objective_of

DEFAULT_PRESET = "coordtok_base"
DEFAULT_FRAMES = "16,32,64,128"
MODES = ("sampled", "full")
MIB = 2**20


def run(ctx: BenchContext) -> BenchResult:
    """Memory and time of one training step per frame count, sampled vs full decoding."""
    preset = ctx.option("preset") or DEFAULT_PRESET
    frame_counts = [int(f) for f in (ctx.option("frames") or DEFAULT_FRAMES).split(",") if f.strip()]
    repeats = int(ctx.option("repeats") or 3)
    videos = int(ctx.option("videos") or 1)
    threads = int(ctx.option("threads") or 0)
    if not frame_counts or repeats < 1 or videos < 1:
        raise ValueError(f"--frames needs a comma list of ints, repeats and videos >= 1; got "
                         f"{ctx.option('frames')!r}, {repeats}, {videos}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(ctx, preset, frame_counts, repeats, videos, device)
    finally:
        torch.set_num_threads(previous_threads)


def _run(ctx: BenchContext, preset: str, frame_counts: list[int], repeats: int, videos: int,
         device: torch.device) -> BenchResult:
    torch.manual_seed(ctx.seed)
    model = build_video_tokenizer(preset)
    if not isinstance(model, CoordTok):
        raise ValueError(f"coordtok_memory needs a CoordTok preset, got {preset!r} ({type(model).__name__})")
    for T in frame_counts:
        model.check_frames(T)  # a clear ValueError before any work
    model.to(device).train()
    c = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-3)
    generator = torch.Generator().manual_seed(ctx.seed)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    results: dict[tuple[int, str], tuple[float, float]] = {}  # (T, mode) -> (ms, MiB)
    for T in frame_counts:
        video = (torch.rand(videos, 3, T, c.image_size, c.image_size, generator=generator) * 2 - 1).to(device)
        for mode in MODES:
            results[T, mode] = _measure(model, optimizer, video, mode, generator, repeats, param_bytes)

    metrics = [Metric("sampled_patches", float(objective_of(model).num_samples(c)))]
    _, rows, cols = c.decoder_grid
    table = ["| frames | patches (full) | sampled MiB | full MiB | sampled ms | full ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for T in frame_counts:
        (s_ms, s_mib), (f_ms, f_mib) = results[T, "sampled"], results[T, "full"]
        full_patches = T // c.decoder_temporal_patch_size * rows * cols
        metrics += [Metric(f"T{T}/sampled_mib", s_mib), Metric(f"T{T}/full_mib", f_mib),
                    Metric(f"T{T}/sampled_ms", s_ms, n=repeats), Metric(f"T{T}/full_ms", f_ms, n=repeats),
                    Metric(f"T{T}/full_patches", float(full_patches))]
        table.append(f"| {T} | {full_patches} | {s_mib:.1f} | {f_mib:.1f} | {s_ms:.0f} | {f_ms:.0f} |")
    low, high = min(frame_counts), max(frame_counts)
    metrics += [
        Metric("full_over_sampled_mib", results[high, "full"][1] / results[high, "sampled"][1]),
        Metric("full_over_sampled_ms", results[high, "full"][0] / results[high, "sampled"][0]),
        Metric("sampled_growth_mib", results[high, "sampled"][1] / results[low, "sampled"][1]),
        Metric("full_growth_mib", results[high, "full"][1] / results[low, "full"][1]),
    ]
    memory = ("cuda max_memory_allocated" if device.type == "cuda" else
              "cpu: bytes saved for backward (distinct storages) + 4 x parameter bytes; a lower bound of "
              "the peak")
    settings = {
        "preset": preset,
        "frames": frame_counts,
        "size": c.image_size,
        "clip_frames": c.num_frames,
        "videos": videos,
        "repeats": repeats,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "memory": memory,
        "state_mib": 4 * param_bytes / MIB,  # weights, grads, AdamW moments: in every CPU figure
        "table": "\n".join(table),
    }
    return BenchResult("coordtok_memory", metrics, settings)


def _loss(model: CoordTok, video: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    if mode == "sampled":
        return coordtok_training_loss(model, video, stage=1, generator=generator)[0]
    return F.mse_loss(model.decode(model.encode(video), num_frames=video.shape[2], chunk_size=0), video)


def _measure(model: CoordTok, optimizer: torch.optim.Optimizer, video: torch.Tensor, mode: str,
             generator: torch.Generator, repeats: int, param_bytes: int) -> tuple[float, float]:
    """(median ms, MiB) of one training step; the first run is a warm-up that also creates AdamW's state."""
    device = video.device
    times, peak = [], 0.0
    for i in range(repeats + 1):
        saved = _SavedBytes(model)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            loss = _loss(model, video, mode, generator)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i:
            times.append((time.perf_counter() - start) * 1000)
            if device.type == "cuda":
                peak = max(peak, torch.cuda.max_memory_allocated(device) / MIB)
            else:
                peak = max(peak, (saved.bytes + 4 * param_bytes) / MIB)
        del loss
    return statistics.median(times), peak


class _SavedBytes:
    """Counts the bytes of distinct storages autograd saves for backward, parameters excluded."""

    def __init__(self, model: torch.nn.Module):
        self.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.skip and key not in self.seen:
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


"""Training any video tokenizer: one visible loop, single process or DDP under torchrun.

    python tokenizers/train.py --config tokenizers/vtok/vtok_base.yaml [key=value ...]
    torchrun --nproc_per_node 2 tokenizers/train.py --config tokenizers/vtok/vtok_tiny.yaml

Data: a built synthetic world (default `data/shapes`, built on first use if missing), any folder
of videos, or a .txt list (`data.source`). Each step: encode -> decode -> loss (from `losses.py`)
-> backward -> clip -> AdamW step. A tokenizer with its own objective (`objectives.OBJECTIVES`, e.g.
CoordTok's random patches) gets that instead of decode(encode(x)) + `reconstruction_loss`.
Every `val_every` steps: PSNR and SSIM on validation videos.
Every `checkpoint_every` steps: an atomic checkpoint (`mmvid.checkpoint`: weights, optimizer, scheduler,
sampler position, RNG); re-running the same command after a kill resumes from the newest. At the end:
`save_pretrained` to `<out>/final`, loadable with `load_video_tokenizer`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmvid.checkpoint import Checkpointer, TrainState, load_weights
from mmvid.config import config_to_dict, save_config
from mmvid.data.video_dataset import ResumableSampler, VideoClipDataset, list_videos
from mmvid.metrics import psnr, ssim
from mmvid.video_tokenizers import build_video_tokenizer
from mmvid.video_tokenizers.base import WEIGHTS_FILE, VideoTokenizer
from mmvid.video_tokenizers.losses import PIXEL_LOSSES, build_perceptual_loss
from mmvid.video_tokenizers.objectives import training_loss

log = logging.getLogger("mmvid.tokenizer_train")
DEFAULT_WORLD = "data/shapes"


@dataclass
class DataConfig:
    source: str = DEFAULT_WORLD  # a synthetic-world folder, a folder of videos, or a .txt list of paths
    train_split: str | None = "train"  # world split (or subfolder); None for a plain folder / list
    val_split: str | None = "val"
    val_source: str | None = None  # validation videos from elsewhere (default: `source`)
    num_frames: int = 16
    size: int = 64  # frames are resized (short side) and centre-cropped to size x size
    sampling: str = "uniform"  # "uniform" or "clip"
    num_workers: int = 0  # DataLoader worker processes
    build_world: bool = True  # build the default synthetic world when `source` is it and it is missing


@dataclass
class TokenizerTrainConfig:
    model: str = "vtok_base"  # a preset of mmvid.video_tokenizers.VIDEO_TOKENIZERS
    model_overrides: dict[str, Any] = field(default_factory=dict)  # preset config fields to change
    init_from: str | None = None  # a save_pretrained folder whose weights start a new run (fresh optimizer)
    # "all", or "decoder": only the decoder learns (needs init_from); the tokens stay exactly init_from's, so
    # an LLM trained on them keeps working while the decoder learns to draw them better
    train: str = "all"
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/tokenizer"  # run folder: config, metrics.jsonl, checkpoints/, final/
    steps: int = 2000  # optimizer steps
    max_minutes: float | None = None  # also stop after this much training time (equal-time comparisons)
    batch_size: int = 8  # videos per step per process
    lr: float = 3e-4
    warmup_steps: int = 100  # linear warm-up, then constant
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max grad norm; 0 disables
    perceptual_weight: float = 0.0
    # VGG16 weights file for the perceptual term (MSE only without), or "tower": the tokenizer's own
    # frozen tower
    perceptual_weights: str | None = None
    foreground_weight: float = 0.0  # > 0: object pixels weigh 1 + w in the MSE (losses.reconstruction_loss)
    pixel_loss: str = "mse"  # or "l1": sharper edges where object/background is uncertain
    # > 0 (VTok): the loss on this many random frames of each clip; raise batch_size to spend the saved
    # compute on more videos (objectives.training_loss)
    decode_frames: int = 0
    log_every: int = 10
    val_every: int = 200
    val_videos: int = 32
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.val_every < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("val_every, checkpoint_every and log_every must be >= 1")
        if self.foreground_weight < 0:
            raise ValueError(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        if self.decode_frames < 0:
            raise ValueError(f"decode_frames must be >= 0 (0: every frame), got {self.decode_frames}")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {list(PIXEL_LOSSES)}, got {self.pixel_loss!r}")
        if self.train not in ("all", "decoder"):
            raise ValueError(f"train must be 'all' or 'decoder', got {self.train!r}")
        if self.train == "decoder" and not self.init_from:
            raise ValueError("train=decoder fine-tunes the decoder of a trained tokenizer: set init_from to "
                             "its save_pretrained folder")


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world_size, torch.device("cuda", local)
    return rank, world_size, torch.device("cpu")


def _single_device(device: str) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def ensure_data(cfg: DataConfig) -> None:
    """Build the default synthetic world when it is the source and missing."""
    if Path(cfg.source).exists() or not cfg.build_world or Path(cfg.source) != Path(DEFAULT_WORLD):
        return
    from mmvid.data.shapes.build import WorldSettings, build_world

    log.info("building the default synthetic world at %s", cfg.source)
    build_world(cfg.source, WorldSettings(), workers=min(4, os.cpu_count() or 1))


def build_data(cfg: TokenizerTrainConfig, rank: int, world_size: int):
    """(training sampler, training loader, validation loader): this rank's shard of the training videos, in
    full batches; the first `val_videos` validation videos."""
    d = cfg.data
    train_set = VideoClipDataset(list_videos(d.source, d.train_split), d.num_frames, d.size,
                                 sampling=d.sampling, seed=cfg.seed)
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=rank, world_size=world_size)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=d.num_workers,
                        drop_last=True)
    val_videos = list_videos(d.val_source or d.source, d.val_split)[: cfg.val_videos]
    return sampler, loader, DataLoader(VideoClipDataset(val_videos, d.num_frames, d.size),
                                       batch_size=cfg.batch_size)


class TrainingLoss(torch.nn.Module):
    """The tokenizer's training loss (`objectives.training_loss`: its architecture's objective, else
    reconstruction) as a forward pass, so DDP wraps it like any model."""

    def __init__(self, tokenizer: VideoTokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, video: torch.Tensor, perceptual: torch.nn.Module | None, perceptual_weight: float,
                foreground_weight: float = 0.0, pixel_loss: str = "mse", decode_frames: int = 0):
        return training_loss(self.tokenizer, video, perceptual, perceptual_weight, foreground_weight,
                             pixel_loss, decode_frames)


@torch.no_grad()
def evaluate(tokenizer: VideoTokenizer, videos: list[torch.Tensor] | DataLoader,
             device: torch.device) -> dict[str, float]:
    """Mean PSNR and SSIM (on [-1, 1], data range 2) of encode -> decode over the given videos."""
    was_training = tokenizer.training
    tokenizer.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for batch in videos:
        x = (batch["video"] if isinstance(batch, dict) else batch).to(device)
        y = tokenizer(x).clamp(-1, 1)  # encode -> decode (forward also carries VTok's max_change key index)
        scores["psnr"] += psnr(y, x).tolist()
        scores["ssim"] += ssim(y, x).tolist()
    tokenizer.train(was_training)
    return {k: float(sum(v) / len(v)) for k, v in scores.items()}


def _write_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def prepare_run(cfg: TokenizerTrainConfig, distributed: bool) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); rank 0 builds the default world when it is missing and saves the config."""
    rank, world_size, device = setup_distributed(cfg.device) if distributed else (
        0, 1, _single_device(cfg.device))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if rank == 0:
        ensure_data(cfg.data)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.out) / "config.yaml")
    if world_size > 1:
        dist.barrier()
    return rank, world_size, device


def build_model(cfg: TokenizerTrainConfig, device: torch.device,
                world_size: int) -> tuple[VideoTokenizer, torch.nn.Module]:
    """The tokenizer, and the module the step calls (its `TrainingLoss`, DDP-wrapped when distributed)."""
    tokenizer = build_video_tokenizer(cfg.model, **cfg.model_overrides).to(device)
    if cfg.init_from:  # e.g. CoordTok's stage 2 from stage 1's weights; a resumed checkpoint overrides them
        # a decoder-only run may give the decoder parts init_from lacks (decoder_head=conv): they start fresh
        partial = tokenizer.decoder_prefixes if cfg.train == "decoder" else ()
        load_weights(tokenizer, Path(cfg.init_from) / WEIGHTS_FILE, partial=partial, device=str(device))
    if cfg.train == "decoder":
        tokenizer.train_only_decoder()
    model = TrainingLoss(tokenizer)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return tokenizer, model


def run(cfg: TokenizerTrainConfig, distributed: bool = True) -> dict[str, float]:
    """Train (or resume) and return the final validation metrics. `distributed=False`: one process
    even under a launcher (the SFT pipeline trains its tokenizer on rank 0 this way)."""
    rank, world_size, device = prepare_run(cfg, distributed)
    main, out = rank == 0, Path(cfg.out)
    torch.manual_seed(cfg.seed)

    tokenizer, model = build_model(cfg, device, world_size)
    sampler, loader, val_loader = build_data(cfg, rank, world_size)
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    perceptual = build_perceptual_loss(cfg.perceptual_weights, tokenizer)
    if perceptual is not None:
        perceptual.to(device)

    state = TrainState(samplers={"train": sampler})
    checkpointer = Checkpointer(out, cfg.keep_checkpoints, rank, world_size)
    resumable = {"model": tokenizer, "optimizer": optimizer, "scheduler": scheduler}
    if (last := checkpointer.load(state, **resumable)) is not None and main:  # exactly where it stopped
        log.info("resumed from %s (step %d)", last, state.step)

    metrics_path = out / "metrics.jsonl"
    # a time budget ends the run first when it is set: the bar then counts steps against it, not a total
    timed = cfg.max_minutes is not None
    bar = tqdm(total=None if timed else cfg.steps, initial=state.step, unit="step", disable=not main,
               desc=f"training {cfg.model}" + (f" (up to {cfg.max_minutes:g} min)" if timed else ""))
    budget = math.inf if cfg.max_minutes is None else cfg.max_minutes * 60
    val: dict[str, float] = {}
    done = state.step >= cfg.steps or state.seconds >= budget
    while not done:
        for batch in loader:
            start = time.perf_counter()
            x = batch["video"].to(device)
            loss, parts = model(x, perceptual, cfg.perceptual_weight, cfg.foreground_weight, cfg.pixel_loss,
                                 cfg.decode_frames)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0
                         else torch.tensor(0.0))
            optimizer.step()
            scheduler.step()
            sampler.advance(len(batch["index"]))
            state.step, state.samples_seen = (state.step + 1,
                                              state.samples_seen + len(batch["index"]) * world_size)
            seconds = time.perf_counter() - start
            state.seconds += seconds
            bar.update()
            if main and state.step % cfg.log_every == 0:
                rate, lr = cfg.batch_size * world_size / seconds, scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", videos_s=f"{rate:.1f}")
                _write_metrics(metrics_path, {"step": state.step, "loss": loss.item(), **parts,
                                              "grad_norm": float(grad_norm),
                                              "lr": lr, "videos_per_s": rate, "seconds": state.seconds})
            done = state.step >= cfg.steps or state.seconds >= budget
            if main and (state.step % cfg.val_every == 0 or done):
                val = evaluate(tokenizer, val_loader, device)
                bar.write(f"step {state.step}: val psnr {val['psnr']:.2f} dB, ssim {val['ssim']:.4f}")
                _write_metrics(metrics_path, {"step": state.step, "val_psnr": val["psnr"],
                                              "val_ssim": val["ssim"], "seconds": state.seconds})
            if state.step % cfg.checkpoint_every == 0 or done:
                checkpointer.save(state, config_to_dict(cfg), **resumable)
            if done:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    bar.close()
    if main:
        val = save_final(tokenizer, out, state, val or evaluate(tokenizer, val_loader, device))
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return val


def save_final(tokenizer: VideoTokenizer, out: Path, state: TrainState,
               val: dict[str, float]) -> dict[str, float]:
    """`save_pretrained` to `out/final`, with the run's summary beside it; returns `val`."""
    tokenizer.save_pretrained(out / "final")
    summary = {"step": state.step, "trained_seconds": round(state.seconds, 1), "val_psnr": val["psnr"],
               "val_ssim": val["ssim"]}
    (out / "final" / "train_summary.json").write_text(json.dumps(summary, indent=1))
    log.info("saved %s: %s", out / "final", summary)
    return val

"""A pretrained-vision-tower stand-in: a small Hugging Face vision model trained on a synthetic
world's training videos with a semantic objective, saved as an ordinary HF model folder.

    python -m mmvid.vision_tower --world data/shapes --out runs/tower --minutes 2.5
    tok = build_video_tokenizer("vtok_base", feature_extractor="hf", hf_path="runs/tower")

Real video LLMs read frames through a frozen CLIP/SigLIP tower that already knows what objects
look like; nothing of the kind can be downloaded here, and a tokenizer trained minutes on pixel
reconstruction keeps colour and layout but not shape. So the built-in default trains its own tower
first and then uses it exactly like a downloaded one (`AutoModel.from_pretrained(folder)` inside
VTok's `feature_extractor="hf"`), frozen.

The model is a `transformers` ResNet (a CNN learns shapes from a few thousand small frames far
faster than a ViT) whose last stage gives a grid x grid feature map, one feature per key-frame
token. Objectives (`objective=`):

- `"dense"` (default): per grid cell, the world's ground truth of that frame: the colour and shape
  of the object covering the cell (or none), whether an object's centre lies in it, and its size.
  It stands for a backbone pretrained on detection/segmentation labels: features that say *what is
  where*. Only the training split's ground truth is read.
- `"contrastive"`: SigLIP's sigmoid loss between the pooled video feature and a bag-of-words
  embedding of one of its captions (the issue's first miniature; it learns colour long before shape).

The folder holds `config.json` + `model.safetensors` (load with `AutoModel.from_pretrained`) and
`tower.json` (objective, data, steps, seconds, validation accuracy per label).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)
OBJECTIVES = ("dense", "contrastive")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation VTok's HF path applies (its default)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TowerConfig:
    world: str = "data/shapes"  # a built synthetic world (its train and val splits are read)
    out: str = "runs/vision-tower"
    objective: str = "dense"  # dense | contrastive
    image_size: int = 64
    grid: int = 8  # feature map side = image_size / VTok's patch_size
    widths: tuple[int, ...] = (64, 128)  # ResNet stage widths; the last is the feature size
    depths: tuple[int, ...] = (1, 1)
    embedding_size: int = 32
    frames_per_video: int = 4  # frames decoded from each training video
    train_videos: int | None = 2000  # None: every training video
    val_videos: int = 200
    batch_size: int = 64  # frames per step
    lr: float = 2e-3
    minutes: float = 2.5  # training-time budget
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown tower objective {self.objective!r}; known: {list(OBJECTIVES)}")
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} must be a multiple of grid {self.grid}")
        self.widths, self.depths = tuple(self.widths), tuple(self.depths)
        if len(self.widths) != len(self.depths):
            raise ValueError("widths and depths need one entry per ResNet stage")


def resnet_config(cfg: TowerConfig):
    """A transformers ResNetConfig whose output map is grid x grid at image_size (stem /4, each later stage
    /2)."""
    from transformers import ResNetConfig

    stride = 4 * 2 ** (len(cfg.widths) - 1)
    if cfg.image_size // stride != cfg.grid:
        raise ValueError(f"{len(cfg.widths)} ResNet stages map {cfg.image_size}px to "
                         f"{cfg.image_size // stride}, not grid {cfg.grid}; change widths/depths")
    return ResNetConfig(num_channels=3, embedding_size=cfg.embedding_size, hidden_sizes=list(cfg.widths),
                        depths=list(cfg.depths), layer_type="basic", hidden_act="relu",
                        downsample_in_first_stage=False)


# ----------------------------------------------------------------------------------------------
# Data: frames decoded once, labels drawn from the world's ground truth
# ----------------------------------------------------------------------------------------------


def cell_labels(record: dict, frames: list[int], image_size: int, grid: int) -> np.ndarray:
    """int64 (F, 4, grid, grid) per frame and cell: colour (0 none, 1 + index in COLOURS), shape
    (0 none, 1 + index in SHAPES), centre (1 when an object's centre is in the cell), size
    (0 none, 1 small, 2 large), from the video's ground truth JSON."""
    from mmvid.data.shapes import world

    scene = world.Scene.from_dict(record["scene"])
    colours, shapes, sizes = list(world.COLOURS), list(world.SHAPES), list(world.SIZES)
    H = W = image_size
    sx, sy = W / scene.width, H / scene.height
    cell = image_size // grid
    out = np.zeros((len(frames), 4, grid, grid), np.int64)
    for k, t in enumerate(frames):
        best = np.zeros((grid, grid), np.float32)  # coverage of the object that owns each cell
        for obj in scene.objects:
            st = world.object_states(obj, scene.num_frames)
            if not st.visible[t]:
                continue
            radius = world.SIZES[obj.size] * st.scale[t] * min(scene.height, scene.width) * min(sx, sy)
            cx, cy = st.x[t] * W, st.y[t] * H
            # only the cells the object can touch (as `render` does with its box)
            top, left = max(0, int((cy - radius) // cell)), max(0, int((cx - radius) // cell))
            bottom = min(grid, int((cy + radius) // cell) + 1)
            right = min(grid, int((cx + radius) // cell) + 1)
            if top >= bottom or left >= right:
                continue
            box = (top * cell, left * cell, bottom * cell, right * cell)
            alpha = world.coverage(obj.shape, cx, cy, radius, st.angle[t], H, W, box)  # (h, w)
            per_cell = np.zeros((grid, grid), np.float32)
            blocks = alpha.reshape(bottom - top, cell, right - left, cell)
            per_cell[top:bottom, left:right] = blocks.mean((1, 3))
            owns = (per_cell > best) & (per_cell >= 0.15)
            best = np.where(owns, per_cell, best)
            out[k, 0][owns] = 1 + colours.index(obj.colour)
            out[k, 1][owns] = 1 + shapes.index(obj.shape)
            out[k, 3][owns] = 1 + sizes.index(obj.size)
            gy, gx = min(grid - 1, int(cy // cell)), min(grid - 1, int(cx // cell))
            if 0 <= cx < W and 0 <= cy < H:
                out[k, 2, gy, gx] = 1
    return out


def load_split(world_dir: Path, split: str, count: int | None, frames_per_video: int, cfg: TowerConfig,
               with_labels: bool = True):
    """uint8 frames (N, F, H, W, 3), labels (N, F, 4, g, g) or None, and captions per video."""
    from mmvid.data import read_video

    folder = world_dir / split / "videos"
    paths = sorted(folder.glob("*.mp4"))[:count]
    if not paths:
        raise FileNotFoundError(f"no videos in {folder}; build the world first (python -m mmvid.data.shapes "
                                f"--out {world_dir})")
    caps = {}
    cap_file = world_dir / split / "captions.jsonl"
    if cap_file.is_file():
        for line in cap_file.read_text().splitlines():
            item = json.loads(line)
            caps[Path(item["video"]).stem] = item["captions"]
    X, Y, C = [], [], []
    for path in tqdm(paths, desc=f"tower data ({split})", unit="video", leave=False):
        video = read_video(path, num_frames=frames_per_video, size=cfg.image_size)
        X.append(np.asarray(video.frames))
        if with_labels:
            record = json.loads(path.with_suffix(".json").read_text())
            Y.append(cell_labels(record, [int(i) for i in video.indices], cfg.image_size, cfg.grid))
        C.append(caps.get(path.stem, []))
    return np.stack(X), (np.stack(Y) if with_labels else None), C


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> the tower's input, normalised exactly as VTok's HF path does."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------
# Objectives: heads that exist only while training (the saved folder is the backbone alone)
# ----------------------------------------------------------------------------------------------


class DenseHeads(nn.Module):
    """Per-cell linear read-outs: colour, shape, centre, size."""

    def __init__(self, dim: int):
        super().__init__()
        from mmvid.data.shapes import world

        self.sizes = (1 + len(world.COLOURS), 1 + len(world.SHAPES), 2, 1 + len(world.SIZES))
        self.head = nn.Conv2d(dim, sum(self.sizes), 1)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """features (N, D, g, g), labels (N, 4, g, g) -> mean cross-entropy, per-label accuracy on object
        cells."""
        logits = self.head(features).split(self.sizes, dim=1)
        total, acc = 0.0, {}
        occupied = labels[:, 0] > 0
        for name, lg, y in zip(("colour", "shape", "centre", "size"), logits, labels.unbind(1)):
            total = total + F.cross_entropy(lg, y)
            pred = lg.argmax(1)
            mask = occupied if name != "centre" else torch.ones_like(occupied)
            acc[name] = float((pred == y)[mask].float().mean()) if mask.any() else float("nan")
        return total / 4, acc


class CaptionContrast(nn.Module):
    """SigLIP-style: pooled video feature vs a bag-of-words caption embedding, sigmoid loss."""

    def __init__(self, dim: int, vocabulary: list[str], width: int = 128):
        super().__init__()
        self.index = {w: i for i, w in enumerate(vocabulary)}
        self.words = nn.EmbeddingBag(len(vocabulary), width, mode="mean")
        self.video = nn.Linear(2 * dim, width)
        self.scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def loss(self, features: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, dict]:
        # features (N, D, g, g) of one frame per caption
        v = F.normalize(self.video(torch.cat([features.mean((2, 3)), features.amax((2, 3))], -1)), dim=-1)
        ids = [[self.index[w] for w in c.lower().replace(".", "").replace(",", "").split() if w in self.index]
               or [0] for c in captions]
        flat = torch.tensor([i for s in ids for i in s])
        offsets = torch.tensor([0, *np.cumsum([len(s) for s in ids])[:-1]])
        t = F.normalize(self.words(flat, offsets), dim=-1)
        logits = v @ t.T * self.scale.exp() + self.bias  # (N, N)
        target = 2 * torch.eye(len(captions)) - 1
        loss = -F.logsigmoid(target * logits).sum() / len(captions)
        return loss, {"retrieval": float((logits.argmax(1) == torch.arange(len(captions))).float().mean())}


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def features_of(model, pixels: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixels).last_hidden_state  # (N, D, g, g)


def train_tower(cfg: TowerConfig) -> Path:
    """Train the tower (skipped when `out` already holds a finished one) and save it; returns `out`."""
    from transformers import ResNetModel

    out = Path(cfg.out)
    if (out / "tower.json").is_file() and (out / "model.safetensors").is_file():
        log.info("vision tower %s exists; skipping its training", out)
        return out
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    world_dir = Path(cfg.world)
    start = time.perf_counter()
    dense = cfg.objective == "dense"
    Xtr, Ytr, Ctr = load_split(world_dir, "train", cfg.train_videos, cfg.frames_per_video, cfg,
                               with_labels=dense)
    Xva, Yva, _ = load_split(world_dir, "val", cfg.val_videos, cfg.frames_per_video, cfg, with_labels=True)
    load_seconds = time.perf_counter() - start
    log.info("tower data: %d train and %d val videos x %d frames in %.0f s", len(Xtr), len(Xva),
             cfg.frames_per_video, load_seconds)
    model = ResNetModel(resnet_config(cfg))
    dim = cfg.widths[-1]
    if dense:
        objective = DenseHeads(dim)
    else:
        from mmvid.data.shapes.text import LEXICON

        objective = CaptionContrast(dim, sorted(LEXICON))
    params = [*model.parameters(), *objective.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    Xtr_t = torch.from_numpy(Xtr)
    Ytr_t = torch.from_numpy(Ytr) if dense else None
    budget = cfg.minutes * 60
    step, t0, history = 0, time.perf_counter(), []
    bar = tqdm(desc=f"vision tower ({cfg.objective})", unit="step", total=cfg.max_steps)
    model.train()
    while time.perf_counter() - t0 < budget and (cfg.max_steps is None or step < cfg.max_steps):
        vid = rng.integers(0, len(Xtr), cfg.batch_size)
        frm = rng.integers(0, cfg.frames_per_video, cfg.batch_size)
        pixels = to_pixels(Xtr_t[vid, frm])
        if dense:
            loss, stats = objective.loss(features_of(model, pixels), Ytr_t[vid, frm])
        else:
            captions = [Ctr[v][int(rng.integers(len(Ctr[v])))] if Ctr[v] else "" for v in vid]
            loss, stats = objective.loss(features_of(model, pixels), captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in stats.items()})
            history.append({"step": step, "seconds": round(time.perf_counter() - t0, 1), "loss": loss.item(),
                            **stats})
    bar.close()
    train_seconds = time.perf_counter() - t0
    model.eval()
    val = evaluate_dense(model, Xva, Yva, objective if dense else None)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    record = {"config": asdict(cfg), "steps": step, "train_seconds": round(train_seconds, 1),
              "load_seconds": round(load_seconds, 1), "val": val, "history": history,
              "normalisation": {"mean": CLIP_MEAN, "std": CLIP_STD}}
    (out / "tower.json").write_text(json.dumps(record, indent=1))
    log.info("vision tower: %d steps in %.0f s; val %s -> %s", step, train_seconds, val, out)
    return out


@torch.no_grad()
def evaluate_dense(model, X: np.ndarray, Y: np.ndarray, heads: DenseHeads | None) -> dict:
    """Per-cell accuracy of the dense heads on held-out frames (object cells; centre on all cells).
    For a contrastive tower (no heads) a linear probe is not fitted here: returns {}."""
    if heads is None:
        return {}
    frames = torch.from_numpy(X.reshape(-1, *X.shape[2:]))
    labels = torch.from_numpy(Y.reshape(-1, *Y.shape[2:]))
    sums, n = {}, 0
    for i in range(0, len(frames), 256):
        _, acc = heads.loss(features_of(model, to_pixels(frames[i:i + 256])), labels[i:i + 256])
        k = len(frames[i:i + 256])
        for name, value in acc.items():
            sums[name] = sums.get(name, 0.0) + value * k
        n += k
    return {name: round(v / n, 4) for name, v in sums.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TowerConfig()
    for name in ("world", "out", "objective"):
        parser.add_argument(f"--{name}", default=getattr(defaults, name))
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--train-videos", type=int, default=defaults.train_videos)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_tower(TowerConfig(world=args.world, out=args.out, objective=args.objective, minutes=args.minutes,
                            train_videos=args.train_videos, max_steps=args.max_steps, seed=args.seed))


if __name__ == "__main__":
    main()

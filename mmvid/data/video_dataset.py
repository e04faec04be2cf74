"""Video clips for training: list a source, decode items that skip bad files, sample resumably.

    videos = list_videos("data/shapes", split="train")            # sorted list[Path]
    dataset = VideoClipDataset(videos, num_frames=16, size=64)    # item: {"video", "path", "index"}
    dataset[0]["video"]                                           # float (C, T, H, W) in [-1, 1]
    sampler = ResumableSampler(len(dataset), seed=0, rank=rank, world_size=world_size)

Sources (`list_videos`): a synthetic world folder (has `world.json`; pick a split), any folder
(searched recursively for VIDEO_SUFFIXES), or a `.txt` list with one path per line.

Bad files: a video that cannot be decoded is warned about once, recorded in `dataset.bad` and
replaced by the next index that works, so one corrupt file in a million does not stop a run;
more than `max_bad_fraction` of the data set failing stops it with a `RuntimeError` instead.

Resuming: `ResumableSampler.state_dict()` holds the epoch and how many indices this rank has
consumed; a sampler loaded from it yields exactly the rest of that epoch. Clip starts depend
only on (seed, index), so a resumed run also sees the same clips.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from mmvid.data.video_io import (
    BACKENDS,
    VideoDecodeError,
    VideoTooShortError,
    frames_to_tensor,
    read_video,
)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".gif")
DATASET_SAMPLING_MODES = ("uniform", "clip")  # "fps" gives a varying T, which does not batch
_CLIP_SEED_STRIDE = 1_000_003  # a prime: clip seeds of (seed, index) pairs do not collide in practice

# ----------------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------------


def list_videos(source: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The video files of a source, in a deterministic order.

    Args:
        source: a synthetic world folder (contains `world.json`): `source/split/videos/*.mp4`;
            any other folder: every file with a suffix in VIDEO_SUFFIXES, searched recursively
            (hidden files and folders, such as a writer's `.x.partial.mp4`, are skipped);
            a `.txt` file: one path per line, relative ones resolved against the file's folder,
            blank lines and lines starting with `#` ignored; a single video file: itself.
        split: required for a world folder ("train", "val", ...); for a plain folder None or
            the name of a subfolder to restrict the search to; must be None otherwise.

    Returns:
        Paths sorted by name (folders) or in the list's order (`.txt`).

    Raises:
        FileNotFoundError: `source` does not exist.
        ValueError: a bad or missing split, an unsupported file, or no videos found.
    """
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"video source not found: {root}")
    if root.is_dir() and (root / "world.json").is_file():
        splits = sorted(p.name for p in root.iterdir() if (p / "videos").is_dir())
        if split is None or split not in splits:
            got = "no split was given" if split is None else f"there is no split {split!r}"
            raise ValueError(f"{root} is a synthetic world and {got}; available splits: {splits}")
        videos = sorted((root / split / "videos").glob("*.mp4"))
    elif root.is_dir():
        if split is not None:
            subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if split not in subfolders:
                raise ValueError(f"{root} has no subfolder {split!r} to restrict to; "
                                 f"subfolders: {subfolders}")
            root = root / split
        videos = sorted(
            p for p in root.rglob("*")
            if p.suffix.lower() in VIDEO_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.is_file()
        )
    else:
        if split is not None:
            raise ValueError(f"split={split!r} only applies to a folder source, not the file {root}")
        if root.suffix.lower() == ".txt":
            videos = []
            for line in root.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    path = Path(line).expanduser()
                    videos.append(path if path.is_absolute() else root.parent / path)
        elif root.suffix.lower() in VIDEO_SUFFIXES:
            videos = [root]
        else:
            raise ValueError(
                f"cannot list videos from {root}: expected a folder, a .txt list or a video file "
                f"({', '.join(VIDEO_SUFFIXES)})"
            )
    if not videos:
        raise ValueError(f"no videos found in {Path(source)}" + (f" (split {split!r})" if split else ""))
    return videos


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


class VideoClipDataset(Dataset):
    """Fixed-length clips from a list of videos, in the model layout.

    Item `i` is `{"video": float (C, T, H, W) in [-1, 1], "path": str, "index": int}`, where
    `T = num_frames`. Videos shorter than `num_frames` repeat their last frame (read_video's
    short-video policy). With `sampling="clip"` the start frame is drawn from
    `seed * 1_000_003 + index`, so the same index always gives the same clip, in any process.

    A video that fails to decode (VideoDecodeError, VideoTooShortError, FileNotFoundError) is
    warned about once, recorded in `self.bad` (path -> reason; per process, so each DataLoader
    worker keeps its own) and replaced by the next index (modulo the length) that decodes;
    the returned "path" and "index" are those of the video actually returned. Once more than
    `max(1, max_bad_fraction * len(self))` videos have failed, a RuntimeError stops the run.

    Args:
        videos: video paths, e.g. from `list_videos`.
        num_frames: frames per item (T).
        size: an int for `size x size`, `(height, width)`, or None to keep the source size
            (all videos must then share one size to be batched).
        sampling: "uniform" (spread over the whole video) or "clip" (consecutive frames).
        backend: "auto", "decord" or "pyav" (see read_video).
        seed: seeds the clip starts.
        max_bad_fraction: the fraction of videos allowed to fail before giving up.
    """

    def __init__(
        self,
        videos: Sequence[str | os.PathLike],
        num_frames: int,
        size: int | tuple[int, int] | None,
        sampling: str = "uniform",
        backend: str = "auto",
        seed: int = 0,
        max_bad_fraction: float = 0.01,
    ):
        if isinstance(videos, (str, os.PathLike)):
            raise ValueError(f"videos must be a sequence of paths, got the single path {videos!r}; "
                             f"use list_videos(...) to list a folder")
        self.videos = [os.fspath(v) for v in videos]  # str: cheap to pickle into workers
        if not self.videos:
            raise ValueError("VideoClipDataset got no videos")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
        if sampling not in DATASET_SAMPLING_MODES:
            raise ValueError(f"unknown sampling {sampling!r} for a clip data set; "
                             f"known: {list(DATASET_SAMPLING_MODES)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; known: {list(BACKENDS)}")
        if size is not None:
            sizes = (size,) if isinstance(size, int) else tuple(size)
            if len(sizes) not in (1, 2) or not all(isinstance(s, int) and s > 0 for s in sizes):
                raise ValueError(f"size must be a positive int, (height, width) or None, got {size!r}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.num_frames = num_frames
        self.size = size
        self.sampling = sampling
        self.backend = backend
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} videos")
        index %= n
        for offset in range(n):  # at most one pass over the data set: never loops forever
            i = (index + offset) % n
            path = self.videos[i]
            if path in self.bad:
                continue
            try:
                video = read_video(
                    path,
                    num_frames=self.num_frames,
                    size=self.size,
                    sampling=self.sampling,
                    backend=self.backend,
                    seed=self.seed * _CLIP_SEED_STRIDE + i,
                )
            except (VideoDecodeError, VideoTooShortError, FileNotFoundError) as e:
                self._record_bad(path, e)
                continue
            return {"video": frames_to_tensor(video.frames), "path": path, "index": i}
        raise RuntimeError(f"none of the {n} videos could be decoded; {self._summary()}")

    def _record_bad(self, path: str, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        self.bad[path] = reason
        warnings.warn(f"skipping video {path}: {reason}", RuntimeWarning, stacklevel=3)
        if len(self.bad) > max(1, self.max_bad_fraction * len(self)):
            raise RuntimeError(
                f"{len(self.bad)} of {len(self)} videos failed to decode, more than "
                f"max_bad_fraction={self.max_bad_fraction} allows; {self._summary()}"
            )

    def _summary(self, first: int = 3) -> str:
        reasons = "; ".join(f"{p}: {r}" for p, r in list(self.bad.items())[:first])
        more = f" (and {len(self.bad) - first} more)" if len(self.bad) > first else ""
        return f"first failures: {reasons}{more}"


# ----------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """A per-epoch permutation, sharded over ranks, that resumes mid-epoch.

    Each epoch is a permutation of `range(num_items)` (a torch.Generator seeded with
    `seed + epoch`; the identity without `shuffle`). With `world_size > 1`, rank r takes
    `perm[r::world_size]` after `drop_last` trims the permutation to a multiple of
    `world_size` (or, without it, wraps around to pad it, as DistributedSampler does), so all
    ranks yield `len(self)` indices and the shards are disjoint (without padding).

    The contract with the trainer:
    - `__iter__` yields this rank's indices from `position` on; it does not move `position`
      (a DataLoader prefetches, so only the trainer knows what was consumed);
    - the trainer calls `advance(n)` after consuming n indices (a batch) on this rank;
    - an exhausted iteration does not start the next epoch: the trainer calls `set_epoch`;
    - `state_dict()` goes into the checkpoint; ranks step in lockstep, so one rank's state
      (e.g. rank 0's) restores every rank. `load_state_dict` refuses another data set size,
      world size or seed.

        sampler = ResumableSampler(len(dataset), seed=0, rank=rank, world_size=world_size)
        sampler.load_state_dict(checkpoint["sampler"])  # when resuming
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=4)
        for epoch in range(sampler.epoch, num_epochs):
            for batch in loader: step(batch); sampler.advance(len(batch["index"])); save(sampler.state_dict())
            sampler.set_epoch(epoch + 1)
    """

    def __init__(
        self,
        num_items: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if not isinstance(num_items, int) or num_items < 1:
            raise ValueError(f"num_items must be a positive int, got {num_items!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        if drop_last and num_items < world_size:
            raise ValueError(f"with drop_last, {num_items} items leave nothing for each of "
                             f"{world_size} ranks")
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # indices this rank has consumed in the current epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.world_size
        return math.ceil(self.num_items / self.world_size)

    def _epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        total = len(self) * self.world_size
        if total <= len(order):
            order = order[:total]
        else:  # pad by wrapping around (repeatedly, if world_size > num_items)
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices()[self.position :])

    def advance(self, n: int) -> None:
        """Count `n` more indices of this epoch as consumed on this rank."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"advance needs a non-negative int, got {n!r}")
        if self.position + n > len(self):
            raise ValueError(f"advancing {n} from position {self.position} passes the end of the epoch "
                             f"({len(self)} indices per rank); call set_epoch for the next one")
        self.position += n

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first index."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch
        self.position = 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state.

        Raises:
            ValueError: a missing key, a position outside the epoch, or a state saved with
                another num_items, world_size or seed (the order would not be the same).
        """
        missing = {"epoch", "position", "seed", "num_items", "world_size"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}")
        for key in ("num_items", "world_size", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state was saved with {key}={state[key]!r} but this sampler has "
                                 f"{key}={getattr(self, key)!r}; resuming would not continue the same order")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"sampler state position {state['position']} is outside [0, {len(self)}]")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

"""The video tokenizer contract every tokenizer (frames, VTok, CoordTok, SweetTok) follows.

    tokenizer = build_video_tokenizer("vtok_base")
    tokens = tokenizer.encode(video)             # video: float (B, C, T, H, W) in [-1, 1]
    tokens.shape == (B, tokenizer.num_tokens(T, H, W), tokenizer.token_dim)   # continuous
    layout = tokenizer.token_layout(T, H, W)     # per token: group, frame index, (t, y, x) position
    video_hat = tokenizer.decode(tokens, num_frames=T)
    tokenizer.save_pretrained("ckpt/");  load_video_tokenizer("ckpt/")

Discrete tokenizers return long ids (B, N) and expose `codebook_size` (and `words` when ids are words).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class TokenLayout:
    """What each token of an encoded video stands for, so projectors can embed structure."""

    groups: tuple[str, ...]  # group names, e.g. ("key", "residual")
    group: torch.Tensor  # long (N,): index into `groups`
    time: torch.Tensor  # long (N,): the frame the token describes, -1 when it spans frames
    position: torch.Tensor  # float (N, 3): (t, y, x) in [0, 1]; t = time / (T - 1); -1 where undefined
    discrete: bool = False
    codebook_size: int | None = None
    words: list[str] | None = None  # id -> word when the codebook is made of words

    @property
    def num_tokens(self) -> int:
        return int(self.group.numel())

    def to(self, device: torch.device | str) -> "TokenLayout":
        return replace(self, group=self.group.to(device), time=self.time.to(device), position=self.position.to(device))

    def to_dict(self) -> dict:
        """A JSON-ready manifest (lists, not tensors)."""
        return {
            "groups": list(self.groups),
            "group": self.group.tolist(),
            "time": self.time.tolist(),
            "position": self.position.tolist(),
            "discrete": self.discrete,
            "codebook_size": self.codebook_size,
        }


class VideoTokenizer(nn.Module):
    """Base class. Subclasses set `architecture`, `config_class` and implement the methods below."""

    architecture: str = ""  # key in ARCHITECTURES, stored in config.json
    config_class: type = object
    min_frames: int = 1
    discrete: bool = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.preset: str | None = None  # the registry name it was built from, if any

    # -- the contract -----------------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def num_tokens(self, num_frames: int, height: int, width: int) -> int:
        raise NotImplementedError

    def token_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        raise NotImplementedError

    @property
    def token_dim(self) -> int:
        raise NotImplementedError

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction: decode(encode(video)), what training optimises."""
        return self.decode(self.encode(video), num_frames=video.shape[2])

    @property
    def codebook_size(self) -> int | None:
        return None

    # -- input checks shared by every tokenizer ----------------------------------------------------

    def check_video(self, video: torch.Tensor) -> tuple[int, int, int, int]:
        """Validate a model-layout video; returns (B, T, H, W)."""
        if not isinstance(video, torch.Tensor) or not video.is_floating_point():
            raise ValueError(f"expected a float video tensor (B, C, T, H, W) in [-1, 1], got {_describe(video)}")
        if video.ndim != 5:
            raise ValueError(f"expected a video of rank 5 (B, C, T, H, W), got shape {tuple(video.shape)}; "
                             f"add a batch dimension with video[None] or convert frames with mmvid.data.frames_to_tensor")
        B, C, T, H, W = video.shape
        if C != 3:
            raise ValueError(f"expected 3 colour channels in dimension 1 of (B, C, T, H, W), got {C} (shape {tuple(video.shape)})")
        if T < self.min_frames:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_frames} frames, got {T}")
        self.check_size(H, W)
        return B, T, H, W

    def check_size(self, height: int, width: int) -> None:
        size = getattr(self.config, "image_size", None)
        if size is not None and (height, width) != (size, size):
            raise ValueError(f"{type(self).__name__} expects {size}x{size} frames, got {height}x{width}; "
                             f"read videos with read_video(..., size={size})")

    # -- checkpoints ------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write `model.safetensors` and `config.json` (architecture, preset, config) into a folder."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        record = {
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "preset": self.preset,
            "config": asdict(self.config),
        }
        (path / CONFIG_FILE).write_text(json.dumps(record, indent=1))
        return path


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def config_from_dict(config_class, data: dict):
    """Build a tokenizer config from JSON, rejecting keys the class does not know."""
    known = {f.name for f in fields(config_class)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    return config_class(**data)

"""The video tokenizer contract every tokenizer (frames, VTok, CoordTok, SweetTok) follows.

    tokenizer = build_video_tokenizer("vtok_base")
    tokens = tokenizer.encode(video)             # video: float (B, C, T, H, W) in [-1, 1]
    tokens.shape == (B, tokenizer.num_tokens(T, H, W), tokenizer.token_dim)   # continuous
    layout = tokenizer.token_layout(T, H, W)     # per token: group, frame index, (t, y, x) position
    video_hat = tokenizer.decode(tokens, num_frames=T)
    tokenizer.save_pretrained("ckpt/");  load_video_tokenizer("ckpt/")

Discrete tokenizers return long ids (B, N) and expose `codebook_size` (and `words` when ids are words).
What else a caller may rely on is declared on `VideoTokenizer`, so no caller probes for methods.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mmvid.video_tokenizers.features import HFFeatures

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
        return replace(self, group=self.group.to(device), time=self.time.to(device),
                       position=self.position.to(device))

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
    """Base class. Subclasses set `architecture`, `config_class` and implement encode, decode,
    num_tokens, token_layout and token_dim. What every tokenizer declares:

        image_size       frames are image_size x image_size pixels
        min_frames       the shortest clip it encodes
        clip_frames      the clip length it is built for (CoordTok: the longest it takes; SweetTok: what
                         decode assumes when not told); None when any length works
        max_frames       the longest clip it encodes (CoordTok: clip_frames); None when any length works
        discrete         encode gives long ids (B, N), not vectors (B, N, token_dim)
        codebook_size    ids index a codebook of this size (encode_ids, ids_to_vectors); None: no codebook
        words, has_words id -> word when the ids are words (video_to_text); None / False otherwise
        id_ranges()      [low, high) of the ids allowed at each id position; None: any id anywhere
        decode_state     what decode needs besides the tokens (VTok "max_change": key_index), as
                         encode_with_state returns it: decode(tokens, num_frames, **state)

    A method a tokenizer lacks raises ValueError naming the tokenizer and what it lacks.
    `requires_grad_` leaves parts a tokenizer keeps frozen (VTok's frozen HF features) frozen.
    """

    architecture: str = ""  # key in ARCHITECTURES, stored in config.json
    decoder_prefixes: tuple[str, ...] = ()  # the top-level modules/parameters that make up the decoder
    # config fields that shape only the decoder: a decoder tuned alone may change them
    # (VideoLLM.load_video_decoder)
    decoder_config_fields: tuple[str, ...] = ()
    config_class: type = object
    min_frames: int = 1
    discrete: bool = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.preset: str | None = None  # the registry name it was built from, if any
        self.objective = None  # training settings (objectives.py), not architecture; None = the defaults

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

    def requires_grad_(self, requires_grad: bool = True) -> VideoTokenizer:
        """As nn.Module's, but a frozen HF feature extractor (`freeze_features`) stays frozen."""
        super().requires_grad_(requires_grad)
        for module in self.modules():
            if isinstance(module, HFFeatures) and module.frozen:
                module.requires_grad_(False)
        return self

    def decoder_parameter_names(self) -> list[str]:
        """Names of the parameters that decode tokens into pixels (`decoder_prefixes`): what
        `train_only_decoder` leaves trainable. The encoder, quantizer and codebook are the rest."""
        if not self.decoder_prefixes:
            raise self.lacks("a declared decoder (decoder_prefixes)")
        return [name for name, _ in self.named_parameters()
                if name.split(".")[0] in self.decoder_prefixes]

    def train_only_decoder(self) -> VideoTokenizer:
        """Freeze everything but the decoder, so that the tokens (and any LLM trained on them) stay exactly
        what they were while the decoder keeps learning to draw them."""
        keep = set(self.decoder_parameter_names())
        for name, param in self.named_parameters():
            param.requires_grad_(name in keep)
        return self

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction: decode(encode(video)) with the decode_state, what training optimises."""
        tokens, state = self.encode_with_state(video)
        return self.decode(tokens, num_frames=video.shape[2], **state)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def clip_frames(self) -> int | None:
        return None

    @property
    def max_frames(self) -> int | None:
        return None

    @property
    def codebook_size(self) -> int | None:
        return None

    @property
    def words(self) -> list[str] | None:
        return None

    @property
    def has_words(self) -> bool:
        return self.words is not None

    def id_ranges(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
        """[low, high) of the ids allowed at each id position; None when any id in [0, codebook_size) is."""
        if self.codebook_size is None:
            raise self.lacks("ids (it has no codebook)")
        return None

    @property
    def decode_state(self) -> tuple[str, ...]:
        """Names of the keyword arguments decode needs besides the tokens (from encode_with_state)."""
        return ()

    def encode_with_state(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """encode(video), and the `decode_state` that decoding those tokens needs, by name."""
        return self.encode(video), {}

    def encode_ids(self, video: torch.Tensor) -> torch.Tensor:
        raise self.lacks("codebook ids (encode_ids)")

    def ids_to_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        raise self.lacks("codebook ids (ids_to_vectors)")

    def video_to_text(self, video: torch.Tensor) -> str:
        raise self.lacks("words (video_to_text)")

    def lacks(self, what: str) -> ValueError:
        """The error for a use this tokenizer does not support."""
        preset = f" ({self.preset})" if self.preset else ""
        return ValueError(f"the {type(self).__name__}{preset} video tokenizer has no {what}")

    # -- input checks shared by every tokenizer ----------------------------------------------------

    def check_video(self, video: torch.Tensor) -> tuple[int, int, int, int]:
        """Validate a model-layout video; returns (B, T, H, W)."""
        if not isinstance(video, torch.Tensor) or not video.is_floating_point():
            raise ValueError("expected a float video tensor (B, C, T, H, W) in [-1, 1], got "
                             f"{_describe(video)}")
        if video.ndim != 5:
            raise ValueError(f"expected a video of rank 5 (B, C, T, H, W), got shape {tuple(video.shape)}; "
                             "add a batch dimension with video[None] or convert frames with "
                             "mmvid.data.frames_to_tensor")
        B, C, T, H, W = video.shape
        if C != 3:
            raise ValueError(f"expected 3 colour channels in dimension 1 of (B, C, T, H, W), got {C} (shape "
                             f"{tuple(video.shape)})")
        if T < self.min_frames:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_frames} frames, got {T}")
        self.check_size(H, W)
        return B, T, H, W

    def check_size(self, height: int, width: int) -> None:
        size = self.image_size
        if (height, width) != (size, size):
            raise ValueError(f"{type(self).__name__} expects {size}x{size} frames, got {height}x{width}; "
                             f"read videos with read_video(..., size={size})")

    # -- checkpoints ------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write `model.safetensors` and `config.json` (architecture, preset, config, and the objective's
        settings when it has any) into a folder."""
        from safetensors.torch import save_file

        from mmvid.video_tokenizers.objectives import objective_to_dict

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
        if self.objective is not None:
            record["objective"] = objective_to_dict(self.objective)
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

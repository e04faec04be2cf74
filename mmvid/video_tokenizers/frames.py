"""The naive frame-sampling baseline: what most video LLMs do.

Every frame becomes S patch tokens (T x S in all), optionally pooled to a budget per frame: a g x g
grid (average pooling) or K learned queries (attention pooling). It shares VTok's encoder family
(a per-frame ViT) and decoder (a grid decoder per frame), so the two differ only in what they keep.
With `feature_extractor="hf"` the per-frame encoder is a frozen Hugging Face vision model, as VTok's can
be: the same tower, the same frames, only the token layout differs (the VTok-vs-frame-sampling claim in
`eval/claims.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmvid.video_tokenizers.base import TokenLayout, VideoTokenizer
from mmvid.video_tokenizers.features import CLIP_MEAN, CLIP_STD, FEATURE_EXTRACTORS, HFFeatures
from mmvid.video_tokenizers.layers import AttentionPool, GridDecoder, ViT, grid_positions, init_weights

POOLS = ("none", "grid", "queries")


@dataclass
class FramesConfig:
    image_size: int = 64  # frames are image_size x image_size pixels
    patch_size: int = 8
    dim: int = 128  # encoder width
    depth: int = 3
    num_heads: int = 4
    token_dim: int = 32  # channels of each output token
    pool: str = "none"  # "none" (S = grid^2 tokens a frame), "grid" (pool_size^2), "queries" (pool_size)
    pool_size: int = 0
    decoder_dim: int = 128
    decoder_depth: int = 3
    decoder_heads: int = 4
    feature_extractor: str = "vit"  # "vit" (trained from scratch) or "hf" (a frozen HF vision model)
    hf_path: str | None = None  # local folder of the HF vision model (its weights load from there)
    hf_config: dict | None = None  # its config (model_type + fields); filled in from hf_path when built
    hf_image_mean: tuple[float, ...] = CLIP_MEAN
    hf_image_std: tuple[float, ...] = CLIP_STD
    freeze_features: bool = True  # for "hf": keep the vision model frozen

    def __post_init__(self):
        if self.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"unknown feature_extractor {self.feature_extractor!r}; known: "
                             f"{list(FEATURE_EXTRACTORS)}")
        if self.feature_extractor == "hf" and not (self.hf_path or self.hf_config):
            raise ValueError("feature_extractor='hf' needs hf_path (a local model folder) or hf_config")
        self.hf_image_mean, self.hf_image_std = tuple(self.hf_image_mean), tuple(self.hf_image_std)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size "
                             f"{self.patch_size}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; known: {list(POOLS)}")
        grid = self.image_size // self.patch_size
        if self.pool == "grid" and not 1 <= self.pool_size <= grid:
            raise ValueError(f"pool='grid' needs 1 <= pool_size <= {grid}, got {self.pool_size}")
        if self.pool == "queries" and self.pool_size < 1:
            raise ValueError(f"pool='queries' needs pool_size >= 1, got {self.pool_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return {"none": self.grid**2, "grid": self.pool_size**2, "queries": self.pool_size}[self.pool]


class FramesTokenizer(VideoTokenizer):
    architecture = "frames"
    decoder_prefixes = ("from_tokens", "memory_pos", "decoder")
    config_class = FramesConfig

    def __init__(self, config: FramesConfig):
        super().__init__(config)
        c = config
        if c.feature_extractor == "hf":
            self.encoder = HFFeatures(c)
            c.dim = self.encoder.hidden_size
        else:
            self.encoder = ViT(c.image_size, c.patch_size, c.dim, c.depth, c.num_heads)
        self.pooler = AttentionPool(c.dim, c.pool_size, c.num_heads, c.dim) if c.pool == "queries" else None
        self.to_tokens = nn.Linear(c.dim, c.token_dim)
        self.from_tokens = nn.Linear(c.token_dim, c.decoder_dim)
        self.memory_pos = nn.Parameter(torch.zeros(1, c.tokens_per_frame, c.decoder_dim))
        self.decoder = GridDecoder(c.image_size, c.patch_size, c.decoder_dim, c.decoder_depth,
                                   c.decoder_heads)
        init_weights(self)
        if c.feature_extractor == "hf":
            self.encoder.load_weights()  # init_weights must not overwrite the pretrained model

    @property
    def token_dim(self) -> int:
        return self.config.token_dim

    def num_tokens(self, num_frames: int, height: int, width: int) -> int:
        self.check_size(height, width)
        return num_frames * self.config.tokens_per_frame

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, T * tokens_per_frame, token_dim)."""
        B, T, H, W = self.check_video(video)
        x = self.encoder(rearrange(video, "b c t h w -> (b t) c h w"))  # (B T, S, dim)
        c = self.config
        if c.pool == "grid":
            x = rearrange(x, "n (h w) d -> n d h w", h=c.grid)
            x = rearrange(F.adaptive_avg_pool2d(x, c.pool_size), "n d h w -> n (h w) d")
        elif c.pool == "queries":
            x = self.pooler(x)  # (B T, K, dim)
        return rearrange(self.to_tokens(x), "(b t) s c -> b (t s) c", b=B)

    def decode(self, tokens: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B, T * tokens_per_frame, token_dim) -> (B, 3, T, H, W)."""
        per_frame = self.config.tokens_per_frame
        if tokens.ndim != 3 or tokens.shape[-1] != self.token_dim or tokens.shape[1] % per_frame:
            raise ValueError(f"expected tokens (B, T * {per_frame}, {self.token_dim}), got "
                             f"{tuple(tokens.shape)}")
        T = tokens.shape[1] // per_frame
        if num_frames is not None and num_frames != T:
            raise ValueError(f"{tokens.shape[1]} tokens hold {T} frames, not {num_frames}")
        memory = self.from_tokens(rearrange(tokens, "b (t s) c -> (b t) s c", s=per_frame)) + self.memory_pos
        frames = self.decoder(memory)  # (B T, 3, H, W)
        return rearrange(frames, "(b t) c h w -> b c t h w", t=T)

    def token_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        c = self.config
        self.check_size(height, width)
        s = c.tokens_per_frame
        if c.pool == "queries":
            yx = torch.full((s, 2), -1.0)  # a learned query has no fixed place
        else:
            yx = grid_positions(c.grid if c.pool == "none" else c.pool_size)
        time = torch.arange(num_frames).repeat_interleave(s)
        t = time.float() / max(1, num_frames - 1)
        return TokenLayout(
            groups=("frame",),
            group=torch.zeros(num_frames * s, dtype=torch.long),
            time=time,
            position=torch.cat([t[:, None], yx.repeat(num_frames, 1)], dim=1),
        )


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def frames_tiny(**overrides) -> FramesTokenizer:
    """For tests: 32x32 frames, 16 tokens a frame."""
    defaults = dict(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, token_dim=8,
                    decoder_dim=32, decoder_depth=1, decoder_heads=2)
    return FramesTokenizer(FramesConfig(**{**defaults, **overrides}))


def frames_base(**overrides) -> FramesTokenizer:
    """The built-in default's size, 64x64 frames, pooled to 5 tokens a frame: 80 tokens for 16 frames,
    within 2% of vtok_base's 79, for comparisons at an equal budget."""
    defaults = dict(pool="queries", pool_size=5)
    return FramesTokenizer(FramesConfig(**{**defaults, **overrides}))


def frames_base_full(**overrides) -> FramesTokenizer:
    """Unpooled: all 64 patch tokens of every 64x64 frame (T x 64)."""
    return FramesTokenizer(FramesConfig(**overrides))

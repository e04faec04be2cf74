"""Projectors: video-tokenizer tokens -> the LLM's embedding space.

    projector = build_projector(ProjectorConfig(type="mlp2x_gelu", in_dim=tokenizer.token_dim,
                                                out_dim=hidden_size))
    layout = tokenizer.token_layout(T, H, W)
    embeds = projector(tokenizer.encode(video), layout)          # (B, N, D) -> (B, M, hidden_size)
    embeds.shape[1] == projector.num_outputs(layout.num_tokens)   # M: N, or a fixed budget / num_queries

The kinds (`PROJECTORS`, or any "mlp{N}x_gelu"):
    linear       one Linear, token by token                                          M = N
    mlp{N}x_gelu LLaVA's idiom: Linear(in, out), then N - 1 times [GELU, Linear(out, out)];
                 mlp1x_gelu is `linear`                                              M = N
    pool         mlp2x_gelu around adaptive average pooling along the token axis:
                 Linear, pool N -> budget, GELU, Linear                              M = budget
    resampler    K learned queries cross-attend to the (projected) tokens, `depth`
                 pre-norm layers of cross-attention + MLP (perceiver / Q-former)     M = num_queries
    embedding    for discrete tokenizers: a table of codebook_size vectors           M = N

Structure (`embed_layout=True`): the LLM must tell a key-frame token from a residual one, frame 3
from frame 30, the top-left patch from the bottom-right. Each token gets, in the projector's working
space of width out_dim (right after the first Linear, or the embedding lookup), the sum of
    a group embedding (TokenLayout.group), a time embedding (TokenLayout.time + 1, so "spans frames"
    (-1) has its own row 0), and a Linear of its (t, y, x) position, with a learned vector per
    coordinate standing in where that coordinate is undefined (-1).
All of it starts at zero, so an untrained projector equals the plain one (embed_layout=False)
with the same weights; the state dicts differ only by the `structure.*` keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmvid.video_tokenizers.base import TokenLayout
from mmvid.video_tokenizers.layers import QueryBlock, init_weights, rename_block_keys

MLP_PATTERN = re.compile(r"mlp(\d+)x_gelu")  # "mlp{N}x_gelu": N Linear layers with GELUs between


def _describe(x) -> str:
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


# ----------------------------------------------------------------------------------------------
# Structure embedding
# ----------------------------------------------------------------------------------------------


class StructureEmbedding(nn.Module):
    """Group + time + position of each token of a TokenLayout: (N,) layout -> (N, dim).

    Zero-initialised (see `initialize_weights`), so adding it changes nothing until trained.
    """

    def __init__(self, dim: int, max_groups: int, max_frames: int):
        super().__init__()
        self.max_groups, self.max_frames = max_groups, max_frames
        self.group = nn.Embedding(max_groups, dim)
        self.time = nn.Embedding(max_frames + 1, dim)  # row 0: spans frames (time -1)
        self.position = nn.Linear(3, dim)  # (t, y, x) in [0, 1]
        self.undefined = nn.Parameter(torch.empty(3, dim))  # stands in for a coordinate that is -1
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Zero: an untrained projector must equal the plain one, so adding structure to a trained
        # (or LLaVA-initialised) projector does not disturb it; the gradients are still non-zero.
        for p in (self.group.weight, self.time.weight, self.position.weight, self.position.bias,
                  self.undefined):
            nn.init.zeros_(p)

    def check(self, layout: TokenLayout) -> None:
        """ValueError when the layout does not fit the tables (checked before any device copy)."""
        if len(layout.groups) > self.max_groups:
            raise ValueError(f"layout has {len(layout.groups)} groups {list(layout.groups)} but max_groups "
                             f"is {self.max_groups}; raise ProjectorConfig.max_groups")
        if layout.num_tokens == 0:
            return
        if int(layout.group.min()) < 0 or int(layout.group.max()) >= len(layout.groups):
            raise ValueError(f"layout.group must index layout.groups (0..{len(layout.groups) - 1}), "
                             f"got values in [{int(layout.group.min())}, {int(layout.group.max())}]")
        if int(layout.time.min()) < -1:
            raise ValueError("layout.time must be a frame index or -1 (spans frames), got "
                             f"{int(layout.time.min())}")
        if int(layout.time.max()) >= self.max_frames:
            raise ValueError(f"layout has frame index {int(layout.time.max())} but max_frames is "
                             f"{self.max_frames}; raise ProjectorConfig.max_frames")
        position = layout.position.float()
        if not bool(((position >= 0) & (position <= 1) | (position == -1)).all()):
            raise ValueError("layout.position must be in [0, 1], or -1 where undefined, "
                             f"got values in [{float(position.min()):g}, {float(position.max()):g}]")

    def forward(self, layout: TokenLayout) -> torch.Tensor:
        device, dtype = self.position.weight.device, self.position.weight.dtype
        group = layout.group.to(device=device, dtype=torch.long)
        time = layout.time.to(device=device, dtype=torch.long)
        position = layout.position.to(device=device, dtype=dtype)  # (N, 3)
        undefined = position == -1  # (N, 3)
        defined = self.position(position.masked_fill(undefined, 0.0))  # (N, dim)
        missing = undefined.to(dtype) @ self.undefined  # (N, 3) @ (3, dim) -> (N, dim)
        return self.group(group) + self.time(time + 1) + defined + missing


# ----------------------------------------------------------------------------------------------
# Projectors
# ----------------------------------------------------------------------------------------------


class Projector(nn.Module):
    """Base class: input checks and the optional structure embedding.

    forward(tokens, layout): float (B, N, in_dim), or long (B, N) ids for `discrete` projectors,
    -> (B, num_outputs(N), out_dim). `layout` may be None only when embed_layout=False.
    """

    discrete: bool = False  # True: the input is codebook ids, not features

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.structure = None
        if config.embed_layout:
            self.structure = StructureEmbedding(config.out_dim, config.max_groups, config.max_frames)
        # A LayerNorm on the output puts video embeddings at the text embeddings' scale (VideoLLM.build
        # sets its gain to their std); without it a trained projector drifted to ~17x their norm.
        self.output_norm = nn.LayerNorm(config.out_dim) if config.output_norm else None

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        """The output norm, when configured: (B, M, out_dim) -> (B, M, out_dim)."""
        return h if self.output_norm is None else self.output_norm(h)

    def num_outputs(self, num_tokens: int) -> int:
        """M, the number of LLM embeddings for an input of N tokens."""
        return num_tokens

    def add_structure(self, h: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        """h (B, N, out_dim) + the structure embedding of the layout (broadcast over the batch)."""
        if self.structure is None:
            return h
        return h + self.structure(layout).to(h.dtype)[None]  # (1, N, out_dim)

    def check_inputs(self, tokens: torch.Tensor, layout: TokenLayout | None) -> None:
        name, c = type(self).__name__, self.config
        is_tensor = isinstance(tokens, torch.Tensor)
        if self.discrete:
            if (not is_tensor or tokens.is_floating_point() or tokens.is_complex()
                or tokens.dtype == torch.bool):
                raise ValueError(f"{name} expects long token ids (B, N), got {_describe(tokens)}")
            if tokens.ndim != 2:
                raise ValueError(
                    f"{name} expects token ids of rank 2 (B, N), got shape {tuple(tokens.shape)}")
        else:
            if not is_tensor or not tokens.is_floating_point():
                hint = "; discrete tokenizers need type='embedding'" if is_tensor else ""
                raise ValueError(f"{name} expects float tokens (B, N, {c.in_dim}), got "
                                 f"{_describe(tokens)}{hint}")
            if tokens.ndim != 3:
                raise ValueError(f"{name} expects tokens of rank 3 (B, N, {c.in_dim}), got shape "
                                 f"{tuple(tokens.shape)}")
            if tokens.shape[-1] != c.in_dim:
                raise ValueError(f"{name} expects {c.in_dim} channels per token (in_dim), "
                                 f"got {tokens.shape[-1]} (shape {tuple(tokens.shape)})")
        N = tokens.shape[1]
        if N == 0:
            raise ValueError(f"{name} needs at least one token, got shape {tuple(tokens.shape)}")
        if layout is None:
            if self.structure is not None:
                raise ValueError("embed_layout=True needs the TokenLayout: "
                                 "projector(tokens, tokenizer.token_layout(T, H, W))")
            return
        if layout.num_tokens != N or layout.time.numel() != N or tuple(layout.position.shape) != (N, 3):
            raise ValueError(f"layout describes {layout.num_tokens} tokens (time "
                             f"{tuple(layout.time.shape)}, position {tuple(layout.position.shape)}) but the "
                             f"input has N = {N} (shape {tuple(tokens.shape)}); expected group ({N},), "
                             f"time ({N},), position ({N}, 3)")
        if self.structure is not None:
            self.structure.check(layout)


class MLPProjector(Projector):
    """`linear` and `mlp{N}x_gelu`: token by token, structure added after the first Linear.

    The layers sit in one nn.Sequential named `mlp`, so the weights are laid out as LLaVA's
    `mm_projector` (mlp.0, mlp.2, ...). PyTorch's default Linear init, as LLaVA.
    """

    def __init__(self, config: ProjectorConfig, num_layers: int):
        super().__init__(config)
        layers = [nn.Linear(config.in_dim, config.out_dim)]
        for _ in range(num_layers - 1):
            layers += [nn.GELU(), nn.Linear(config.out_dim, config.out_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        self.check_inputs(tokens, layout)
        h = self.add_structure(self.mlp[0](tokens), layout)  # (B, N, out_dim)
        return self.finish(self.mlp[1:](h))


class PoolProjector(Projector):
    """A fixed budget of M tokens: Linear, + structure, adaptive average pooling along the token
    axis, GELU, Linear (mlp2x_gelu with pooling after its first, linear, layer, so it equals
    pooling the inputs then mlp2x_gelu when embed_layout=False).

    Output token i averages the contiguous chunk [floor(i N / M), ceil((i + 1) N / M)) of the input
    tokens in layout order, so chunks may straddle a group or frame boundary; their structure
    embeddings are averaged with them. Always M tokens, whatever N, so the LLM's sequence length is
    fixed: for N < M chunks are single tokens and some repeat.
    """

    def __init__(self, config: ProjectorConfig):
        super().__init__(config)
        D = config.out_dim
        self.mlp = nn.Sequential(nn.Linear(config.in_dim, D), nn.GELU(), nn.Linear(D, D))

    def num_outputs(self, num_tokens: int) -> int:
        return self.config.budget

    def forward(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        self.check_inputs(tokens, layout)
        h = self.add_structure(self.mlp[0](tokens), layout)  # (B, N, out_dim)
        h = F.adaptive_avg_pool1d(rearrange(h, "b n d -> b d n"), self.config.budget)  # (B, out_dim, M)
        return self.finish(self.mlp[1:](rearrange(h, "b d m -> b m d")))  # (B, M, out_dim)


# The resampler's blocks were a class of their own (`CrossAttentionBlock`: norm_q, norm_kv, attn, norm2,
# mlp) until they became the block library's QueryBlock without self-attention; same computation and
# parameter order, new names. Old projector weights are renamed as they load.
_OLD_BLOCK_NAMES = {"norm_kv": "norm_context", "attn": "cross_attn", "norm2": "norm_mlp"}


def _upgrade_block_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    rename_block_keys(state_dict, prefix, _OLD_BLOCK_NAMES)


class ResamplerProjector(Projector):
    """K learned queries read the tokens (perceiver resampler / Q-former): Linear(in, out) + structure
    as the context, `depth` cross-attention blocks of width out_dim, LayerNorm, Linear(out, out).

    Attention is order-blind, so with embed_layout=False the queries cannot tell where a token is.
    """

    def __init__(self, config: ProjectorConfig):
        super().__init__(config)
        D = config.out_dim
        self.input = nn.Linear(config.in_dim, D)
        self.queries = nn.Parameter(torch.zeros(1, config.num_queries, D))
        self.blocks = nn.ModuleList([QueryBlock(D, config.num_heads, self_attention=False)
                                     for _ in range(config.depth)])
        self.norm = nn.LayerNorm(D)
        self.output = nn.Linear(D, D)
        self.initialize_weights()
        self.register_load_state_dict_pre_hook(_upgrade_block_keys)  # old resampler weights load too

    def initialize_weights(self) -> None:
        # ViT-style: truncated-normal (0.02) Linears, zero biases, unit LayerNorms; the queries also
        # start at 0.02 so they differ from step one. The structure embedding stays zero.
        init_weights(self)
        if self.structure is not None:
            self.structure.initialize_weights()

    def num_outputs(self, num_tokens: int) -> int:
        return self.config.num_queries

    def forward(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        self.check_inputs(tokens, layout)
        context = self.add_structure(self.input(tokens), layout)  # (B, N, D)
        q = self.queries.expand(tokens.shape[0], -1, -1).to(context.dtype)  # (B, K, D)
        for block in self.blocks:
            q = block(q, context)
        return self.finish(self.output(self.norm(q)))  # (B, K, out_dim)


class EmbeddingProjector(Projector):
    """Discrete tokenizers: codebook ids (B, N) -> a learned vector each (+ structure), (B, N, out_dim).

    The table starts at N(0, 0.02), the scale of an LLM's own input embeddings (HF initializer_range).
    """

    discrete = True

    def __init__(self, config: ProjectorConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.codebook_size, config.out_dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def check_inputs(self, tokens: torch.Tensor, layout: TokenLayout | None) -> None:
        super().check_inputs(tokens, layout)
        size = self.config.codebook_size
        if layout is not None and layout.codebook_size is not None and layout.codebook_size != size:
            raise ValueError(f"layout has codebook_size {layout.codebook_size} but the projector has {size}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= size:
            raise ValueError(f"token ids must be in [0, {size}) (codebook_size {size}), got ids in [{low}, "
                             f"{high}]")

    def forward(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        self.check_inputs(tokens, layout)
        return self.finish(self.add_structure(self.embed(tokens.long()), layout))  # (B, N, out_dim)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


class UnknownProjectorError(KeyError, ValueError):
    """An unknown projector type: a KeyError like every registry's, and a ValueError like every other
    bad config field (as numpy's AxisError is both ValueError and IndexError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would show the repr, quotes and all


@dataclass
class ProjectorConfig:
    type: str = "mlp2x_gelu"  # a key of PROJECTORS, or any "mlp{N}x_gelu" with N >= 1
    in_dim: int = 32  # channels of each token (continuous tokenizers); ignored for "embedding"
    out_dim: int = 64  # the LLM's hidden size
    num_queries: int = 32  # "resampler": output tokens K
    budget: int = 32  # "pool": output tokens M
    depth: int = 2  # "resampler": cross-attention blocks
    num_heads: int = 4  # "resampler": attention heads (must divide out_dim)
    codebook_size: int | None = None  # "embedding": number of codebook ids (required there, only there)
    embed_layout: bool = True  # add the group / time / position embeddings of the TokenLayout
    max_frames: int = 1024  # frames the time embedding can tell apart (layout.time < max_frames)
    max_groups: int = 8  # token groups the group embedding can tell apart
    output_norm: bool = False  # a LayerNorm on the output (video embeddings at the text embeddings' scale)

    def __post_init__(self):
        projector_builder(self.type)  # UnknownProjectorError (a KeyError and a ValueError)
        for name in ("out_dim", "num_queries", "budget", "depth", "num_heads", "max_frames", "max_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.type != "embedding" and self.in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {self.in_dim}")
        if self.type == "embedding" and (self.codebook_size is None or self.codebook_size < 1):
            raise ValueError("type='embedding' needs codebook_size >= 1 (the tokenizer's codebook_size), "
                             f"got {self.codebook_size}")
        if self.type != "embedding" and self.codebook_size is not None:
            raise ValueError(f"codebook_size is only used by type='embedding' (discrete tokens), "
                             f"got type={self.type!r}")
        if self.type == "resampler" and self.out_dim % self.num_heads:
            raise ValueError(f"resampler: out_dim {self.out_dim} is not divisible by num_heads "
                             f"{self.num_heads}")


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def linear(config: ProjectorConfig) -> Projector:
    return MLPProjector(config, num_layers=1)


def mlp2x_gelu(config: ProjectorConfig) -> Projector:
    return MLPProjector(config, num_layers=2)


def pool(config: ProjectorConfig) -> Projector:
    return PoolProjector(config)


def resampler(config: ProjectorConfig) -> Projector:
    return ResamplerProjector(config)


def embedding(config: ProjectorConfig) -> Projector:
    return EmbeddingProjector(config)


PROJECTORS: dict[str, Callable[[ProjectorConfig], Projector]] = {
    "linear": linear,
    "mlp2x_gelu": mlp2x_gelu,
    "pool": pool,
    "resampler": resampler,
    "embedding": embedding,
}


def projector_builder(name: str) -> Callable[[ProjectorConfig], Projector]:
    """The preset function for a type name; any "mlp{N}x_gelu" (N >= 1) works, not only mlp2x_gelu."""
    if name in PROJECTORS:
        return PROJECTORS[name]
    match = MLP_PATTERN.fullmatch(name) if isinstance(name, str) else None
    if match and int(match.group(1)) >= 1:
        return lambda config: MLPProjector(config, num_layers=int(match.group(1)))
    raise UnknownProjectorError(
        f"unknown projector {name!r}; known: {sorted(PROJECTORS)} (or mlp{{N}}x_gelu)")


def build_projector(config: ProjectorConfig) -> Projector:
    """The projector a config names. Raises KeyError for an unknown type."""
    return projector_builder(config.type)(config)

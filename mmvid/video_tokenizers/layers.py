"""The transformer blocks of mmvid's video tokenizers and projectors: one `Attention`, one `MLP`, and
the blocks built from them (`Block`: self-attention; `QueryBlock`: queries reading a context), the ViT
frame encoder, attention pooling and the grid decoder. CoordTok, SweetTok, VTok, the frames baseline
and the resampler projector all use these; the options (biases, causal, LayerNorm eps) are what their
papers' code needs.

One mask convention everywhere: `key_padding_mask` is bool (B, M), True = padding (that key is
ignored), as in nn.MultiheadAttention. Attention goes through `F.scaled_dot_product_attention`,
which picks flash or memory-efficient kernels on GPU and a plain implementation on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None. The bias switches serve CoordTok's
    released code: timm's ViT blocks (qkv_bias) and nn.MultiheadAttention(bias=False)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """x (B, N, D) attends to context (B, M, D) (default x). key_padding_mask: bool (B, M), True =
        padding. causal: query n sees keys <= n only (self-attention, no mask)."""
        context = x if context is None else context
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.num_heads)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # SDPA: True = keep
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, h, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm's ViT block): self-attention (optionally causal), then MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 causal: bool = False):
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_padding_mask=key_padding_mask, causal=self.causal)
        return x + self.mlp(self.norm2(x))


class QueryBlock(nn.Module):
    """Queries read a context: pre-norm cross-attention, then (optionally) self-attention among the
    queries, then an MLP. (B, K, D) queries, (B, M, D) context -> (B, K, D).

    Args:
        self_attention: add the self-attention step (several queries that should see each other).
        context_norm: LayerNorm the context on its own (SweetTok); False reads it as given (CoordTok's
            cross-self encoder, whose memory is the ViT's normalised output plus positions).
        bias: biases in the attention projections (False: CoordTok's nn.MultiheadAttention(bias=False)).
        eps: the LayerNorms' epsilon (CoordTok's cross-self encoder: 1e-6).
    """

    def __init__(self, dim: int, num_heads: int, self_attention: bool = True, context_norm: bool = True,
                 bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_context = nn.LayerNorm(dim, eps=eps) if context_norm else None
        self.cross_attn = Attention(dim, num_heads, qkv_bias=bias, proj_bias=bias)
        self.norm_self = nn.LayerNorm(dim, eps=eps) if self_attention else None
        self.self_attn = Attention(dim, num_heads, qkv_bias=bias, proj_bias=bias) if self_attention else None
        self.norm_mlp = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, q: torch.Tensor, context: torch.Tensor,
                context_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """context_padding_mask: bool (B, M), True = padding."""
        if self.norm_context is not None:
            context = self.norm_context(context)
        q = q + self.cross_attn(self.norm_q(q), context, key_padding_mask=context_padding_mask)
        if self.self_attn is not None:
            q = q + self.self_attn(self.norm_self(q))
        return q + self.mlp(self.norm_mlp(q))


class ViT(nn.Module):
    """A frame encoder: patchify, learned positions, transformer blocks, final norm.

    (B, 3, H, W) -> (B, S, dim) with S = (H / patch_size) * (W / patch_size).
    """

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.grid = image_size // patch_size
        self.patch = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.patch(x), "b d h w -> b (h w) d") + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class AttentionPool(nn.Module):
    """K learned queries cross-attend to a set of features, then an MLP: (B, S, dim) -> (B, K, out)."""

    def __init__(self, dim: int, num_queries: int, num_heads: int, out: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm_out = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 4 * dim, out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = self.queries.expand(features.shape[0], -1, -1)
        x = q + self.attn(self.norm_q(q), self.norm_kv(features))
        return self.mlp(self.norm_out(x))


DECODER_HEADS = ("linear", "conv")


class GridDecoder(nn.Module):
    """Renders one frame from a few memory tokens (TiTok-style): learned patch-grid queries and the
    memory run through joint self-attention; the grid outputs become pixel patches.

    (B, M, dim) memory -> (B, 3, H, W) in roughly [-1, 1]. `grid_inputs` (B, grid*grid, dim), when
    given, are added to the queries: content already laid out on the patch grid (each query starts
    from its own cell's token instead of having to find it among the memory by attention).

    `head`: "linear" maps each grid output to its p x p pixel patch (ViT/TiTok style). "conv" adds
    `ConvRefiner`: the grid outputs as a feature map, upsampled by convolutions to full size, added to the
    linear patches. A linear head draws each patch from one vector, so small objects come out as blobs;
    the convolutions draw edges across patch borders (issue 20: the analyzer reads shapes from them).
    """

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int,
                 head: str = "linear"):
        super().__init__()
        if head not in DECODER_HEADS:
            raise ValueError(f"unknown decoder head {head!r}; known: {list(DECODER_HEADS)}")
        self.grid, self.patch_size = image_size // patch_size, patch_size
        self.queries = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3 * patch_size * patch_size)
        self.refine = ConvRefiner(dim, patch_size) if head == "conv" else None

    def forward(self, memory: torch.Tensor, grid_inputs: torch.Tensor | None = None) -> torch.Tensor:
        n = self.grid * self.grid
        queries = self.queries.expand(memory.shape[0], -1, -1)
        if grid_inputs is not None:
            queries = queries + grid_inputs
        x = torch.cat([queries, memory], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x[:, :n])
        patches = self.head(x)  # (B, S, 3 p p)
        image = rearrange(patches, "b (h w) (c p q) -> b c (h p) (w q)", h=self.grid, p=self.patch_size,
                          q=self.patch_size)
        if self.refine is not None:
            image = image + self.refine(rearrange(x, "b (h w) d -> b d h w", h=self.grid))
        return image


class ConvRefiner(nn.Module):
    """(B, dim, g, g) grid features -> (B, 3, g p, g p): log2(p) stages of 2x nearest upsampling and two
    3x3 convolutions (a residual pair), halving the channels from min(dim, 64) down to 16; the last 3x3
    convolution starts at zero, so a decoder given this head draws exactly what its linear head drew until
    it learns otherwise."""

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        stages = int(round(math.log2(patch_size)))
        if 2**stages != patch_size:
            raise ValueError(f"the conv decoder head needs a power-of-two patch_size, got {patch_size}")
        width = min(dim, 64)
        self.inp = nn.Conv2d(dim, width, 1)
        self.stages = nn.ModuleList()
        for _ in range(stages):
            out = max(16, width // 2)
            self.stages.append(nn.ModuleDict({
                "up": nn.Conv2d(width, out, 3, padding=1),
                "a": nn.Conv2d(out, out, 3, padding=1),
                "b": nn.Conv2d(out, out, 3, padding=1),
            }))
            width = out
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for stage in self.stages:
            x = F.gelu(stage["up"](F.interpolate(x, scale_factor=2, mode="nearest")))
            x = x + stage["b"](F.gelu(stage["a"](x)))
        return self.out(F.gelu(x))


def rename_block_keys(state_dict: dict, prefix: str, renames: dict[str, str]) -> dict:
    """Rename, in place, `{prefix}blocks.N.<old>.*` keys to `{prefix}blocks.N.<new>.*` (`renames`: old ->
    new submodule name), for weights saved before a model's blocks became this library's; other keys
    pass untouched. Returns the dict. Meant for a `register_load_state_dict_pre_hook`, whose `prefix` is
    the module's own (e.g. "video_tokenizer." inside a VideoLLM)."""
    head = prefix + "blocks."
    for key in [k for k in state_dict if k.startswith(head)]:
        index, name, *rest = key[len(head):].split(".", 2)
        if name in renames and rest:
            state_dict[f"{head}{index}.{renames[name]}.{rest[0]}"] = state_dict.pop(key)
    return state_dict


def grid_positions(grid: int) -> torch.Tensor:
    """(grid*grid, 2) cell centres (y, x) in [0, 1], row-major."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=1)


def init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated-normal linear and conv weights, zero biases, unit LayerNorms;
    learned queries and positions start at std 0.02 so they are distinct from step one."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith(("queries", "pos")) and p.dim() == 3:
            nn.init.trunc_normal_(p, std=0.02)
    for m in module.modules():
        if isinstance(m, ConvRefiner):
            m.reset_parameters()

"""CoordTok (arXiv 2411.14762, CVPR 2025): a video clip becomes a factorized triplane of continuous
tokens, and the decoder rebuilds any patch from its (t, x, y) coordinate. Training decodes only a few
random patches per video, so its cost stays flat as videos get longer.

    video (B, 3, T, H, W)
      -> Conv3d patches (pt x P x P) + learned positions + ViT blocks        features e (B, T/pt * (H/P)^2, D)
    learned planes xy (C, H', W'), yt (C, T', W'), xt (C, T', H')
      -> Conv2d patchify into query tokens (4 per plane in the paper's configs)
      -> cross-attention to e, self-attention, MLP (x depth)
      -> one linear head per plane, unpatchified                             z_xy, z_yt, z_xt
    tokens = [ z_xy | z_yt | z_xt ]: H'W' + T'W' + T'H' tokens of C channels (1280 x 8 for CoordTok-L)

    decode, for each queried patch (t, x, y):
      h = concat( xy(x, y), yt(t, y), xt(t, x) )   bilinear lookups, (3C,)
      u = Linear(h) + table[t, x, y]              a learned position table over the clip's patch grid
      u = transformer blocks over *all* queried patches jointly
      patch = Linear(LayerNorm(u))                3 x pt_d x p x p pixels

Names follow the paper's code: **x is the row (height) axis and y the column (width) axis**; planes are
indexed xy[x, y], yt[t, y], xt[t, x]. (The TokenLayout below speaks image language instead: its
position is (t, y, x) with y = row, x = column.)

Coordinates (align-corners style, as the released code): decoder patch indices (t, x, y) in the clip's
patch grid (T/pt_d, H/p, W/p) map to t / (T/pt_d - 1), ... in [0, 1], and a plane with n rows is read
at c * (n - 1), bilinearly between its neighbouring rows (the upper one clamped at n - 1). In the
paper's main config x and y land on plane grid points; only t (128 frames onto 32 rows) interpolates.
The position table is indexed by the integer patch indices directly (the released code round-trips
them through floats).

Token order of `encode` (fixed): all z_xy tokens (row-major: x rows, then y columns), then z_yt
(t-major, then y), then z_xt (t-major, then x). `planes(tokens)` undoes it.

Clip length: a model is built for clips of `num_frames` frames (the decoder's position table spans
them). A shorter video is a padded clip: its missing frames are never encoded (that equals masking
them out of every attention with a boolean mask) and never decoded; per-video lengths in one batch go
through `encode(..., num_valid_frames=)`. Longer videos raise ValueError.

Training (stage 1: random patches; stage 2: whole random frames) is `objectives.coordtok_training_loss`.

Deviations from the released code (see the brief, §5; the losses' in `objectives`):
- Padding masks are boolean (True = padding, as everywhere in `layers`). The released code passes a
  float 0/1 `key_padding_mask` to nn.MultiheadAttention, which *adds* 1 to padded keys' logits instead
  of masking them (a bug), and it marks a partially real temporal patch (`n_frames // 8`) as padding;
  here it counts as real.
- Chunked decoding (`chunk_size`) is a *different model input*: attention then sees only the patches
  of one chunk, not the whole video as in training's random sets and the paper's evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmvid.video_tokenizers.base import TokenLayout, VideoTokenizer
from mmvid.video_tokenizers.layers import Block, QueryBlock, rename_block_keys

PLANES = ("xy", "yt", "xt")  # token order of encode()


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def sample_plane(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup, align-corners style: plane (B, C, R, S), coordinates (B, M) in [0, 1] along
    its rows and columns -> (B, M, C). Equals F.grid_sample(plane, grid, align_corners=True) with
    grid (x, y) = (2 cols - 1, 2 rows - 1)."""
    B, C, R, S = plane.shape
    r = rows.to(plane.dtype) * (R - 1)
    s = cols.to(plane.dtype) * (S - 1)
    r0 = r.floor().clamp(0, R - 1)
    s0 = s.floor().clamp(0, S - 1)
    wr, ws = (r - r0)[..., None], (s - s0)[..., None]  # (B, M, 1)
    r0, s0 = r0.long(), s0.long()
    r1, s1 = (r0 + 1).clamp(max=R - 1), (s0 + 1).clamp(max=S - 1)
    flat = rearrange(plane, "b c r s -> b (r s) c")

    def at(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:  # (B, M) indices -> (B, M, C)
        return torch.gather(flat, 1, (i * S + j)[..., None].expand(-1, -1, C))

    top = at(r0, s0) * (1 - ws) + at(r0, s1) * ws
    bottom = at(r1, s0) * (1 - ws) + at(r1, s1) * ws
    return top * (1 - wr) + bottom * wr


# Before issue 18 the cross-self blocks had their own class, with LayerNorms named norm1 / norm2 / norm3.
_LEGACY_NORMS = {"norm1": "norm_q", "norm2": "norm_self", "norm3": "norm_mlp"}


def upgrade_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """Rename, in place, the keys of CoordTok weights saved before issue 18 (cross-self blocks'
    `norm1/2/3` -> `norm_q/norm_self/norm_mlp` of layers.QueryBlock); newer keys pass untouched.
    `prefix`: the CoordTok's own (e.g. "video_tokenizer." inside a VideoLLM). Returns the dict."""
    return rename_block_keys(state_dict, prefix, _LEGACY_NORMS)


def _upgrade_on_load(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    upgrade_state_dict(state_dict, prefix)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class CoordTokConfig:
    """Defaults are the paper's main model, CoordTok-L: 128 frames at 128x128 -> 1280 tokens of 8."""

    image_size: int = 128  # frames are image_size x image_size pixels
    num_frames: int = 128  # clip length the model is built for; shorter videos are padded clips
    patch_size: int = 16  # encoder Conv3d patch, pixels
    temporal_patch_size: int = 8  # encoder Conv3d patch, frames
    dim: int = 1024  # encoder width (ViT and cross-self encoder)
    vit_depth: int = 8  # ViT blocks over the video patches ("Transformer Encoder")
    depth: int = 24  # cross-self blocks ("Cross-self Encoder")
    num_heads: int = 16
    plane_channels: int = 8  # channels of every token
    plane_size: int = 16  # H' = W': z_xy is H' x W'; the spatial side of z_yt (W') and z_xt (H')
    plane_frames: int = 32  # T': the temporal side of z_yt and z_xt
    plane_patch_size: int = 8  # plane patchify into query tokens, spatial side
    plane_temporal_patch_size: int = 16  # plane patchify into query tokens, temporal side
    decoder_dim: int = 1024
    decoder_depth: int = 24
    decoder_heads: int = 16
    decoder_patch_size: int = 8  # pixels of each decoded patch's side
    decoder_temporal_patch_size: int = 1  # frames of each decoded patch
    chunk_size: int = 0  # decode: patches per decoder sequence; 0 = all of the video in one (the paper)

    def __post_init__(self):
        def multiple(a: str, b: str) -> None:
            if getattr(self, a) % getattr(self, b):
                raise ValueError(f"{a} {getattr(self, a)} must be a multiple of {b} {getattr(self, b)}")

        for a, b in (("image_size", "patch_size"), ("image_size", "decoder_patch_size"),
                     ("num_frames", "temporal_patch_size"), ("num_frames", "decoder_temporal_patch_size"),
                     ("plane_size", "plane_patch_size"), ("plane_frames", "plane_temporal_patch_size"),
                     ("dim", "num_heads"), ("decoder_dim", "decoder_heads")):
            multiple(a, b)
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {self.chunk_size}")

    @property
    def encoder_grid(self) -> tuple[int, int, int]:
        """Encoder patches of a full clip along (t, x, y)."""
        s = self.image_size // self.patch_size
        return self.num_frames // self.temporal_patch_size, s, s

    @property
    def decoder_grid(self) -> tuple[int, int, int]:
        """Decoder patches of a full clip along (t, x, y)."""
        s = self.image_size // self.decoder_patch_size
        return self.num_frames // self.decoder_temporal_patch_size, s, s

    @property
    def plane_shapes(self) -> dict[str, tuple[int, int]]:
        """(rows, columns) of each plane."""
        return {"xy": (self.plane_size, self.plane_size), "yt": (self.plane_frames, self.plane_size),
                "xt": (self.plane_frames, self.plane_size)}

    @property
    def plane_patches(self) -> dict[str, tuple[int, int]]:
        """(rows, columns) of each plane's patchify kernel."""
        s, t = self.plane_patch_size, self.plane_temporal_patch_size
        return {"xy": (s, s), "yt": (t, s), "xt": (t, s)}

    @property
    def num_plane_tokens(self) -> int:
        return sum(r * c for r, c in self.plane_shapes.values())


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class CoordTok(VideoTokenizer):
    architecture = "coordtok"
    decoder_prefixes = ("decoder_embed", "decoder_pos", "decoder_blocks", "decoder_norm", "decoder_head")
    config_class = CoordTokConfig

    def __init__(self, config: CoordTokConfig):
        super().__init__(config)
        c = config
        D, C = c.dim, c.plane_channels
        Tq, Hq, Wq = c.encoder_grid
        # Encoder, part A: the video's patches through a ViT ("ViT3D").
        self.patch_embed = nn.Conv3d(3, D, kernel_size=(c.temporal_patch_size, c.patch_size, c.patch_size),
                                     stride=(c.temporal_patch_size, c.patch_size, c.patch_size))
        self.cls_token = nn.Parameter(torch.empty(1, 1, D))
        self.pos_embed = nn.Parameter(torch.empty(1, Tq, Hq * Wq, D))
        self.vit_blocks = nn.ModuleList([Block(D, c.num_heads, qkv_bias=False) for _ in range(c.vit_depth)])
        self.vit_norm = nn.LayerNorm(D)
        self.cross_pos_embed = nn.Parameter(torch.empty(1, Tq, Hq * Wq, D))  # added to the features as memory
        # Encoder, part B: learned query planes, patchified, cross/self-attending to the features.
        self.query_planes = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(1, C, *c.plane_shapes[n])) for n in PLANES})
        self.plane_patchify = nn.ModuleDict({n: nn.Conv2d(C, D, kernel_size=c.plane_patches[n],
                                                          stride=c.plane_patches[n])
                                             for n in PLANES})
        # cross-attention to the (un-normalised) features, self-attention, MLP; no attention biases
        self.blocks = nn.ModuleList([QueryBlock(D, c.num_heads, context_norm=False, bias=False, eps=1e-6)
                                     for _ in range(c.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.plane_heads = nn.ModuleDict({n: nn.Linear(D, math.prod(c.plane_patches[n]) * C) for n in PLANES})
        # Decoder.
        Dd = c.decoder_dim
        self.decoder_embed = nn.Linear(3 * C, Dd)
        self.decoder_pos = nn.Parameter(torch.empty(*c.decoder_grid, Dd))  # (T/pt_d, H/p, W/p, Dd)
        self.decoder_blocks = nn.ModuleList(
            [Block(Dd, c.decoder_heads, qkv_bias=True) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(Dd)
        self.decoder_head = nn.Linear(Dd, 3 * c.decoder_temporal_patch_size * c.decoder_patch_size ** 2)
        self.initialize_weights()
        self.register_load_state_dict_pre_hook(_upgrade_on_load)  # every load_state_dict reads old keys too

    def initialize_weights(self) -> None:
        """The released code's init: PyTorch's defaults (what timm's Block and nn.MultiheadAttention get)
        except the tables below, which are much larger than ViT's usual std 0.02."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.LayerNorm)):
                m.reset_parameters()
        for block in self.blocks:  # nn.MultiheadAttention: xavier-uniform over its stacked (3D, D) in_proj
            for attn in (block.cross_attn, block.self_attn):
                bound = math.sqrt(6 / (4 * self.config.dim))
                nn.init.uniform_(attn.q.weight, -bound, bound)
                nn.init.uniform_(attn.kv.weight, -bound, bound)
        # std 1 (torch.randn): the ViT's class token and both position tables, and the query planes.
        for p in (self.cls_token, self.pos_embed, self.cross_pos_embed, *self.query_planes.values()):
            nn.init.normal_(p, std=1.0)
        # The decoder's (t, x, y) table: randn * D^-0.5.
        nn.init.normal_(self.decoder_pos, std=self.config.decoder_dim ** -0.5)

    @property
    def token_dim(self) -> int:
        return self.config.plane_channels

    @property
    def clip_frames(self) -> int:
        return self.config.num_frames

    @property
    def max_frames(self) -> int:
        return self.config.num_frames  # shorter clips are padded to it; longer ones do not fit the planes

    # -- checks and layout -------------------------------------------------------------------------

    def check_frames(self, num_frames: int) -> None:
        c = self.config
        if not 1 <= num_frames <= c.num_frames:
            raise ValueError(f"CoordTok is built for clips of at most {c.num_frames} frames (shorter ones "
                             f"are padded), got {num_frames}; build it with num_frames={num_frames} or cut "
                             "the video")
        if num_frames % c.decoder_temporal_patch_size:
            raise ValueError(f"num_frames {num_frames} must be a multiple of decoder_temporal_patch_size "
                             f"{c.decoder_temporal_patch_size}")

    def num_tokens(self, num_frames: int, height: int, width: int) -> int:
        """Fixed for any clip up to `num_frames` frames: H'W' + 2 T'H' (1280 for CoordTok-L)."""
        self.check_size(height, width)
        self.check_frames(num_frames)
        return self.config.num_plane_tokens

    def token_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        """Groups ("xy", "yt", "xt") in encode's order. Positions (t, y, x) are in image terms: y, x the
        fraction of the height / width at which a plane row / column is read (decoder patch centres,
        e.g. (i + 0.5) / 16 for the paper's 16 x 16 planes), -1 for the axis a plane lacks.

        time: -1 for xy tokens (they span every frame). A yt / xt row i is read exactly (weight 1) at
        clip frame f_i = i / (T' - 1) * (clip patches - 1) (x the decoder's temporal patch, at its
        centre), and bilinearly by frames up to one row spacing away; its `time` is round(f_i) and
        t = f_i / (T - 1), not an integer frame in general (f_i = 4.1 i for CoordTok-L). For a video
        shorter than the clip, rows past its last frame that some real frame still reads get the last
        frame (time T - 1, t = 1); rows no real frame reads describe padding: time -1, t -1.
        """
        c = self.config
        self.check_size(height, width)
        self.check_frames(num_frames)
        # (H',) row / column fractions
        side = self._axis_fraction(c.plane_size, c.image_size, c.decoder_patch_size)
        frames = self._row_frames(num_frames)  # (T',) frame index, -1 for padding rows
        t = torch.where(frames >= 0,
                        self._row_frame_positions().clamp(max=num_frames - 1) / max(1, num_frames - 1),
                        torch.tensor(-1.0, dtype=torch.float64)).float()
        S, T_ = c.plane_size, c.plane_frames
        none_s, none_t = torch.full((S,), -1.0), torch.full((T_,), -1.0)
        xy = torch.stack(
            [none_s[:, None].expand(S, S), side[:, None].expand(S, S), side[None, :].expand(S, S)], -1)
        yt = torch.stack(
            [t[:, None].expand(T_, S), none_t[:, None].expand(T_, S), side[None, :].expand(T_, S)], -1)
        xt = torch.stack(
            [t[:, None].expand(T_, S), side[None, :].expand(T_, S), none_t[:, None].expand(T_, S)], -1)
        row_time = frames[:, None].expand(T_, S).reshape(-1)
        return TokenLayout(
            groups=PLANES,
            group=torch.tensor([0] * S * S + [1] * T_ * S + [2] * T_ * S),
            time=torch.cat([torch.full((S * S,), -1, dtype=torch.long), row_time, row_time]),
            position=torch.cat([xy.reshape(-1, 3), yt.reshape(-1, 3), xt.reshape(-1, 3)]),
        )

    @staticmethod
    def _axis_fraction(plane: int, size: int, patch: int) -> torch.Tensor:
        """Plane index j -> the image fraction it is read at: coordinate j / (n - 1) spans the decoder
        patch centres, patch / 2 .. size - patch / 2."""
        coordinate = torch.arange(plane, dtype=torch.float64) / max(1, plane - 1)
        return ((patch / 2 + coordinate * (size - patch)) / size).float()

    def _row_frame_positions(self) -> torch.Tensor:
        """(T',) float64: the clip frame each temporal plane row is read at exactly."""
        c = self.config
        pt, n = c.decoder_temporal_patch_size, c.decoder_grid[0]
        coordinate = torch.arange(c.plane_frames, dtype=torch.float64) / max(1, c.plane_frames - 1)
        return coordinate * (n - 1) * pt + (pt - 1) / 2

    def _row_frames(self, num_frames: int) -> torch.Tensor:
        """(T',) long: each temporal row's frame in a video of `num_frames`, -1 where no real frame reads
        it."""
        c = self.config
        pt = c.decoder_temporal_patch_size
        f = self._row_frame_positions()
        spacing = (c.decoder_grid[0] - 1) * pt / max(1, c.plane_frames - 1)  # frames between rows
        last = num_frames - 1 - (pt - 1) / 2  # the last real temporal patch's centre
        read = f < last + spacing - 1e-9
        return torch.where(read, f.round().clamp(max=num_frames - 1),
                           torch.tensor(-1.0, dtype=torch.float64)).long()

    # -- encode ------------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor, num_valid_frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, T, H, W), T <= num_frames -> tokens (B, H'W' + T'W' + T'H', plane_channels).

        num_valid_frames: optional long (B,), the real frames of each video when a batch holds padded
        videos (the frames after them are ignored); default all T.
        """
        B, T, H, W = self.check_video(video)
        self.check_frames(T)
        c = self.config
        pt = c.temporal_patch_size
        Tq = math.ceil(T / pt)  # temporal patches holding any frame; those past them are never computed
        if Tq * pt != T:  # complete the last temporal patch with black frames
            video = F.pad(video, (0, 0, 0, 0, 0, Tq * pt - T), value=-1.0)
        x = rearrange(self.patch_embed(video), "b d t h w -> b t (h w) d") + self.pos_embed[:, :Tq]
        x = rearrange(x, "b t s d -> b (t s) d")  # (B, Tq S, D)
        padding = self._padding_mask(num_valid_frames, B, T, Tq, x.shape[1] // Tq, video.device)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        # the class token is real
        vit_padding = None if padding is None else F.pad(padding, (1, 0), value=False)
        for block in self.vit_blocks:
            x = block(x, vit_padding)
        memory = self.vit_norm(x)[:, 1:] + rearrange(self.cross_pos_embed[:, :Tq], "o t s d -> o (t s) d")

        queries = torch.cat([rearrange(self.plane_patchify[n](self.query_planes[n]), "o d r s -> o (r s) d")
                             for n in PLANES], dim=1).expand(B, -1, -1)  # (B, queries, D)
        for block in self.blocks:
            queries = block(queries, memory, padding)
        queries = self.norm(queries)

        tokens, start = [], 0
        for n in PLANES:
            (rows, cols), (kr, kc) = c.plane_shapes[n], c.plane_patches[n]
            count = (rows // kr) * (cols // kc)
            z = self.plane_heads[n](queries[:, start:start + count])  # (B, count, kr kc C)
            tokens.append(rearrange(z, "b (gr gc) (kr kc c) -> b (gr kr gc kc) c", gr=rows // kr, kr=kr,
                                    kc=kc))
            start += count
        return torch.cat(tokens, dim=1)

    def _padding_mask(self, num_valid_frames: torch.Tensor | None, B: int, T: int, Tq: int, S: int,
                      device: torch.device) -> torch.Tensor | None:
        """bool (B, Tq S), True for encoder patches of padded frames; None when every frame is real."""
        if num_valid_frames is None:
            return None
        valid = torch.as_tensor(num_valid_frames, device=device).long()
        if valid.shape != (B,) or int(valid.min()) < 1 or int(valid.max()) > T:
            raise ValueError(f"num_valid_frames must be (B,) = ({B},) with values in [1, {T}], "
                             f"got {valid.tolist()}")
        # partial = real
        real_patches = (valid + self.config.temporal_patch_size - 1) // self.config.temporal_patch_size
        padded = torch.arange(Tq, device=device)[None, :] >= real_patches[:, None]  # (B, Tq)
        return padded.repeat_interleave(S, dim=1)

    def planes(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens (B, N, C) -> {"xy": (B, C, H', W'), "yt": (B, C, T', W'), "xt": (B, C, T', H')}."""
        c = self.config
        if tokens.ndim != 3 or tokens.shape[1:] != (c.num_plane_tokens, c.plane_channels):
            raise ValueError(f"expected tokens (B, {c.num_plane_tokens}, {c.plane_channels}), got "
                             f"{tuple(tokens.shape)}")
        out, start = {}, 0
        for n in PLANES:
            rows, cols = c.plane_shapes[n]
            out[n] = rearrange(tokens[:, start:start + rows * cols], "b (r s) c -> b c r s", r=rows)
            start += rows * cols
        return out

    # -- decode ------------------------------------------------------------------------------------

    def decode_patches(self, tokens: torch.Tensor, coords: torch.Tensor,
                       key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Render the queried patches, attending over all of them jointly.

        Args:
            tokens: (B, N, C) from encode.
            coords: long (B, M, 3), decoder patch indices (t, x, y) in the clip's grid (T/pt_d, H/p, W/p).
            key_padding_mask: optional bool (B, M), True for padded queries (others do not attend to them).
        Returns:
            (B, M, 3, pt_d, p, p) pixels.
        """
        c = self.config
        planes = self.planes(tokens)
        grid = c.decoder_grid
        if (coords.ndim != 3 or coords.shape[0] != tokens.shape[0] or coords.shape[2] != 3
            or coords.is_floating_point()):
            raise ValueError(f"expected integer coords (B, M, 3) = ({tokens.shape[0]}, M, 3) of (t, x, y) "
                             f"patch indices, got {coords.dtype} {tuple(coords.shape)}")
        limit = torch.tensor(grid, device=coords.device)
        if bool((coords < 0).any()) or bool((coords >= limit).any()):
            raise ValueError(f"coords must lie in the clip's patch grid (t, x, y) < {grid}")
        t, x, y = coords.unbind(-1)  # (B, M) each
        ct, cx, cy = (i.to(tokens.dtype) / max(1, n - 1) for i, n in zip((t, x, y), grid))  # in [0, 1]
        h = torch.cat([sample_plane(planes["xy"], cx, cy), sample_plane(planes["yt"], ct, cy),
                       sample_plane(planes["xt"], ct, cx)], dim=-1)  # (B, M, 3C): concatenated, not summed
        u = self.decoder_embed(h) + self.decoder_pos[t, x, y]  # (B, M, Dd)
        for block in self.decoder_blocks:
            u = block(u, key_padding_mask)
        patches = self.decoder_head(self.decoder_norm(u))  # (B, M, pt p p 3)
        return rearrange(patches, "b m (pt p q c) -> b m c pt p q", pt=c.decoder_temporal_patch_size,
                         p=c.decoder_patch_size, c=3)

    def patch_coordinates(self, num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
        """All decoder patches of the first `num_frames` frames, long (M, 3) of (t, x, y), t-major then
        x (rows) then y (columns): the order `decode` reassembles."""
        c = self.config
        _, rows, cols = c.decoder_grid
        axes = [torch.arange(n, device=device) for n in (num_frames // c.decoder_temporal_patch_size, rows,
                                                         cols)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def decode(self, tokens: torch.Tensor, num_frames: int | None = None,
               chunk_size: int | None = None) -> torch.Tensor:
        """Tokens (B, N, C) -> video (B, 3, T, H, W), T = num_frames (default the clip's).

        Every patch of the T frames is decoded in one decoder sequence (as the paper evaluates), or,
        with `chunk_size` (argument, else config.chunk_size; 0 = off), in consecutive chunks of that
        many patches in t, x, y order. Chunking bounds memory but changes the model's input: attention
        sees only its chunk, so outputs differ from (and are usually worse than) one sequence.
        """
        c = self.config
        T = c.num_frames if num_frames is None else num_frames
        self.check_frames(T)
        B = tokens.shape[0]
        coords = self.patch_coordinates(T, tokens.device)[None].expand(B, -1, -1)  # (B, M, 3)
        chunk = c.chunk_size if chunk_size is None else chunk_size
        if chunk < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk}")
        if chunk:
            patches = torch.cat([self.decode_patches(tokens, coords[:, i:i + chunk])
                                 for i in range(0, coords.shape[1], chunk)], dim=1)
        else:
            patches = self.decode_patches(tokens, coords)
        _, rows, _ = c.decoder_grid
        return rearrange(patches, "b (t h w) c pt p q -> b c (t pt) (h p) (w q)",
                         t=T // c.decoder_temporal_patch_size, h=rows)


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def coordtok_tiny(**overrides) -> CoordTok:
    """For tests: 128-frame clips at 32x32 (shorter videos are padded), tiny widths; 144 tokens."""
    defaults = dict(image_size=32, patch_size=16, dim=32, vit_depth=1, depth=1, num_heads=2, plane_size=4,
                    plane_frames=16, plane_patch_size=2, plane_temporal_patch_size=8, decoder_dim=32,
                    decoder_depth=1, decoder_heads=2)
    return CoordTok(CoordTokConfig(**{**defaults, **overrides}))


def coordtok_base(**overrides) -> CoordTok:
    """CPU-sized, at the built-in world's 64x64: 128-frame clips, 8 x 8 + 2 x 32 x 8 = 576 tokens."""
    defaults = dict(image_size=64, dim=128, vit_depth=2, depth=2, num_heads=4, plane_size=8, plane_frames=32,
                    plane_patch_size=4, decoder_dim=128, decoder_depth=2, decoder_heads=4)
    return CoordTok(CoordTokConfig(**{**defaults, **overrides}))


def coordtok_s(**overrides) -> CoordTok:
    """The paper's S (Table 5): 8 ViT / 8 cross-self / 8 decoder layers, width 512, 8 heads; 1280 tokens."""
    defaults = dict(dim=512, vit_depth=8, depth=8, num_heads=8, decoder_dim=512, decoder_depth=8,
                    decoder_heads=8)
    return CoordTok(CoordTokConfig(**{**defaults, **overrides}))


def coordtok_b(**overrides) -> CoordTok:
    """The paper's B (Table 5): 8 / 12 / 12 layers, width 768, 12 heads; 1280 tokens."""
    defaults = dict(dim=768, vit_depth=8, depth=12, num_heads=12, decoder_dim=768, decoder_depth=12,
                    decoder_heads=12)
    return CoordTok(CoordTokConfig(**{**defaults, **overrides}))


def coordtok_l(**overrides) -> CoordTok:
    """The paper's main model (Table 5): 8 / 24 / 24 layers, width 1024, 16 heads; 128 frames at
    128x128 -> 16 x 16 + 32 x 16 + 32 x 16 = 1280 tokens of 8 channels."""
    return CoordTok(CoordTokConfig(**overrides))


def coordtok_l_3072(**overrides) -> CoordTok:
    """App. D's 3072-token variant: CoordTok-L with every plane 32 x 32 (patchified 16 x 16)."""
    defaults = dict(plane_size=32, plane_frames=32, plane_patch_size=16, plane_temporal_patch_size=16)
    return CoordTok(CoordTokConfig(**{**defaults, **overrides}))

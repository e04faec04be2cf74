"""VTok (arXiv 2602.04202): a key frame's spatial tokens plus one residual token per later frame.

    tokens = [ key-frame tokens (S, optionally pooled to g x g) | r_t for each later frame t ]
    r_t = g(F(x_t) - F(x_key))          F: the shared per-frame feature extractor
                                        g: attention pooling with one learned query, then an MLP
                                           (or global average pooling, then an MLP)

so a video costs S + ceil((T - 1) / k) tokens instead of T x S (k: the optional temporal stride).

The decoder makes VTok a true autoencoder: frame t is rendered from the key-frame tokens and r_t
(a grid decoder). With `decoder_input="aligned"` (the default) each key-frame token is added to
the decoder query of its own grid cell (upsampled when key_pool pools them) and r_t is the memory;
with "memory" (TiTok-style) all of them are memory tokens that the learned queries must find by
attention. Measured on the synthetic world: "memory" learns only the background colour in 45 CPU
minutes (no object survives reconstruction), while "aligned" draws the objects as blobs in their
places after 2.5 minutes.
The key frame itself decodes with g(0), its residual to itself; with a stride k, frames between
residual tokens use the linear interpolation of their neighbours' tokens.

F is a ViT trained from scratch by default, or a frozen Hugging Face vision model (CLIP/SigLIP)
loaded from a local path (`feature_extractor="hf"`), as the paper uses a frozen CLIP-L/336 (S = 576).
Deviation from the paper: the paper decodes with a diffusion video model (HunyuanVideo); here a
small grid decoder trained with MSE stands in, so VTok reconstructs and generates on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmvid.video_tokenizers.base import TokenLayout, VideoTokenizer
from mmvid.video_tokenizers.features import CLIP_MEAN, CLIP_STD, FEATURE_EXTRACTORS, HFFeatures
from mmvid.video_tokenizers.layers import (
    DECODER_HEADS,
    MLP,
    AttentionPool,
    GridDecoder,
    ViT,
    grid_positions,
    init_weights,
)

KEY_FRAMES = ("first", "middle", "max_change")
RESIDUAL_POOLS = ("attention", "mean")
DECODER_INPUTS = ("aligned", "memory")


@dataclass
class VTokConfig:
    image_size: int = 64  # frames are image_size x image_size pixels
    patch_size: int = 8  # of the ViT feature extractor, and of the decoder's pixel patches
    dim: int = 128  # feature width (the HF model's hidden size when feature_extractor="hf")
    depth: int = 3
    num_heads: int = 4
    token_dim: int = 32  # channels of each output token
    key_frame: str = "first"  # "first", "middle" or "max_change" (the frame after the largest feature jump)
    key_pool: int = 0  # 0 keeps all S key-frame tokens; g pools them to a g x g grid
    residual_pool: str = "attention"  # "attention" (one learned query) or "mean" (global average)
    temporal_stride: int = 1  # one residual token per k frames
    decoder_dim: int = 128
    decoder_depth: int = 3
    decoder_heads: int = 4
    # key tokens added to their grid cell's query, or "memory" (found by attention)
    decoder_input: str = "aligned"
    # "linear" (a p x p patch per grid output) or "conv" (+ convolutions that upsample the grid: sharp shapes)
    decoder_head: str = "linear"
    feature_extractor: str = "vit"  # "vit" (trained from scratch) or "hf" (a frozen HF vision model)
    hf_path: str | None = None  # local folder of the HF vision model (its weights load from there)
    hf_config: dict | None = None  # its config (model_type + fields); filled in from hf_path when built
    hf_image_mean: tuple[float, ...] = CLIP_MEAN
    hf_image_std: tuple[float, ...] = CLIP_STD
    freeze_features: bool = True  # for "hf": keep the vision model frozen, as the paper does

    def __post_init__(self):
        if self.key_frame not in KEY_FRAMES:
            raise ValueError(f"unknown key_frame {self.key_frame!r}; known: {list(KEY_FRAMES)}")
        if self.residual_pool not in RESIDUAL_POOLS:
            raise ValueError(f"unknown residual_pool {self.residual_pool!r}; known: {list(RESIDUAL_POOLS)}")
        if self.decoder_head not in DECODER_HEADS:
            raise ValueError(f"unknown decoder_head {self.decoder_head!r}; known: {list(DECODER_HEADS)}")
        if self.decoder_input not in DECODER_INPUTS:
            raise ValueError(f"unknown decoder_input {self.decoder_input!r}; known: {list(DECODER_INPUTS)}")
        if self.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"unknown feature_extractor {self.feature_extractor!r}; known: "
                             f"{list(FEATURE_EXTRACTORS)}")
        if self.feature_extractor == "hf" and not (self.hf_path or self.hf_config):
            raise ValueError("feature_extractor='hf' needs hf_path (a local model folder) or hf_config")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size "
                             f"{self.patch_size}")
        if self.temporal_stride < 1:
            raise ValueError(f"temporal_stride must be >= 1, got {self.temporal_stride}")
        if not 0 <= self.key_pool <= self.grid:
            raise ValueError(f"key_pool must be in [0, {self.grid}], got {self.key_pool}")
        self.hf_image_mean, self.hf_image_std = tuple(self.hf_image_mean), tuple(self.hf_image_std)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def key_tokens(self) -> int:
        return (self.key_pool or self.grid) ** 2


class VTok(VideoTokenizer):
    architecture = "vtok"
    decoder_prefixes = ("from_key", "from_residual", "key_pos", "group_embed", "decoder")
    decoder_config_fields = ("decoder_dim", "decoder_depth", "decoder_heads", "decoder_input", "decoder_head")
    config_class = VTokConfig
    min_frames = 2

    def __init__(self, config: VTokConfig):
        super().__init__(config)
        c = config
        if c.feature_extractor == "hf":
            self.features = HFFeatures(c)
            c.dim = self.features.hidden_size
        else:
            self.features = ViT(c.image_size, c.patch_size, c.dim, c.depth, c.num_heads)
        self.to_tokens = nn.Linear(c.dim, c.token_dim)
        self.residual_pos = nn.Parameter(torch.zeros(1, c.grid * c.grid, c.dim))  # where the change happened
        if c.residual_pool == "attention":
            self.residual = AttentionPool(c.dim, 1, c.num_heads, c.token_dim)
        else:
            self.residual = MLP(c.dim, 4 * c.dim, c.token_dim)
        self.from_key = nn.Linear(c.token_dim, c.decoder_dim)
        self.from_residual = nn.Linear(c.token_dim, c.decoder_dim)
        self.key_pos = nn.Parameter(torch.zeros(1, c.key_tokens, c.decoder_dim))
        self.group_embed = nn.Parameter(torch.zeros(1, 2, c.decoder_dim))  # key, residual
        self.decoder = GridDecoder(c.image_size, c.patch_size, c.decoder_dim, c.decoder_depth,
                                   c.decoder_heads, head=c.decoder_head)
        init_weights(self)
        if c.feature_extractor == "hf":
            self.features.load_weights()  # init_weights must not overwrite the pretrained model

    @property
    def token_dim(self) -> int:
        return self.config.token_dim

    @property
    def decode_state(self) -> tuple[str, ...]:
        # the key frame is the content's
        return ("key_index",) if self.config.key_frame == "max_change" else ()

    def encode_with_state(self, video: torch.Tensor) -> tuple[torch.Tensor, dict]:
        tokens, keys = self.encode(video, return_key_index=True)
        return tokens, ({"key_index": keys} if self.decode_state else {})

    # -- layout ------------------------------------------------------------------------------------

    def num_tokens(self, num_frames: int, height: int, width: int) -> int:
        self.check_size(height, width)
        return self.config.key_tokens + math.ceil((num_frames - 1) / self.config.temporal_stride)

    def key_index(self, num_frames: int) -> int:
        """The key frame for "first" and "middle" (content decides for "max_change")."""
        return 0 if self.config.key_frame != "middle" else (num_frames - 1) // 2

    def residual_frames(self, num_frames: int, key: int) -> list[int]:
        """Frames that get a residual token: all but the key, every k-th."""
        return [t for t in range(num_frames) if t != key][:: self.config.temporal_stride]

    def token_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        c = self.config
        self.check_size(height, width)
        key = self.key_index(num_frames)
        residual = self.residual_frames(num_frames, key)
        scale = max(1, num_frames - 1)
        key_yx = grid_positions(c.key_pool or c.grid)
        key_time = -1 if c.key_frame == "max_change" else key  # content-dependent key frame
        time = torch.tensor([key_time] * c.key_tokens + residual)
        t = torch.where(time >= 0, time.float() / scale, torch.full_like(time, -1.0, dtype=torch.float))
        yx = torch.cat([key_yx, torch.full((len(residual), 2), -1.0)])
        return TokenLayout(
            groups=("key", "residual"),
            group=torch.tensor([0] * c.key_tokens + [1] * len(residual)),
            time=time,
            position=torch.cat([t[:, None], yx], dim=1),
        )

    # -- encode ------------------------------------------------------------------------------------

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """F on every frame: (B, 3, T, H, W) -> (B, T, S, dim)."""
        B = video.shape[0]
        return rearrange(self.features(rearrange(video, "b c t h w -> (b t) c h w")), "(b t) s d -> b t s d",
                         b=B)

    def encode(self, video: torch.Tensor, return_key_index: bool = False):
        """(B, 3, T, H, W) -> (B, S' + ceil((T - 1) / k), token_dim); with `return_key_index`,
        also the key frame of each video, long (B,) (needed to decode "max_change")."""
        B, T, H, W = self.check_video(video)
        feats = self.frame_features(video)  # (B, T, S, dim)
        if self.config.key_frame == "max_change":
            jumps = (feats[:, 1:] - feats[:, :-1]).pow(2).mean((2, 3))  # (B, T - 1)
            keys = jumps.argmax(1) + 1  # the frame after the largest change
        else:
            keys = torch.full((B,), self.key_index(T), dtype=torch.long, device=video.device)
        key_feats = feats[torch.arange(B), keys]  # (B, S, dim)
        key_tokens = self.to_tokens(self._pool_key(key_feats))  # (B, S', token_dim)
        frames = torch.stack(
            [torch.tensor(self.residual_frames(T, int(k)), device=video.device) for k in keys])
        # (B, R, S, dim)
        later = torch.gather(feats, 1, frames[:, :, None, None].expand(-1, -1, *feats.shape[2:]))
        residual = self._residual(rearrange(later - key_feats[:, None], "b r s d -> (b r) s d"))
        tokens = torch.cat([key_tokens, rearrange(residual, "(b r) c -> b r c", b=B)], dim=1)
        return (tokens, keys) if return_key_index else tokens

    def _pool_key(self, key_feats: torch.Tensor) -> torch.Tensor:
        g = self.config.key_pool
        if not g:
            return key_feats
        x = rearrange(key_feats, "b (h w) d -> b d h w", h=self.config.grid)
        return rearrange(F.adaptive_avg_pool2d(x, g), "b d h w -> b (h w) d")

    def _residual(self, diff: torch.Tensor) -> torch.Tensor:
        """g: (N, S, dim) feature differences -> (N, token_dim)."""
        if self.config.residual_pool == "attention":
            return self.residual(diff + self.residual_pos)[:, 0]
        return self.residual(diff.mean(1))

    # -- decode ------------------------------------------------------------------------------------

    def decode(self, tokens: torch.Tensor, num_frames: int | None = None,
               key_index: torch.Tensor | None = None, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S' + R, token_dim) -> (B, 3, T, H, W). `num_frames` is needed when temporal_stride > 1
        (R residual tokens then stand for several lengths); `key_index` for key_frame="max_change".
        `frames` (long, (F,)): draw only these frames, (B, 3, F, H, W) (each frame is drawn on its own,
        so a training step can spend its compute on more videos: `decode_frames` in the trainer)."""
        c = self.config
        S = c.key_tokens
        if tokens.ndim != 3 or tokens.shape[-1] != c.token_dim or tokens.shape[1] <= S:
            raise ValueError(f"expected tokens (B, {S} + R, {c.token_dim}) with R >= 1, got "
                             f"{tuple(tokens.shape)}")
        B, R = tokens.shape[0], tokens.shape[1] - S
        if num_frames is None:
            if c.temporal_stride != 1:
                raise ValueError("decode needs num_frames when temporal_stride > 1")
            num_frames = R + 1
        if math.ceil((num_frames - 1) / c.temporal_stride) != R:
            raise ValueError(f"{R} residual tokens do not fit {num_frames} frames at temporal_stride "
                             f"{c.temporal_stride}")
        if c.key_frame == "max_change":
            if key_index is None:
                raise ValueError("key_frame='max_change' decodes with the key_index that encode(..., "
                                 "return_key_index=True) returned")
            keys = key_index.tolist()
        else:
            keys = [self.key_index(num_frames)] * B
        key_tokens, residual = tokens[:, :S], tokens[:, S:]
        # g(0): the residual of the key frame to itself.
        zero = self._residual(torch.zeros(1, c.grid * c.grid, c.dim, device=tokens.device,
                                          dtype=tokens.dtype))
        # (B, T, C)
        per_frame = torch.stack([self._spread(residual[b], zero[0], keys[b], num_frames) for b in range(B)])
        if frames is not None:
            frames = torch.as_tensor(frames, dtype=torch.long, device=tokens.device)
            if frames.ndim != 1 or not len(frames) or not 0 <= int(frames.min()) <= int(frames.max()) \
                    < num_frames:
                raise ValueError(f"frames must be indices in [0, {num_frames}), got {frames.tolist()}")
            per_frame = per_frame[:, frames]
        memory_key = self.from_key(key_tokens) + self.key_pos + self.group_embed[:, :1]  # (B, S, Dd)
        memory_res = self.from_residual(per_frame) + self.group_embed[:, 1:]  # (B, T, Dd)
        if c.decoder_input == "aligned":
            on_grid = self._unpool_key(memory_key)  # (B, grid*grid, Dd)
            on_grid = on_grid[:, None].expand(-1, per_frame.shape[1], -1, -1)
            frames = self.decoder(rearrange(memory_res, "b t d -> (b t) 1 d"),
                                  grid_inputs=rearrange(on_grid, "b t s d -> (b t) s d"))
        else:
            memory = torch.cat([
                memory_key[:, None].expand(-1, per_frame.shape[1], -1, -1),  # (B, T, S, Dd)
                memory_res[:, :, None],  # (B, T, 1, Dd)
            ], dim=2)
            frames = self.decoder(rearrange(memory, "b t m d -> (b t) m d"))  # (B T, 3, H, W)
        return rearrange(frames, "(b t) c h w -> b c t h w", b=B)

    def _unpool_key(self, key: torch.Tensor) -> torch.Tensor:
        """(B, S', D) key tokens on their g x g grid -> (B, grid*grid, D) on the decoder's grid."""
        g, grid = self.config.key_pool or self.config.grid, self.config.grid
        if g == grid:
            return key
        x = rearrange(key, "b (h w) d -> b d h w", h=g)
        return rearrange(F.interpolate(x, size=(grid, grid), mode="nearest"), "b d h w -> b (h w) d")

    def _spread(self, residual: torch.Tensor, zero: torch.Tensor, key: int, num_frames: int) -> torch.Tensor:
        """Per-frame residual vectors (T, C): the key gets g(0), frames with a token get theirs, the
        frames between get the linear interpolation of their neighbours (constant past the last)."""
        times = [key] + self.residual_frames(num_frames, key)
        values = torch.cat([zero[None], residual])  # (R + 1, C), in the order of `times`
        order = sorted(range(len(times)), key=times.__getitem__)
        times = torch.tensor([times[i] for i in order], dtype=torch.float32, device=residual.device)
        values = values[order]
        t = torch.arange(num_frames, dtype=torch.float32, device=residual.device)
        right = torch.searchsorted(times, t).clamp(1, len(times) - 1)
        left = right - 1
        span = (times[right] - times[left]).clamp(min=1e-6)
        w = ((t - times[left]) / span).clamp(0.0, 1.0)[:, None].to(values.dtype)
        out = (1 - w) * values[left] + w * values[right]
        exact = torch.isin(t, times)
        if exact.any():  # frames with their own token (or the key) use it exactly
            idx = torch.searchsorted(times, t[exact])
            out[exact] = values[idx]
        return out


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def vtok_tiny(**overrides) -> VTok:
    """For tests: 32x32 frames, 16 key-frame tokens."""
    defaults = dict(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, token_dim=8,
                    decoder_dim=32, decoder_depth=1, decoder_heads=2)
    return VTok(VTokConfig(**{**defaults, **overrides}))


def vtok_base(**overrides) -> VTok:
    """The built-in default's size: 64x64 frames, 64 key-frame tokens + T - 1 residuals (79 for 16 frames)."""
    return VTok(VTokConfig(**overrides))


CLIP_L336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                 num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                 projection_dim=768, hidden_act="quick_gelu")


def vtok_clip_l336(**overrides) -> VTok:
    """The paper's layout: a frozen CLIP-L/336 (S = 24 x 24 = 576), T - 1 residual tokens.

    Pass hf_path= a local CLIP-L/336 folder to load its weights; without it the vision model is built
    from its config (for token and parameter counts, e.g. under torch.device("meta"))."""
    defaults = dict(image_size=336, patch_size=14, num_heads=16, token_dim=1024, decoder_dim=512,
                    decoder_depth=8, decoder_heads=8, feature_extractor="hf", hf_config=dict(CLIP_L336))
    return VTok(VTokConfig(**{**defaults, **overrides}))

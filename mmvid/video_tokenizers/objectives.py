"""Training objectives of the video tokenizers, apart from their architectures: a tokenizer has
encode / decode, and what it is trained to minimise lives here.

    from mmvid.video_tokenizers.objectives import training_loss
    loss, parts = training_loss(tokenizer, video, perceptual, perceptual_weight)   # what the trainer calls

`OBJECTIVES` maps an architecture to its objective: a settings dataclass and a loss function. An
architecture without an entry (frames, VTok) trains on reconstruction: MSE (+ perceptual) of
decode(encode(video)), `losses.reconstruction_loss`.

The settings ride on the tokenizer as `tokenizer.objective` (None: the defaults). `build_video_tokenizer`
and `load_video_tokenizer` route objective fields among their overrides there (so a training config's
`model_overrides={stage: 2}` works), `save_pretrained` writes them beside the architecture's config
("objective" in config.json), and `split_objective` moves them out of configs saved before they were
split from the architectures' (mmvid before issue 18 kept them in CoordTokConfig and SweetTokConfig).

CoordTok (deviations from the released code): MSE is averaged over videos (the code sums per-video
means over the local batch; AdamW hardly cares). The perceptual term is mmvid's VGG16 feature distance
(`losses.PerceptualLoss`, averaged over frames), not taming's LPIPS summed over the 16 frames: set
perceptual_weight=16 to give it the released code's weight relative to MSE. The released code also
marks a partially real temporal patch as padding; here it counts as real (see `CoordTok.encode`).

SweetTok: end to end on pixels, pixel_weight x MSE + vq_weight x (codebook + beta x commitment)
[+ usage_weight x usage] [+ perceptual_weight x perceptual] [+ proxy_weight x cross-entropy on proxy
codes]. The paper's stage 1 regresses the codes of a frozen OmniTokenizer instead; the hook stays:
build with `proxy_codebook_size=K` and give targets (`set_proxy_targets(tokenizer, fn)`, fn: video ->
long codes (B, 1 + L, G), or `proxy_targets=`); `pixel_weight=0` then gives that stage.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmvid.video_tokenizers.losses import reconstruction_loss

log = logging.getLogger(__name__)

STAGES = (1, 2)  # CoordTok's training stages


# ----------------------------------------------------------------------------------------------
# CoordTok: random patches (stage 1), whole random frames (stage 2)
# ----------------------------------------------------------------------------------------------


@dataclass
class CoordTokObjective:
    stage: int = 1  # 1: random patches, MSE; 2: whole random frames, MSE + perceptual
    sample_fraction: float = 0.03125  # stage 1: patches per video, a fraction of the clip's (1024 of 32768)
    stage2_frames: int = 16  # stage 2: whole frames per video

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {self.stage}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if self.stage2_frames < 1:
            raise ValueError(f"stage2_frames must be >= 1, got {self.stage2_frames}")

    def num_samples(self, config) -> int:
        """Stage 1's patches per video for a CoordTokConfig (1024 for CoordTok-L)."""
        return max(1, round(self.sample_fraction * math.prod(config.decoder_grid)))


def sample_coordinates(num_valid: torch.Tensor, grid: tuple[int, int], num_samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 1's random patches: `num_samples` (t, x, y) patch indices per video, drawn independently
    and with replacement (as the paper's code), t only among the video's real temporal positions.

    Args:
        num_valid: long (B,), real temporal patch positions per video (frames when the decoder's
            temporal patch is 1 frame); each >= 1.
        grid: (rows, columns) of the decoder's patch grid, (H / p, W / p).
        num_samples: patches per video.
        generator: a CPU generator (default: the global RNG, which training checkpoints save).
    Returns:
        long (B, num_samples, 3) on the CPU.
    """
    num_valid = num_valid.detach().to("cpu", torch.long)
    if num_valid.ndim != 1 or int(num_valid.min()) < 1:
        raise ValueError(f"num_valid must be (B,) with every entry >= 1, got {num_valid.tolist()}")
    B = num_valid.shape[0]
    u = torch.rand(B, num_samples, generator=generator, dtype=torch.float64)
    t = (u * num_valid[:, None]).long().clamp(max=num_valid[:, None] - 1)  # uniform over 0 .. valid - 1
    x = torch.randint(0, grid[0], (B, num_samples), generator=generator)
    y = torch.randint(0, grid[1], (B, num_samples), generator=generator)
    return torch.stack([t, x, y], dim=-1)


def sample_frames(num_valid: torch.Tensor, count: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 2's random frames: `count` distinct real temporal positions per video, long (B, count)."""
    num_valid = num_valid.detach().to("cpu", torch.long)
    if count > int(num_valid.min()):
        raise ValueError(f"cannot draw {count} distinct frames from videos with {num_valid.tolist()} "
                         f"real ones")
    return torch.stack([torch.randperm(int(n), generator=generator)[:count] for n in num_valid])


def patches_of(video: torch.Tensor, coords: torch.Tensor, temporal_patch: int, patch: int) -> torch.Tensor:
    """The target pixels of decoder patches: video (B, 3, T, H, W), coords long (B, M, 3) ->
    (B, M, 3, pt, p, p)."""
    grid = rearrange(video, "b c (t pt) (h p) (w q) -> b t h w c pt p q", pt=temporal_patch, p=patch, q=patch)
    b = torch.arange(video.shape[0], device=video.device)[:, None]
    t, x, y = coords.to(video.device).unbind(-1)
    return grid[b, t, x, y]


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def coordtok_training_loss(
    model,
    video: torch.Tensor,
    stage: int | None = None,
    num_valid_frames: torch.Tensor | None = None,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CoordTok's objective for one batch; returns the loss and its parts for logging.

    Stage 1 (the objective's stage, or `stage`): `num_samples` random patches per video (3.125 % of
    the clip's, with replacement, real frames only), MSE. Stage 2: `stage2_frames` distinct random
    real frames per video, decoded whole (their patches in one sequence), MSE + perceptual_weight x
    the perceptual loss; MSE only (with a warning) when no perceptual module is given.

    Args:
        model: a CoordTok (its settings: `objective_of(model)`).
        video: (B, 3, T, H, W) in [-1, 1], T <= config.num_frames.
        num_valid_frames: optional long (B,), real frames per video of a padded batch (default T).
        generator: CPU generator for the sampling (default the global RNG).
    """
    c, objective = model.config, objective_of(model)
    stage = objective.stage if stage is None else stage
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage}")
    B, T = video.shape[0], video.shape[2]
    pt, p = c.decoder_temporal_patch_size, c.decoder_patch_size
    valid = (torch.full((B,), T) if num_valid_frames is None
             else torch.as_tensor(num_valid_frames).cpu().long())
    tokens = model.encode(video, num_valid_frames=num_valid_frames)
    valid_patches = valid // pt  # only temporal patches made of real frames
    if int(valid_patches.min()) < 1:
        raise ValueError(f"every video needs at least {pt} real frames, got {valid.tolist()}")
    _, rows, cols = c.decoder_grid
    if stage == 1:
        num_samples = objective.num_samples(c)
        coords = sample_coordinates(valid_patches, (rows, cols), num_samples, generator).to(video.device)
        prediction = model.decode_patches(tokens, coords)  # (B, N, 3, pt, p, p)
        mse = F.mse_loss(prediction, patches_of(video, coords, pt, p))
        return mse, {"mse": float(mse.detach())}

    count = min(objective.stage2_frames, int(valid_patches.min()))
    frames = sample_frames(valid_patches, count, generator)  # (B, count)
    spatial = model.patch_coordinates(pt)[:, 1:]  # (rows cols, 2): every patch of one frame
    coords = torch.cat([frames[:, :, None, None].expand(-1, -1, spatial.shape[0], 1),
                        spatial[None, None].expand(B, count, -1, -1)], dim=-1).flatten(1, 2).to(video.device)
    to_frames = "b (f h w) c pt p q -> b c (f pt) (h p) (w q)"
    prediction = rearrange(model.decode_patches(tokens, coords), to_frames, f=count, h=rows)  # whole frames
    target = rearrange(patches_of(video, coords, pt, p), to_frames, f=count, h=rows)  # (B, 3, count pt, H, W)
    mse = F.mse_loss(prediction, target)
    parts = {"mse": float(mse.detach())}
    loss = mse
    if perceptual is None:
        _warn_once("CoordTok stage 2 without a perceptual loss (set perceptual_weights to a VGG16 file): "
                   "MSE only")
    elif perceptual_weight > 0:
        term = perceptual(prediction, target)
        parts["perceptual"] = float(term.detach())
        loss = loss + perceptual_weight * term
    return loss, parts


# ----------------------------------------------------------------------------------------------
# SweetTok: pixels + vector quantization (+ codebook usage, perceptual, proxy codes)
# ----------------------------------------------------------------------------------------------


@dataclass
class SweetTokObjective:
    beta: float = 0.25  # commitment weight
    legacy_vq_loss: bool = False  # True: beta weighs the codebook term (taming's legacy form, released code)
    vq_weight: float = 1.0
    pixel_weight: float = 1.0  # MSE weight; 0 with proxy targets = the paper's stage 1
    proxy_weight: float = 1.0
    # Codebook usage (not in the paper; off at 0): usage_weight x, per branch, the entropy term over the
    # soft assignments of its attribute and its entity words (`MLCQuantizer.usage_loss`), against collapse.
    usage_weight: float = 0.0  # >= 0; 0 = the paper's loss (and the term is not computed)
    usage_temperature: float = 1.0  # > 0: soft assignment softmax(-squared distance / temperature)
    # fn(video) -> long proxy codes (B, 1 + L, G) of a frozen grid tokenizer; never saved
    proxy_targets: Callable[[torch.Tensor], torch.Tensor] | None = field(
        default=None, repr=False, compare=False, metadata={"saved": False})

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.usage_weight < 0:
            raise ValueError(f"usage_weight must be >= 0, got {self.usage_weight}")
        if self.usage_temperature <= 0:
            raise ValueError(f"usage_temperature must be > 0, got {self.usage_temperature}")


def set_proxy_targets(tokenizer, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
    """Proxy-code training for a SweetTok: fn(video) -> long codes (B, 1 + L, G) of a frozen
    pretrained grid tokenizer (OmniTokenizer in the paper). Kept out of the state dict and of
    config.json; needs a tokenizer built with proxy_codebook_size."""
    if fn is not None and tokenizer.proxy_head is None:
        raise ValueError("proxy targets need a proxy head: build with proxy_codebook_size=K")
    tokenizer.objective = replace(objective_of(tokenizer), proxy_targets=fn)


def sweettok_training_loss(model, video: torch.Tensor, perceptual: nn.Module | None = None,
                           perceptual_weight: float = 0.0,
                           proxy_targets: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """SweetTok's objective for one batch (module docstring).

    Args:
        model: a SweetTok (its settings: `objective_of(model)`).
        video: (B, 3, T, H, W) in [-1, 1].
        proxy_targets: long (B, 1 + L, G); default the objective's `proxy_targets` function's, if any.
    Returns:
        the loss, and its parts for logging (also the fraction of each branch's words in use).
    """
    o = objective_of(model)
    out = model.quantize(video, usage_temperature=o.usage_temperature if o.usage_weight > 0 else None)
    reconstruction, features = model.decode_with_features(out["vectors"], video.shape[2])
    mse = F.mse_loss(reconstruction, video)
    codebook, commitment = out["codebook_loss"], out["commitment_loss"]
    vq = o.beta * codebook + commitment if o.legacy_vq_loss else codebook + o.beta * commitment
    loss = o.pixel_weight * mse + o.vq_weight * vq
    branches = (("spatial", model.spatial_quantizer), ("temporal", model.temporal_quantizer))
    in_use = {f"{branch}_words": out[f"{branch}_ids"].unique().numel()
                 / (quantizer.num_entities + quantizer.num_attributes)
              for branch, quantizer in branches}  # the fraction of the branch's words in use
    parts = {"mse": float(mse.detach()), "vq": float(vq.detach()), "codebook": float(codebook.detach()),
             "commitment": float(commitment.detach()), **in_use}
    if o.usage_weight > 0:
        parts["usage"] = float(out["usage_loss"].detach())
        loss = loss + o.usage_weight * out["usage_loss"]
    if perceptual is not None and perceptual_weight > 0:
        term = perceptual(reconstruction, video)
        parts["perceptual"] = float(term.detach())
        loss = loss + perceptual_weight * term
    if proxy_targets is None and o.proxy_targets is not None:
        with torch.no_grad():
            proxy_targets = o.proxy_targets(video)
    if proxy_targets is not None:
        if model.proxy_head is None:
            raise ValueError("proxy targets need a proxy head: build with proxy_codebook_size=K")
        logits = model.proxy_head(features)  # (B, 1 + L, G, K)
        targets = proxy_targets.to(logits.device).long().reshape(logits.shape[:-1])
        ce = F.cross_entropy(logits.flatten(0, 2), targets.flatten())
        parts["proxy_ce"] = float(ce.detach())
        loss = loss + o.proxy_weight * ce
    return loss, parts


# ----------------------------------------------------------------------------------------------
# The registry, and the settings' way in and out
# ----------------------------------------------------------------------------------------------


class Objective(NamedTuple):
    settings: type  # a dataclass of the objective's settings (defaults = the paper's)
    loss: Callable[..., tuple[torch.Tensor, dict]]  # (tokenizer, video, perceptual=, perceptual_weight=)


OBJECTIVES = {
    "coordtok": Objective(CoordTokObjective, coordtok_training_loss),
    "sweettok": Objective(SweetTokObjective, sweettok_training_loss),
}


FRAME_SUBSETS = ("vtok",)  # architectures whose decode(..., frames=) draws a subset of the frames


def training_loss(tokenizer, video: torch.Tensor, perceptual: nn.Module | None = None,
                  perceptual_weight: float = 0.0, foreground_weight: float = 0.0,
                  pixel_loss: str = "mse", decode_frames: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's loss and its parts for logging: the architecture's objective (OBJECTIVES), else
    reconstruction (MSE, foreground-weighted when foreground_weight > 0, + perceptual_weight x perceptual
    of decode(encode(video))). decode_frames k > 0 (VTok): the loss on k random frames of each clip (the
    same k for the batch, drawn each step), so a step's decoder compute covers k/T of what it would."""
    objective = OBJECTIVES.get(tokenizer.architecture)
    if decode_frames and (objective is not None or tokenizer.architecture not in FRAME_SUBSETS):
        raise ValueError(f"decode_frames draws a subset of frames, which {list(FRAME_SUBSETS)} can do; the "
                         f"{tokenizer.architecture} tokenizer cannot")
    if objective is None:
        if decode_frames and decode_frames < video.shape[2]:
            frames = torch.randperm(video.shape[2], device=video.device)[:decode_frames].sort().values
            tokens, state = tokenizer.encode_with_state(video)
            reconstruction = tokenizer.decode(tokens, num_frames=video.shape[2], frames=frames, **state)
            return reconstruction_loss(reconstruction, video[:, :, frames], perceptual, perceptual_weight,
                                       foreground_weight, pixel_loss)
        return reconstruction_loss(tokenizer(video), video, perceptual, perceptual_weight, foreground_weight,
                                   pixel_loss)
    if foreground_weight > 0 or pixel_loss != "mse":
        raise ValueError(f"foreground_weight and pixel_loss apply to the reconstruction loss; the "
                         f"{tokenizer.architecture} tokenizer trains with its own objective, which does not "
                         f"take it")
    return objective.loss(tokenizer, video, perceptual=perceptual, perceptual_weight=perceptual_weight)


def objective_of(tokenizer):
    """The tokenizer's objective settings: `tokenizer.objective`, else its architecture's defaults
    (None for an architecture without an objective of its own)."""
    if tokenizer.objective is not None:
        return tokenizer.objective
    objective = OBJECTIVES.get(tokenizer.architecture)
    return None if objective is None else objective.settings()


def saved_fields(architecture: str) -> list[str]:
    """The settings an architecture's objective saves (and takes from overrides and config.json)."""
    objective = OBJECTIVES.get(architecture)
    if objective is None:
        return []
    return [f.name for f in fields(objective.settings) if f.metadata.get("saved", True)]


def objective_fields() -> set[str]:
    """Every architecture's saved objective settings: the override names that are not architecture."""
    return {name for architecture in OBJECTIVES for name in saved_fields(architecture)}


def split_objective(architecture: str, data: dict) -> tuple[dict, dict]:
    """(architecture config fields, objective settings) of a config dict: the upgrade of configs saved
    before issue 18, which held CoordTok's stage / sample_fraction / stage2_frames and SweetTok's loss
    weights among the architecture's fields."""
    names = set(saved_fields(architecture))
    return {k: v for k, v in data.items() if k not in names}, {k: v for k, v in data.items() if k in names}


def build_objective(architecture: str, settings: dict):
    """The architecture's objective settings from a dict (None when it has no objective and none are
    given); fields it does not know raise ValueError."""
    known = saved_fields(architecture)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"unknown {architecture} objective fields {unknown}; known: {known}")
    objective = OBJECTIVES.get(architecture)
    return None if objective is None else objective.settings(**settings)


def objective_to_dict(objective) -> dict:
    """The saved settings, JSON-ready (a proxy-target function is not saved)."""
    return {f.name: getattr(objective, f.name) for f in fields(objective) if f.metadata.get("saved", True)}

"""Reconstruction objectives for video tokenizers, kept apart from the models.

MSE on pixels always; a perceptual term (VGG16 feature distance, LPIPS-style without its learned
channel weights) when VGG16 weights are available as a local file. Nothing is downloaded: without
weights the perceptual term is off and `build_perceptual_loss` logs a warning.

`perceptual_weights="tower"` takes the same distance on the feature maps of the tokenizer's own frozen
vision tower instead (`TowerPerceptualLoss`): no download, and the features are the ones the tokens
are made of, so a decoder trained on it must draw what the tower tells apart (shapes, not blobs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

log = logging.getLogger(__name__)

# VGG16's convolutional stack ("M" = max-pool); the feature taps are after relu1_2 .. relu5_3.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices in `features` after which a feature map is taken
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Mean squared distance between unit-normalised VGG16 features of two videos, frame by frame.

    The weights file holds torchvision-style keys `features.N.weight/bias` (safetensors or a
    PyTorch state dict, read with `weights_only=True`).
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=False)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.features.load_state_dict(_read_state(weights_path), strict=True)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, C, T, H, W) in [-1, 1] -> scalar."""
        a = (rearrange(x, "b c t h w -> (b t) c h w") + 1) / 2
        b = (rearrange(y, "b c t h w -> (b t) c h w") + 1) / 2
        a, b = (a - self.mean) / self.std, (b - self.mean) / self.std
        loss = x.new_zeros(())
        for i, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if i in _TAPS:
                loss = loss + _feature_distance(a, b, dim=1)
            if i >= _TAPS[-1]:
                break
        return loss


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("features."): v for k, v in state.items()
            if k.startswith("features.") or k[0].isdigit()}


class TowerPerceptualLoss(nn.Module):
    """PerceptualLoss's distance on every hidden state of a tokenizer's frozen Hugging Face vision tower
    (`features.HFFeatures`): feature maps (N, D, h, w) are unit-normalised over channels, token
    sequences (N, L, D) over their last dimension. The tower is shared with the tokenizer, not copied,
    and gets no gradient (it must be frozen); the reconstruction does."""

    def __init__(self, features: nn.Module):
        super().__init__()
        model = getattr(features, "model", None)
        if model is None or not getattr(features, "frozen", False):
            raise ValueError("perceptual_weights='tower' needs a tokenizer built on a frozen Hugging Face "
                             "vision tower (feature_extractor='hf', freeze_features=True)")
        self._features = [features]  # a list: not registered, so .to() and state_dict leave it alone

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (the reconstruction), y (the target): (B, C, T, H, W) in [-1, 1] -> scalar."""
        features = self._features[0]
        frames = rearrange(torch.cat([x, y]), "b c t h w -> (b t) c h w")
        pixels = ((frames + 1) / 2 - features.mean) / features.std
        hidden = features.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        loss = x.new_zeros(())
        for h in hidden:  # a CNN: the stem's map, then each stage's; a ViT: the embeddings, then each layer
            a, b = h.chunk(2)
            loss = loss + _feature_distance(a, b.detach(), dim=1 if h.ndim == 4 else -1)
        return loss


def _feature_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean squared distance between features unit-normalised along `dim` (LPIPS without its weights)."""
    return (F.normalize(a, dim=dim) - F.normalize(b, dim=dim)).pow(2).sum(dim).mean()


def build_perceptual_loss(weights_path: str | None, tokenizer: nn.Module | None = None) -> nn.Module | None:
    """The perceptual loss when its weights file exists, else None (with a warning if one was named);
    "tower": `TowerPerceptualLoss` on `tokenizer.features`."""
    if not weights_path:
        return None
    if weights_path == "tower":
        return TowerPerceptualLoss(getattr(tokenizer, "features", None))
    if not Path(weights_path).is_file():
        log.warning("perceptual loss off: VGG16 weights not found at %s (training with MSE only)",
                    weights_path)
        return None
    return PerceptualLoss(weights_path)


PIXEL_LOSSES = ("mse", "l1")
# summed |RGB - the frame's median colour| on [-1, 1] above which a pixel is "object"
FOREGROUND_THRESHOLD = 0.3


def foreground_mask(video: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> float (B, 1, T, H, W): 1 where a pixel is far from its frame's median
    colour (the background of a scene of small objects), else 0."""
    median = video.flatten(3).median(dim=-1).values[..., None, None]  # (B, 3, T, 1, 1)
    return ((video - median).abs().sum(1, keepdim=True) > threshold).to(video.dtype)


def reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    perceptual: PerceptualLoss | None = None,
    perceptual_weight: float = 0.0,
    foreground_weight: float = 0.0,
    pixel_loss: str = "mse",
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE (+ weight * perceptual). Returns the loss and its parts for logging.

    foreground_weight w > 0 weighs each pixel of the target's foreground (`foreground_mask`) 1 + w times a
    background pixel, normalised by the mean weight so the loss keeps its scale: small objects, a few
    percent of the pixels, then count for as much as the background they sit on.
    pixel_loss "l1" puts the absolute error in MSE's place: where the decoder cannot tell whether a pixel is
    object or background, MSE pays for the blend of the two and L1 for either one, so edges stay sharp.
    ("mse" is still logged.)
    """
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be one of {list(PIXEL_LOSSES)}, got {pixel_loss!r}")
    mse = F.mse_loss(reconstruction, target)
    parts = {"mse": float(mse.detach())}
    loss = mse
    if foreground_weight > 0 or pixel_loss != "mse":
        error = (reconstruction - target).pow(2) if pixel_loss == "mse" else (reconstruction - target).abs()
        weights = 1 + foreground_weight * foreground_mask(target)
        loss = (weights * error).mean() / weights.mean()
        parts[f"weighted_{pixel_loss}" if foreground_weight > 0 else pixel_loss] = float(loss.detach())
    if perceptual is not None and perceptual_weight > 0:
        p = perceptual(reconstruction, target)
        parts["perceptual"] = float(p.detach())
        loss = loss + perceptual_weight * p
    return loss, parts

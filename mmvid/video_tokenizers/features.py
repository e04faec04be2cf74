"""A frozen (or trainable) Hugging Face vision model as a video tokenizer's per-frame feature extractor F.

Shared by VTok and the frame-sampling baseline (`feature_extractor="hf"`), so the two can read frames
through the same vision tower. The config passed in needs image_size, patch_size, grid, hf_path, hf_config,
hf_image_mean, hf_image_std and freeze_features (VTokConfig and FramesConfig have them).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

FEATURE_EXTRACTORS = ("vit", "hf")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFFeatures(nn.Module):
    """A Hugging Face vision model as F: patch features without the class token.

    ViT-style models (CLIP, SigLIP, ...) give (N, 1 + S or S, D) and must take image_size px images in
    patch_size px patches. Convolutional ones (ResNet, ConvNeXt, ...; mmvid's own vision-tower stand-in,
    `mmvid.vision_tower`) give a (N, D, h, w) map, flattened to S = h * w tokens; h = w must then be
    image_size / patch_size, so each feature is one key-frame grid cell."""

    def __init__(self, config):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if config.hf_config is None:
            config.hf_config = AutoConfig.from_pretrained(config.hf_path).to_dict()
        hf = dict(config.hf_config)
        hf = dict(hf.get("vision_config") or hf)  # a full CLIP/SigLIP config: its vision tower
        model_type = hf.pop("model_type")
        self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **hf))
        vision = self.model.config
        self.convolutional = not hasattr(vision, "patch_size")
        if self.convolutional:
            self.hidden_size = vision.hidden_sizes[-1]
            with torch.no_grad():  # the output grid, from one tiny forward (skipped on meta)
                side = _conv_output_side(self.model, config.image_size)
            if side is not None and side != config.grid:
                raise ValueError(f"the HF model maps {config.image_size}px images to a {side}x{side} "
                                 f"feature map, but the tokenizer's grid is {config.grid}x{config.grid}; set "
                                 f"patch_size={config.image_size // side}")
        else:
            self.hidden_size = vision.hidden_size
            if vision.image_size != config.image_size or vision.patch_size != config.patch_size:
                raise ValueError(f"the HF model takes {vision.image_size}px images in {vision.patch_size}px "
                                 f"patches; set image_size={vision.image_size} and "
                                 f"patch_size={vision.patch_size}")
        self.path, self.frozen = config.hf_path, config.freeze_features
        self.register_buffer("mean", torch.tensor(config.hf_image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.hf_image_std).view(1, 3, 1, 1), persistent=False)

    def load_weights(self) -> None:
        """Load the pretrained weights from `hf_path` (skipped when rebuilding from a checkpoint,
        whose own safetensors then carry them), then freeze if asked."""
        if self.path is not None and not self.model.device.type == "meta":
            from transformers import AutoModel

            pretrained = AutoModel.from_pretrained(self.path)
            if hasattr(pretrained, "vision_model") and hasattr(self.model, "vision_model"):
                self.model.vision_model.load_state_dict(pretrained.vision_model.state_dict())
            else:
                self.model.load_state_dict(pretrained.state_dict())
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()  # batch norm statistics stay the pretrained ones

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen tower never updates its batch-norm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x + 1) / 2 - self.mean) / self.std  # [-1, 1] -> the model's normalisation
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.model(pixel_values=pixels).last_hidden_state  # (N, 1 + S or S, D), or (N, D, h, w)
        if self.convolutional:
            return rearrange(hidden, "n d h w -> n (h w) d")
        grid = (x.shape[-1] // self.model.config.patch_size) ** 2
        return hidden[:, -grid:]  # drop a class token if there is one


def _conv_output_side(model: nn.Module, image_size: int) -> int | None:
    """The side of a convolutional HF model's output map for image_size px input (None on meta)."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type == "meta":
        return None
    was_training = model.training
    model.eval()
    pixels = torch.zeros(1, 3, image_size, image_size, device=parameter.device)
    out = model(pixel_values=pixels).last_hidden_state
    model.train(was_training)
    if out.ndim != 4 or out.shape[-1] != out.shape[-2]:
        raise ValueError("expected a square (N, D, h, w) feature map from the convolutional HF model, got "
                         f"{tuple(out.shape)}")
    return int(out.shape[-1])

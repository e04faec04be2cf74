"""Reconstruction metrics for videos `(B, C, T, H, W)` and images `(B, C, H, W)`, one value per sample.

Inputs are float tensors in [-1, 1] by default (mmvid's layout), hence ``data_range=2.0``; pass
``data_range=1.0`` for [0, 1] or ``255.0`` for 8-bit values. Both metrics compute in float64 and
return a float64 tensor of shape `(B,)`:

    psnr(reconstruction, video).mean()   # dB; inf where a sample is reproduced exactly
    ssim(reconstruction, video).mean()   # 1.0 for identical inputs

``ssim`` matches ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`` applied to each frame and channel and averaged.

``frechet_distance(features_a, features_b)`` compares two feature sets (FID/FVD), for the benches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim not in (4, 5):
        raise ValueError(
            f"expected videos (B, C, T, H, W) or images (B, C, H, W), got shape {tuple(x.shape)}")


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 * log10(data_range^2 / mse)``, mse over C, (T,) H, W.

    Args:
        x, y: `(B, C, T, H, W)` or `(B, C, H, W)`, same shape.
        data_range: max - min of the values' range (2.0 for [-1, 1]).
    Returns:
        `(B,)` float64; ``inf`` where x and y are identical.
    """
    _check_pair(x, y)
    mse = (x.double() - y.double()).square().flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf


def _gaussian_kernel(window_size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(window_size, dtype=torch.float64, device=device) - (window_size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()  # (window_size,)


@torch.no_grad()
def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, averaged per sample.

    Computed per channel and frame over the 'valid' region (window positions fully inside the
    frame, no padding), with K1 = 0.01, K2 = 0.03 and population (not sample) covariances, then
    averaged over channels, positions and frames. Memory: about 5 float64 copies of the input.

    Args:
        x, y: `(B, C, T, H, W)` or `(B, C, H, W)`, same shape, frames at least ``window_size`` wide.
        data_range: max - min of the values' range (2.0 for [-1, 1]).
        window_size: odd side of the Gaussian window; sigma: its standard deviation (pixels).
    Returns:
        `(B,)` float64; 1.0 where x and y are identical.
    """
    _check_pair(x, y)
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number, got {window_size}")
    H, W = x.shape[-2:]
    if H < window_size or W < window_size:
        raise ValueError(f"frames of {H}x{W} are smaller than the {window_size}x{window_size} SSIM window")
    B = x.shape[0]
    x = x.double().reshape(-1, 1, H, W)  # (B*C*T, 1, H, W): every frame of every channel on its own
    y = y.double().reshape(-1, 1, H, W)
    # The five local statistics go through the same separable Gaussian filter, one group each.
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    kernel = _gaussian_kernel(window_size, sigma, x.device)
    stats = F.conv2d(stats, kernel.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)  # (N, 5, H, W')
    stats = F.conv2d(stats, kernel.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)  # (N, 5, H', W')
    mu_x, mu_y, xx, yy, xy = stats.unbind(dim=1)  # each (N, H', W')
    var_x, var_y, cov_xy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # Every frame and channel has the same number of positions, so one mean per sample is their mean.
    return ssim_map.reshape(B, -1).mean(dim=1)  # (B,)


def frechet_distance(features_a, features_b, ridge: float = 0.0) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (FID/FVD's formula):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    tr((S_a S_b)^(1/2)) is the trace of the square root of the symmetric S_a^(1/2) S_b S_a^(1/2), from
    eigen decompositions with round-off negative eigenvalues clipped to 0: real and finite even for
    singular covariances (fewer samples than dimensions), where a general matrix square root of S_a S_b
    (scipy's sqrtm) can fail or return complex values.

    Args:
        features_a, features_b: numpy arrays or torch tensors (N, D) and (M, D), N, M >= 2.
        ridge: added to both covariances' diagonals (0: the plain estimate).
    Returns:
        The distance, a float computed in float64.
    """
    a, b = _as_float64(features_a), _as_float64(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature arrays (N, D) and (M, D), got shapes {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a covariance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    eye = np.eye(a.shape[1])
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False)) + ridge * eye  # (D, D)
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False)) + ridge * eye
    w, v = np.linalg.eigh(sigma_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sigma_b @ root_a), 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross)


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)

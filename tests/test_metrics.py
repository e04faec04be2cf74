from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mmvid.metrics import frechet_distance, psnr, ssim


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """SSIM of two 2-D float64 images as skimage computes it (gaussian_weights=True, sigma=1.5).

    scipy's Gaussian with truncate=3.5 has radius int(3.5 * 1.5 + 0.5) = 5, an 11-pixel window;
    cropping that radius keeps exactly the positions whose window lies inside the image.
    """
    blur = lambda img: gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s[5:-5, 5:-5].mean())


def _ssim_window_loop(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """SSIM by direct weighted sums over every 11x11 window inside the image (slow; small images)."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mu_a, mu_b = (w * pa).sum(), (w * pb).sum()
            var_a, var_b = (w * (pa - mu_a) ** 2).sum(), (w * (pb - mu_b) ** 2).sum()
            cov = (w * (pa - mu_a) * (pb - mu_b)).sum()
            values.append(
                ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def _pair(shape, noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen) * 2 - 1
    y = (x + noise * torch.randn(shape, generator=gen)).clamp(-1, 1)
    return x, y


def test_identical_inputs():
    x, _ = _pair((2, 3, 4, 16, 16))
    assert torch.equal(psnr(x, x), torch.full((2,), math.inf, dtype=torch.float64))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_psnr_of_a_known_mse():
    x = torch.zeros(2, 3, 2, 4, 4)
    y = x.clone()
    y[0] += 0.5  # mse 0.25 -> 10 * log10(4 / 0.25), exact in float32
    y[1, :, 0] = 1.0  # half the values off by 1: mse 0.5 -> 10 * log10(4 / 0.5)
    out = psnr(x, y)
    assert out.dtype == torch.float64 and out.shape == (2,)
    torch.testing.assert_close(out,
                               torch.tensor([10 * math.log10(16), 10 * math.log10(8)], dtype=torch.float64))
    # The same error in 8-bit units: a difference of 127.5 on half the values, mse 127.5**2 / 2.
    assert psnr(x, y * 127.5, data_range=255.0)[1].item() == pytest.approx(
        10 * math.log10(255**2 / (127.5**2 / 2)))


@pytest.mark.parametrize("shape", [(2, 3, 20, 17), (1, 1, 16, 16), (2, 2, 3, 12, 25)])
def test_ssim_matches_the_scipy_reference(shape):
    x, y = _pair(shape)
    out = ssim(x, y)
    assert out.dtype == torch.float64 and out.shape == (shape[0],)
    a, b = x.double().numpy(), y.double().numpy()
    for i in range(shape[0]):
        frames = zip(a[i].reshape(-1, *shape[-2:]), b[i].reshape(-1, *shape[-2:]))  # every channel and frame
        expected = np.mean([_ssim_reference(fa, fb, 2.0) for fa, fb in frames])
        assert abs(out[i].item() - expected) < 1e-6


def test_ssim_matches_a_direct_window_loop():
    x, y = _pair((1, 1, 16, 16), noise=0.5, seed=3)
    a, b = (x[0, 0].double() + 1) / 2, (y[0, 0].double() + 1) / 2  # [0, 1] values
    expected = _ssim_window_loop(a.numpy(), b.numpy(), data_range=1.0)
    assert abs(ssim(a[None, None], b[None, None], data_range=1.0).item() - expected) < 1e-6


def test_ssim_falls_as_noise_grows():
    values = [ssim(*_pair((1, 3, 2, 24, 24), noise=noise, seed=1)).item() for noise in (0.01, 0.05, 0.2, 0.5)]
    assert values == sorted(values, reverse=True) and values[0] > 0.99 and values[-1] < 0.5


def test_video_equals_the_mean_of_its_frames():
    x, y = _pair((2, 3, 5, 16, 20))
    per_frame = torch.stack([ssim(x[:, :, t], y[:, :, t]) for t in range(5)], dim=1)  # (B, T)
    torch.testing.assert_close(ssim(x, y), per_frame.mean(dim=1), rtol=0, atol=1e-12)
    # psnr's mse covers the whole clip: the mean of per-frame mse, not of per-frame psnr.
    frame_mse = torch.stack([4 / 10 ** (psnr(x[:, :, t], y[:, :, t]) / 10) for t in range(5)], dim=1)
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(4 / frame_mse.mean(dim=1)))


def test_bad_shapes_raise():
    x = torch.zeros(1, 3, 4, 16, 16)
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match=r"same shape, got \(1, 3, 4, 16, 16\) and \(1, 3, 4, 16, 15\)"):
            metric(x, torch.zeros(1, 3, 4, 16, 15))
        with pytest.raises(ValueError, match=r"expected videos \(B, C, T, H, W\) or images \(B, C, H, W\)"):
            metric(x[0, 0], x[0, 0])
    with pytest.raises(ValueError, match="smaller than the 11x11 SSIM window"):
        ssim(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, window_size=10)


# ---------------------------------------------------------------- Frechet distance


def _with_covariance(mean: np.ndarray, variances: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, D) features whose sample mean and covariance are exactly `mean` and diag(`variances`):
    orthonormal columns, orthogonal to the constant vector, scaled."""
    basis, _ = np.linalg.qr(np.column_stack([np.ones(n),
                                             np.random.default_rng(seed).normal(size=(n, len(mean)))]))
    return mean + basis[:, 1:] * np.sqrt((n - 1) * variances)


# the second is singular
@pytest.mark.parametrize("variances_b", [[0.5, 2.0, 1.0, 4.0], [0.5, 0.0, 1.0, 0.0]])
def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances(variances_b):
    mean_a, mean_b = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.5])
    var_a, var_b = np.array([1.0, 3.0, 0.25, 4.0]), np.array(variances_b)
    a, b = _with_covariance(mean_a, var_a, 40, seed=0), _with_covariance(mean_b, var_b, 30, seed=1)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-9)
    ridge = 0.1  # adds 0.1 to every variance
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a + ridge) - np.sqrt(var_b + ridge)) ** 2)
    assert frechet_distance(a, b, ridge=ridge) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_finite_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 12)), rng.normal(size=(6, 12))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)  # sqrt of round-off at the zero eigenvalues
    assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, b) > 0


def test_both_benches_give_the_frechet_distances_they_gave_before():
    """Golden values of the two implementations this one replaced: recon's (scipy sqrtm) and
    tv_align_gen's (eigh, covariances + 1e-6 I), on the same seeded features."""
    from mmvid.evaluation import recon, tv_align_gen

    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 6))
    b = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.3
    assert recon.frechet_distance is tv_align_gen.frechet_distance is frechet_distance
    assert frechet_distance(a, b) == pytest.approx(3.0745322313499504, rel=1e-12)  # recon's, ridge 0
    generated = [rng.random((8, 5)) for _ in range(6)]
    real = [rng.random((8, 5)) * 0.8 + 0.1 for _ in range(6)]
    metrics = {m.name: m.value for m in tv_align_gen.distribution_metrics(generated, real)}
    assert metrics["frechet"] == pytest.approx(0.06920546399657401, rel=1e-12)
    assert metrics["frechet_real_ref"] == pytest.approx(0.06313234691834946, rel=1e-12)


def test_frechet_distance_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))

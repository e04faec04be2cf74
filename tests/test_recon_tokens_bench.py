"""The recon and tokens benches on a tiny synthetic world, untrained tiny tokenizers (CPU, no downloads)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmvid.evaluation import recon, tokens
from mmvid.evaluation.runner import BenchContext
from mmvid.video_tokenizers import VIDEO_TOKENIZERS, build_video_tokenizer

RECON_METRICS = ("psnr", "ssim", "tokens_per_video", "encode_videos_per_s", "decode_videos_per_s", "videos")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from mmvid.data.shapes.build import WorldSettings, build_world

    out = tmp_path_factory.mktemp("world") / "w"
    build_world(out, WorldSettings(train=2, val=2, test=4, fewshot=0, frames=8, size=32), progress=False)
    return out


def _metrics(result) -> dict:
    return {m.name: m for m in result.metrics}


def _recon(world: Path, model_path=None, **options):
    ctx = BenchContext(model_path=model_path, data=str(world), batch_size=3,
                       options={k: str(v) for k, v in options.items()})
    return ctx, recon.run(ctx)


# ---------------------------------------------------------------- recon


def test_recon_roundtrip_scores_reconstructions_against_each_scene(world):
    from mmvid.data.video_dataset import VideoClipDataset, list_videos

    paths = list_videos(str(world), "test")
    clips = torch.stack([VideoClipDataset(paths, 8, 32, seed=0)[i]["video"] for i in range(len(paths))])
    perfect = recon.RoundTrip("auto")
    perfect.add(paths, clips, clips)  # a lossless tokenizer scores the ceiling exactly
    m = {x.name: x for x in perfect.metrics()}
    assert m["roundtrip/overall"].n == 4
    for name in ("colour", "shape", "count", "action", "overall"):
        assert m[f"roundtrip/{name}"].value == m[f"roundtrip_real/{name}"].value
    assert m["roundtrip_real/colour"].value > 0.5  # the analyzer finds the objects of the real clips
    flat = recon.RoundTrip("auto")
    flat.add(paths, clips, clips[:, :, :, :1, :1].expand_as(clips).clone())  # one colour: nothing drawn
    m = {x.name: x for x in flat.metrics()}
    assert m["roundtrip/colour"].value == 0
    assert m["roundtrip/overall"].value < m["roundtrip_real/overall"].value
    off = recon.RoundTrip("off")
    off.add(paths, clips, clips)
    assert off.metrics() == []
    with pytest.raises(ValueError, match="auto or off"):
        recon.RoundTrip("yes")


def test_recon_preset_scores_every_test_video(world):
    torch.manual_seed(0)
    _, result = _recon(world, tokenizer="vtok_tiny", frames=8)
    m = _metrics(result)
    assert set(RECON_METRICS) <= set(m) and "fvd" not in m
    assert all(math.isfinite(m[k].value) for k in RECON_METRICS)
    assert m["tokens_per_video"].value == 23 and m["videos"].value == 4
    assert m["roundtrip/overall"].n == 4 and 0 <= m["roundtrip/overall"].value <= 1
    assert result.settings["roundtrip_videos"] == 4
    assert m["psnr"].n == 4 and m["psnr"].stderr is not None
    assert m["encode_videos_per_s"].value > 0 and m["decode_videos_per_s"].value > 0
    s = result.settings
    assert (s["tokenizer"], s["split"], s["frames"], s["size"]) == ("vtok_tiny", "test", 8, 32)
    assert result.samples is None


def test_recon_saved_tokenizer_gives_identical_numbers_and_samples(world, tmp_path):
    torch.manual_seed(0)
    folder = build_video_tokenizer("vtok_tiny").save_pretrained(tmp_path / "vtok")
    ctx = BenchContext(model_path=None, data=str(world), batch_size=3, log_samples=True,
                       options={"tokenizer": str(folder), "frames": "8"})
    from_folder = recon.run(ctx)
    torch.manual_seed(0)
    _, from_preset = _recon(world, tokenizer="vtok_tiny", frames=8)
    a, b = _metrics(from_folder), _metrics(from_preset)
    for name in ("psnr", "ssim", "tokens_per_video", "videos"):
        assert a[name].value == b[name].value and a[name].stderr == b[name].stderr
    assert len(from_folder.samples) == 4
    assert set(from_folder.samples[0]) == {"path", "psnr", "ssim", "roundtrip_hits", "roundtrip_real_hits"}
    assert np.mean([s["psnr"] for s in from_folder.samples]) == pytest.approx(a["psnr"].value)


def test_recon_plain_folder_and_limit(world):
    _, result = _recon(world / "test" / "videos", tokenizer="frames_tiny", frames=4, split="none")
    m = _metrics(result)
    assert m["videos"].value == 4 and result.settings["split"] is None
    assert m["tokens_per_video"].value == build_video_tokenizer("frames_tiny").num_tokens(4, 32, 32)
    ctx = BenchContext(model_path=None, data=str(world), limit=2,
                       options={"tokenizer": "vtok_tiny", "frames": "8"})
    assert _metrics(recon.run(ctx))["videos"].value == 2


def test_recon_defaults_to_the_videollms_tokenizer(world, tmp_path):
    from mmvid.testing import tiny_videollm

    model = tiny_videollm(tmp_path)
    ctx = BenchContext(model_path=None, data=str(world), model=model)
    result = recon.run(ctx)
    m = _metrics(result)
    assert result.settings["frames"] == model.config.num_frames == 8
    assert result.settings["preset"] == model.video_tokenizer.preset == "vtok_tiny"
    assert m["tokens_per_video"].value == model.video_tokenizer.num_tokens(8, 32, 32) == 23
    assert math.isfinite(m["psnr"].value) and m["videos"].value == 4
    assert not model.video_tokenizer.training  # the tiny model was in eval mode and stays so


# ---------------------------------------------------------------- FVD


def test_frechet_distance_identical_and_shifted():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    assert abs(recon.frechet_distance(a, a)) < 1e-6
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.25])
    assert recon.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    from_torch = recon.frechet_distance(torch.from_numpy(a), torch.from_numpy(a + shift))
    assert from_torch == pytest.approx(float(shift @ shift), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        recon.frechet_distance(a[:1], a)


class _MeanPool(torch.nn.Module):
    """A stand-in for I3D: a linear map of the channels, mean-pooled over time and space -> (B, D)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv3d(3, 5, kernel_size=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(video)).mean(dim=(2, 3, 4))  # (B, 5)


def test_recon_fvd_through_a_torchscript_extractor(world, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "extractor.pt"
    torch.jit.script(_MeanPool()).save(str(path))
    _, result = _recon(world, tokenizer="vtok_tiny", frames=8, fvd_model=path, fvd_size=48)
    fvd = _metrics(result)["fvd"]
    assert math.isfinite(fvd.value) and fvd.value > -1e-6 and fvd.n == 4
    assert result.settings["fvd_model"] == str(path) and result.settings["fvd_size"] == 48


def test_recon_missing_fvd_model_raises(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="FVD feature extractor"):
        _recon(world, tokenizer="vtok_tiny", frames=8, fvd_model=tmp_path / "missing.pt")


# ---------------------------------------------------------------- tokens


def test_tokens_counts_and_prefill_without_a_checkpoint(tmp_path):
    ctx = BenchContext(model_path=str(tmp_path / "no-model"),
                       options={"frames": "8,16", "max_prefill_tokens": "256", "repeats": "1"})
    result = tokens.run(ctx)
    m = _metrics(result)
    assert ctx.model is None and "tiny untrained Llama" in result.settings["llm"]
    for name in VIDEO_TOKENIZERS:
        with torch.device("meta"):
            tokenizer = build_video_tokenizer(name)
        size = tokenizer.config.image_size
        assert result.settings["sizes"][name] == size
        for T in (8, 16):
            n = tokenizer.num_tokens(T, size, size)
            assert m[f"{name}/T{T}/tokens"].value == n
            if n <= 256:
                assert m[f"{name}/T{T}/prefill_ms"].value > 0
            else:
                assert f"{name}/T{T}/prefill_ms" not in m
                assert any(s.startswith(f"{name}/T{T}:") for s in result.settings["skipped_prefill"])
    table = result.settings["table"].splitlines()
    assert table[0].startswith("| preset | frames | size | tokens | prefill ms |")
    assert len(table) == 2 + 2 * len(VIDEO_TOKENIZERS)

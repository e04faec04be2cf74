"""CoordTok: triplane lookups, token counts and layout, sampling, reassembly, training (CPU, tiny preset)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmvid.testing import world_clips
from mmvid.video_tokenizers import (
    ARCHITECTURES,
    VIDEO_TOKENIZERS,
    build_video_tokenizer,
    load_video_tokenizer,
)
from mmvid.video_tokenizers.coordtok import PLANES, CoordTok, sample_plane
from mmvid.video_tokenizers.objectives import (
    OBJECTIVES,
    Objective,
    _warn_once,
    coordtok_training_loss,
    objective_of,
    patches_of,
    sample_coordinates,
    sample_frames,
    training_loss,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tokenizers" / "coordtok" / "coordtok_tiny.yaml"
# preset -> (tokens, parameters in millions as the brief estimates them, None where it gives none)
PRESETS = {"coordtok_tiny": (144, None), "coordtok_base": (576, None), "coordtok_s": (1280, 108),
           "coordtok_b": (1280, 291), "coordtok_l": (1280, 853), "coordtok_l_3072": (3072, None)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _video(batch=2, frames=8, size=32, seed=0) -> torch.Tensor:
    return world_clips(batch, frames, size, seed)


def _tiny(**overrides) -> CoordTok:
    torch.manual_seed(0)
    return build_video_tokenizer("coordtok_tiny", **overrides)


# ---------------------------------------------------------------- the triplane lookup


def test_bilinear_lookup_equals_grid_sample():
    g = torch.Generator().manual_seed(0)
    plane = torch.randn(2, 3, 5, 7, generator=g)
    rows = torch.rand(2, 50, generator=g)
    cols = torch.rand(2, 50, generator=g)
    # the corners
    rows[:, :4], cols[:, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    rows[:, 4:8] = torch.arange(4) / 4  # exact grid rows
    ours = sample_plane(plane, rows, cols)  # (B, M, C)
    grid = torch.stack([cols * 2 - 1, rows * 2 - 1], dim=-1)[:, :, None]  # (B, M, 1, 2) as (x, y)
    reference = F.grid_sample(plane, grid, mode="bilinear", align_corners=True)[..., 0].transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[:, 0], plane[:, :, 0, 0])  # coordinate 0 is the first row / column
    torch.testing.assert_close(ours[:, 1], plane[:, :, -1, -1])  # coordinate 1 the last


# ---------------------------------------------------------------- counts and layout


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_its_exact_token_count(name):
    with torch.device("meta"):
        tok = build_video_tokenizer(name)
    tokens, millions = PRESETS[name]
    size = tok.config.image_size
    for T in (1, 8, 16, 32, 64, 128):  # a fixed count for any clip up to 128 frames
        assert tok.num_tokens(T, size, size) == tokens == tok.token_layout(T, size, size).num_tokens
    with pytest.raises(ValueError, match="at most 128 frames"):
        tok.num_tokens(129, size, size)
    if millions is not None:
        assert sum(p.numel() for p in tok.parameters()) / 1e6 == pytest.approx(millions, rel=0.01)


def test_registry_and_paper_layouts():
    assert {n for n in VIDEO_TOKENIZERS if n.startswith("coordtok")} == set(PRESETS)
    assert ARCHITECTURES["coordtok"] is CoordTok
    with torch.device("meta"):
        tok = build_video_tokenizer("coordtok_l")
        big = build_video_tokenizer("coordtok_l_3072")
    c = tok.config
    assert c.plane_shapes == {"xy": (16, 16), "yt": (32, 16), "xt": (32, 16)}
    assert c.encoder_grid == (16, 8, 8) and c.decoder_grid == (128, 16, 16)
    assert tok.objective.num_samples(c) == 1024
    assert big.config.plane_shapes == {"xy": (32, 32), "yt": (32, 32), "xt": (32, 32)}
    for t in (tok, big):  # 4 query tokens per plane, 12 in all
        patches = t.config.plane_patches
        assert [math.prod(t.query_planes[n].shape[-2:]) // math.prod(patches[n]) for n in PLANES] == [4, 4, 4]


def test_layout_matches_the_encoded_tokens():
    tok = _tiny()
    video = _video(frames=8)
    tokens = tok.encode(video)
    assert tokens.shape == (2, tok.num_tokens(8, 32, 32), tok.token_dim) == (2, 144, 8)
    planes = tok.planes(tokens)
    assert {n: tuple(p.shape) for n, p in planes.items()} == {"xy": (2, 8, 4, 4), "yt": (2, 8, 16, 4),
                                                              "xt": (2, 8, 16, 4)}
    # xy row-major: x rows, y columns
    torch.testing.assert_close(tokens[:, 4 * 1 + 2], planes["xy"][:, :, 1, 2])
    torch.testing.assert_close(tokens[:, 16 + 4 * 3 + 1], planes["yt"][:, :, 3, 1])  # yt: t-major
    torch.testing.assert_close(tokens[:, 16 + 64 + 4 * 5 + 2], planes["xt"][:, :, 5, 2])  # xt: t-major

    layout = tok.token_layout(128, 32, 32)  # a full clip
    assert layout.groups == ("xy", "yt", "xt") and not layout.discrete
    assert layout.group.tolist() == [0] * 16 + [1] * 64 + [2] * 64
    pos, time = layout.position, layout.time
    assert ((pos >= 0) & (pos <= 1) | (pos == -1)).all()
    side = [0.125, 0.375, 0.625, 0.875]  # 4 plane columns over the 4 decoder patches' centres
    assert time[:16].tolist() == [-1] * 16 and pos[:16, 0].tolist() == [-1] * 16
    assert pos[:16, 1].tolist() == [s for s in side for _ in range(4)] and pos[:16, 2].tolist() == side * 4
    rows = [round(i * 127 / 15) for i in range(16)]  # row i is read exactly at frame i * 127 / 15
    assert time[16:80].tolist() == [f for f in rows for _ in range(4)] == time[80:].tolist()
    assert pos[16:80:4, 0].tolist() == pytest.approx([i / 15 for i in range(16)])
    assert (pos[16:80, 1] == -1).all() and pos[16:20, 2].tolist() == side  # yt: no row axis
    assert (pos[80:, 2] == -1).all() and pos[80:84, 1].tolist() == side  # xt: no column axis

    short = tok.token_layout(8, 32, 32)  # a padded clip: row 1 (frame 8.5) is still read by frame 7
    assert short.time[16:80:4].tolist() == [0, 7] + [-1] * 14
    assert short.position[16:80:4, 0].tolist() == [0.0, 1.0] + [-1.0] * 14


# ---------------------------------------------------------------- sampling


def test_sampling_never_picks_padded_frames():
    g = torch.Generator().manual_seed(0)
    valid = torch.tensor([1, 3, 7, 128])
    coords = sample_coordinates(valid, (4, 6), 4000, g)
    assert coords.shape == (4, 4000, 3) and coords.dtype == torch.long
    for b, n in enumerate(valid.tolist()):
        assert set(coords[b, :, 0].tolist()) == set(range(n))  # every real frame, only real frames
    assert (set(coords[..., 1].flatten().tolist()) == set(range(4))
            and set(coords[..., 2].flatten().tolist()) == set(range(6)))
    frames = sample_frames(torch.tensor([5, 9]), 5, g)
    assert (frames.shape == (2, 5) and sorted(frames[0].tolist()) == list(range(5))
            and len(set(frames[1].tolist())) == 5)
    with pytest.raises(ValueError, match="distinct frames"):
        sample_frames(torch.tensor([3, 9]), 5, g)


@pytest.mark.parametrize("stage", [1, 2])
def test_training_loss_decodes_only_real_frames(monkeypatch, stage):
    tok = _tiny(stage2_frames=4)
    queried = []
    decode = tok.decode_patches
    monkeypatch.setattr(tok, "decode_patches",
                        lambda tokens, coords: queried.append(coords) or decode(tokens, coords))
    video = _video(frames=12)
    loss, parts = coordtok_training_loss(tok, video, stage=stage, num_valid_frames=torch.tensor([5, 12]))
    assert loss.ndim == 0 and math.isfinite(loss.item()) and "mse" in parts
    coords = queried[0]
    assert coords.shape == ((2, 64, 3) if stage == 1 else (2, 4 * 16, 3))
    assert coords[0, :, 0].max() < 5 and coords[1, :, 0].max() < 12
    if stage == 2:  # whole frames: each chosen frame with all 16 of its patches
        assert all(len(set(coords[b, :, 0].tolist())) == 4 for b in range(2))
        assert (coords[:, :16, 1:] == tok.patch_coordinates(1)[:, 1:]).all()


def test_padding_is_masked_out():
    """Frames past num_valid_frames change nothing: padded encoding == encoding the real frames alone."""
    tok = _tiny().eval()
    video = _video(batch=1, frames=16)
    garbage = video.clone()
    garbage[:, :, 8:] = torch.rand_like(garbage[:, :, 8:]) * 2 - 1
    alone = tok.encode(video[:, :, :8])
    padded = tok.encode(garbage, num_valid_frames=torch.tensor([8]))
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(tok.encode(garbage), alone, atol=1e-3)


# ---------------------------------------------------------------- decoding


def _coded(tokens: torch.Tensor, coords: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
    """decode_patches stand-in: every pixel of patch (t, x, y) holds 10000 t + 100 x + y (+ 0.5 per
    channel)."""
    code = (coords[..., 0] * 10000 + coords[..., 1] * 100 + coords[..., 2]).float()  # (B, M)
    channel = torch.arange(3, dtype=torch.float32) * 0.5
    return (code[:, :, None] + channel)[..., None, None, None].expand(-1, -1, -1, 1, 8, 8) + tokens.sum() * 0


@pytest.mark.parametrize("chunk_size", [0, 7, 16])
def test_decode_places_every_patch_at_its_coordinates(monkeypatch, chunk_size):
    tok = _tiny()
    monkeypatch.setattr(tok, "decode_patches", _coded)
    tokens = torch.zeros(2, 144, 8)
    video = tok.decode(tokens, num_frames=6, chunk_size=chunk_size)
    assert video.shape == (2, 3, 6, 32, 32)
    t, h, w = torch.meshgrid(torch.arange(6), torch.arange(32), torch.arange(32), indexing="ij")
    expected = (t * 10000 + (h // 8) * 100 + w // 8).float()
    for c in range(3):
        torch.testing.assert_close(video[:, c], (expected + 0.5 * c)[None].expand(2, -1, -1, -1), rtol=0,
                                   atol=0)
    coords = tok.patch_coordinates(6)[None].expand(2, -1, -1)  # patches_of reads the same places back
    torch.testing.assert_close(patches_of(video, coords, 1, 8), _coded(tokens, coords), rtol=0, atol=0)


def test_chunked_decode_runs_and_differs_from_one_sequence():
    tok = _tiny().eval()
    tokens = tok.encode(_video(frames=8))
    whole = tok.decode(tokens, num_frames=8)
    chunked = tok.decode(tokens, num_frames=8, chunk_size=16)  # one frame (4 x 4 patches) a sequence
    assert chunked.shape == whole.shape == (2, 3, 8, 32, 32) and torch.isfinite(chunked).all()
    assert not torch.allclose(chunked, whole, atol=1e-4)  # attention saw only its chunk
    torch.testing.assert_close(tok.decode(tokens, num_frames=8, chunk_size=8 * 16), whole)
    assert _tiny(chunk_size=16).eval().decode(tokens, num_frames=8).shape == whole.shape
    assert tok.decode(tokens).shape == (2, 3, 128, 32, 32)  # default: the whole clip


# ---------------------------------------------------------------- errors, checkpoints, training


@pytest.mark.parametrize("call, match", [
    (lambda t: t.encode(torch.zeros(1, 3, 129, 32, 32)), "at most 128 frames"),
    (lambda t: t.encode(torch.zeros(1, 3, 8, 64, 64)), "32x32"),
    (lambda t: t.encode(torch.zeros(3, 8, 32, 32)), "rank 5"),
    (lambda t: t.encode(torch.zeros(2, 3, 8, 32, 32), num_valid_frames=torch.tensor([9, 8])),
     "num_valid_frames"),
    (lambda t: t.decode(torch.zeros(1, 100, 8)), r"tokens \(B, 144, 8\)"),
    (lambda t: t.decode(torch.zeros(1, 144, 8), num_frames=200), "at most 128 frames"),
    (lambda t: t.decode_patches(torch.zeros(1, 144, 8), torch.zeros(1, 5, 3)), "integer coords"),
    (lambda t: t.decode_patches(torch.zeros(1, 144, 8), torch.tensor([[[0, 4, 0]]])), "patch grid"),
    (lambda t: t.num_tokens(16, 48, 48), "32x32"),
])
def test_bad_input_says_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call(_tiny())


@pytest.mark.parametrize("overrides, match", [
    ({"image_size": 40}, "image_size 40 must be a multiple of patch_size 16"),
    ({"num_frames": 12}, "num_frames 12 must be a multiple of temporal_patch_size 8"),
    ({"plane_frames": 12}, "plane_frames 12 must be a multiple of plane_temporal_patch_size 8"),
    ({"stage": 3}, "stage"),
    ({"sample_fraction": 0.0}, "sample_fraction"),
])
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_video_tokenizer("coordtok_tiny", **overrides)


def test_save_then_load_gives_identical_outputs(tmp_path):
    tok = _tiny(chunk_size=32).eval()
    video = _video(frames=8)
    tok.save_pretrained(tmp_path)
    again = load_video_tokenizer(tmp_path).eval()
    assert isinstance(again, CoordTok) and again.preset == "coordtok_tiny" and again.config == tok.config
    torch.testing.assert_close(again.encode(video), tok.encode(video), rtol=0, atol=0)
    torch.testing.assert_close(again(video), tok(video), rtol=0, atol=0)


def test_one_video_overfits():
    tok = _tiny()
    video = _video(batch=1, frames=8)
    optimizer = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    with torch.no_grad():
        start = F.mse_loss(tok(video), video).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss, _ = coordtok_training_loss(tok, video, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = F.mse_loss(tok(video), video).item()  # every patch, most never sampled in a given step
    assert end < start / 10, (start, end)


def test_stage_two_adds_the_perceptual_term_or_warns(caplog):
    tok = _tiny(stage=2, stage2_frames=3)
    video = _video(frames=8)
    seen = []

    def perceptual(x, y):  # a stand-in for PerceptualLoss: whole frames (B, 3, F, H, W) in, a scalar out
        seen.append(x.shape)
        return (x - y).abs().mean()

    loss, parts = training_loss(tok, video, perceptual, 0.5)
    assert seen == [(2, 3, 3, 32, 32)] and set(parts) == {"mse", "perceptual"}
    assert loss.item() == pytest.approx(parts["mse"] + 0.5 * parts["perceptual"], rel=1e-5)
    _warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        loss, parts = training_loss(tok, video, None, 1.0)
    assert set(parts) == {"mse"} and "MSE only" in caplog.text


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from mmvid.data.shapes.build import WorldSettings, build_world

    out = tmp_path_factory.mktemp("coordtok") / "world"
    build_world(out, WorldSettings(train=4, val=2, test=0, fewshot=0, frames=8, size=32), progress=False)
    return out


def test_trainer_uses_the_training_loss_hook(world, tmp_path, monkeypatch):
    from mmvid.config import load_config
    from mmvid.video_tokenizers.trainer import TokenizerTrainConfig, run

    calls = []
    hook = OBJECTIVES["coordtok"]
    monkeypatch.setitem(OBJECTIVES, "coordtok", Objective(hook.settings, lambda tok, *a, **k: calls.append(
        objective_of(tok).stage) or hook.loss(tok, *a, **k)))
    base = [f"data.source={world}", "data.num_frames=8", "val_videos=2", "threads=1", "log_every=1",
            "batch_size=2"]
    first = tmp_path / "stage1"
    cfg = load_config(TokenizerTrainConfig, TINY_CONFIG,
                      base + [f"out={first}", "steps=3", "val_every=3", "checkpoint_every=3"])
    val = run(cfg)
    assert calls == [1, 1, 1] and math.isfinite(val["psnr"])
    assert load_video_tokenizer(first / "final").preset == "coordtok_tiny"
    metrics = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "mse" in m] == [1, 2, 3]

    second = tmp_path / "stage2"  # stage 2 starts from stage 1's weights
    cfg = load_config(TokenizerTrainConfig, TINY_CONFIG, base + [
        f"out={second}", "steps=1", "val_every=1", "checkpoint_every=1",
        "model_overrides={stage: 2, stage2_frames: 4}", f"init_from={first / 'final'}", "lr=0"])
    run(cfg)
    assert calls[3:] == [2]
    a, b = load_video_tokenizer(first / "final"), load_video_tokenizer(second / "final")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)  # lr 0: the loaded weights, unchanged


def test_memory_bench_reports_every_frame_count():
    from mmvid.evaluation import BENCHES
    from mmvid.evaluation.runner import BenchContext

    ctx = BenchContext(model_path=None,
                       options={"preset": "coordtok_tiny", "frames": "8,16", "repeats": "1", "threads": "1"})
    result = BENCHES["coordtok_memory"](ctx)
    m = {x.name: x.value for x in result.metrics}
    assert m["sampled_patches"] == 64 and m["T16/full_patches"] == 16 * 16
    assert all(m[f"T{T}/{mode}_{unit}"] > 0
               for T in (8, 16) for mode in ("sampled", "full") for unit in ("mib", "ms"))
    assert m["T16/full_mib"] > m["T8/full_mib"] and m["full_growth_mib"] > 1
    # restored (the fixture's 1)
    assert result.settings["table"].count("\n") == 3 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="CoordTok preset"):
        BENCHES["coordtok_memory"](BenchContext(model_path=None, options={"preset": "vtok_tiny"}))
    with pytest.raises(ValueError, match="at most 128 frames"):
        BENCHES["coordtok_memory"](BenchContext(model_path=None,
                                                options={"preset": "coordtok_tiny", "frames": "256"}))

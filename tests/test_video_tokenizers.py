"""The video tokenizer interface, the frame-sampling baseline and VTok."""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from mmvid.data import frames_to_tensor
from mmvid.data.shapes.world import render, sample_scene
from mmvid.metrics import psnr
from mmvid.video_tokenizers import VIDEO_TOKENIZERS, build_video_tokenizer, load_video_tokenizer
from mmvid.video_tokenizers.losses import PerceptualLoss, build_perceptual_loss, reconstruction_loss

FRAME_COUNTS = (8, 16, 32, 64, 128)


def _video(batch=2, frames=8, size=32, seed=0) -> torch.Tensor:
    """A batch of synthetic-world clips in the model layout."""
    return torch.stack(
        [frames_to_tensor(render(sample_scene(seed + i, frames, size, size))) for i in range(batch)])


# ---------------------------------------------------------------- registry and counts


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="vtok_base"):
        build_video_tokenizer("vtok_huge")


@pytest.mark.parametrize("name", sorted(VIDEO_TOKENIZERS))
def test_every_preset_builds_on_meta_with_exact_counts(name):
    with torch.device("meta"):
        tok = build_video_tokenizer(name)
    assert tok.preset == name and sum(p.numel() for p in tok.parameters()) > 0
    size, c = tok.config.image_size, tok.config
    for T in FRAME_COUNTS:
        n = tok.num_tokens(T, size, size)
        if name.startswith("vtok"):
            assert n == c.key_tokens + math.ceil((T - 1) / c.temporal_stride)
        elif name.startswith("coordtok"):
            assert n == c.num_plane_tokens  # one triplane for any clip up to c.num_frames frames
        elif name.startswith("sweettok"):
            assert n == c.num_spatial_queries + (size // c.patch_size) ** 2  # S + G for any T
        else:
            assert n == T * c.tokens_per_frame
        assert tok.token_layout(T, size, size).num_tokens == n


def test_paper_layouts():
    with torch.device("meta"):
        clip = build_video_tokenizer("vtok_clip_l336")
    assert clip.config.key_tokens == 576 and clip.num_tokens(16, 336, 336) == 576 + 15
    assert build_video_tokenizer("vtok_base").num_tokens(16, 64, 64) == 64 + 15
    assert build_video_tokenizer("frames_base").num_tokens(16, 64, 64) == 80  # within 2% of VTok's 79
    assert build_video_tokenizer("frames_base_full").num_tokens(16, 64, 64) == 16 * 64


def test_temporal_stride_counts_and_decodes():
    tok = build_video_tokenizer("vtok_tiny", temporal_stride=3)
    video = _video(frames=8)
    tokens = tok.encode(video)
    assert tokens.shape[1] == 16 + math.ceil(7 / 3) == tok.num_tokens(8, 32, 32)
    assert tok.decode(tokens, num_frames=8).shape == video.shape
    with pytest.raises(ValueError, match="num_frames"):
        tok.decode(tokens)


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("name", ["frames_tiny", "vtok_tiny"])
def test_round_trip_shapes_and_layout(name):
    tok = build_video_tokenizer(name)
    video = _video(frames=8)
    tokens = tok.encode(video)
    assert tokens.shape == (2, tok.num_tokens(8, 32, 32), tok.token_dim)
    assert tok.decode(tokens, num_frames=8).shape == video.shape
    layout = tok.token_layout(8, 32, 32)
    assert layout.group.shape == layout.time.shape == (tokens.shape[1],)
    assert layout.position.shape == (tokens.shape[1], 3)
    assert not layout.discrete and tok.codebook_size is None


def test_vtok_layout_says_key_then_residuals():
    tok = build_video_tokenizer("vtok_tiny")
    layout = tok.token_layout(8, 32, 32)
    assert layout.groups == ("key", "residual")
    assert layout.group.tolist() == [0] * 16 + [1] * 7
    assert layout.time.tolist() == [0] * 16 + list(range(1, 8))
    middle = build_video_tokenizer("vtok_tiny", key_frame="middle").token_layout(8, 32, 32)
    assert middle.time.tolist() == [3] * 16 + [0, 1, 2, 4, 5, 6, 7]


def test_key_frame_tokens_do_not_depend_on_later_frames():
    tok = build_video_tokenizer("vtok_tiny")
    video = _video(frames=8)
    changed = video.clone()
    changed[:, :, 1:] = torch.rand_like(changed[:, :, 1:]) * 2 - 1
    a, b = tok.encode(video), tok.encode(changed)
    torch.testing.assert_close(a[:, :16], b[:, :16])
    assert not torch.allclose(a[:, 16:], b[:, 16:])


def test_static_video_gives_identical_residual_tokens():
    tok = build_video_tokenizer("vtok_tiny")
    still = _video(frames=2)[:, :, :1].expand(-1, -1, 8, -1, -1).contiguous()
    residual = tok.encode(still)[:, 16:]
    torch.testing.assert_close(residual, residual[:, :1].expand_as(residual))
    moving = tok.encode(_video(frames=8))[:, 16:]
    assert (moving - moving[:, :1]).abs().max() > 1e-4


def test_max_change_key_frame_needs_its_index_to_decode():
    tok = build_video_tokenizer("vtok_tiny", key_frame="max_change")
    video = _video(frames=8)
    video[:, :, 5:] = -video[:, :, 5:]  # a cut at frame 5
    tokens, keys = tok.encode(video, return_key_index=True)
    assert keys.tolist() == [5, 5]
    assert tok.decode(tokens, num_frames=8, key_index=keys).shape == video.shape
    with pytest.raises(ValueError, match="key_index"):
        tok.decode(tokens, num_frames=8)


@pytest.mark.parametrize(
    "video, match",
    [
        (torch.zeros(3, 8, 32, 32), "rank 5"),
        (torch.zeros(1, 1, 8, 32, 32), "3 colour channels"),
        (torch.zeros(1, 3, 1, 32, 32), "at least 2 frames"),
        (torch.zeros(1, 3, 8, 48, 48), "expects 32x32"),
        (torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8), "float video"),
    ],
)
def test_bad_input_says_what_was_expected(video, match):
    with pytest.raises(ValueError, match=match):
        build_video_tokenizer("vtok_tiny").encode(video)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="key_frame"):
        build_video_tokenizer("vtok_tiny", key_frame="last")
    with pytest.raises(ValueError, match="pool_size"):
        build_video_tokenizer("frames_tiny", pool="grid", pool_size=9)
    with pytest.raises(ValueError, match="hf_path"):
        build_video_tokenizer("vtok_tiny", feature_extractor="hf")
    with pytest.raises(ValueError, match="decoder_input"):
        build_video_tokenizer("vtok_tiny", decoder_input="grid")
    with pytest.raises(ValueError, match="decoder_head"):
        build_video_tokenizer("vtok_tiny", decoder_head="deconv")
    with pytest.raises(ValueError, match="power-of-two"):
        build_video_tokenizer("vtok_tiny", decoder_head="conv", image_size=36, patch_size=6)


def test_conv_decoder_head_starts_as_the_linear_head_and_then_draws_across_patch_borders():
    torch.manual_seed(0)
    conv = build_video_tokenizer("vtok_tiny", decoder_head="conv")
    linear = build_video_tokenizer("vtok_tiny")
    result = linear.load_state_dict(conv.state_dict(), strict=False)
    assert result.missing_keys == [] and all(k.startswith("decoder.refine.") for k in result.unexpected_keys)
    video = _video(batch=1, frames=4)
    with torch.no_grad():  # the refiner's last convolution starts at zero: the same frames
        torch.testing.assert_close(conv.eval()(video), linear.eval()(video))
    # then one grid cell's features reach the pixels of its neighbours (a linear head cannot)
    torch.nn.init.normal_(conv.decoder.refine.out.weight, std=0.1)
    grid = torch.zeros(1, conv.config.decoder_dim, 4, 4)
    grid[0, :, 1, 1] = 1.0
    with torch.no_grad():
        out = conv.decoder.refine(grid) - conv.decoder.refine(torch.zeros_like(grid))
    assert out.shape == (1, 3, 32, 32)
    assert out[..., 8:16, 16:24].abs().sum() > 0  # the cell to the right of (1, 1)


@pytest.mark.parametrize("key_pool", [0, 2])
def test_aligned_decoder_puts_each_key_token_on_its_own_cell(key_pool):
    """decoder_input="aligned": a key token enters the query of its own grid cell (of its g x g
    block when pooled), so at init, changing it changes those pixels far more than any others.
    With "memory" the token is one of many attended to, and nothing ties it to a place."""
    torch.manual_seed(0)
    tok = build_video_tokenizer("vtok_tiny", key_pool=key_pool).eval()  # grid 4 x 4 of 8-pixel patches
    tokens = tok.encode(_video(batch=1, frames=4))
    changed = tokens.clone()
    changed[0, 0] += 5.0  # the top-left key token
    with torch.no_grad():
        diff = (tok.decode(changed) - tok.decode(tokens)).abs().mean((0, 1, 2))  # (H, W)
    cell = 8 * (tok.config.grid // (key_pool or tok.config.grid))  # pixels covered by that token
    inside, outside = diff[:cell, :cell].mean(), diff.clone()
    outside[:cell, :cell] = float("nan")
    assert inside > 3 * outside.nanmean(), (inside, outside.nanmean())


# ---------------------------------------------------------------- save / load / training


@pytest.mark.parametrize("name, overrides", [("frames_tiny", {}),
                                             ("frames_tiny", {"pool": "queries", "pool_size": 3}),
                                             ("vtok_tiny", {}),
                                             ("vtok_tiny", {"residual_pool": "mean", "key_pool": 2}),
                                             ("vtok_tiny", {"decoder_input": "memory"}),
                                             ("vtok_tiny", {"decoder_head": "conv"})])
def test_save_then_load_gives_identical_outputs(tmp_path, name, overrides):
    tok = build_video_tokenizer(name, **overrides).eval()
    video = _video(frames=8)
    tok.save_pretrained(tmp_path)
    again = load_video_tokenizer(tmp_path).eval()
    assert again.preset == name and again.config == tok.config
    torch.testing.assert_close(again.encode(video), tok.encode(video), rtol=0, atol=0)
    torch.testing.assert_close(again(video), tok(video), rtol=0, atol=0)


def test_load_rejects_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a video tokenizer checkpoint"):
        load_video_tokenizer(tmp_path)


@pytest.mark.parametrize("name, overrides",
                         [("frames_tiny", {}), ("vtok_tiny", {}), ("vtok_tiny", {"decoder_input": "memory"}),
                          ("vtok_tiny", {"decoder_head": "conv"})])
def test_one_batch_overfits(name, overrides):
    torch.manual_seed(0)
    tok = build_video_tokenizer(name, **overrides)
    video = _video(batch=2, frames=8)
    optimizer = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    with torch.no_grad():
        start = psnr(tok(video).clamp(-1, 1), video).mean().item()
    for _ in range(150):
        loss, _ = reconstruction_loss(tok(video), video)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = psnr(tok(video).clamp(-1, 1), video).mean().item()
    assert end > start + 8, (start, end)


# ---------------------------------------------------------------- the frozen Hugging Face feature extractor


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    model = CLIPVisionModel(config).eval()
    folder = tempfile.mkdtemp(prefix="tiny-clip-")
    model.save_pretrained(folder)
    return folder, model


def test_vtok_with_a_frozen_hf_vision_model(tiny_clip, tmp_path):
    folder, clip = tiny_clip
    tok = build_video_tokenizer("vtok_tiny", feature_extractor="hf", hf_path=folder).eval()
    assert tok.config.dim == 32 and tok.config.hf_config["model_type"] == "clip_vision_model"
    assert not any(p.requires_grad for p in tok.features.parameters())
    video = _video(frames=4)
    feats = tok.frame_features(video)
    pixels = ((video[:, :, 0] + 1) / 2 - tok.features.mean) / tok.features.std
    expected = clip(pixel_values=pixels).last_hidden_state[:, 1:]  # the pretrained weights, no class token
    torch.testing.assert_close(feats[:, 0], expected, rtol=1e-4, atol=1e-5)
    assert tok.encode(video).shape == (2, 16 + 3, 8)
    tok.save_pretrained(tmp_path)
    again = load_video_tokenizer(tmp_path).eval()  # rebuilt from the stored config, weights from safetensors
    torch.testing.assert_close(again.encode(video), tok.encode(video))


# ---------------------------------------------------------------- losses


def test_foreground_weight_counts_object_pixels_more():
    from mmvid.video_tokenizers.losses import foreground_mask

    target = torch.full((1, 3, 2, 16, 16), -0.6)  # a grey background ...
    target[:, 0, :, 4:8, 4:8] = 0.9  # ... and a small red square
    mask = foreground_mask(target)
    assert mask.shape == (1, 1, 2, 16, 16) and mask.sum() == 2 * 16 and mask[0, 0, 0, 5, 5] == 1
    miss_object = target.clone()
    miss_object[:, 0, :, 4:8, 4:8] = -0.6  # the square left out
    miss_background = target.clone()
    miss_background[:, 0, :, 10:14, 10:14] = 0.9  # a square too many, the same squared error
    plain = [reconstruction_loss(r, target)[0].item() for r in (miss_object, miss_background)]
    assert plain[0] == pytest.approx(plain[1])
    weighted = [reconstruction_loss(r, target, foreground_weight=10)[0]
                for r in (miss_object, miss_background)]
    assert weighted[0].item() > 2 * weighted[1].item()
    assert reconstruction_loss(target, target, foreground_weight=10)[0].item() == 0
    same, parts = reconstruction_loss(miss_object, target, foreground_weight=0)
    assert same.item() == pytest.approx(plain[0]) and set(parts) == {"mse"}
    # L1 pays for a blend of object and background as much as for either one; MSE pays less for the blend
    blend = (miss_object + target) / 2
    l1 = [reconstruction_loss(r, target, pixel_loss="l1")[0].item() for r in (miss_object, blend)]
    mse = [reconstruction_loss(r, target)[0].item() for r in (miss_object, blend)]
    assert l1[1] == pytest.approx(l1[0] / 2) and mse[1] == pytest.approx(mse[0] / 4)
    assert set(reconstruction_loss(blend, target, foreground_weight=3, pixel_loss="l1")[1]) == {"mse",
                                                                                            "weighted_l1"}
    with pytest.raises(ValueError, match="pixel_loss"):
        reconstruction_loss(blend, target, pixel_loss="l2")


def test_foreground_weight_is_refused_by_an_objective_that_does_not_take_it():
    from mmvid.video_tokenizers.objectives import training_loss

    tok = build_video_tokenizer("sweettok_tiny")
    with pytest.raises(ValueError, match="foreground_weight"):
        training_loss(tok, _video(batch=1, frames=5), foreground_weight=1.0)


def test_perceptual_loss_from_a_local_weights_file(tmp_path, caplog):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    probe = PerceptualLoss.__new__(PerceptualLoss)
    torch.nn.Module.__init__(probe)
    layers, channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(channels, v, 3, padding=1), torch.nn.ReLU()]
            channels = v
    weights = {f"features.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()}
    save_file(weights, str(tmp_path / "vgg16.safetensors"))
    loss = build_perceptual_loss(str(tmp_path / "vgg16.safetensors"))
    a, b = _video(batch=1, frames=2), _video(batch=1, frames=2, seed=5)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6) and loss(a, b).item() > 0
    total, parts = reconstruction_loss(b, a, loss, perceptual_weight=0.5)
    assert set(parts) == {"mse", "perceptual"} and total.item() > parts["mse"]
    assert build_perceptual_loss(None) is None
    assert build_perceptual_loss(str(tmp_path / "missing.pth")) is None
    assert "perceptual loss off" in caplog.text


def test_tower_perceptual_loss_uses_the_frozen_tower_and_trains_only_the_reconstruction():
    from transformers import ResNetConfig

    tower = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                         out_features=["stage2"]).to_dict()
    torch.manual_seed(0)
    tok = build_video_tokenizer("vtok_tiny", feature_extractor="hf", hf_config=tower)
    loss = build_perceptual_loss("tower", tok)
    a, b = _video(batch=1, frames=2), _video(batch=1, frames=2, seed=5)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6) and loss(a, b).item() > 0
    recon = b.clone().requires_grad_()
    total, parts = reconstruction_loss(recon, a, loss, perceptual_weight=2.0)
    total.backward()
    assert set(parts) == {"mse", "perceptual"}
    assert total.item() == pytest.approx(parts["mse"] + 2.0 * parts["perceptual"], rel=1e-5)
    assert recon.grad.abs().sum() > 0 and all(p.grad is None for p in tok.features.parameters())
    assert not any(name.startswith("_features") for name in loss.state_dict())  # shared, not copied
    with pytest.raises(ValueError, match="frozen Hugging Face vision tower"):
        build_perceptual_loss("tower", build_video_tokenizer("vtok_tiny"))  # a ViT trained with it: no
    with pytest.raises(ValueError, match="frozen Hugging Face vision tower"):
        build_perceptual_loss("tower", build_video_tokenizer("vtok_tiny", feature_extractor="hf",
                                                             hf_config=tower, freeze_features=False))


def test_vtok_decodes_a_subset_of_frames_as_it_decodes_them_all():
    from mmvid.video_tokenizers.objectives import training_loss

    torch.manual_seed(0)
    tok = build_video_tokenizer("vtok_tiny", key_frame="middle").eval()
    video = _video(batch=2, frames=6)
    tokens = tok.encode(video)
    with torch.no_grad():
        every = tok.decode(tokens)
        some = tok.decode(tokens, frames=torch.tensor([0, 2, 5]))
    torch.testing.assert_close(some, every[:, :, [0, 2, 5]])
    with pytest.raises(ValueError, match="frames must be indices"):
        tok.decode(tokens, frames=torch.tensor([6]))
    loss, parts = training_loss(tok, video, decode_frames=2, foreground_weight=3)
    loss.backward()
    assert loss.item() > 0 and "weighted_mse" in parts
    assert training_loss(tok, video, decode_frames=6)[0].item() == pytest.approx(
        training_loss(tok, video)[0].item())  # every frame: the plain loss
    with pytest.raises(ValueError, match="decode_frames"):
        training_loss(build_video_tokenizer("frames_tiny"), video, decode_frames=2)

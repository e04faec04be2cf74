"""Projectors from video-tokenizer tokens into an LLM's embedding space."""

from __future__ import annotations

import pytest
import torch

from mmvid.projectors import PROJECTORS, ProjectorConfig, build_projector
from mmvid.video_tokenizers import build_video_tokenizer
from mmvid.video_tokenizers.base import TokenLayout

IN_DIM, OUT_DIM = 8, 16
CONTINUOUS = ("linear", "mlp2x_gelu", "mlp3x_gelu", "pool", "resampler")


def _config(type: str, **overrides) -> ProjectorConfig:
    defaults = dict(in_dim=IN_DIM, out_dim=OUT_DIM, num_queries=5, budget=6, depth=2, num_heads=2)
    if type == "embedding":
        defaults["codebook_size"] = 11
    return ProjectorConfig(type=type, **{**defaults, **overrides})


def _build(type: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_projector(_config(type, **overrides))


@pytest.fixture(scope="module")
def vtok_layout() -> TokenLayout:
    """16 key-frame tokens (group 0, frame 0, y/x defined) + 7 residual tokens (group 1, y/x = -1)."""
    return build_video_tokenizer("vtok_tiny").token_layout(8, 32, 32)


@pytest.fixture(scope="module")
def frames_layout() -> TokenLayout:
    return build_video_tokenizer("frames_tiny").token_layout(4, 32, 32)  # 64 tokens, one group


def _inputs(type: str, layout: TokenLayout, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if type == "embedding":
        return torch.randint(0, 11, (batch, layout.num_tokens), generator=g)
    return torch.randn(batch, layout.num_tokens, IN_DIM, generator=g)


# ---------------------------------------------------------------- registry and shapes


def test_registry_and_unknown_type():
    assert set(PROJECTORS) == {"linear", "mlp2x_gelu", "pool", "resampler", "embedding"}
    message = r"unknown projector 'mlp_huge'; known: \[.*'resampler'.*\] \(or mlp\{N\}x_gelu\)"
    with pytest.raises(KeyError, match=message):
        build_projector(ProjectorConfig(type="mlp_huge"))
    # also a ValueError, as a config field
    with pytest.raises(ValueError, match="unknown projector 'mlp0x_gelu'"):
        ProjectorConfig(type="mlp0x_gelu")
    config = ProjectorConfig()
    config.type = "qformer"  # changed after validation: build_projector still says so
    with pytest.raises(KeyError, match="unknown projector 'qformer'"):
        build_projector(config)


@pytest.mark.parametrize("type, expected", [("linear", 23), ("mlp2x_gelu", 23), ("mlp3x_gelu", 23),
                                            ("pool", 6), ("resampler", 5), ("embedding", 23)])
def test_output_shapes_and_num_outputs(type, expected, vtok_layout):
    projector = _build(type)
    out = projector(_inputs(type, vtok_layout), vtok_layout)
    assert out.shape == (2, expected, OUT_DIM) and out.dtype == torch.float32
    assert projector.num_outputs(vtok_layout.num_tokens) == expected and torch.isfinite(out).all()


def test_mlp_depths_follow_the_llava_idiom():
    def layer_types(name):
        return [type(m).__name__ for m in _build(name).mlp]

    assert layer_types("linear") == layer_types("mlp1x_gelu") == ["Linear"]
    assert layer_types("mlp2x_gelu") == ["Linear", "GELU", "Linear"]
    assert layer_types("mlp3x_gelu") == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    # mlp1x_gelu is linear-shaped: the same parameters, so linear's weights load into it (strict)
    one, lin = _build("mlp1x_gelu", seed=1, embed_layout=False), _build("linear", seed=2, embed_layout=False)
    one.load_state_dict(lin.state_dict())
    x = torch.randn(1, 3, IN_DIM)
    torch.testing.assert_close(one(x, None), lin(x, None))


@pytest.mark.parametrize("budget, num_tokens", [(6, 23), (6, 3), (6, 6)])
def test_pool_always_outputs_the_budget(budget, num_tokens):
    layout = TokenLayout(groups=("frame",), group=torch.zeros(num_tokens, dtype=torch.long),
                         time=torch.arange(num_tokens), position=torch.full((num_tokens, 3), -1.0))
    projector = _build("pool", budget=budget, max_frames=32)
    assert projector(torch.randn(1, num_tokens, IN_DIM), layout).shape == (1, budget, OUT_DIM)


def test_pool_averages_contiguous_chunks_then_applies_the_mlp():
    projector = _build("pool", budget=2, embed_layout=False)
    x = torch.randn(1, 4, IN_DIM)
    # linear first layer commutes with the mean
    pooled = torch.stack([x[:, :2].mean(1), x[:, 2:].mean(1)], dim=1)
    torch.testing.assert_close(projector(x, None), projector.mlp(pooled))


# ---------------------------------------------------------------- structure embedding


@pytest.mark.parametrize("type", [*CONTINUOUS, "embedding"])
def test_untrained_structure_changes_nothing(type, vtok_layout):
    structured = _build(type, seed=0)
    plain = _build(type, seed=3, embed_layout=False)
    missing, unexpected = plain.load_state_dict(structured.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("structure.") for k in unexpected)
    x = _inputs(type, vtok_layout)
    torch.testing.assert_close(structured(x, vtok_layout), plain(x, vtok_layout))


@pytest.mark.parametrize("type", ["mlp2x_gelu", "embedding"])
def test_group_embedding_tells_key_from_residual(type, vtok_layout):
    projector = _build(type)
    key, residual = 0, vtok_layout.num_tokens - 1
    assert [vtok_layout.groups[vtok_layout.group[i]] for i in (key, residual)] == ["key", "residual"]
    # the same features, frame and position for both tokens: only the group differs
    layout = TokenLayout(groups=vtok_layout.groups, group=vtok_layout.group.clone(),
                         time=torch.zeros(23, dtype=torch.long), position=torch.full((23, 3), 0.5))
    x = _inputs(type, layout)
    x[:, residual] = x[:, key]
    out = projector(x, layout)
    torch.testing.assert_close(out[:, key], out[:, residual])  # zero-initialised: indistinguishable
    with torch.no_grad():
        projector.structure.group.weight.normal_()
    out = projector(x, layout)
    assert (out[:, key] - out[:, residual]).abs().max() > 1e-3


def test_time_and_undefined_positions_are_embedded(frames_layout):
    projector = _build("linear")
    with torch.no_grad():
        for p in projector.structure.parameters():
            p.normal_()
    x = torch.zeros(1, frames_layout.num_tokens, IN_DIM)
    out = projector(x, frames_layout)[0]  # (64, D): 4 frames x 16 tokens
    assert (out[0] - out[16]).abs().max() > 1e-3  # same place, next frame
    undefined = TokenLayout(groups=("frame",), group=torch.zeros(2, dtype=torch.long),
                            time=torch.tensor([-1, 0]),
                            position=torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]]))
    out = projector(torch.zeros(1, 2, IN_DIM), undefined)[0]
    assert (out[0] - out[1]).abs().max() > 1e-3  # -1 is not position 0, nor frame 0


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("type", [*CONTINUOUS, "embedding"])
def test_gradients_reach_every_parameter(type, vtok_layout):
    projector = _build(type)
    projector(_inputs(type, vtok_layout), vtok_layout).pow(2).mean().backward()
    dead = [name for name, p in projector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


# ---------------------------------------------------------------- bad inputs


def test_config_rejects_bad_combinations():
    with pytest.raises(ValueError, match="embedding.*codebook_size"):
        ProjectorConfig(type="embedding")
    with pytest.raises(ValueError, match="codebook_size is only used by type='embedding'"):
        ProjectorConfig(type="linear", codebook_size=16)
    with pytest.raises(ValueError, match="out_dim 10 is not divisible by num_heads 4"):
        ProjectorConfig(type="resampler", out_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        ProjectorConfig(type="pool", budget=0)


def test_embedding_ids_out_of_range(vtok_layout):
    projector = _build("embedding")
    ids = _inputs("embedding", vtok_layout)
    for bad in (11, -1):
        ids_bad = ids.clone()
        ids_bad[0, 3] = bad
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\)"):
            projector(ids_bad, vtok_layout)
    with pytest.raises(ValueError, match="expects long token ids"):
        projector(ids.float(), vtok_layout)


def test_bad_inputs_say_what_was_expected(vtok_layout, frames_layout):
    projector = _build("mlp2x_gelu")
    x = _inputs("linear", vtok_layout)
    with pytest.raises(ValueError, match=r"rank 3 \(B, N, 8\), got shape \(23, 8\)"):
        projector(x[0], vtok_layout)
    with pytest.raises(ValueError, match=r"expects 8 channels per token \(in_dim\), got 5"):
        projector(x[..., :5], vtok_layout)
    with pytest.raises(ValueError, match="expects float tokens.*type='embedding'"):
        projector(x.long(), vtok_layout)
    with pytest.raises(ValueError, match="layout describes 64 tokens .* input has N = 23"):
        projector(x, frames_layout)
    with pytest.raises(ValueError, match="needs the TokenLayout"):
        projector(x, None)


def test_layouts_beyond_the_tables(frames_layout):
    with pytest.raises(ValueError, match="frame index 3 but max_frames is 2"):
        _build("linear", max_frames=2)(torch.randn(1, 64, IN_DIM), frames_layout)
    three = TokenLayout(groups=("a", "b", "c"), group=torch.tensor([0, 1, 2]),
                        time=torch.zeros(3, dtype=torch.long), position=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="3 groups .* max_groups is 2"):
        _build("linear", max_groups=2)(torch.randn(1, 3, IN_DIM), three)


# ---------------------------------------------------------------- the resampler's blocks (issue 18)


class _OldCrossAttentionBlock(torch.nn.Module):
    """The resampler's block before the block library (names: norm_q, norm_kv, attn, norm2, mlp)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        from mmvid.video_tokenizers.layers import MLP, Attention

        self.norm_q, self.norm_kv = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2, self.mlp = torch.nn.LayerNorm(dim), MLP(dim, 4 * dim)

    def forward(self, q, context):
        q = q + self.attn(self.norm_q(q), self.norm_kv(context))
        return q + self.mlp(self.norm2(q))


def test_a_resampler_saved_with_the_old_block_names_loads_and_computes_the_same(vtok_layout):
    old = _build("resampler", seed=3)
    old.blocks = torch.nn.ModuleList([_OldCrossAttentionBlock(OUT_DIM, 2) for _ in range(2)])
    torch.manual_seed(4)
    for p in old.parameters():  # away from the init, so a misplaced tensor shows
        torch.nn.init.normal_(p, std=0.2)
    saved = old.state_dict()
    assert any(".norm_kv." in k for k in saved) and any(".attn." in k for k in saved)
    new = _build("resampler", seed=5)
    new.load_state_dict(saved)  # strict: every old key finds its new name
    tokens = _inputs("resampler", vtok_layout)
    torch.testing.assert_close(new(tokens, vtok_layout), old(tokens, vtok_layout))
    # Same parameter order, so an old run's optimizer state lines up.
    assert [p.shape for p in new.parameters()] == [p.shape for p in old.parameters()]

"""Parity with the code before issue 18 (one block library, objectives apart): weights saved by that code
load into today's classes (strictly, old key names included) and give the same outputs and losses.

The golden files (tests/data/tokenizer_golden, written by its make.py at commit 6dcf5aa) hold the old
state-dict keys and shapes, the old config records, the seed-0 init's per-key sums and the outputs on
fixed inputs; the weights themselves are a fixed function of each key (make.py's `synthetic_state`, which
this test loads by path and calls, with its `video` and `mean_abs`, so the two cannot drift apart)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmvid.video_tokenizers import build_video_tokenizer, load_video_tokenizer
from mmvid.video_tokenizers.coordtok import upgrade_state_dict
from mmvid.video_tokenizers.layers import Attention, Block
from mmvid.video_tokenizers.objectives import (
    CoordTokObjective,
    SweetTokObjective,
    coordtok_training_loss,
    sweettok_training_loss,
)

GOLDEN = Path(__file__).parent / "data" / "tokenizer_golden"
PRESETS = {"coordtok": "coordtok_tiny", "sweettok": "sweettok_tiny", "vtok": "vtok_tiny"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_make():
    """make.py by path (it imports mmvid only inside its functions, so loading it runs no old code)."""
    spec = importlib.util.spec_from_file_location("tokenizer_golden_make", GOLDEN / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_make = _load_make()
synthetic_state, video, mean_abs = _make.synthetic_state, _make.video, _make.mean_abs


def golden(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(GOLDEN / f"{name}.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        meta = f.metadata()
    return tensors, {"overrides": json.loads(meta["note"]), "keys": json.loads(meta["keys"]),
                     "config": json.loads(meta["config"])}


def with_old_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CoordTok's keys as the code before issue 18 named them (cross-self blocks' norm1 / norm2 / norm3)."""
    renames = {".norm_q.": ".norm1.", ".norm_self.": ".norm2.", ".norm_mlp.": ".norm3."}
    out = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def loaded(name: str):
    """Today's tokenizer built as the golden one was, with the old code's weights loaded strictly."""
    out, meta = golden(name)
    tok = build_video_tokenizer(PRESETS[name], **meta["overrides"]).eval()
    tok.load_state_dict(synthetic_state(meta["keys"]))
    return tok, out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_seed_zero_init_is_unchanged(name):
    out, meta = golden(name)
    torch.manual_seed(0)
    tok = build_video_tokenizer(PRESETS[name], **meta["overrides"])
    old = {k.removeprefix("init/"): v for k, v in out.items() if k.startswith("init/")}
    new = {k: v.double().sum().float()[None] for k, v in tok.state_dict().items()}
    renamed = [next(iter(upgrade_state_dict({key: None}))) for key in meta["keys"]]
    assert renamed == list(new)  # the same order too: an old run's optimizer state still lines up
    assert upgrade_state_dict(old).keys() == new.keys()
    for key, value in new.items():
        torch.testing.assert_close(value, old[key], msg=key)


@torch.no_grad()
def test_coordtok_outputs_match_the_old_blocks():
    tok, out = loaded("coordtok")
    x = video((2, 3, 16, 32, 32), 1)
    torch.testing.assert_close(tok.encode(x), out["encode"])
    torch.testing.assert_close(tok.encode(x, num_valid_frames=torch.tensor([5, 16])), out["encode_padded"])
    torch.testing.assert_close(tok.decode(out["encode"][:1], num_frames=2), out["decode"])
    coords = torch.tensor([[[0, 1, 2], [3, 0, 0], [15, 3, 3], [7, 2, 1], [1, 1, 1]]]).expand(2, -1, -1)
    padding = torch.tensor([[False, False, True, False, True], [False] * 5])  # True = padded query
    torch.testing.assert_close(tok.decode_patches(out["encode"], coords, key_padding_mask=padding),
                               out["decode_patches"])


def test_coordtok_losses_match_the_old_objective():
    tok, out = loaded("coordtok")
    assert tok.objective == CoordTokObjective(stage2_frames=4)
    x = video((2, 3, 16, 32, 32), 1)
    for stage in (1, 2):
        loss, parts = coordtok_training_loss(tok, x, stage=stage, num_valid_frames=torch.tensor([12, 16]),
                                             perceptual=mean_abs, perceptual_weight=0.5,
                                             generator=torch.Generator().manual_seed(stage))
        torch.testing.assert_close(loss.detach()[None], out[f"loss{stage}"])
        assert parts == pytest.approx({k.split("/")[1]: float(v) for k, v in out.items()
                                       if k.startswith(f"loss{stage}/")}, rel=1e-5)


def test_sweettok_outputs_and_loss_match_the_old_code():
    tok, out = loaded("sweettok")
    assert tok.objective == SweetTokObjective(usage_weight=0.5, usage_temperature=0.05, proxy_weight=0.7)
    x = video((2, 3, 5, 16, 16), 2)
    with torch.no_grad():
        q = tok.quantize(x, usage_temperature=0.05)
        for key, value in q.items():
            expected = out[f"quantize/{key}"]
            torch.testing.assert_close(value.reshape(expected.shape), expected, msg=key)
        torch.testing.assert_close(tok.decode(q["vectors"][:1], num_frames=5), out["decode"])
        torch.testing.assert_close(tok.decode(q["ids"][1:], num_frames=3), out["decode_ids"])
        tok.config.reading = "released"
        torch.testing.assert_close(tok.encode_ids(x), out["released/ids"])
        tok.config.reading = "paper"
    loss, parts = sweettok_training_loss(tok, x, mean_abs, 0.5,
                                         proxy_targets=out["proxy_targets"])
    torch.testing.assert_close(loss.detach()[None], out["loss"])
    expected = {k.split("/")[1]: float(v) for k, v in out.items() if k.startswith("loss/")}
    assert parts == pytest.approx(expected, rel=1e-5)


@torch.no_grad()
def test_vtok_outputs_match_the_old_blocks():
    tok, out = loaded("vtok")
    x = video((2, 3, 3, 16, 16), 4)
    torch.testing.assert_close(tok.encode(x), out["encode"])
    torch.testing.assert_close(tok.decode(out["encode"], num_frames=3), out["decode"])


@pytest.mark.parametrize("name", ["coordtok", "sweettok"])
def test_a_folder_saved_by_the_old_code_loads(name, tmp_path):
    """config.json with the objective inside the architecture's config, weights under the old keys."""
    out, meta = golden(name)
    record = {"format_version": 1, "architecture": name, "preset": PRESETS[name], "config": meta["config"]}
    (tmp_path / "config.json").write_text(json.dumps(record))
    save_file(synthetic_state(meta["keys"]), str(tmp_path / "model.safetensors"))
    tok = load_video_tokenizer(tmp_path).eval()
    architecture_fields = {f.name for f in dataclasses.fields(tok.config)}
    objective_fields = {k: v for k, v in meta["overrides"].items() if k not in architecture_fields}
    assert objective_fields and tok.objective == type(tok.objective)(**objective_fields)
    with torch.no_grad():
        if name == "coordtok":
            torch.testing.assert_close(tok.encode(video((2, 3, 16, 32, 32), 1)), out["encode"])
        else:
            torch.testing.assert_close(tok.encode_ids(video((2, 3, 5, 16, 16), 2)), out["quantize/ids"])
    tok.save_pretrained(tmp_path / "again")  # today's format: the objective beside the config
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert not set(objective_fields) & set(saved["config"])
    assert saved["objective"].items() >= objective_fields.items()
    assert load_video_tokenizer(tmp_path / "again").objective == tok.objective


def test_old_coordtok_keys_upgrade_under_any_prefix():
    tok = build_video_tokenizer("coordtok_tiny")
    old = with_old_keys(tok.state_dict())
    assert "blocks.0.norm1.weight" in old and "vit_blocks.0.norm1.weight" in old  # the ViT's keep their names
    assert upgrade_state_dict(dict(old)).keys() == tok.state_dict().keys()
    parent = torch.nn.ModuleDict({"video_tokenizer": build_video_tokenizer("coordtok_tiny")})
    parent.load_state_dict({f"video_tokenizer.{k}": v for k, v in old.items()})  # strict, through the hook
    for (key, a), b in zip(tok.state_dict().items(), parent["video_tokenizer"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_one_mask_convention_true_is_padding():
    torch.manual_seed(0)
    attention, block = Attention(16, 2), Block(16, 2)
    x, context = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    masked = attention(x, context, key_padding_mask=padding)
    torch.testing.assert_close(masked[0], attention(x[:1], context[:1, :3])[0])  # padded keys are ignored
    torch.testing.assert_close(masked[1], attention(x[1:], context[1:])[0])
    padded = block(context, key_padding_mask=padding)
    torch.testing.assert_close(padded[0, :3], block(context[:1, :3])[0])


def test_a_videollm_saved_with_an_old_coordtok_loads(tmp_path):
    """A VideoLLM folder whose video tokenizer config holds CoordTok's objective fields and whose weights
    use the old cross-self block keys (as the code before issue 18 wrote them)."""
    from safetensors.torch import load_file

    from mmvid.testing import tiny_videollm, world_clips
    from mmvid.videollm import VideoLLM

    model = tiny_videollm(tmp_path, video_tokenizer="coordtok_tiny", num_frames=8)
    model.save_pretrained(tmp_path / "llm")
    record = json.loads((tmp_path / "llm" / "config.json").read_text())
    record["video_tokenizer"]["config"].update(stage=2, sample_fraction=0.03125, stage2_frames=16)
    (tmp_path / "llm" / "config.json").write_text(json.dumps(record))
    state = load_file(str(tmp_path / "llm" / "model.safetensors"))
    old = with_old_keys(state)
    assert "video_tokenizer.blocks.0.norm1.weight" in old
    save_file(old, str(tmp_path / "llm" / "model.safetensors"))
    again = VideoLLM.from_pretrained(tmp_path / "llm")
    video = world_clips(1, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.video_tokenizer.encode(video), model.video_tokenizer.encode(video),
                                   rtol=0, atol=0)


def test_objectives_dispatch_by_architecture():
    """The trainer's one call: an architecture's own objective, else reconstruction; objective fields
    among a preset's overrides go to tokenizer.objective, and ones its architecture lacks raise."""
    from mmvid.video_tokenizers.losses import reconstruction_loss
    from mmvid.video_tokenizers.objectives import OBJECTIVES, objective_of, training_loss

    assert set(OBJECTIVES) == {"coordtok", "sweettok"}
    tok = build_video_tokenizer("vtok_tiny").eval()
    x = video((1, 3, 3, 32, 32), 5)
    assert tok.objective is None and objective_of(tok) is None
    torch.testing.assert_close(training_loss(tok, x)[0], reconstruction_loss(tok(x), x)[0])
    coordtok = build_video_tokenizer("coordtok_tiny", stage=2, chunk_size=16)
    assert coordtok.objective == CoordTokObjective(stage=2) and coordtok.config.chunk_size == 16
    assert not hasattr(coordtok.config, "stage")
    with pytest.raises(ValueError, match=r"unknown vtok objective fields \['stage'\]"):
        build_video_tokenizer("vtok_tiny", stage=2)

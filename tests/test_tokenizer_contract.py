"""The video tokenizer contract: what each tokenizer declares, the errors for what it lacks, and no caller
outside mmvid/video_tokenizers probing a tokenizer with hasattr/getattr/inspect instead."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import mmvid
from mmvid.testing import world_clips
from mmvid.video_tokenizers import ARCHITECTURES, build_video_tokenizer

PACKAGE = Path(mmvid.__file__).parent

# preset, overrides, clip_frames, discrete, has a codebook, has words, decode_state
DECLARATIONS = [
    ("frames_tiny", {}, None, False, False, False, ()),
    ("vtok_tiny", {}, None, False, False, False, ()),
    ("vtok_tiny", {"key_frame": "max_change"}, None, False, False, False, ("key_index",)),
    ("coordtok_tiny", {}, 128, False, False, False, ()),
    ("sweettok_tiny", {}, 5, False, True, True, ()),
    ("sweettok_tiny", {"output": "ids"}, 5, True, True, True, ()),
]


@pytest.mark.parametrize("preset, overrides, clip_frames, discrete, codebook, words, decode_state",
                         DECLARATIONS)
def test_each_tokenizer_declares_what_callers_need(preset, overrides, clip_frames, discrete, codebook, words,
                                                   decode_state):
    tok = build_video_tokenizer(preset, **overrides).eval()
    assert tok.image_size == tok.config.image_size == 32
    assert tok.clip_frames == clip_frames
    assert tok.discrete is discrete
    assert (tok.codebook_size is not None) is codebook
    assert tok.has_words is words and (tok.words is not None) is words
    assert tok.decode_state == decode_state
    video = world_clips(batch=2, frames=8, size=32)
    with torch.no_grad():
        tokens, state = tok.encode_with_state(video)
        assert set(state) == set(decode_state)
        assert tokens.shape[:2] == (2, tok.num_tokens(8, 32, 32))
        assert tok.decode(tokens, num_frames=8, **state).shape == video.shape


@pytest.mark.parametrize("preset", ["frames_tiny", "vtok_tiny", "coordtok_tiny"])
def test_what_a_tokenizer_lacks_raises_naming_it(preset):
    tok = build_video_tokenizer(preset)
    name = type(tok).__name__
    video = world_clips(batch=1, frames=8, size=32)
    with pytest.raises(ValueError, match=rf"{name} \({preset}\) video tokenizer has no words"):
        tok.video_to_text(video)
    with pytest.raises(ValueError, match=rf"{name} .* has no codebook ids \(encode_ids\)"):
        tok.encode_ids(video)
    with pytest.raises(ValueError, match=rf"{name} .* has no codebook ids \(ids_to_vectors\)"):
        tok.ids_to_vectors(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"{name} .* has no ids"):
        tok.id_ranges()


def test_sweettok_id_ranges_and_words():
    tok = build_video_tokenizer("sweettok_tiny", output="ids")
    low, high = tok.id_ranges()
    assert len(low) == len(high) == tok.num_tokens(5, 32, 32)
    assert bool((0 <= low).all() and (low < high).all() and (high <= tok.codebook_size).all())
    assert tok.words == tok.vocabulary.words and len(tok.words) == tok.codebook_size


@pytest.mark.parametrize("preset,attr", [("vtok_tiny", "features"), ("frames_tiny", "encoder")])
def test_a_frozen_hf_feature_extractor_stays_frozen(preset, attr):
    from transformers import CLIPVisionConfig

    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=8).to_dict()
    for freeze in (True, False):
        tok = build_video_tokenizer(preset, feature_extractor="hf", hf_config=clip, freeze_features=freeze)
        # what VideoLLM.apply_trainable does with train_video_tokenizer
        tok.requires_grad_(False).requires_grad_(True)
        assert all(p.requires_grad != freeze for p in getattr(tok, attr).parameters())
        assert all(p.requires_grad for p in tok.to_tokens.parameters())


# ---------------------------------------------------------------- no probes outside video_tokenizers


def _tokenizer_names() -> set[str]:
    """Attributes, methods and config fields of the video tokenizers (those nn.Module has aside)."""
    names = {"return_key_index", "key_index"}
    for cls in ARCHITECTURES.values():
        names |= set(dir(cls)) - set(dir(nn.Module))
        names |= {f.name for f in dataclasses.fields(cls.config_class)}
    return names


def tokenizer_probes(source: str, names: set[str]) -> list[str]:
    """hasattr/getattr/inspect calls on what looks like a video tokenizer: any `inspect.*` on a tokenizer,
    any hasattr/getattr on a `video_tokenizer`, and on another `tokenizer` (not `text_tokenizer`: the
    LLM's) when the name probed is a video tokenizer's."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func, target = ast.unparse(node.func), ast.unparse(node.args[0])
        if func.startswith("inspect.") and "tokenizer" in target:
            found.append(ast.unparse(node))
        elif func in ("hasattr", "getattr") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            probed = node.args[1].value
            if "video_tokenizer" in target or ("tokenizer" in target and "text_tokenizer" not in target
                                               and probed in names):
                found.append(ast.unparse(node))
    return found


def test_the_probe_finder_finds_the_old_probes():
    probes = ['hasattr(tokenizer, "video_to_text")', 'getattr(tokenizer.config, "num_frames", None)',
              'inspect.signature(tokenizer.encode)',
              'getattr(self.video_tokenizer.config, "feature_extractor", None)',
              'getattr(self.video_tokenizer, "id_ranges", None)']
    others = ['getattr(tokenizer, "chat_template", None)', 'getattr(m.text_tokenizer, "chat_template", None)',
              'inspect.signature(llm.forward)', 'getattr(model.config, "num_frames", None)']
    found = tokenizer_probes("\n".join(probes + others), _tokenizer_names())
    assert [ast.unparse(ast.parse(p)) for p in probes] == found


def test_no_tokenizer_probes_outside_video_tokenizers():
    names = _tokenizer_names()
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "video_tokenizers" not in path.parts:
            probes = tokenizer_probes(path.read_text(), names)
            if probes:
                found[str(path.relative_to(PACKAGE))] = probes
    assert not found, f"declare these on VideoTokenizer instead of probing: {found}"

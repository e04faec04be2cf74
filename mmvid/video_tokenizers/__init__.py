"""Video tokenizers behind one interface (`VideoTokenizer`), and their registry.

    from mmvid.video_tokenizers import build_video_tokenizer, load_video_tokenizer, VIDEO_TOKENIZERS
    tok = build_video_tokenizer("vtok_base", token_dim=16)   # preset + overrides
    tok = build_video_tokenizer("coordtok_tiny", stage=2)     # objective settings go to tok.objective
    with torch.device("meta"):                                # counts without memory
        big = build_video_tokenizer("vtok_clip_l336")

The library lives here (not in the top-level `tokenizers/` job folder, which would shadow Hugging
Face's `tokenizers`); "video tokenizer" also keeps these apart from the LLM's text tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from mmvid.video_tokenizers.base import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    TokenLayout,
    VideoTokenizer,
    config_from_dict,
)
from mmvid.video_tokenizers.coordtok import (
    CoordTok,
    CoordTokConfig,
    coordtok_b,
    coordtok_base,
    coordtok_l,
    coordtok_l_3072,
    coordtok_s,
    coordtok_tiny,
)
from mmvid.video_tokenizers.frames import (
    FramesConfig,
    FramesTokenizer,
    frames_base,
    frames_base_full,
    frames_tiny,
)
from mmvid.video_tokenizers.objectives import build_objective, objective_fields, split_objective
from mmvid.video_tokenizers.sweettok import (
    SweetTok,
    SweetTokConfig,
    sweettok_base,
    sweettok_compact,
    sweettok_tiny,
)
from mmvid.video_tokenizers.vtok import VTok, VTokConfig, vtok_base, vtok_clip_l336, vtok_tiny

VIDEO_TOKENIZERS = {
    "frames_tiny": frames_tiny,
    "frames_base": frames_base,
    "frames_base_full": frames_base_full,
    "vtok_tiny": vtok_tiny,
    "vtok_base": vtok_base,
    "vtok_clip_l336": vtok_clip_l336,
    "coordtok_tiny": coordtok_tiny,
    "coordtok_base": coordtok_base,
    "coordtok_s": coordtok_s,
    "coordtok_b": coordtok_b,
    "coordtok_l": coordtok_l,
    "coordtok_l_3072": coordtok_l_3072,
    "sweettok_tiny": sweettok_tiny,
    "sweettok_base": sweettok_base,
    "sweettok_compact": sweettok_compact,
}
ARCHITECTURES = {"frames": FramesTokenizer, "vtok": VTok, "coordtok": CoordTok, "sweettok": SweetTok}


def build_video_tokenizer(name: str, **overrides) -> VideoTokenizer:
    """A preset by name, with config fields overridden; overrides that are objective settings
    (objectives.py, e.g. CoordTok's `stage`) set `tokenizer.objective`. Raises KeyError for an
    unknown name."""
    if name not in VIDEO_TOKENIZERS:
        raise KeyError(f"unknown video tokenizer {name!r}; known: {sorted(VIDEO_TOKENIZERS)}")
    names = objective_fields()
    settings = {k: overrides.pop(k) for k in list(overrides) if k in names}
    tokenizer = VIDEO_TOKENIZERS[name](**overrides)
    tokenizer.preset = name
    tokenizer.objective = build_objective(tokenizer.architecture, settings)
    return tokenizer


def load_video_tokenizer(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                         **overrides) -> VideoTokenizer:
    """Rebuild a tokenizer saved with `save_pretrained` and load its weights (safetensors, strict).

    `overrides` change config fields that leave the weights as they are (e.g. SweetTok's
    `output="ids"`) or objective settings; an unknown field raises, and one that changes the weights'
    shapes fails the strict load. Objective settings saved inside the architecture's config (before
    issue 18) move to `tokenizer.objective`, and CoordTok renames its old weight keys on load."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a video tokenizer checkpoint (needs {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE})")
    record = json.loads((path / CONFIG_FILE).read_text())
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer mmvid (format {record['format_version']} > "
                         f"{FORMAT_VERSION})")
    try:
        tokenizer = video_tokenizer_from_record(record, **overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    tokenizer.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=str(map_location)))
    return tokenizer


def video_tokenizer_from_record(record: dict, **overrides) -> VideoTokenizer:
    """The untrained tokenizer a saved record (`{"architecture", "preset", "config"}`, as config.json
    holds it) describes, with `overrides`; objective settings (overridden, saved, or inside a config from
    before issue 18) set `tokenizer.objective`. The caller loads the weights (which include an HF vision
    model's, so `hf_path` is not read again)."""
    architecture = record.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[architecture]
    overrides, objective_overrides = split_objective(architecture, overrides)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls.config_class)})
    if unknown:
        raise ValueError(f"unknown {architecture} config fields {unknown} in the overrides")
    data, settings = split_objective(architecture, record["config"])  # format 1 before issue 18 mixed them
    data = {**data, **overrides}
    if "hf_path" in data:
        data["hf_path"] = None  # the checkpoint's own weights include the vision model
    tokenizer = cls(config_from_dict(cls.config_class, data))
    tokenizer.preset = record.get("preset")
    settings.update(record.get("objective", {}), **objective_overrides)
    tokenizer.objective = build_objective(architecture, settings)
    return tokenizer


def video_tokenizer_from(spec: str | os.PathLike, **overrides) -> VideoTokenizer:
    """A saved tokenizer folder (`save_pretrained`) or a preset name (built untrained), as
    `VideoLLMConfig.video_tokenizer` and eval options like `--tokenizer` take them, with config
    `overrides`; anything else raises, listing the presets."""
    if Path(spec).is_dir():
        return load_video_tokenizer(spec, **overrides)
    if str(spec) in VIDEO_TOKENIZERS:
        return build_video_tokenizer(str(spec), **overrides)
    raise FileNotFoundError(f"{str(spec)!r} is neither a saved video tokenizer folder nor a preset; "
                            f"presets: {sorted(VIDEO_TOKENIZERS)}")


__all__ = [
    "ARCHITECTURES",
    "VIDEO_TOKENIZERS",
    "CoordTok",
    "CoordTokConfig",
    "FramesConfig",
    "FramesTokenizer",
    "SweetTok",
    "SweetTokConfig",
    "TokenLayout",
    "VTok",
    "VTokConfig",
    "VideoTokenizer",
    "build_video_tokenizer",
    "load_video_tokenizer",
    "video_tokenizer_from",
    "video_tokenizer_from_record",
]

"""The built-in synthetic video world: scenes of coloured shapes acting over time.

- `world`: ground truth (`Scene`, `ObjectSpec`), sampling from a seed, the motion model, rendering.
- `text`: captions, LLaVA conversations, TV-Align-style questions, text-to-video prompts, lexicon.
- `analyzer`: recovers objects (colour, shape, size, action, events) from frames, and scores them.
- `build`: writes a data set folder (`python -m mmvid.data.shapes --out data/shapes`).
"""

from mmvid.data.shapes.build import (
    WorldExistsError,
    WorldSettings,
    build_world,
    load_truth,
    read_settings,
    scene_for,
)
from mmvid.data.shapes.world import (
    ACTIONS,
    COLOURS,
    DEFAULT_HELD_OUT,
    SHAPES,
    ObjectSpec,
    Scene,
    render,
    sample_scene,
)

_ANALYZER = ("Analysis", "TrackedObject", "analyze", "compare")


def __getattr__(name: str):
    # The analyzer loads lazily, so `python -m mmvid.data.shapes.analyzer` does not import itself twice.
    if name in _ANALYZER:
        from mmvid.data.shapes import analyzer

        return getattr(analyzer, name)
    raise AttributeError(f"module 'mmvid.data.shapes' has no attribute {name!r}")


__all__ = [
    "ACTIONS",
    "COLOURS",
    "DEFAULT_HELD_OUT",
    "SHAPES",
    "Analysis",
    "ObjectSpec",
    "Scene",
    "TrackedObject",
    "WorldExistsError",
    "WorldSettings",
    "analyze",
    "build_world",
    "compare",
    "load_truth",
    "read_settings",
    "render",
    "sample_scene",
    "scene_for",
]

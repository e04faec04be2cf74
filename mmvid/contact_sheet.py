"""Contact sheets: a few frames of several videos side by side, one row per item, as one PNG.

    from mmvid.contact_sheet import contact_sheet
    contact_sheet([("a red star spins", {"real": real, "generated": fake})], "sheet.png")

`python eval/run.py --bench tv_align_gen --option save=DIR` writes `DIR/contact_sheet.png` this way: each
prompt with its real video and its generation.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def strip(frames, count: int = 4) -> np.ndarray:
    """uint8 (T, H, W, 3) -> `count` evenly spaced frames side by side (H, count * W + gaps, 3)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"a contact sheet takes uint8 frames (T, H, W, 3), got {frames.dtype} "
                         f"{frames.shape}")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    gap = np.full((frames.shape[1], 2, 3), 255, np.uint8)
    parts = []
    for i in picks:
        parts += [frames[i], gap]
    return np.concatenate(parts[:-1], axis=1)


def contact_sheet(rows: list[tuple[str, dict[str, np.ndarray]]], path: str | Path, frames: int = 4,
                  wrap: int = 60) -> Path:
    """One PNG: for each row a caption (wrapped at `wrap` characters) and, per named video, `frames` of its
    frames. Every row must name the same videos, in the same order (the column titles)."""
    from mmvid.plots import pyplot, save_figure

    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    columns = list(rows[0][1])
    if any(list(videos) != columns for _, videos in rows):
        raise ValueError(f"every row must have the videos {columns}, in that order")
    fig, axes = pyplot().subplots(len(rows), len(columns) + 1, squeeze=False,
                             figsize=(2.6 + 1.6 * frames * len(columns), 1.9 * len(rows)),
                             gridspec_kw={"width_ratios": [1.6] + [frames] * len(columns)})
    for r, (caption, videos) in enumerate(rows):
        axes[r, 0].text(0, 0.5, textwrap.fill(caption, wrap // 2), va="center", ha="left", fontsize=7,
                        wrap=True)
        axes[r, 0].axis("off")
        for c, name in enumerate(columns):
            ax = axes[r, c + 1]
            ax.imshow(strip(videos[name], frames), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    return save_figure(fig, path)

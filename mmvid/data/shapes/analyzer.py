"""Recover the objects of a synthetic-world video from its pixels, by plain image processing.

    analysis = analyze(frames)          # frames: uint8 (T, H, W, 3), rendered or decoded from mp4
    for obj in analysis.objects: obj.colour, obj.shape, obj.size, obj.action, obj.event
    scores = compare(scene, analysis)   # per-attribute hits against the ground truth

How: every pixel is explained as background + alpha * (palette colour - background); the colour
with the smallest residual owns it when alpha > 0.5 (the rendered shape's outline). Colours are
distinct within a scene, so each colour is one track: its largest component per frame gives
presence, centroid and area. The shape is the template (rendered with the world's own geometry,
fitted in area, searched over rotation) with the best soft IoU; the action follows from the
track: presence flips (blink, appear/leave), area change (grow/shrink/pulse), and the centroid
path (straight moves in 8 directions, zigzag, orbit, bounce, shake), with spin told from
stillness by the rotation of the best template.

This scores generated videos later, so it assumes nothing it could not see: it does not read the
scene, only the frames.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mmvid.data.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    MOVES,
    SHAPES,
    SIZES,
    SYMMETRY,
    Scene,
    coverage,
)

_PALETTE = np.array(list(COLOURS.values()), np.float32)  # (K, 3)
_NAMES = list(COLOURS)
_DARK = max(max(c) for c in BACKGROUNDS.values()) + 40  # brighter than any background


def _unit_areas() -> dict[str, float]:
    """Area of each shape at circumradius 1, measured with the renderer itself."""
    r = 60.0
    return {s: float(coverage(s, 64.0, 64.0, r, 0.0, 128, 128).sum()) / r**2 for s in SHAPES}


UNIT_AREA = _unit_areas()


@dataclass
class TrackedObject:
    colour: str
    present: np.ndarray  # bool (T,)
    x: np.ndarray  # (T,) centroid, fraction of the width (nan when absent)
    y: np.ndarray  # (T,) fraction of the height
    area: np.ndarray  # (T,) pixels (soft), 0 when absent
    shape: str = ""
    size: str = ""
    action: str = ""
    direction: str | None = None  # the 8-way direction of the net displacement, when it moved
    event: str | None = None  # "appear" | "leave" | None
    event_frame: int = 0
    angles: np.ndarray | None = None  # per present frame, degrees, when rotation was measured

    @property
    def num_frames(self) -> int:
        return len(self.present)


@dataclass
class Analysis:
    objects: list[TrackedObject] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.objects)

    def by_colour(self) -> dict[str, TrackedObject]:
        return {o.colour: o for o in self.objects}


# ----------------------------------------------------------------------------------------------
# Segmentation and tracking
# ----------------------------------------------------------------------------------------------


def _explain_pixels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the owning palette colour (-1 for background) and its alpha.

    Returns:
        label int8 (T, H, W), alpha float32 (T, H, W).
    """
    x = frames.astype(np.float32)
    T = x.shape[0]
    dark = x.max(-1) < _DARK
    bg = np.stack([np.median(x[t][dark[t]], axis=0) if dark[t].any() else np.median(x[t].reshape(-1, 3), 0)
                   for t in range(T)])
    d = x - bg[:, None, None, :]  # (T, H, W, 3)
    c = _PALETTE[None, :, :] - bg[:, None, :]  # (T, K, 3)
    # alpha of each colour, least squares along (colour - background)
    alpha = np.einsum("thwc,tkc->thwk", d, c) / (c * c).sum(-1)[:, None, None, :]
    alpha = np.clip(alpha, 0.0, 1.0)
    residual = np.linalg.norm(d[..., None, :] - alpha[..., None] * c[:, None, None, :, :], axis=-1)
    # The colour that explains the pixel best owns it; it is foreground when that colour covers
    # more than half of it. (Choosing among colours with alpha > 0.5 only would hand a half-covered
    # orange edge pixel to red, whose line from the background passes close by.)
    residual = np.where(alpha > 0.2, residual, np.inf)
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    label = np.where(np.isfinite(residual.min(-1)) & (best_alpha > 0.5), best, -1).astype(np.int8)
    return label, best_alpha.astype(np.float32)


_CROSS = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)  # 2-D cross, no reach across frames


def _min_area(height: int, width: int) -> float:
    smallest = min(UNIT_AREA.values()) * (min(SIZES.values()) * 0.6 * min(height, width)) ** 2
    return max(4.0, 0.3 * smallest)


def track_objects(frames: np.ndarray) -> list[TrackedObject]:
    """One track per palette colour that shows up in enough frames."""
    T, H, W, _ = frames.shape
    label, alpha = _explain_pixels(frames)
    min_area = _min_area(H, W)
    tracks = []
    for k, name in enumerate(_NAMES):
        mask = label == k
        if mask.sum() < min_area:
            continue
        # A real object has interior pixels; compression halos along other objects' edges
        # (orange edges decode yellowish) are a pixel or so thick and vanish under erosion.
        core = ndimage.binary_erosion(mask, structure=_CROSS)
        present = np.zeros(T, bool)
        xs, ys, areas = np.full(T, np.nan), np.full(T, np.nan), np.zeros(T)
        for t in range(T):
            if not core[t].any():
                continue
            components, n = ndimage.label(mask[t])
            sizes = ndimage.sum_labels(mask[t], components, index=np.arange(1, n + 1))
            sizes[np.unique(components[core[t]]) - 1] += mask[t].size  # components with a core first
            biggest = components == (int(np.argmax(sizes)) + 1)
            # Soft area: alpha of this colour over the component and a one-pixel ring around it.
            ring = ndimage.binary_dilation(biggest) & ((label[t] == k) | (label[t] == -1))
            a = np.where(ring, _colour_alpha(frames[t], k), 0.0)
            area = float(a.sum())
            if area < min_area:
                continue
            yy, xx = np.mgrid[0:H, 0:W]
            present[t] = True
            areas[t] = area
            xs[t] = float((a * (xx + 0.5)).sum() / area) / W
            ys[t] = float((a * (yy + 0.5)).sum() / area) / H
        # Specks from compression at other objects' edges flicker; a real object persists.
        if present.sum() >= max(2, math.ceil(0.2 * T)):
            tracks.append(TrackedObject(name, present, xs, ys, areas))
    return tracks


def _colour_alpha(frame: np.ndarray, k: int) -> np.ndarray:
    """alpha of palette colour k at every pixel of one frame, against that frame's background."""
    x = frame.astype(np.float32)
    dark = x.max(-1) < _DARK
    bg = np.median(x[dark], axis=0) if dark.any() else np.median(x.reshape(-1, 3), 0)
    c = _PALETTE[k] - bg
    return np.clip(((x - bg) @ c) / float(c @ c), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Shape, rotation and size
# ----------------------------------------------------------------------------------------------


def _crop(track: TrackedObject, frame: np.ndarray, t: int, k: int):
    """The track's alpha map around its centroid in frame t, and the crop box."""
    H, W = frame.shape[:2]
    radius = math.sqrt(track.area[t] / min(UNIT_AREA.values()))  # generous: the widest reading
    cx, cy = track.x[t] * W, track.y[t] * H
    box = (max(0, int(cy - radius) - 2), max(0, int(cx - radius) - 2), min(H, int(cy + radius) + 3),
           min(W, int(cx + radius) + 3))
    a = _colour_alpha(frame[box[0] : box[2], box[1] : box[3]], k)
    return a, box, cx, cy


def _best_angle(shape: str, observed: np.ndarray, box, cx, cy, radius, H, W, step: float = 6.0):
    """The rotation whose template best matches `observed`: a grid over the shape's symmetry
    period, then a finer grid around the winner. Returns (soft IoU, angle in degrees)."""
    period = SYMMETRY[shape]
    if period == 0:
        return _soft_iou(observed, coverage(shape, cx, cy, radius, 0.0, H, W, box)), 0.0
    angles = np.arange(0.0, period, step)
    for _ in range(2):
        ious = _soft_iou(observed, coverage(shape, cx, cy, radius, angles, H, W, box))
        best = int(np.argmax(ious))
        centre, step = angles[best], step / 3
        angles = centre + step * np.arange(-2, 3)
    return float(ious[best]), float(angles[2])


def _soft_iou(a: np.ndarray, b: np.ndarray):
    """Soft IoU of `a` (h, w) with `b` (..., h, w): sum of minima over sum of maxima."""
    return np.minimum(a, b).sum((-2, -1)) / np.maximum(np.maximum(a, b).sum((-2, -1)), 1e-6)


def classify_shape(track: TrackedObject, frames: np.ndarray) -> str:
    """The shape whose fitted template matches best, summed over up to 3 of the largest views."""
    T, H, W, _ = frames.shape
    k = _NAMES.index(track.colour)
    views = np.argsort(-track.area)[: min(3, int(track.present.sum()))]
    totals = dict.fromkeys(SHAPES, 0.0)
    for t in views:
        observed, box, cx, cy = _crop(track, frames[t], int(t), k)
        for shape in SHAPES:
            radius = math.sqrt(track.area[t] / UNIT_AREA[shape])
            totals[shape] += float(_best_angle(shape, observed, box, cx, cy, radius, H, W)[0])
    return max(totals, key=totals.get)


def rotation_angles(track: TrackedObject, frames: np.ndarray) -> np.ndarray:
    """Best template rotation in every present frame, unwrapped over the shape's symmetry."""
    T, H, W, _ = frames.shape
    k = _NAMES.index(track.colour)
    period = SYMMETRY[track.shape]
    angles = []
    for t in np.flatnonzero(track.present):
        observed, box, cx, cy = _crop(track, frames[t], int(t), k)
        radius = math.sqrt(track.area[t] / UNIT_AREA[track.shape])
        angles.append(_best_angle(track.shape, observed, box, cx, cy, radius, H, W)[1])
    angles = np.asarray(angles)
    if period == 0 or len(angles) < 2:
        return np.zeros(len(angles))
    return np.unwrap(angles * 2 * np.pi / period) * period / (2 * np.pi)


def _size(track: TrackedObject, H: int, W: int) -> str:
    radius = math.sqrt(float(np.median(track.area[track.present])) / UNIT_AREA[track.shape]) / min(H, W)
    threshold = (SIZES["small"] + SIZES["large"]) / 2
    return "large" if radius > threshold else "small"


# ----------------------------------------------------------------------------------------------
# Actions
# ----------------------------------------------------------------------------------------------

_DIRECTIONS = {  # angle of the motion (y up), degrees -> action
    0: "move_right", 45: "move_up_right", 90: "move_up", 135: "move_up_left",
    180: "move_left", 225: "move_down_left", 270: "move_down", 315: "move_down_right",
}


def direction_of(dx: float, dy: float) -> str:
    """8-way direction of a displacement (y down, as on screen)."""
    angle = math.degrees(math.atan2(-dy, dx)) % 360
    return _DIRECTIONS[int(round(angle / 45.0)) % 8 * 45]


def _reversals(v: np.ndarray, tolerance: float) -> int:
    """Number of direction changes of a 1-D path, ignoring wiggles below `tolerance`."""
    count, anchor, trend = 0, v[0], 0
    for value in v[1:]:
        step = value - anchor
        if abs(step) < tolerance:
            continue
        sign = 1 if step > 0 else -1
        if trend and sign != trend:
            count += 1
        trend, anchor = sign, value
    return count


def classify_action(track: TrackedObject, frames: np.ndarray) -> str:
    flips = int(np.count_nonzero(np.diff(track.present.astype(np.int8))))
    if flips >= 2:
        return "blink"
    p = track.present
    x, y, area = track.x[p], track.y[p], track.area[p]
    n = len(x)
    edge = max(1, n // 5)
    start_area, end_area = float(np.median(area[:edge])), float(np.median(area[-edge:]))
    if area.max() / max(area.min(), 1e-6) > 1.8:
        if end_area / start_area > 1.8 and _reversals(np.sqrt(area), 0.1 * np.sqrt(area.max())) == 0:
            return "grow"
        if start_area / end_area > 1.8 and _reversals(np.sqrt(area), 0.1 * np.sqrt(area.max())) == 0:
            return "shrink"
        return "pulse"
    dx, dy = float(x[-1] - x[0]), float(y[-1] - y[0])
    net = math.hypot(dx, dy)
    path = float(np.hypot(np.diff(x), np.diff(y)).sum())
    straight = net / path if path > 0 else 1.0
    range_x, range_y = float(np.ptp(x)), float(np.ptp(y))
    if range_x < 0.04 and range_y < 0.04:
        if SYMMETRY.get(track.shape, 0) and n >= 2:
            track.angles = rotation_angles(track, frames)
            if np.ptp(track.angles) > 45.0:
                return "spin"
        return "stay_still"
    if net > 0.1 and straight > 0.85:
        return direction_of(dx, dy)
    if abs(dx) > 0.15 and range_y > 0.06 and _reversals(y, 0.03) >= 1:
        return "zigzag"
    if range_x > 0.15 and range_y > 0.15:
        return "orbit"
    if range_y > range_x:
        return "bounce"
    return "shake"


def analyze(frames) -> Analysis:
    """Recover every object of a synthetic-world video.

    Args:
        frames: uint8 (T, H, W, 3) (a torch tensor or numpy array).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"analyze expects uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    tracks = track_objects(frames)
    for track in tracks:
        track.shape = classify_shape(track, frames)
        track.size = _size(track, H, W)
        track.action = classify_action(track, frames)
        p = np.flatnonzero(track.present)
        if track.action != "blink":
            if p[0] > 0:
                track.event, track.event_frame = "appear", int(p[0])
            elif p[-1] < T - 1:
                track.event, track.event_frame = "leave", int(p[-1]) + 1
        dx, dy = track.x[p[-1]] - track.x[p[0]], track.y[p[-1]] - track.y[p[0]]
        if math.hypot(dx, dy) > 0.1:
            track.direction = direction_of(float(dx), float(dy))
    return Analysis(tracks)


# ----------------------------------------------------------------------------------------------
# Scoring against ground truth
# ----------------------------------------------------------------------------------------------

ATTRIBUTES = ("colour", "count", "shape", "size", "action", "direction", "event")


def compare(scene: Scene, analysis: Analysis) -> dict[str, list[bool]]:
    """Hits per attribute for one video.

    colour: per true object, a track of its colour was found; count: per video, the number of
    tracks equals the number of objects; shape, size, action, event: per true object that was
    found; direction: per true object whose action is a straight move, the found track's net
    displacement points the same of 8 ways.
    """
    found = analysis.by_colour()
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    hits["count"].append(analysis.count == len(scene.objects))
    for obj in scene.objects:
        track = found.get(obj.colour)
        hits["colour"].append(track is not None)
        if track is None:
            continue
        hits["shape"].append(track.shape == obj.shape)
        hits["size"].append(track.size == obj.size)
        hits["action"].append(track.action == obj.action)
        hits["event"].append(track.event == obj.event)
        if obj.action in MOVES:
            hits["direction"].append(track.direction == obj.action)
    return hits


# ----------------------------------------------------------------------------------------------
# Accuracy on a built world: `python -m mmvid.data.shapes.analyzer data/shapes --split test`
# ----------------------------------------------------------------------------------------------


def _score_video(args: tuple[str, str]) -> dict[str, dict[str, list[bool]]]:
    """Hits of one video, analysed from its re-rendered frames and from its decoded mp4."""
    from mmvid.data.shapes.build import load_truth
    from mmvid.data.shapes.world import render
    from mmvid.data.video_io import read_video

    truth, mp4 = args
    scene = load_truth(truth)
    return {
        "rendered": compare(scene, analyze(render(scene))),
        "mp4": compare(scene, analyze(read_video(mp4).frames.numpy())),
    }


def evaluate_split(root, split: str = "test", limit: int | None = None, workers: int = 1,
                   progress: bool = True):
    """Per-attribute analyzer accuracy on a world split: {source: {attribute: (accuracy, n)}}."""
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from tqdm import tqdm

    videos = sorted((Path(root) / split / "videos").glob("*.mp4"))[:limit]
    if not videos:
        raise FileNotFoundError(f"no videos in {Path(root) / split / 'videos'}; build the world first")
    tasks = [(str(v.with_suffix(".json")), str(v)) for v in videos]
    totals: dict[str, dict[str, list[bool]]] = {}
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for result in tqdm(pool.map(_score_video, tasks, chunksize=4), total=len(tasks),
                           desc=f"analysing {split}", unit="video", disable=not progress):
            for source, hits in result.items():
                for attribute, values in hits.items():
                    totals.setdefault(source, {}).setdefault(attribute, []).extend(values)
    return {s: {a: (float(np.mean(v)) if v else float("nan"), len(v)) for a, v in d.items()}
            for s, d in totals.items()}


class _Serial:
    """A stand-in for a process pool that maps in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items, chunksize=1):
        return map(fn, items)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import os
    import time

    parser = argparse.ArgumentParser(
        prog="python -m mmvid.data.shapes.analyzer",
        description="Measure the analyzer's accuracy on a built synthetic world.")
    parser.add_argument("root", nargs="?", default="data/shapes", help="world folder (default %(default)s)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N videos only")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--output", help="write the result as JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        result = evaluate_split(args.root, args.split, args.limit, max(1, args.workers))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"{'attribute':<10} {'rendered':>14} {'mp4':>14}")
    for attribute in ATTRIBUTES:
        cells = [f"{result[s][attribute][0]:.4f} ({result[s][attribute][1]})" for s in ("rendered", "mp4")]
        print(f"{attribute:<10} {cells[0]:>14} {cells[1]:>14}")
    n = result["rendered"]["count"][1]
    print(f"{n} videos in {seconds:.1f} s ({2 * n / seconds:.1f} analyses/s with {args.workers} workers)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"root": args.root, "split": args.split, "videos": n, "accuracy": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for tests (mmvid's and users'): small videos with known content, written on the spot.

Nothing here downloads anything; every helper builds its data from arguments.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

# Frame t of an "indexed" clip is a flat grey of level BASE + STEP * t, so the decoded content
# tells which source frame came back, even after lossy H.264.
BASE, STEP = 16, 6


def indexed_frames(num_frames: int, height: int = 32, width: int = 32) -> np.ndarray:
    """uint8 (T, H, W, 3) whose frame t is the grey level BASE + STEP * t (at most 40 frames)."""
    if BASE + STEP * (num_frames - 1) > 255:
        raise ValueError(f"at most {(255 - BASE) // STEP + 1} frames have distinct grey levels")
    levels = BASE + STEP * np.arange(num_frames, dtype=np.int64)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8).copy()


def frame_index_of(frames) -> list[int]:
    """Each decoded indexed frame's source index, from its mean grey level."""
    means = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1).mean(1)
    return [int(round((m - BASE) / STEP)) for m in means]


def write_offset_video(path: str | Path, num_frames: int, fps: int, first_pts: int) -> Path:
    """An indexed H.264 mp4 whose first frame is shown at `first_pts / fps` seconds, not 0."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for t, array in enumerate(indexed_frames(num_frames)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = first_pts + t, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path

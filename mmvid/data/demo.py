"""A small end-to-end data job: render clips, write them as mp4, write a LLaVA-format data file,
and read every clip back through each installed decoder.

    python -m mmvid.data.demo --out data/demo [--videos 24] [--frames 16] [--size 64] [--seed 0]
    python -m mmvid.data.validate data/demo/sft.json

Each clip is one coloured square moving in one of four directions on a dark background; the
conversations ask for its colour and direction. This is the foundation's stand-in for the
built-in synthetic world, which supersedes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmvid.data.video_io import VideoDecodeError, available_backends, read_video, write_video

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def render_square_clip(colour: str, direction: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, H, W, 3): a square of `colour` crossing the frame towards `direction`."""
    side = max(2, size // 5)
    dy, dx = DIRECTIONS[direction]
    travel = size - side
    # Start on the side opposite the direction of motion, at a random position across it.
    across = int(rng.integers(0, travel + 1))
    video = np.full((frames, size, size, 3), 16, np.uint8)
    for t in range(frames):
        along = round(t * travel / max(1, frames - 1))
        y = (along if dy > 0 else travel - along) if dy else across
        x = (along if dx > 0 else travel - along) if dx else across
        video[t, y : y + side, x : x + side] = COLOURS[colour]
    return video


def build(out: Path, videos: int, frames: int, size: int, seed: int, fps: float = 8.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    samples = []
    start = time.perf_counter()
    for i in tqdm(range(videos), desc="rendering and writing clips", unit="video"):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        rel = f"videos/{i:05d}.mp4"
        write_video(out / rel, render_square_clip(colour, direction, frames, size, rng), fps=fps)
        samples.append(
            {
                "id": f"demo-{i:05d}",
                "video": rel,
                "conversations": [
                    {"from": "human", "value": "<video>\nDescribe the video."},
                    {"from": "gpt", "value": f"A {colour} square moves {direction}."},
                    {"from": "human", "value": "Which way does the square move?"},
                    {"from": "gpt", "value": direction},
                ],
            }
        )
    elapsed = time.perf_counter() - start
    (out / "sft.json").write_text(json.dumps(samples, indent=1))
    print(f"wrote {videos} clips ({frames}x{size}x{size}) and sft.json to {out}: {videos / elapsed:.1f} videos/s")
    return samples


def check_backends(out: Path, samples: list[dict], frames: int) -> bool:
    """Read every clip with each installed backend; they must agree on frame count and times."""
    times: dict[str, dict[str, torch.Tensor]] = {}
    for backend in available_backends():
        start = time.perf_counter()
        times[backend], failed = {}, []
        for sample in samples:
            try:
                video = read_video(out / sample["video"], num_frames=frames, backend=backend, strict=True)
                times[backend][sample["video"]] = video.timestamps
            except VideoDecodeError as e:
                failed.append(str(e))
        rate = len(samples) / (time.perf_counter() - start)
        print(f"read back {len(samples)} clips with {backend}: {rate:.1f} videos/s")
        if failed:  # e.g. decord 0.6 on widths such as 16 or 48; "auto" falls back
            print(f"  {backend} could not decode {len(failed)} clips; first: {failed[0]}")
    reference, *others = times
    disagree = [
        (other, path)
        for other in others
        for path, a in times[reference].items()
        if path in times[other] and (a.shape != times[other][path].shape or not torch.allclose(a, times[other][path], atol=1e-4))
    ]
    for other, path in disagree:
        print(f"  {other} and {reference} disagree on {path}", file=sys.stderr)
    return not disagree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmvid.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/demo", help="output folder (default %(default)s)")
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="height and width in pixels (even)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.videos < 1 or args.frames < 2 or args.size < 8 or args.size % 2:
        parser.error("need --videos >= 1, --frames >= 2 and an even --size >= 8")
    out = Path(args.out)
    samples = build(out, args.videos, args.frames, args.size, args.seed)
    return 0 if check_backends(out, samples, args.frames) else 1


if __name__ == "__main__":
    sys.exit(main())

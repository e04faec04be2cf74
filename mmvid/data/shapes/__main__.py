"""Build a synthetic-world data set: `python -m mmvid.data.shapes --out data/shapes [...]`.

See `mmvid.data.shapes.build` for the folder layout. Examples:

    python -m mmvid.data.shapes --out data/shapes                       # the default world
    python -m mmvid.data.shapes --out data/tiny --train 64 --val 16 --test 16 --frames 16 --size 32
    python -m mmvid.data.shapes --out data/long --frames 128 --size 128 # CoordTok-sized clips
"""

from __future__ import annotations

import argparse
import os
import sys

from mmvid.data.shapes.build import WorldExistsError, WorldSettings, build_world
from mmvid.data.shapes.world import ACTIONS


def main(argv: list[str] | None = None) -> int:
    defaults = WorldSettings()
    parser = argparse.ArgumentParser(prog="python -m mmvid.data.shapes",
                                     description="Build a synthetic-world data set.")
    parser.add_argument("--out", default="data/shapes", help="output folder (default %(default)s)")
    for name in ("train", "val", "test"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name),
                            help=f"{name} videos (default %(default)s)")
    parser.add_argument("--fewshot", type=int, default=defaults.fewshot,
                        help="few-shot videos per held-out action (default %(default)s)")
    parser.add_argument("--frames", type=int, default=defaults.frames,
                        help="frames per video (default %(default)s)")
    parser.add_argument("--size", type=int, default=defaults.size,
                        help="height = width in pixels, even (default %(default)s)")
    parser.add_argument("--fps", type=float, default=defaults.fps,
                        help="frame rate written to the mp4 (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="base seed; splits use disjoint seeds (default %(default)s)")
    parser.add_argument("--held-out", default=",".join(defaults.held_out),
                        help="comma-separated actions kept out of train/val/test for few-shot (default "
                             f"%(default)s; known: {','.join(ACTIONS)})")
    parser.add_argument("--crf", type=int, default=defaults.crf,
                        help="H.264 quality, lower is better (default %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        settings = WorldSettings(
            train=args.train, val=args.val, test=args.test, fewshot=args.fewshot, frames=args.frames,
            size=args.size,
            fps=args.fps, seed=args.seed, held_out=tuple(a for a in args.held_out.split(",") if a),
            crf=args.crf,
        )
    except ValueError as e:
        parser.error(str(e))
    try:
        record = build_world(args.out, settings, workers=max(1, args.workers))
    except WorldExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v['videos']}" for k, v in record["counts"].items())
    if record.get("reused"):
        print(f"{args.out}: already built with these settings ({counts} videos); nothing to do")
    else:
        print(f"{args.out}: {counts} videos ({settings.frames}x{settings.size}x{settings.size}) in "
              f"{record['build_seconds']} s: {record['videos_per_second']} videos/s with "
              f"{record['workers']} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())

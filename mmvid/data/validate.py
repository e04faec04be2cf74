"""Check training data (yours or mmvid's) before training on it.

    python -m mmvid.data.validate DATA.json [MORE.jsonl MIX.yaml ...] [--format auto] [--seed 0]
                                  [--video-root DIR] [--num-frames 8] [--sampling uniform] [--fps F]
                                  [--no-decode] [--show 5] [--report report.json]

Reads each file in any format mmvid.data.conversations knows (mmvid, LLaVA / LLaVA-Video-178K with `<image>`
for the video, LLaMA-Factory / ms-swift ShareGPT; `--format` forces one) and a LLaVA-NeXT mixture YAML
(mmvid.data.mixture) as the rows it selects (`--seed`: training's seed, for `random:`). Checks every sample:
structure (turns alternate human/gpt), one `<video>` placeholder per video (a mismatch names the sample by
its id, or by its file and index when it has none), no empty questions or answers, every video present and
decodable the way training reads it (`--num-frames` frames with `--sampling`, through
`mmvid.data.read_video`; `--num-frames 0` decodes every frame; `--no-decode` only checks that the files
exist, and says so). Prints a summary per data file; exits 0 when clean, 1 when any sample has an error, 2
when a data file cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from mmvid.data.conversations import (
    FORMATS,
    VIDEO_PLACEHOLDER,
    DataFile,
    DataFormatError,
    Problem,
    check_sample,
    read_data_file,
    sample_videos,
)
from mmvid.data.mixture import read_training_data
from mmvid.data.video_io import VideoDecodeError, read_video


@dataclass
class Report:
    path: str
    samples: int = 0
    videos: int = 0  # unique video files referenced
    errors: dict[str, list[str]] = field(default_factory=dict)  # kind -> messages
    warnings: dict[str, list[str]] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)  # rows read as each format (mmvid, llava, sharegpt)
    selection: str = ""  # a mixture's choice of rows ("first:10%: 3 of 30 rows, mix.yaml"); "": every row

    def error(self, kind: str, message: str) -> None:
        self.errors.setdefault(kind, []).append(message)

    def warn(self, kind: str, message: str) -> None:
        self.warnings.setdefault(kind, []).append(message)

    @property
    def num_errors(self) -> int:
        return sum(len(v) for v in self.errors.values())


def validate_file(
    path: str | Path,
    video_root: str | Path | None = None,
    decode: bool = True,
    placeholder: str = VIDEO_PLACEHOLDER,
    progress: bool = True,
    num_frames: int = 8,
    sampling: str = "uniform",
    fps: float | None = None,
    data_format: str = "auto",
) -> Report:
    """Validate one data file (any format of mmvid.data.conversations; `data_format` forces one). A
    `placeholder` other than `<video>` reads the file as mmvid's (no `<image>` rewriting) and counts that
    placeholder. Raises FileNotFoundError / DataFormatError when it cannot be read."""
    if placeholder != VIDEO_PLACEHOLDER and data_format == "auto":
        data_format = "mmvid"
    return validate_data(read_data_file(path, data_format), video_root, decode, placeholder, progress,
                         num_frames, sampling, fps)


def validate_data(data: DataFile, video_root: str | Path | None = None, decode: bool = True,
                  placeholder: str = VIDEO_PLACEHOLDER, progress: bool = True, num_frames: int = 8,
                  sampling: str = "uniform", fps: float | None = None) -> Report:
    """Validate the samples of one data file, as read (or as a mixture selected them)."""
    root = Path(video_root) if video_root is not None else data.path.parent
    report = Report(str(data.path), samples=len(data.samples), selection=data.selection,
                    formats=dict(Counter(f for f in data.formats if f is not None)))
    users: dict[str, list[str]] = defaultdict(list)  # video path -> samples using it
    ids = Counter()
    for i, sample in enumerate(data.samples):
        name = data.name(i)
        # A row that could not be converted is reported as such, not checked again in a form it is not in.
        checks = check_t2v(sample) if data.formats[i] == "t2v" else check_sample(sample, placeholder)
        for problem in data.problems[i] or checks:
            report.error(problem.kind, f"{name}: {problem.message}")
        if isinstance(sample, dict) and not data.problems[i]:
            if sample.get("id") is not None:
                ids[str(sample["id"])] += 1
            elif data.formats[i] != "sharegpt":  # ShareGPT rows have no id: named by file and index
                report.warn("missing_id", f"{name}: no 'id'")
            try:
                for video in sample_videos(sample):
                    users[video].append(name)
            except TypeError:
                pass  # a malformed 'video' is already reported
    for sample_id, n in ids.items():
        if n > 1:
            report.warn("duplicate_id", f"id {sample_id!r} is used by {n} samples")
    report.videos = len(users)
    for video in tqdm(users, desc=f"checking videos of {data.path.name}", unit="video", disable=not progress):
        problem = check_video(root / video, decode, num_frames, sampling, fps)
        if problem is not None:
            for name in users[video]:
                report.error(problem.kind, f"{name}: {problem.message}")
    return report


def check_t2v(sample: dict) -> list[Problem]:
    """The checks of a world t2v.jsonl line ({"video", "prompt"}: the prompt's video is the answer)."""
    if not isinstance(sample.get("video"), str):
        return [Problem("malformed", "'video' must be a path")]
    if not isinstance(sample.get("prompt"), str) or not sample["prompt"].strip():
        return [Problem("empty_question", "the text-to-video prompt is empty")]
    return []


def check_video(path: Path, decode: bool = True, num_frames: int = 8, sampling: str = "uniform",
                fps: float | None = None) -> Problem | None:
    """None when the video exists (and, with `decode`, its `num_frames` frames decode with `sampling`, as
    training reads them; 0: every frame), else the problem."""
    if not path.is_file():
        return Problem("missing_video", f"video not found: {path}")
    if not decode:
        return None
    try:
        read_video(path, num_frames=num_frames or None, fps=fps, sampling=sampling)
    except (VideoDecodeError, ValueError, RuntimeError) as e:
        return Problem("unreadable_video", str(e))
    return None


def format_report(report: Report, show: int = 5) -> str:
    formats = ", ".join(f"{n} {name}" for name, n in sorted(report.formats.items()))
    selection = f" [{report.selection}]" if report.selection else ""
    lines = [f"{report.path}{selection}: {report.samples} samples{f' ({formats})' if formats else ''}, "
             f"{report.videos} unique videos"]
    for title, groups in (("error", report.errors), ("warning", report.warnings)):
        for kind in sorted(groups):
            items = groups[kind]
            lines.append(f"  {title} {kind}: {len(items)}")
            lines += [f"    {item}" for item in items[:show]]
            if len(items) > show:
                lines.append(f"    ... and {len(items) - show} more")
    lines.append(f"  {'OK' if report.num_errors == 0 else f'FAILED: {report.num_errors} errors'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmvid.data.validate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+",
                        help="data files (.json / .jsonl: mmvid, LLaVA, ShareGPT) and mixture YAMLs")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="read every row in this format (default: decided per row by its keys)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the training seed, which picks a mixture's random: rows (default %(default)s)")
    parser.add_argument("--video-root",
                        help="folder the video paths are relative to (default: each data file's folder)")
    parser.add_argument("--no-decode", action="store_true",
                        help="only check that videos exist (their frames are not decoded)")
    parser.add_argument("--num-frames", type=int, default=8,
                        help="frames decoded per video, as training reads them (default %(default)s; 0: "
                             "every frame)")
    parser.add_argument("--sampling", default="uniform", choices=["uniform", "fps", "clip"])
    parser.add_argument("--fps", type=float, default=None, help="the rate for --sampling fps")
    parser.add_argument("--placeholder", default=VIDEO_PLACEHOLDER,
                        help="the video placeholder (default %(default)s; another reads files as mmvid's)")
    parser.add_argument("--show", type=int, default=5, help="examples shown per problem kind")
    parser.add_argument("--report", help="also write the full report as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_frames < 0:
        parser.error("--num-frames must be >= 0 (0: every frame)")
    if args.no_decode:
        print("videos: existence only (--no-decode); a file that exists but does not decode passes")
    else:
        frames = "every frame" if args.num_frames == 0 else f"{args.num_frames} frames ({args.sampling})"
        print(f"videos: decoded as training reads them: {frames}")
    data_format = "mmvid" if args.placeholder != VIDEO_PLACEHOLDER and args.format == "auto" else args.format
    status, reports = 0, []
    for path in args.data:
        try:
            files = read_training_data([path], seed=args.seed, format=data_format)
        except (FileNotFoundError, DataFormatError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        for data in files:
            report = validate_data(data, args.video_root, decode=not args.no_decode,
                                   placeholder=args.placeholder, num_frames=args.num_frames,
                                   sampling=args.sampling, fps=args.fps)
            reports.append(report)
            print(format_report(report, args.show))
            if report.num_errors:
                status = max(status, 1)
    if args.report:
        Path(args.report).write_text(json.dumps([asdict(r) for r in reports], indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Video reading and writing: the one door through which every mmvid job touches a video file.

    video = read_video("clip.mp4", num_frames=16, size=128)   # DecodedVideo
    video.frames        # uint8 (T, H, W, 3)
    video.timestamps    # float32 (T,), seconds from the first frame
    x = frames_to_tensor(video.frames)                        # float (C, T, H, W) in [-1, 1]
    write_video("out.mp4", tensor_to_frames(x), fps=8)        # H.264; ".gif" for quick viewing

Sampling (`sampling=`):
- "uniform": `num_frames` frames spread evenly over the whole video (all frames when None).
- "fps": frames at a target rate `fps` (never above the source rate, so no frame is repeated);
  when that gives more than `num_frames`, `num_frames` uniform frames instead (the fps-capped
  sampling of LLaVA-Video and VideoLLaMA).
- "clip": `num_frames` consecutive frames `stride` apart, from frame `start` or, when `start`
  is None, from a random start drawn with `seed`.
`start_time` / `end_time` (seconds) restrict any mode to a window of the video.

Short videos: when a video has fewer frames than "uniform" or "clip" asks for, the frames
that exist are returned and the last one is repeated to reach `num_frames`
(`DecodedVideo.num_padded` counts the repeats); `strict=True` raises `VideoTooShortError`
instead. "fps" sampling treats `num_frames` as a cap, so it never pads.

Backends: decord (fast random access) with PyAV as the fallback. `backend="auto"` tries decord
and then PyAV when decord is missing or fails on the file (decord 0.6 fails on some frame widths,
16, 24, 48 and 72 among them); an explicit backend never falls back. Both backends
plan on the same per-frame presentation timestamps, so they return the same frames and times.
Bad files raise `VideoDecodeError` (a `ValueError`) naming the path and what each backend said.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

SAMPLING_MODES = ("uniform", "fps", "clip")
BACKENDS = ("auto", "decord", "pyav")
MP4_SUFFIXES = (".mp4", ".mkv", ".mov")


class VideoDecodeError(ValueError):
    """A file exists but no backend could decode it (empty, truncated, corrupt, not a video)."""


class VideoTooShortError(ValueError):
    """`strict=True` and the video has fewer frames than asked for."""


@dataclass
class DecodedVideo:
    frames: torch.Tensor  # uint8 (T, H, W, 3), RGB
    timestamps: torch.Tensor  # float32 (T,), seconds from the first frame of the video
    fps: float  # the source's average frame rate
    duration: float  # seconds covered by the source (last frame's time + one frame)
    source: str  # the path that was read
    backend: str  # "decord" or "pyav": the backend that produced the frames
    indices: torch.Tensor  # int64 (T,), frame index in the source of each returned frame
    num_source_frames: int  # frames in the whole source
    num_padded: int = 0  # trailing repeats of the last frame added by the short-video policy

    def __len__(self) -> int:
        return self.frames.shape[0]


# ----------------------------------------------------------------------------------------------
# Frame planning: which source frames to decode. Pure functions of the frame timestamps.
# ----------------------------------------------------------------------------------------------


def plan_frame_indices(
    timestamps: np.ndarray,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    sampling: str = "uniform",
    start: int | None = None,
    stride: int = 1,
    seed: int | None = None,
    start_time: float | None = None,
    end_time: float | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, int]:
    """Choose the source frames to return.

    Args:
        timestamps: (N,) presentation time of every source frame in seconds, ascending.
        (the rest as in `read_video`)

    Returns:
        (indices, num_padded): int64 indices into the source, length T, where the last
        `num_padded` entries repeat the final real index (the short-video policy).
    """
    total = len(timestamps)
    if total == 0:
        raise VideoTooShortError("the video has no frames")
    window = np.arange(total)
    if start_time is not None or end_time is not None:
        lo = -math.inf if start_time is None else start_time
        hi = math.inf if end_time is None else end_time
        if hi <= lo:
            raise ValueError(f"end_time ({end_time}) must be after start_time ({start_time})")
        window = window[(timestamps >= lo - 1e-6) & (timestamps < hi - 1e-6)]
        if len(window) == 0:
            raise VideoTooShortError(
                f"no frame lies in [{start_time}, {end_time}) s; the video spans "
                f"{timestamps[0]:.3f}-{timestamps[-1]:.3f} s"
            )

    if sampling == "uniform":
        if num_frames is None or num_frames >= len(window):
            chosen = window
        else:
            # Evenly spaced over the window, both ends included (np.linspace of LLaVA & co).
            chosen = window[np.round(np.linspace(0, len(window) - 1, num_frames)).astype(np.int64)]
    elif sampling == "fps":
        source_fps = _average_fps(timestamps)
        rate = min(fps, source_fps)  # above the source rate frames would repeat
        t0 = timestamps[window[0]]
        wanted = t0 + np.arange(0, timestamps[window[-1]] - t0 + 1e-6, 1.0 / rate)
        # The first frame shown at or after each wanted time.
        pos = np.searchsorted(timestamps[window], wanted - 1e-6, side="left")
        chosen = window[np.unique(np.clip(pos, 0, len(window) - 1))]
        if num_frames is not None and len(chosen) > num_frames:
            chosen = window[np.round(np.linspace(0, len(window) - 1, num_frames)).astype(np.int64)]
    elif sampling == "clip":
        span = (num_frames - 1) * stride + 1
        if start is None:
            latest = max(0, len(window) - span)
            start = int(np.random.default_rng(seed).integers(0, latest + 1))
        if not 0 <= start < len(window):
            raise ValueError(f"clip start {start} is outside the video's {len(window)} frames")
        chosen = window[start::stride][:num_frames]
    else:  # validated by read_video; kept for direct callers
        raise ValueError(f"unknown sampling {sampling!r}; known: {list(SAMPLING_MODES)}")

    num_padded = 0
    if sampling != "fps" and num_frames is not None and len(chosen) < num_frames:
        if strict:
            raise VideoTooShortError(
                f"asked for {num_frames} frames ({sampling} sampling) but only {len(chosen)} "
                f"are available"
            )
        num_padded = num_frames - len(chosen)
        chosen = np.concatenate([chosen, np.full(num_padded, chosen[-1])])
    return chosen.astype(np.int64), num_padded


def _average_fps(timestamps: np.ndarray) -> float:
    if len(timestamps) < 2 or timestamps[-1] <= timestamps[0]:
        return 1.0
    return (len(timestamps) - 1) / float(timestamps[-1] - timestamps[0])


# ----------------------------------------------------------------------------------------------
# Backends. Each opens the file, reports every frame's timestamp, then decodes a plan.
# ----------------------------------------------------------------------------------------------


@dataclass
class _Probe:
    timestamps: np.ndarray  # (N,) seconds, relative to the first frame
    fps: float
    decode: Callable[[np.ndarray], np.ndarray]  # unique sorted indices -> uint8 (n, H, W, 3)


def _probe_decord(path: str) -> _Probe:
    import decord

    decord.logging.set_level(decord.logging.ERROR)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    if total == 0:
        raise RuntimeError("no frames")
    timestamps = reader.get_frame_timestamp(np.arange(total))[:, 0].astype(np.float64)
    timestamps -= timestamps[0]
    fps = float(reader.get_avg_fps())

    def decode(indices: np.ndarray) -> np.ndarray:
        return reader.get_batch(indices.tolist()).asnumpy()

    return _Probe(timestamps, fps, decode)


def _probe_pyav(path: str) -> _Probe:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise RuntimeError("the file has no video stream")
        stream = container.streams.video[0]
        # Demuxing without decoding is cheap and gives every frame's presentation time.
        pts = [p.pts for p in container.demux(stream) if p.size > 0]
        time_base = float(stream.time_base) if stream.time_base else None
        rate = stream.average_rate or stream.guessed_rate
    if not pts:
        raise RuntimeError("no frames")
    fps = float(rate) if rate else None
    if time_base is None or any(p is None for p in pts):
        if fps is None:
            raise RuntimeError("neither timestamps nor a frame rate can be read")
        timestamps = np.arange(len(pts)) / fps
    else:
        timestamps = np.sort(np.asarray(pts, dtype=np.float64)) * time_base  # presentation order
        timestamps -= timestamps[0]
    if fps is None:
        fps = _average_fps(timestamps)

    def decode(indices: np.ndarray) -> np.ndarray:
        wanted = set(indices.tolist())
        last = int(indices.max())
        out: dict[int, np.ndarray] = {}
        seen = 0
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                seen = i + 1
                if i in wanted:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        if len(out) != len(wanted):
            raise RuntimeError(
                f"the stream ended after {seen} decoded frames, expected {len(timestamps)}"
            )
        return np.stack([out[i] for i in indices.tolist()])

    return _Probe(timestamps, fps, decode)


FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FRAME_FOLDER_FPS = 3.0  # the rate assumed for a folder of frames (MVBench's frame-folder sources are 3 fps)


def _frame_files(path: str) -> list[Path]:
    """A folder's image files in natural order (frame_2 before frame_10); hidden files skipped."""
    import re

    files = [p for p in Path(path).iterdir()
             if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def _probe_frames(path: str) -> _Probe:
    """A folder of JPEG/PNG frames read as a video at FRAME_FOLDER_FPS; every frame is resized to the first's
    size (frames of one video share it)."""
    from PIL import Image

    files = _frame_files(path)
    if not files:
        raise RuntimeError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in the folder")

    def decode(indices: np.ndarray) -> np.ndarray:
        frames, shape = [], None
        for i in indices.tolist():
            with Image.open(files[i]) as image:
                image = image.convert("RGB")
                shape = shape or image.size
                same = image if image.size == shape else image.resize(shape, Image.BICUBIC)
                frames.append(np.asarray(same))
        return np.stack(frames)

    return _Probe(np.arange(len(files), dtype=np.float64) / FRAME_FOLDER_FPS, FRAME_FOLDER_FPS, decode)


_PROBES = {"decord": _probe_decord, "pyav": _probe_pyav, "frames": _probe_frames}
_INSTALL_HINT = {"decord": "pip install decord", "pyav": "pip install av", "frames": "pip install pillow"}


def available_backends() -> list[str]:
    """The decoding backends importable here, in the order `backend="auto"` tries them."""
    names = []
    for name, module in (("decord", "decord"), ("pyav", "av")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            pass
    return names


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    sampling: str = "uniform",
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    *,
    start: int | None = None,
    stride: int = 1,
    seed: int | None = None,
    start_time: float | None = None,
    end_time: float | None = None,
    strict: bool = False,
) -> DecodedVideo:
    """Decode frames from a video file, or read them from a folder of frame images.

    Args:
        path: the video file, or a folder of JPEG/PNG frames in name order (natural sort), read as a video at
            FRAME_FOLDER_FPS frames per second.
        num_frames: frames to return ("uniform", "clip"), or the cap ("fps"); None = all.
        fps: the target rate for `sampling="fps"`, in frames per second.
        sampling: "uniform", "fps" or "clip" (see the module docstring).
        size: an int resizes the short side to `size` and centre-crops `size x size`
            (bicubic, antialiased: CoordTok's and SweetTok's preprocessing); `(H, W)`
            resizes to cover `H x W` and centre-crops to it. None keeps the source size.
        backend: "auto" (decord, then PyAV), "decord" or "pyav". An explicit backend does
            not fall back.
        start: first frame of a "clip" (frame index within the window); None = random.
        stride: frame step within a "clip".
        seed: seeds the random clip start.
        start_time, end_time: restrict sampling to frames shown in [start_time, end_time) s.
        strict: raise `VideoTooShortError` instead of repeating the last frame.

    Returns:
        DecodedVideo with `frames` uint8 (T, H, W, 3) and `timestamps` float32 (T,).

    Raises:
        FileNotFoundError: the path does not exist.
        VideoDecodeError: no backend could decode the file (lists each backend's error).
        VideoTooShortError: with `strict=True`, fewer frames than asked for.
        ValueError: invalid arguments.
        ImportError: an explicitly asked backend is not installed.
    """
    path = os.fspath(path)
    _check_read_args(num_frames, fps, sampling, size, backend, stride)
    _check_path(path)
    plan = dict(num_frames=num_frames, fps=fps, sampling=sampling, start=start, stride=stride, seed=seed,
                start_time=start_time, end_time=end_time, strict=strict)
    errors: list[str] = []
    if os.path.isdir(path):  # a folder of frames (MVBench's frame-folder sources): one backend reads it
        video = _read_with("frames", path, plan, size, errors, explicit=True)
        if video is not None:
            return video
        raise VideoDecodeError(f"cannot read the frame folder {path}: " + "; ".join(errors))
    for name in _backend_order(backend):
        video = _read_with(name, path, plan, size, errors, explicit=backend != "auto")
        if video is not None:
            return video
    raise VideoDecodeError(f"cannot decode video {path}: " + "; ".join(errors))


def _read_with(name: str, path: str, plan: dict, size, errors: list[str],
               explicit: bool) -> DecodedVideo | None:
    """One backend's try: the decoded video, or None with the reason appended to `errors`."""
    try:
        probe = _PROBES[name](path)
    except ImportError as e:
        if explicit:
            raise ImportError(f"backend {name!r} is not installed: {_INSTALL_HINT[name]}") from e
        errors.append(f"{name}: not installed")
        return None
    except Exception as e:  # each library raises its own types; we report them all
        errors.append(f"{name}: {_one_line(e)}")
        return None
    # Planning errors (too short, bad window) are about the request, not the decoder.
    indices, num_padded = plan_frame_indices(probe.timestamps, **plan)
    try:
        unique, inverse = np.unique(indices, return_inverse=True)
        decoded = probe.decode(unique)
    except Exception as e:
        errors.append(f"{name}: {_one_line(e)}")
        return None
    frames = torch.from_numpy(np.ascontiguousarray(decoded[inverse]))
    if size is not None:
        frames = resize_center_crop(frames, size)
    return DecodedVideo(
        frames=frames,
        timestamps=torch.from_numpy(probe.timestamps[indices].astype(np.float32)),
        fps=probe.fps,
        duration=float(probe.timestamps[-1] + 1.0 / probe.fps),
        source=path,
        backend=name,
        indices=torch.from_numpy(indices),
        num_source_frames=len(probe.timestamps),
        num_padded=num_padded,
    )


def _check_path(path: str) -> None:
    """FileNotFoundError / VideoDecodeError for a path no backend should be handed."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"video not found: {path}")
    if os.path.isdir(path):
        return  # a folder of frames
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"cannot decode video {path}: the file is empty (0 bytes)")


def _backend_order(backend: str) -> list[str]:
    """The backends to try, in order: the installed ones for "auto", else the one asked for."""
    if backend != "auto":
        return [backend]
    order = available_backends()
    if not order:
        raise ImportError("no video backend is installed: pip install decord av")
    return order


def _check_read_args(num_frames, fps, sampling, size, backend, stride) -> None:
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling {sampling!r}; known: {list(SAMPLING_MODES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; known: {list(BACKENDS)}")
    if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int or None, got {num_frames!r}")
    if sampling == "fps":
        if fps is None or not fps > 0:
            raise ValueError(f"sampling='fps' needs a positive fps, got {fps!r}")
    elif fps is not None:
        raise ValueError(f"fps={fps} only applies to sampling='fps' (sampling is {sampling!r})")
    if sampling == "clip" and num_frames is None:
        raise ValueError("sampling='clip' needs num_frames")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if size is not None:
        sizes = (size,) if isinstance(size, int) else tuple(size)
        if len(sizes) not in (1, 2) or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


def resize_center_crop(frames: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize so the frames cover `size`, then centre-crop to it (bicubic, antialiased).

    Args:
        frames: uint8 (T, H, W, 3).
        size: an int for a square `size x size`, or `(height, width)`.

    Returns:
        uint8 (T, height, width, 3).
    """
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    _, H, W, _ = frames.shape
    scale = max(height / H, width / W)
    new_h, new_w = max(height, round(H * scale)), max(width, round(W * scale))
    x = rearrange(frames, "t h w c -> t c h w").float()
    if (new_h, new_w) != (H, W):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return rearrange(x.round().clamp(0, 255).to(torch.uint8), "t c h w -> t h w c").contiguous()


def frames_to_tensor(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 frames to the model layout: (T, H, W, 3) -> float (C, T, H, W), or batched
    (B, T, H, W, 3) -> (B, C, T, H, W); values in [-1, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames (T, H, W, 3) or (B, T, H, W, 3), got {frames.dtype} "
            f"{tuple(frames.shape)}"
        )
    x = frames.float() / 127.5 - 1.0
    return rearrange(x, "... t h w c -> ... c t h w").contiguous()


def tensor_to_frames(video: torch.Tensor) -> torch.Tensor:
    """The model layout back to uint8 frames: float (C, T, H, W) in [-1, 1] -> (T, H, W, 3),
    or batched (B, C, T, H, W) -> (B, T, H, W, 3). Values outside [-1, 1] are clipped."""
    if not video.is_floating_point() or video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(
            f"expected a float video (C=3, T, H, W) or (B, 3, T, H, W), got {video.dtype} "
            f"{tuple(video.shape)}"
        )
    x = ((video.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(x, "... c t h w -> ... t h w c").contiguous()


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor | np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """Write uint8 frames (T, H, W, 3) as H.264 (.mp4/.mkv/.mov) or as a GIF (.gif).

    The file appears atomically: it is written beside the target and renamed, so a killed
    writer never leaves a half file under the final name. H.264 uses yuv420p, which players
    expect and which needs an even height and width. `crf` (0-51, lower is better) and
    `preset` are passed to libx264. GIFs use one palette for the whole clip (exact when the
    clip has at most 256 colours).

    Returns:
        The path written.
    """
    path = Path(path)
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"write_video expects uint8 frames (T, H, W, 3), got {array.dtype} {array.shape}; "
            f"convert a model tensor with mmvid.data.tensor_to_frames"
        )
    T, H, W, _ = array.shape
    if T == 0:
        raise ValueError("write_video got no frames")
    if not (isinstance(fps, (int, float, Fraction)) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    suffix = path.suffix.lower()
    if suffix not in MP4_SUFFIXES + (".gif",):
        raise ValueError(f"unsupported video suffix {suffix!r}; use one of {list(MP4_SUFFIXES)} or .gif")
    if suffix != ".gif" and (H % 2 or W % 2):
        raise ValueError(f"H.264 (yuv420p) needs an even height and width, got {H}x{W}")

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w", format=_FORMATS[suffix]) as container:
            if suffix == ".gif":
                _encode_gif(container, array, rate)
            else:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset, **_x264_reproducible()}
                for frame in array:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".gif": "gif"}


@functools.cache
def _x264_reproducible() -> dict[str, str]:
    """libx264 options that make `write_video` give the same file every time for the same frames.

    On a CPU with AVX-512, libx264's AVX-512 code (x264 core 165, as bundled with PyAV 18) does not: the
    same frames and options (one thread) give one of several bitstreams, depending on the process's
    earlier allocations (a fresh process's first encode came out the same 8 times in 8; of 100 encodes in
    one process of the tiny test world's train video 2, 64 differed from it). Decoded, the variants differ
    by up to 23 levels (of 255), so a synthetic world rebuilt from the same settings was not the same world,
    and a run trained on it not the same run (tests/test_checkpoint.py's format-1 resume, ~1e-4 off).
    Capped at AVX2 (x264's own `asm` flag set) the encode repeats exactly (the test world's 14 clips x 20
    encodes; 18 clips of 32-128 px x 30), and 13 of those 14 clips are byte-identical to the clean
    AVX-512 encode (all 8 training clips). Other CPUs keep x264's detection: naming AVX2 where it is
    missing would crash.
    """
    if hasattr(torch.cpu, "get_capabilities"):  # recent torch: the CPU's own flags
        avx512 = bool(torch.cpu.get_capabilities().get("avx512_f", False))
    else:  # older torch: the level ATen dispatches to
        avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return {"x264-params": "asm=avx2"} if avx512 else {}


def _encode_gif(container, array: np.ndarray, rate: Fraction) -> None:
    import av

    T, H, W, _ = array.shape
    palette, index = _palette(array)
    argb = np.zeros((256, 4), np.uint8)
    argb[:, 0] = 255
    argb[: len(palette), 1:] = palette
    stream = container.add_stream("gif", rate=rate)
    stream.width, stream.height, stream.pix_fmt = W, H, "pal8"
    for t in range(T):
        frame = av.VideoFrame.from_ndarray((index[t], argb), format="pal8")
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def _palette(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One palette of <= 256 colours for the whole clip and each pixel's index in it."""
    packed = (array[..., 0].astype(np.int32) << 16) | (array[..., 1].astype(np.int32) << 8) | array[..., 2]
    colours, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1)
    if len(colours) <= 256:
        return rgb.astype(np.uint8), inverse.reshape(array.shape[:3]).astype(np.uint8)
    # Too many colours: the most frequent colour of each 4-bit-per-channel cell, up to 256 cells
    # by population, then every colour maps to its nearest palette entry.
    cells = ((rgb >> 4) * np.array([256, 16, 1])).sum(1)
    cell_ids, cell_inv = np.unique(cells, return_inverse=True)
    pop = np.bincount(cell_inv, weights=counts)
    keep = np.argsort(-pop)[:256]
    order = np.lexsort((-counts, cell_inv))  # by cell, most frequent colour first
    first = np.r_[0, np.flatnonzero(np.diff(cell_inv[order])) + 1]
    best = order[first]  # most frequent colour of each cell, cells in ascending order
    palette = rgb[best[keep]].astype(np.float32)
    nearest = np.empty(len(rgb), dtype=np.uint8)
    for lo in range(0, len(rgb), 4096):
        d = ((rgb[lo : lo + 4096, None, :].astype(np.float32) - palette[None]) ** 2).sum(-1)
        nearest[lo : lo + 4096] = d.argmin(1)
    return palette.astype(np.uint8), nearest[inverse].reshape(array.shape[:3])

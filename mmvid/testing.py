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
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3))
    return frames.astype(np.uint8).copy()


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


def world_text_tokenizer(folder: str | Path, vocab_size: int = 400, scenes: int = 200) -> Path:
    """Train (once) a sentencepiece tokenizer on synthetic-world captions and conversations; its folder."""
    from mmvid.data.shapes import text, world
    from mmvid.text_tokenizer import train_text_tokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        corpus = []
        for s in range(scenes):
            scene = world.sample_scene(s)
            rng = np.random.default_rng(s)
            corpus += text.captions(scene, rng)
            corpus += [t["value"] for t in text.conversation(scene, "v.mp4", "x", rng, {})["conversations"]]
        train_text_tokenizer(corpus, folder, vocab_size=vocab_size)
    return folder


def tiny_videollm(workdir: str | Path, family: str = "llama", video_tokenizer: str = "vtok_tiny",
                  num_frames: int = 8, vocab_size: int = 400, seed: int = 0, **config):
    """A tiny untrained VideoLLM for tests: a sentencepiece tokenizer trained on synthetic-world text
    (saved under `workdir/text-tokenizer`, reused if present) and a 2-layer LLM built from a config."""
    import torch

    from mmvid.videollm import VideoLLM, VideoLLMConfig

    folder = world_text_tokenizer(Path(workdir) / "text-tokenizer", vocab_size)
    llm = {"llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False)}[family]
    torch.manual_seed(seed)
    settings = dict(llm_config=llm, text_tokenizer=str(folder), video_tokenizer=video_tokenizer,
                    num_frames=num_frames, max_length=1024)
    tokenizer = config.pop("text_tokenizer", None)  # a tokenizer object (e.g. with another chat template)
    if isinstance(tokenizer, (str, Path)):
        settings["text_tokenizer"], tokenizer = str(tokenizer), None
    return VideoLLM.build(VideoLLMConfig(**{**settings, **config}), text_tokenizer=tokenizer).eval()


def world_clips(batch: int = 2, frames: int = 8, size: int = 32, seed: int = 0):
    """A batch of rendered synthetic-world scenes in the model layout, float (B, 3, T, size, size) in [-1,
    1]."""
    import torch

    from mmvid.data import frames_to_tensor
    from mmvid.data.shapes.world import render, sample_scene

    return torch.stack(
        [frames_to_tensor(render(sample_scene(seed + i, frames, size, size))) for i in range(batch)])

"""VideoProcessor: from files and conversations to a VideoLLM batch, apart from the model.

    processor = model.processor                         # or VideoProcessor.from_pretrained("runs/x/final")
    video = processor.load_video("clip.mp4")            # float (C, T, H, W) in [-1, 1]
    encoded = processor.encode_sample(sample["conversations"], sample_id=sample["id"])
    batch = processor.collate([encoded], videos=[video])
    loss = model(**batch).loss

Hugging Face's convention (LlavaNextVideoProcessor): the processor holds the LLM's text tokenizer and
the video preprocessing settings (`VideoProcessorConfig`: frames per video, sampling, frame size, and
how many LLM positions each `<video>` expands to), and everything that reads a video for a VideoLLM or
turns a conversation into ids goes through it. It is saved beside the model (`processor_config.json`
and the tokenizer files) and loaded with it; a checkpoint without the file, written before the
processor existed, gets the processor its config.json implies.

A frame count the video tokenizer cannot take (`min_frames`..`max_frames`) raises ValueError here,
before any video is decoded; a VideoLLM refuses a processor whose frame size or tokens per video do not
fit it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mmvid.config import config_from_dict, config_to_dict
from mmvid.data.video_io import SAMPLING_MODES, DecodedVideo, frames_to_tensor, read_video
from mmvid.prompting import (
    IGNORE_INDEX,
    EncodedSample,
    PackedSample,
    VideoTokenIds,
    encode_conversation,
    encode_prompt,
    end_of_turn_id,
)
from mmvid.text_tokenizer import VIDEO_END, VIDEO_START, VIDEO_TOKEN

PROCESSOR_FILE = "processor_config.json"
FORMAT_VERSION = 1


@dataclass
class VideoProcessorConfig:
    num_frames: int = 16  # frames read per video (the cap for sampling="fps")
    image_size: int = 64  # frames are resized and centre-cropped to image_size x image_size pixels
    sampling: str = "uniform"  # read_video's sampling: uniform | fps | clip
    fps: float | None = None  # sampling="fps": the target rate, in frames per second
    min_frames: int = 1  # the video tokenizer's shortest clip
    max_frames: int | None = None  # its longest clip; None: any length
    # LLM positions of each <video> span at num_frames (0: a processor for videos alone)
    tokens_per_video: int = 0
    max_length: int = 2048  # longest sample in tokens; longer ones are rejected, never truncated

    def __post_init__(self):
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {self.sampling!r}; known: {list(SAMPLING_MODES)}")
        if (self.sampling == "fps") != (self.fps is not None) or (self.fps is not None and self.fps <= 0):
            raise ValueError("sampling='fps' needs a positive fps, and only it takes one (sampling "
                             f"{self.sampling!r}, fps {self.fps!r})")
        if self.image_size < 1 or self.min_frames < 1 or self.tokens_per_video < 0 or self.max_length < 8:
            raise ValueError("image_size and min_frames must be >= 1, tokens_per_video >= 0 and max_length "
                             ">= 8")
        self.check_frames(self.num_frames)

    def check_frames(self, num_frames: int) -> int:
        """`num_frames` when the video tokenizer takes that many frames; else a ValueError saying what it
        takes."""
        low, high = self.min_frames, self.max_frames
        whole = isinstance(num_frames, int) and not isinstance(num_frames, bool)
        if not whole or num_frames < low or (high is not None and num_frames > high):
            takes = f"at least {low}" if high is None else f"{low} to {high}"
            raise ValueError(f"num_frames={num_frames!r}, but the video tokenizer takes {takes} frames")
        return num_frames

    @classmethod
    def for_video_tokenizer(cls, video_tokenizer, num_frames: int, **fields) -> VideoProcessorConfig:
        """Frames as `video_tokenizer` takes them: its image size and frame limits, `num_frames` per video."""
        return cls(num_frames=num_frames, image_size=video_tokenizer.image_size,
                   min_frames=video_tokenizer.min_frames, max_frames=video_tokenizer.max_frames, **fields)


class VideoProcessor:
    """The text tokenizer (None for a processor that only reads videos) and the video settings."""

    def __init__(self, text_tokenizer, config: VideoProcessorConfig):
        self.text_tokenizer = text_tokenizer
        self.config = config
        self.video_ids = None
        if text_tokenizer is not None:
            ids = [text_tokenizer.convert_tokens_to_ids(t) for t in (VIDEO_TOKEN, VIDEO_START, VIDEO_END)]
            self.video_ids = VideoTokenIds(*ids)
        self._end_of_turn: tuple = (None, None)  # ((chat template, eos id), its end-of-turn id)

    @property
    def end_of_turn_id(self) -> int | None:
        """The token that ends an assistant turn in the text tokenizer's chat template (where generation
        stops; `mmvid.prompting.end_of_turn_id`), found once per template."""
        tok = self._text_tokenizer()
        key = (tok.chat_template, tok.eos_token_id)
        if self._end_of_turn[0] != key:
            self._end_of_turn = (key, end_of_turn_id(tok))
        return self._end_of_turn[1]

    # -- videos --------------------------------------------------------------------------------------

    def read_frames(self, path: str | os.PathLike, num_frames: int | None = None,
                    fps: float | None = None) -> torch.Tensor:
        """A video file -> uint8 frames (T, H, W, 3) at image_size. `num_frames` (checked against the video
        tokenizer) and `fps` (sampling at that rate, num_frames its cap) override the config for this call."""
        return self.read_decoded(path, num_frames, fps).frames

    def read_decoded(self, path: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
                     start_time: float | None = None, end_time: float | None = None) -> DecodedVideo:
        """`read_frames` with what was read: the source frame indices, timestamps and backend; `start_time`
        / `end_time` (seconds) sample only frames shown in that window (MVBench's windowed tasks)."""
        c = self.config
        num_frames = c.check_frames(c.num_frames if num_frames is None else num_frames)
        sampling, fps = ("fps", fps) if fps is not None else (c.sampling, c.fps)
        return read_video(path, num_frames=num_frames, fps=fps, sampling=sampling, size=c.image_size,
                          start_time=start_time, end_time=end_time)

    def load_video(self, path: str | os.PathLike, num_frames: int | None = None,
                   fps: float | None = None) -> torch.Tensor:
        """A video file -> float (C, T, H, W) in [-1, 1], the model layout (see `read_frames`)."""
        return frames_to_tensor(self.read_frames(path, num_frames, fps))

    # -- text ------------------------------------------------------------------------------------------

    def encode_sample(self, conversations: list[dict], sample_id: str | None = None,
                      num_videos: int | None = None) -> EncodedSample:
        """Token ids and labels of one LLaVA conversation, each <video> expanded (see mmvid.prompting).

        Raises:
            SampleTooLongError: longer than max_length.
            ValueError: a bad conversation, or not `num_videos` <video> placeholders.
        """
        c = self.config
        encoded = encode_conversation(self._text_tokenizer(), conversations, self.video_ids,
                                      c.tokens_per_video, c.max_length, sample_id)
        if num_videos is not None and encoded.num_videos != num_videos:
            raise ValueError(f"sample {sample_id!r}: {encoded.num_videos} <video> placeholder(s) but "
                             f"{num_videos} video(s)")
        return encoded

    def count_tokens(self, sample: dict) -> int:
        """Pre-flight: the token count of a LLaVA sample after video expansion (no truncation, no check
        against max_length), to vet a data set before training."""
        encoded = encode_conversation(self._text_tokenizer(), sample["conversations"], self.video_ids,
                                      self.config.tokens_per_video, None, sample.get("id"))
        return len(encoded)

    def encode_prompt(self, messages: list[dict], tokens_per_video: list[int]) -> list[int]:
        """Ids of chat `messages` ending in the generation prompt, the k-th <video> expanded to
        tokens_per_video[k] positions (the count of that video's features)."""
        return encode_prompt(self._text_tokenizer(), messages, self.video_ids, tokens_per_video)

    def _text_tokenizer(self):
        if self.text_tokenizer is None:
            raise ValueError("this VideoProcessor reads videos only: it has no text tokenizer")
        return self.text_tokenizer

    # -- batches -----------------------------------------------------------------------------------------

    def collate(self, samples: list[EncodedSample | PackedSample], videos: list[torch.Tensor] | None = None,
                video_index: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Right-pad a batch for `VideoLLM.forward`; `videos` is the list of every video of the batch, each
        (C, T, H, W).

        Without `video_index` the videos fill the <video> spans in order (one video per span). With it,
        span k (counted across the batch in order) shows `videos[video_index[k]]`: several sequences
        can share one video, which is then encoded once (see SFTDataset's split_turns).

        With a PackedSample in the batch, `attention_mask` is a 4D block mask (bool (B, 1, L, L)) and
        `position_ids` (B, L) restart every segment after the prefix (see `block_attention`); without one
        the batch is the plain 2D-mask batch. Spans in an assistant turn are flagged in `video_targets`.
        """
        width = max(len(s) for s in samples)
        batch = {
            "input_ids": torch.full((len(samples), width), self._text_tokenizer().pad_token_id,
                                    dtype=torch.long),
            "attention_mask": torch.zeros((len(samples), width), dtype=torch.long),
            "labels": torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long),
        }
        for i, s in enumerate(samples):
            batch["input_ids"][i, : len(s)] = torch.tensor(s.input_ids)
            batch["attention_mask"][i, : len(s)] = 1
            batch["labels"][i, : len(s)] = torch.tensor(s.labels)
        if videos:
            batch["videos"] = torch.stack(videos)
        if video_index is not None:
            spans = sum(s.num_videos for s in samples)
            in_range = (bool(videos) and 0 <= min(video_index, default=0)
                        and max(video_index, default=0) < len(videos))
            if len(video_index) != spans or (spans and not in_range):
                raise ValueError(f"video_index needs one entry per <video> span ({spans}), each < the "
                                 f"number of videos ({len(videos or [])}); got {list(video_index)}")
            batch["video_index"] = torch.tensor(video_index, dtype=torch.long)
        targets = [bool(t) for s in samples for t in (s.targets or [False] * s.num_videos)]
        if any(targets):
            batch["video_targets"] = torch.tensor(targets, dtype=torch.bool)
        if any(isinstance(s, PackedSample) for s in samples):
            batch["attention_mask"], batch["position_ids"] = block_attention(samples, width)
        return batch

    # -- checkpoints -------------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """processor_config.json, and the text tokenizer's files."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        record = {"format_version": FORMAT_VERSION, "processor_class": type(self).__name__,
                  "config": config_to_dict(self.config)}
        (path / PROCESSOR_FILE).write_text(json.dumps(record, indent=1))
        if self.text_tokenizer is not None:
            self.text_tokenizer.save_pretrained(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, text_tokenizer=None) -> VideoProcessor:
        """The processor saved in a folder, holding `text_tokenizer` (default: the folder's tokenizer files,
        when it has them). A VideoLLM checkpoint without processor_config.json (written before the processor
        existed) gets the one its config.json implies (`config_from_checkpoint`)."""
        path = Path(path)
        if (path / PROCESSOR_FILE).is_file():
            record = json.loads((path / PROCESSOR_FILE).read_text())
            if record.get("format_version", 0) > FORMAT_VERSION:
                raise ValueError(f"{path / PROCESSOR_FILE} was written by a newer mmvid "
                                 f"(format {record['format_version']} > {FORMAT_VERSION})")
            config = config_from_dict(VideoProcessorConfig, record["config"])
        elif (path / "config.json").is_file():
            config = config_from_checkpoint(json.loads((path / "config.json").read_text()))
        else:
            raise FileNotFoundError(f"{path} has no {PROCESSOR_FILE} and no VideoLLM config.json")
        if text_tokenizer is None and (path / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            text_tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(text_tokenizer, config)


def config_from_checkpoint(record: dict) -> VideoProcessorConfig:
    """The processor config a VideoLLM config.json implies: the model's num_frames and max_length, the
    manifest's tokens per video, and the frame size and limits of its video tokenizer (rebuilt on the meta
    device: no weights, no memory). Raises ValueError for a config.json that is not a VideoLLM's."""
    from mmvid.video_tokenizers import video_tokenizer_from_record

    if not {"videollm", "manifest", "video_tokenizer"} <= set(record):
        raise ValueError("not a VideoLLM config.json (no 'videollm', 'manifest' and 'video_tokenizer' "
                         "sections)")
    with torch.device("meta"):
        tokenizer = video_tokenizer_from_record(record["video_tokenizer"])
    model, manifest = record["videollm"], record["manifest"]
    return VideoProcessorConfig.for_video_tokenizer(tokenizer, model["num_frames"],
                                                    max_length=model["max_length"],
                                                    tokens_per_video=manifest["tokens_per_video"])


def block_attention(samples: list[EncodedSample | PackedSample],
                    width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask and positions of a right-padded batch with packed rows.

    A token of a packed row's segment k attends to the prefix and causally to segment k's own earlier
    tokens, never to another segment, and its positions continue from the prefix (P, P + 1, ...): it
    computes what it would alone. A plain row is causal over its tokens at positions 0..n-1. Padding
    attends to itself only, so no softmax row is empty (which would give NaN); its labels are ignored.

    Returns:
        mask: bool (B, 1, L, L), True where query i may attend to key j.
        position_ids: long (B, L).
    """
    # Per token: -1 padding, 0 prefix (all of a plain row), k + 1 segment k.
    group = torch.full((len(samples), width), -1, dtype=torch.long)  # (B, L)
    position_ids = torch.arange(width).repeat(len(samples), 1)  # (B, L)
    for row, s in enumerate(samples):
        if isinstance(s, PackedSample):
            group[row, : s.prefix_length] = 0
            for k, (start, end) in enumerate(s.segments):
                group[row, start:end] = k + 1
                position_ids[row, start:end] = torch.arange(s.prefix_length, s.prefix_length + end - start)
        else:
            group[row, : len(s)] = 0
    query, key = group[:, :, None], group[:, None, :]  # (B, L, 1), (B, 1, L)
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (L, L)
    mask = causal & (query >= 0) & ((key == 0) | (key == query))  # (B, L, L)
    mask |= torch.eye(width, dtype=torch.bool)  # padding: itself
    return mask[:, None], position_ids  # (B, 1, L, L), (B, L)

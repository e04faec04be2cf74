"""SFT samples: LLaVA conversations + their videos, ready for `VideoLLM.collate`.

A sample that cannot be used (a video that is missing or does not decode, too many tokens, a
malformed conversation) is skipped with a warning naming the file and the reason, and replaced by
the next usable one, so every rank always gets full batches and no rank waits on another. Failures
are counted; `bad_fraction()` lets the trainer stop every rank together with a summary.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmvid.data import VideoDecodeError, VideoTooShortError, frames_to_tensor, read_video
from mmvid.data.conversations import load_conversations, sample_videos

log = logging.getLogger(__name__)


class SFTDataset(Dataset):
    def __init__(self, files: list[str], model, video_root: str | None = None):
        self.model = model
        self.items: list[tuple[dict, Path]] = []
        for file in files:
            root = Path(video_root) if video_root else Path(file).parent
            self.items += [(sample, root) for sample in load_conversations(file)]
        if not self.items:
            raise ValueError(f"no samples in {files}")
        self.bad: dict[str, str] = {}  # sample id -> reason
        self.seen = 0

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict:
        """One sample (raises on a bad one)."""
        sample, root = self.items[index]
        name = str(sample.get("id", index))
        videos = [root / v for v in sample_videos(sample)]
        encoded = self.model.encode_sample(sample["conversations"], sample_id=name, num_videos=len(videos))
        frames = [frames_to_tensor(read_video(v, num_frames=self.model.config.num_frames, size=self.model.image_size).frames)
                  for v in videos]
        return {"encoded": encoded, "videos": frames, "id": name, "index": index}

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.items)):
            i = (index + offset) % len(self.items)
            self.seen += 1
            try:
                return self.load(i)
            except (VideoDecodeError, VideoTooShortError, FileNotFoundError, ValueError, KeyError) as e:
                sample, root = self.items[i]
                name = str(sample.get("id", i)) if isinstance(sample, dict) else str(i)
                if name not in self.bad:
                    log.warning("skipping sample %s (%s): %s", name, root, e)
                self.bad[name] = str(e)
        raise RuntimeError(f"no usable sample among {len(self.items)}; first problems: {list(self.bad.values())[:3]}")

    def bad_fraction(self) -> float:
        return len(self.bad) / max(1, self.seen)


def collate(model, items: list[dict]) -> dict:
    """Batch for `VideoLLM.forward` plus the sample indices (for the data position)."""
    videos = [v for item in items for v in item["videos"]]
    batch = model.collate([item["encoded"] for item in items], videos=videos or None)
    batch["index"] = torch.tensor([item["index"] for item in items])
    return batch

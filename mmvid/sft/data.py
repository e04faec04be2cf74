"""SFT samples: conversations + their videos, read and encoded by the model's VideoProcessor.

`files` are data files in any format mmvid.data.conversations reads (mmvid, LLaVA / LLaVA-Video-178K,
LLaMA-Factory / ms-swift ShareGPT), each converted once, when the data set is built, into the one internal
form every step below reads, and LLaVA-NeXT mixture YAMLs (mmvid.data.mixture: each named file cut to its
`sampling_strategy`; `random:` draws with `seed`). A sample without an id gets `<file name>#<row>`, so a
warning names where it is.

A sample that cannot be used (a video that is missing or does not decode, too many tokens, a
malformed conversation) is skipped with a warning naming the file and the reason, and replaced by
the next usable one, so every rank always gets full batches and no rank waits on another. Failures
are counted; `bad_fraction()` lets the trainer stop every rank together with a summary.

`split_turns=True` turns a one-video conversation of K question/answer rounds into K sequences, each
the video + one question + its answer, that share one encoding of the video. Later turns of a
conversation often give away earlier answers in their text (a caption first turn names every
object's colour, shape and action; "What does the cyan circle do?" names the circle's colour), so
in one sequence the model learns to copy from the context instead of looking at the video, and
scores at chance on single questions. Split, every answer has to come from the video.

Split, though, the LLM recomputes the video (and the system turn and user header before it) in each
of the K sequences: about half of every step's tokens. `pack_questions=True` (with `split_turns`)
stores the K rounds as one `PackedSample` (mmvid.prompting.pack_rounds): their common prefix of P
tokens, the video included, once, then each round's own question and answer as a segment: P + S
tokens instead of K x P + S (S: the segments together). `VideoProcessor.collate` gives such a row a block
mask (a segment attends to the prefix and causally to itself, never to another segment) and positions
that restart at P in every segment, so each answer gets exactly the logits and loss of its split
sequence, and still cannot copy from another round. It needs attn_implementation sdpa or eager
(flash_attention_2 cannot take a block mask: the model raises, and the trainer checks before reading data).
A packed row longer than the processor's max_length stays split; a one-round sample has nothing to pack.

Text-to-video samples are conversations with the `<video>` in the assistant turn (the prompt in the
user turn); the model's generation head learns that span's video tokens. A line of a synthetic
world's `t2v.jsonl` (`{"video", "prompt", ...}`, no "conversations") is read as one. With
`prompt_dropout` p, a text-to-video sample's user turn is emptied with probability p (drawn from the
torch RNG, so resume replays it): the unconditional model that classifier-free guidance needs.
A text-to-video sample whose video is also the one video of an understanding sample joins that sample
(`merge_t2v`): one more sequence sharing its decoded and encoded video, not a second item.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmvid.data import VideoDecodeError, VideoTooShortError
from mmvid.data.conversations import GPT, HUMAN, SYSTEM, VIDEO_PLACEHOLDER, sample_videos
from mmvid.data.mixture import read_training_data
from mmvid.prompting import pack_rounds

log = logging.getLogger(__name__)


class SFTDataset(Dataset):
    def __init__(self, files: list[str], processor, video_root: str | None = None, split_turns: bool = False,
                 prompt_dropout: float = 0.0, merge_t2v: bool = True, pack_questions: bool = False,
                 t2v_fraction: float = 1.0, max_rounds: int | None = None, data_format: str = "auto",
                 seed: int = 0):
        if not 0.0 <= prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {prompt_dropout}")
        if pack_questions and not split_turns:
            raise ValueError("pack_questions packs the rounds that split_turns makes: it needs "
                             "split_turns=True")
        self.processor = processor  # a VideoProcessor: frames, ids, max_length
        self.split_turns = split_turns
        self.pack_questions = pack_questions
        self.prompt_dropout = prompt_dropout
        self.items: list[tuple[dict, Path]] = []
        # item -> why it cannot be used, found when its file was read (a row in no known format, an image
        # sample, mixed <image>/<video>, ...): `load` raises it, so it is skipped and counted as a bad sample
        self.problems: dict[int, str] = {}
        for data in read_training_data(files, seed=seed, format=data_format):
            root = Path(video_root) if video_root else data.path.parent
            if data.selection:
                log.info("%s: %s", data.path, data.selection)
            for sample, row, problems in zip(data.samples, data.rows, data.problems):
                if isinstance(sample, dict) and sample.get("id") is None:
                    sample = {**sample, "id": f"{data.path.name}#{row}"}
                if problems:
                    self.problems[len(self.items)] = "; ".join(p.message for p in problems)
                self.items.append((t2v_conversation(sample), root))
        if not self.items:
            raise ValueError(f"no samples in {files}")
        self.extras: dict[int, list[list[dict]]] = {}  # item -> text-to-video conversations sharing its video
        if not 0.0 <= t2v_fraction <= 1.0:
            raise ValueError(f"t2v_fraction must be in [0, 1], got {t2v_fraction}")
        self.t2v_fraction = t2v_fraction
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1 or None, got {max_rounds}")
        self.max_rounds = max_rounds  # split_turns: at most this many rounds of a sample per read
        self._round_cache: dict[tuple[int, int], object] = {}  # (item, round) -> its encoding
        if merge_t2v:
            self._merge_t2v()
        self.bad: dict[str, str] = {}  # sample id -> reason
        self.seen = 0

    def __len__(self) -> int:
        return len(self.items)

    def _merge_t2v(self) -> None:
        def one_video(sample: dict, root: Path) -> tuple[str | None, bool]:
            """(the path of the sample's only video or None, whether it is text-to-video)"""
            if not (isinstance(sample, dict) and isinstance(sample.get("conversations"), list)):
                return None, False  # malformed: left for load() to report
            videos = sample_videos(sample)
            return (str(root / videos[0]) if len(videos) == 1 else None), is_text_to_video(
                sample["conversations"])

        keys = [(None, False) if i in self.problems else one_video(sample, root)
                for i, (sample, root) in enumerate(self.items)]
        owner: dict[str, int] = {}
        for i, (path, generation) in enumerate(keys):
            if path is not None and not generation:
                owner.setdefault(path, i)
        kept = []
        # t2v_fraction < 1 keeps a fixed share of the merged text-to-video sequences (drawn once, seed 0): the
        # generation head trains on fewer videos and the understanding rounds get the step's compute.
        keep = np.random.default_rng(0).random(len(self.items)) < self.t2v_fraction
        for i, ((sample, _), (path, generation)) in enumerate(zip(self.items, keys)):
            target = owner.get(path) if generation else None
            if target is None:
                kept.append(i)
            elif keep[i]:
                self.extras.setdefault(target, []).append(sample["conversations"])
        remap = {old: new for new, old in enumerate(kept)}
        self.extras = {remap[k]: v for k, v in self.extras.items()}
        self.problems = {remap[k]: v for k, v in self.problems.items()}  # a problem row is never merged
        self.items = [self.items[i] for i in kept]

    def load(self, index: int) -> dict:
        """One sample (raises on a bad one)."""
        if index in self.problems:
            raise ValueError(self.problems[index])
        sample, root = self.items[index]
        name = str(sample.get("id", index))
        videos = [root / v for v in sample_videos(sample)]
        if is_text_to_video(sample["conversations"]):
            encoded = [self.processor.encode_sample(self._drop_prompt(sample["conversations"]),
                                                    sample_id=name, num_videos=len(videos))]
        elif self.split_turns and len(videos) == 1:
            rounds = split_rounds(sample["conversations"])
            chosen = list(range(len(rounds)))
            if self.max_rounds and len(rounds) > self.max_rounds:
                # the first round (in LLaVA data the description request, the densest target) and a fresh
                # random draw of the others each time the sample is read (torch RNG: a resumed run replays it)
                others = torch.randperm(len(rounds) - 1)[: self.max_rounds - 1] + 1
                chosen = [0] + others.sort().values.tolist()
            # Each round's ids are rendered once and kept: the chat template is re-rendered per assistant
            # turn, which costs as much as a third of a CPU step when a sample has many rounds.
            encoded = [self._encode_round(index, k, rounds[k], name) for k in chosen]
            if self.pack_questions and len(encoded) > 1:
                packed = pack_rounds(encoded, self.processor.video_ids, name)
                encoded = [packed] if len(packed) <= self.processor.config.max_length else encoded
        else:
            encoded = [self.processor.encode_sample(sample["conversations"], sample_id=name,
                                                    num_videos=len(videos))]
        encoded += [self.processor.encode_sample(self._drop_prompt(turns), sample_id=f"{name}/t2v",
                                                 num_videos=1)
                    for turns in self.extras.get(index, [])]
        frames = [self.processor.load_video(v) for v in videos]
        # One entry per <video> span of the sample's sequences, indexing `frames`.
        spans = [k for e in encoded for k in range(e.num_videos)] if len(videos) > 1 else [0] * sum(
            e.num_videos for e in encoded)
        return {"encoded": encoded, "videos": frames, "spans": spans, "id": name, "index": index}

    def _encode_round(self, index: int, k: int, turns: list[dict], name: str):
        """Round k of item `index`, encoded once and kept (its text never changes between reads)."""
        if (index, k) not in self._round_cache:
            self._round_cache[(index, k)] = self.processor.encode_sample(turns, sample_id=name, num_videos=1)
        return self._round_cache[(index, k)]

    def _drop_prompt(self, turns: list[dict]) -> list[dict]:
        """A text-to-video conversation with its user turns emptied, with probability prompt_dropout."""
        if self.prompt_dropout and float(torch.rand(())) < self.prompt_dropout:
            return [dict(t, value="") if t.get("from") == HUMAN else t for t in turns]
        return turns

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
        raise RuntimeError(f"no usable sample among {len(self.items)}; first problems: "
                           f"{list(self.bad.values())[:3]}")

    def bad_fraction(self) -> float:
        return len(self.bad) / max(1, self.seen)


def t2v_conversation(sample: dict) -> dict:
    """A world `t2v.jsonl` line ({"video", "prompt"}, no "conversations") -> a text-to-video conversation;
    any other sample unchanged."""
    if (isinstance(sample, dict) and "conversations" not in sample and isinstance(sample.get("prompt"), str)
        and "video" in sample):
        turns = [{"from": HUMAN, "value": sample["prompt"]}, {"from": GPT, "value": VIDEO_PLACEHOLDER}]
        return {"id": sample.get("id"), "video": sample["video"], "conversations": turns}
    return sample


def is_text_to_video(conversations: list[dict]) -> bool:
    """A <video> in an assistant turn: the video is the answer."""
    return any(isinstance(t, dict) and t.get("from") == GPT and VIDEO_PLACEHOLDER in str(t.get("value", ""))
               for t in conversations)


def split_rounds(conversations: list[dict]) -> list[list[dict]]:
    """A one-video conversation -> one conversation per human/gpt round, each opening with the video.

    A leading system turn is kept in every round. Raises ValueError when the turns do not alternate.
    """
    turns = list(conversations)
    system = [turns.pop(0)] if turns and turns[0].get("from") == SYSTEM else []
    if not turns or len(turns) % 2 or any(t.get("from") != (HUMAN, GPT)[i % 2] for i, t in enumerate(turns)):
        raise ValueError("split_turns needs alternating human/gpt turns")
    rounds = []
    for human, gpt in zip(turns[::2], turns[1::2]):
        text = human["value"].replace(VIDEO_PLACEHOLDER, "").strip()
        rounds.append(system + [{"from": HUMAN, "value": f"{VIDEO_PLACEHOLDER}\n{text}"}, gpt])
    return rounds


def collate(processor, items: list[dict]) -> dict:
    """Batch for `VideoLLM.forward` plus the sample indices (for the data position). A packed item is one
    row; with one in the batch, `attention_mask` is 4D and `position_ids` are set (see
    VideoProcessor.collate)."""
    videos, index = [], []
    for item in items:
        index += [len(videos) + k for k in item["spans"]]
        videos += item["videos"]
    batch = processor.collate([e for item in items for e in item["encoded"]], videos=videos or None,
                              video_index=index if videos else None)
    batch["index"] = torch.tensor([item["index"] for item in items])
    return batch

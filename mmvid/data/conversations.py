"""LLaVA-format conversation data: the format users bring from LLaVA-Video-178K and friends.

One sample:

    {"id": "v0001",
     "video": "clips/v0001.mp4",                  # or a list of paths for several videos
     "conversations": [
        {"from": "human", "value": "<video>\\nWhat is moving?"},
        {"from": "gpt", "value": "A red circle moves left."}]}

A file is a JSON list of samples or JSONL (one sample per line). Video paths are relative to a
video root (by default the folder of the data file). Each `<video>` in the human turns stands for
one video, in order; an optional "system" turn may come first, then human and gpt alternate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_PLACEHOLDER = "<video>"
HUMAN, GPT, SYSTEM = "human", "gpt", "system"


class DataFormatError(ValueError):
    """A data file cannot be parsed as LLaVA-format JSON/JSONL."""


@dataclass
class Problem:
    """One thing wrong with one sample."""

    kind: str  # "malformed", "placeholder", "empty_answer", "empty_question", "missing_video", ...
    message: str


def load_conversations(path: str | os.PathLike) -> list[dict]:
    """Read a LLaVA-format JSON list or JSONL file.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: invalid JSON (with the line number), or not a list of samples.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise DataFormatError(f"{path}: the file is empty")
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        return data
    samples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: invalid JSON on line {lineno}: {e.msg}") from e
    return samples


def sample_videos(sample: dict) -> list[str]:
    """The video paths of a sample, in placeholder order ([] for a text-only sample)."""
    video = sample.get("video")
    if video is None:
        return []
    return [video] if isinstance(video, str) else list(video)


def check_sample(sample, placeholder: str = VIDEO_PLACEHOLDER) -> list[Problem]:
    """Structural checks of one sample (no file access). Returns the problems found."""
    if not isinstance(sample, dict):
        return [Problem("malformed", f"a sample must be a JSON object, got {type(sample).__name__}")]
    video = sample.get("video")
    if video is not None and not (
        isinstance(video, str) or (isinstance(video, list) and all(isinstance(v, str) for v in video))
    ):
        return [Problem("malformed", "'video' must be a path or a list of paths")]
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [Problem("malformed", "'conversations' must be a non-empty list")]
    problems: list[Problem] = []
    roles = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            problems.append(Problem("malformed", f"turn {i} needs a string 'value'"))
            continue
        role = turn.get("from")
        if role not in (HUMAN, GPT, SYSTEM) or (role == SYSTEM and i != 0):
            problems.append(Problem("malformed",
                                    f"turn {i} has role {role!r}; expected 'human'/'gpt' ('system' only "
                                    "first)"))
            continue
        roles.append(role)
        if role == GPT and not turn["value"].strip():
            problems.append(Problem("empty_answer", f"turn {i} (gpt) is empty"))
        if role == HUMAN and not turn["value"].strip():
            problems.append(Problem("empty_question", f"turn {i} (human) is empty"))
        if role == GPT and placeholder in turn["value"]:
            problems.append(Problem("placeholder", f"turn {i} (gpt) contains {placeholder}"))
    if any(p.kind == "malformed" for p in problems):
        return problems
    dialogue = roles[1:] if roles[0] == SYSTEM else roles
    expected = [HUMAN if i % 2 == 0 else GPT for i in range(len(dialogue))]
    if dialogue != expected:
        problems.append(Problem("malformed",
                                f"turns must alternate human/gpt starting with human, got {dialogue}"))
    if dialogue and dialogue[-1] != GPT:
        problems.append(Problem("empty_answer", "the last human turn has no gpt answer"))
    count = sum(t["value"].count(placeholder) for t in turns if t.get("from") == HUMAN)
    videos = sample_videos(sample)
    if count != len(videos):
        problems.append(
            Problem("placeholder",
                    f"{count} {placeholder} placeholder(s) in the human turns but {len(videos)} video(s)")
        )
    return problems

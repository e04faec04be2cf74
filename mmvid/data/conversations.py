"""Conversation data for SFT: the formats people train on, read into one internal form, and checked.

The internal form (mmvid's own files, and what every reader here returns) is LLaVA's, with `<video>`:

    {"id": "v0001",
     "video": "clips/v0001.mp4",                  # or a list of paths for several videos
     "conversations": [
        {"from": "human", "value": "<video>\\nWhat is moving?"},
        {"from": "gpt", "value": "A red circle moves left."}]}

Each `<video>` in the human turns stands for one video, in order; an optional "system" turn may come first,
then human and gpt alternate. A file is a JSON list of samples or JSONL (one sample per line). Video paths
are relative to a video root (by default the folder of the data file).

Formats read (`format=`; "auto", the default, decides row by row from the keys):

- "mmvid": the internal form itself; an `<image>` is plain text.
- "llava": LLaVA / LLaVA-NeXT / LLaVA-Video-178K rows ("conversations", no "videos"). As the internal form,
  except that `<image>` stands for the sample's video when the row has a "video" key and no "image" key:
  LLaVA-Video-178K writes `"<image>\\nQuestion"` for its videos, which LLaVA-NeXT's trainer reads that way.
  Such `<image>`s become `<video>`. A row that writes both `<image>` and `<video>` is reported
  ("placeholder"), and an image row ("image" key) is reported as unsupported: mmvid trains on videos.
- "sharegpt": LLaMA-Factory / ms-swift rows ("messages", or "conversations" together with "videos"):

      {"messages": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "<video>What is moving?"},
                    {"role": "assistant", "content": "A red circle."}],
       "videos": ["clips/v0001.mp4"]}

  LLaMA-Factory's default ShareGPT tags ({"from": "human" | "gpt", "value"}) and its "system" column are read
  too. Roles user/human become human, assistant/gpt become gpt; the `<video>`s stand for "videos" in order.
  Tool roles (function_call, observation, tool), list-of-parts contents and "images" are reported as
  unsupported. A row needs no "id": reports name it by its file and index (`sample #3 of data.json`).

"auto" reads a row with "messages", or with "conversations" and "videos", as sharegpt; one with
"conversations" otherwise as llava; a synthetic world's t2v.jsonl line ({"video", "prompt"}) passes unchanged
(mmvid.sft.data makes it a text-to-video conversation). Force a format where keys are ambiguous:
`format="mmvid"` for a LLaVA file whose `<image>` is text. A file none of whose rows has a known format raises
DataFormatError naming the file and the first row's keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_PLACEHOLDER = "<video>"
IMAGE_PLACEHOLDER = "<image>"  # LLaVA's image token; LLaVA-Video-178K writes it for the video
HUMAN, GPT, SYSTEM = "human", "gpt", "system"
FORMATS = ("auto", "mmvid", "llava", "sharegpt")
# ShareGPT roles (OpenAI's and LLaMA-Factory's default tags) -> the internal ones
SHAREGPT_ROLES = {"user": HUMAN, "human": HUMAN, "assistant": GPT, "gpt": GPT, "system": SYSTEM}


class DataFormatError(ValueError):
    """A data file cannot be parsed as conversation data (JSON/JSONL of samples in a known format)."""


@dataclass
class Problem:
    """One thing wrong with one sample."""

    # "malformed", "placeholder", "unsupported", "empty_answer", "empty_question", "missing_video", ...
    kind: str
    message: str


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


@dataclass
class DataFile:
    """The samples of one data file, in the internal form, each with the row it came from and what reading it
    found (a row that could not be converted stays as it was and has at least one problem)."""

    path: Path
    samples: list
    rows: list[int]  # each sample's index in the file (0-based; a mixture may keep only some rows)
    formats: list[str | None]  # the format each row was read as: mmvid, llava, sharegpt, t2v (None: unknown)
    problems: list[list[Problem]]  # per sample; empty when it was read cleanly
    selection: str = ""  # how a mixture chose these rows ("first:10% of 30 rows, mix.yaml"); "" for all

    def name(self, i: int) -> str:
        """How reports name sample i: by its id, else by its index in its file."""
        return sample_name(self.samples[i], self.rows[i], self.path)

    def select(self, indices: list[int], selection: str = "") -> DataFile:
        """Only the samples at these positions."""
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return DataFile(self.path, pick(self.samples), pick(self.rows), pick(self.formats),
                        pick(self.problems), selection)


def read_data_file(path: str | os.PathLike, format: str = "auto") -> DataFile:
    """Read a JSON list or JSONL file of samples in `format` (see the module docstring), in the internal form.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: invalid JSON (with the line number), not a list of samples, or no row in a known
            format.
        ValueError: an unknown `format`.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; known: {list(FORMATS)}")
    path = Path(path)
    rows = read_rows(path)
    if rows and all(detect_format(row) is None for row in rows):
        first = sorted(rows[0]) if isinstance(rows[0], dict) else f"a {type(rows[0]).__name__}"
        raise DataFormatError(
            f"{path}: unknown data format (row 0: {first}); known: LLaVA/mmvid ('conversations', 'video'), "
            "ShareGPT ('messages' or 'conversations', with 'videos'), a world t2v line ('video', 'prompt')")
    samples, formats, problems = [], [], []
    for row in rows:
        sample, read_as, found_problems = normalise_sample(row, format)
        samples.append(sample)
        formats.append(read_as)
        problems.append(found_problems)
    return DataFile(path, samples, list(range(len(rows))), formats, problems)


def load_conversations(path: str | os.PathLike, format: str = "auto") -> list:
    """The samples of a data file in the internal form (`read_data_file(path, format).samples`; a row that
    cannot be converted is returned as it is, for `check_sample` to report)."""
    return read_data_file(path, format).samples


def read_rows(path: str | os.PathLike) -> list:
    """The raw rows of a JSON list or JSONL file, unconverted.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: invalid JSON (with the line number), or JSON that is not a list.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise DataFormatError(f"{path}: the file is empty")
    if stripped[0] in "[{" and not _is_jsonl(stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a JSON list of samples (or JSONL), got a "
                                  f"{type(data).__name__}")
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


def _is_jsonl(text: str) -> bool:
    """Whether text starting with "{" holds one JSON object per line (JSONL) rather than one JSON value."""
    if text[0] == "[":
        return False
    first = text.split("\n", 1)[0]
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False  # an object spread over lines: one JSON value (then an error: not a list)
    return True


def sample_name(sample, row: int, path: str | os.PathLike | None = None) -> str:
    """`sample 'v1' (#3)`, or without an id `sample #3 of data.json` (row: its 0-based index in the file)."""
    if isinstance(sample, dict) and sample.get("id") is not None:
        return f"sample {sample['id']!r} (#{row})"
    return f"sample #{row}" + (f" of {Path(path).name}" if path is not None else "")


# ----------------------------------------------------------------------------------------------
# Formats -> the internal form
# ----------------------------------------------------------------------------------------------


def detect_format(row) -> str | None:
    """"sharegpt", "llava" or "t2v" from the row's keys; None when it has none of them."""
    if not isinstance(row, dict):
        return None
    if "messages" in row or ("conversations" in row and "videos" in row):
        return "sharegpt"
    if "conversations" in row:
        return "llava"
    if "prompt" in row and "video" in row:
        return "t2v"
    return None


def normalise_sample(row, format: str = "auto") -> tuple[object, str | None, list[Problem]]:
    """(the row in the internal form, the format it was read as, problems). A row that cannot be converted
    comes back unchanged, with a problem."""
    detected = detect_format(row)
    if detected is None:
        if not isinstance(row, dict):
            return row, None, [Problem("malformed",
                                       f"a sample must be a JSON object, got {type(row).__name__}")]
        return row, None, [Problem("malformed", f"no known format has these keys: {sorted(row)} (expected "
                                                "'conversations' and 'video', or 'messages' and 'videos')")]
    if detected == "t2v":
        return row, "t2v", []
    read_as = detected if format == "auto" else format
    if read_as == "sharegpt":
        sample, problems = _from_sharegpt(row)
        return sample, "sharegpt", problems
    if detected == "sharegpt":
        return row, read_as, [Problem("malformed", f"a ShareGPT row ('messages'/'videos') read as {read_as}; "
                                                   "read it with format auto or sharegpt")]
    if read_as == "llava":
        sample, problems = _from_llava(row)
        return sample, "llava", problems
    return row, "mmvid", []


def _from_llava(row: dict) -> tuple[dict, list[Problem]]:
    """A LLaVA row: `<image>` -> `<video>` when it has a video and no image (see the module docstring)."""
    if "image" in row:
        return row, [Problem("unsupported", "an image sample ('image' key): mmvid trains on videos")]
    turns = row.get("conversations")
    if "video" not in row or not isinstance(turns, list):
        return row, []
    texts = [t["value"] for t in turns if isinstance(t, dict) and isinstance(t.get("value"), str)]
    if not any(IMAGE_PLACEHOLDER in text for text in texts):
        return row, []
    if any(VIDEO_PLACEHOLDER in text for text in texts):
        mixed = (f"mixes {IMAGE_PLACEHOLDER} and {VIDEO_PLACEHOLDER} placeholders; with a 'video' and no "
                 f"'image', {IMAGE_PLACEHOLDER} stands for the video: write one kind")
        return row, [Problem("placeholder", mixed)]
    converted = [dict(t, value=t["value"].replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER))
                 if isinstance(t, dict) and isinstance(t.get("value"), str) else t for t in turns]
    return {**row, "conversations": converted}, []


def _from_sharegpt(row: dict) -> tuple[dict, list[Problem]]:
    """A LLaMA-Factory / ms-swift ShareGPT row -> the internal form (unchanged, with problems, when it
    cannot be converted)."""
    messages = row.get("messages", row.get("conversations"))
    if not isinstance(messages, list) or not messages:
        return row, [Problem("malformed", "'messages' must be a non-empty list")]
    problems, turns = [], []
    for i, message in enumerate(messages):
        role_key, content_key = ("role", "content") if isinstance(message, dict) and "role" in message else (
            "from", "value")
        if not isinstance(message, dict) or not isinstance(message.get(content_key), (str, list)):
            problems.append(Problem("malformed", f"message {i} needs a string '{content_key}'"))
        elif message.get(role_key) not in SHAREGPT_ROLES:
            problems.append(Problem("unsupported", f"message {i} has role {message.get(role_key)!r}; mmvid "
                                                   "reads system, user (human) and assistant (gpt)"))
        elif not isinstance(message[content_key], str):
            problems.append(Problem("unsupported", f"message {i}: a list of content parts; mmvid reads "
                                                   f"string contents with {VIDEO_PLACEHOLDER} placeholders"))
        else:
            turns.append({"from": SHAREGPT_ROLES[message[role_key]], "value": message[content_key]})
    videos = row.get("videos") or []
    videos = [videos] if isinstance(videos, str) else videos
    if not isinstance(videos, list) or not all(isinstance(v, str) for v in videos):
        problems.append(Problem("malformed", "'videos' must be a list of paths"))
    if row.get("images"):
        problems.append(Problem("unsupported", "'images': mmvid trains on videos"))
    if "video" in row and "videos" not in row:
        problems.append(Problem("malformed", "ShareGPT lists videos in 'videos'; a 'video' key is LLaVA's "
                                             "(read the file with format auto or llava)"))
    if problems:
        return row, problems
    system = row.get("system")
    if isinstance(system, str) and system and turns[0]["from"] != SYSTEM:
        turns.insert(0, {"from": SYSTEM, "value": system})  # LLaMA-Factory's "system" column
    sample = {"id": row["id"]} if "id" in row else {}
    if videos:
        sample["video"] = videos[0] if len(videos) == 1 else list(videos)
    sample["conversations"] = turns
    return sample, []


# ----------------------------------------------------------------------------------------------
# Checks of the internal form
# ----------------------------------------------------------------------------------------------


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

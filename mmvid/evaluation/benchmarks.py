r"""Public video benchmarks read from their own published files: `python eval/run.py --bench NAME --data
FILE_OR_FOLDER [--video-root DIR]`, with NAME as lmms-eval names the task. Scoring, metrics and options
are `mmvid.evaluation.video_mc`'s (both formulations, per task and category, unscorable videos and
malformed rows counted, never guessed).

    mvbench            --data MVBench/ (its json/<task>.json; or one <task>.json)  --video-root MVBench/video
        Items `{"video", "question", "candidates": [...], "answer": <a candidate's text>}`, optional
        `"start"`/`"end"` (seconds: only that window is sampled). The task is the file's name. Videos are
        looked for under the video root in the task's source folders (the release's list and lmms-eval's,
        e.g. action_count -> perception/videos), then directly; a source that is a folder of frames
        (episodic_reasoning's TVQA frames) is read as a video (`read_video`, 3 fps). `--limit` is per task.
    videomme           --data videomme/test-00000-of-00001.parquet  --video-root <folder holding data/>
        Rows `videoID, question_id, duration, domain, sub_category, task_type, question,
        options ["A. ...", ...], answer` (a letter); videos `data/<videoID>.mp4` (.MP4, .mkv).
        Task: task_type; categories: duration, domain, sub_category.
    nextqa_mc          --data NExTQA/test.csv (or lmms-eval's MC parquet)  --video-root NExTVideo
        Rows `video, question, a0..a4, answer` (an index 0-4), `qid`, `type`; videos `<video>.mp4`, or
        through the release's `map_vid_vidorID.json` when the root has it. Categories: type (CW, TN, DC, ...)
        and its group (causal, temporal, descriptive).
    egoschema          --data egoschema (lmms-eval's parquet/JSON, `video_idx, question, option[5], answer`;
                       or the release's questions.json, `q_uid, question, option 0..option 4`, with
                       `--option answers=subset_answers.json`)  --video-root videos
        Videos `<video_idx>.mp4`. A question without an answer (the full set's are hidden) is predicted,
        counted in `no_answer_key`, and not scored.
    perceptiontest_mc  --data mc_question_val.parquet (lmms-eval's: `video_name, question, question_id,
                       options[3], answer_id, area, reasoning, tag`; or the release's all_valid.json, videos
                       keyed to `mc_question` lists)  --video-root videos
        Videos `<video_name>.mp4`. Categories: area, reasoning.

Files may be JSON (a list of rows), JSONL, CSV or parquet, whatever the benchmark ships. A row that is not
a valid question is reported with its file and row and skipped (`--strict` stops at it instead).
Field names were checked against lmms-eval 0.7.3's task files (`lmms_eval/tasks/<name>/utils.py`) and the
benchmarks' releases; prompts follow those task files' `doc_to_text`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmvid.evaluation.runner import BenchContext, BenchResult
from mmvid.evaluation.video_mc import (
    BenchmarkFormatError,
    Malformed,
    MCBenchmark,
    MCQuestion,
    lettered,
    run_mc,
)

# MVBench task -> the folders its videos are in under the video root: the release's (MVBench's own list;
# windowed tasks' full videos) and lmms-eval 0.7.3's (pre-cut segments and converted copies). Each is also
# looked for under data0613/ (files the release added later), then the root itself.
_STAR = ("star/Charades_v1_480", "star/Charades_segment")
_CLEVRER = ("clevrer/video_validation",)
_PERCEPTION = ("perception/videos",)
MVBENCH_FOLDERS = {
    "action_sequence": _STAR, "action_prediction": _STAR, "object_interaction": _STAR,
    "action_antonym": ("ssv2_video", "ssv2_video_mp4"),
    "fine_grained_action": ("Moments_in_Time_Raw/videos",),
    "unexpected_action": ("FunQA_test/test",), "object_existence": _CLEVRER, "moving_direction": _CLEVRER,
    "moving_count": _CLEVRER, "moving_attribute": _CLEVRER, "counterfactual_inference": _CLEVRER,
    "object_shuffle": _PERCEPTION, "action_count": _PERCEPTION, "state_change": _PERCEPTION,
    "character_order": _PERCEPTION, "action_localization": ("sta/sta_video", "sta/sta_video_segment"),
    "scene_transition": ("scene_qa/video",), "fine_grained_pose": ("nturgbd", "nturgbd_convert"),
    "egocentric_navigation": ("vlnqa",), "episodic_reasoning": ("tvqa/frames_fps3_hq",),  # frame folders
}
NEXTQA_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


# -- reading rows ------------------------------------------------------------------------------------------


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a JSON list, JSONL, CSV or parquet file; a JSONL line that is not JSON
    comes as (where, BenchmarkFormatError)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    rows.append((f"{path}:{lineno}", BenchmarkFormatError(f"invalid JSON ({e.msg})")))
        yield from rows
        return
    elif suffix == ".json":
        rows = _load_json(path)
        if not isinstance(rows, list):
            raise BenchmarkFormatError(f"{path}: expected a JSON list of questions, got "
                                       f"{type(rows).__name__}")
    else:
        raise BenchmarkFormatError(f"{path}: unsupported question file type {suffix!r} (JSON, JSONL, CSV, "
                                   "parquet)")
    for i, row in enumerate(rows, start=1):
        yield f"{path} row {i}", row


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from e


def _question_files(data: str | None, bench: str, patterns: tuple[str, ...]) -> list[Path]:
    if not data:
        raise ValueError(f"--bench {bench} needs --data: the benchmark's question file or folder")
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        for pattern in patterns:
            files = sorted(path.glob(pattern))
            if files:
                return files
        raise FileNotFoundError(f"{bench}: no question files ({', '.join(patterns)}) in {path}")
    raise FileNotFoundError(f"{bench}: question file or folder not found: {path}")


def _collect(files: list[Path], parse: Callable[[dict, str, Path], MCQuestion | list[MCQuestion]],
             rows: Callable[[Path], Iterator[tuple[str, Any]]] = read_rows
             ) -> tuple[list[MCQuestion], list[Malformed]]:
    questions, malformed = [], []
    for path in files:
        for where, row in rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise BenchmarkFormatError(f"expected an object, got {type(row).__name__}")
                parsed = parse(row, where, path)
                questions += parsed if isinstance(parsed, list) else [parsed]
            except BenchmarkFormatError as e:
                malformed.append(Malformed(where, str(e)))
    return questions, malformed


# -- field checks ------------------------------------------------------------------------------------------


def _field(row: dict, key: str, kind: type | tuple = str) -> Any:
    if key not in row or row[key] is None:
        raise BenchmarkFormatError(f"missing {key!r} (has {sorted(row)})")
    value = row[key]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # ids written as numbers (NExT-QA's video, PerceptionTest's question_id)
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        what = getattr(kind, "__name__", kind)
        raise BenchmarkFormatError(f"{key!r} must be a non-empty {what}, got {value!r}")
    return value


def _option_list(row: dict, key: str, count: int | None = None, strip_letters: bool = False) -> list[str]:
    options = row.get(key)
    if hasattr(options, "tolist"):
        options = options.tolist()
    if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) and o.strip()
                                                                    for o in options)):
        raise BenchmarkFormatError(f"{key!r} must be a list of at least 2 non-empty strings, got {options!r}")
    if count is not None and len(options) != count:
        raise BenchmarkFormatError(f"{key!r} must have {count} options, has {len(options)}")
    if strip_letters:  # "A. text" -> "text", checking the letters run A, B, C, ...
        stripped = []
        for i, option in enumerate(options):
            match = _PREFIX.match(option)
            if match and match.group(1) != chr(ord("A") + i):
                raise BenchmarkFormatError(f"option {i} is lettered {match.group(1)!r}: {option!r}")
            stripped.append(option[match.end():].strip() if match else option.strip())
        options = stripped
    return [o.strip() for o in options]


def _index(value: Any, count: int, what: str) -> int | None:
    """An answer index 0..count-1 (int or digit string); None, "" or -1: no published answer."""
    if value is None or value == "" or value == -1 or value == "-1":
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
        raise BenchmarkFormatError(f"{what} must be an index 0-{count - 1}, got {value!r}")
    return value


def _window(row: dict) -> tuple[float | None, float | None]:
    start, end = row.get("start"), row.get("end")
    if start is None and end is None:
        return None, None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end)) or end <= start:
        raise BenchmarkFormatError(f"'start'/'end' must be seconds with end > start, got {start!r}, {end!r}")
    return float(start), float(end)


def find_video(roots: list[Path], name: str, folders: tuple[str, ...] = ("",),
               suffixes: tuple[str, ...] = ("",)) -> str:
    """The first existing root/folder/name+suffix (a file or a frame folder); the first candidate when none
    exists (reading it then reports the missing file)."""
    candidates = [root / folder / f"{name}{suffix}" for root in roots for folder in folders
                  for suffix in suffixes]
    return str(next((c for c in candidates if c.exists()), candidates[0]))


def _roots(ctx: BenchContext, files: list[Path], *fallbacks: Path) -> list[Path]:
    root = ctx.option("video_root")
    return [Path(root)] if root else list(dict.fromkeys([files[0].parent, *fallbacks]))


# -- the benchmarks ----------------------------------------------------------------------------------------


def read_mvbench(ctx: BenchContext) -> MCBenchmark:
    files = _question_files(ctx.data, "mvbench", ("json/*.json", "*.json"))
    base = files[0].parent.parent if files[0].parent.name == "json" else files[0].parent
    roots = _roots(ctx, files, base, base / "video")

    def parse(row, where, path):
        candidates = _option_list(row, "candidates")
        answer = _field(row, "answer")
        if answer not in candidates:
            raise BenchmarkFormatError(f"answer {answer!r} is not one of the candidates {candidates}")
        task = path.stem
        start, end = _window(row)
        folders = MVBENCH_FOLDERS.get(task, ())
        video = find_video(roots, _field(row, "video"), (*folders, *(f"data0613/{f}" for f in folders), ""))
        return MCQuestion(f"{task}/{where.rsplit(' ', 1)[-1]}", video, _field(row, "question"), candidates,
                          candidates.index(answer), task, start=start, end=end, where=where)

    questions, malformed = _collect(files, parse)

    def prompt(q):
        return f"Question:{q.question}\nOption:\n{lettered(q.options, '({letter}) {option}')}\n" \
               "Only give the best option."

    return MCBenchmark("mvbench", questions, malformed, prompt,
                       {"files": [str(f) for f in files], "video_roots": [str(r) for r in roots]},
                       per_task_limit=True)


def read_videomme(ctx: BenchContext) -> MCBenchmark:
    files = _question_files(ctx.data, "videomme", ("*.parquet", "videomme/*.parquet", "*.json", "*.jsonl"))
    roots = _roots(ctx, files, files[0].parent.parent)

    def parse(row, where, path):
        options = _option_list(row, "options", strip_letters=True)
        answer = _field(row, "answer").strip().upper()
        if answer not in [chr(ord("A") + i) for i in range(len(options))]:
            raise BenchmarkFormatError(f"answer {answer!r} is not a letter of the {len(options)} options")
        video = find_video(roots, _field(row, "videoID"), ("data", ""), (".mp4", ".MP4", ".mkv"))
        categories = {k: _field(row, k) for k in ("duration", "domain", "sub_category")}
        return MCQuestion(_field(row, "question_id"), video, _field(row, "question"), options,
                          ord(answer) - ord("A"), _field(row, "task_type"), categories, where=where)

    questions, malformed = _collect(files, parse)

    def prompt(q):
        return ("Select the best answer to the following multiple-choice question based on the video and the "
                "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n"
                f"{q.question}\n{lettered(q.options)}\n{LETTER_INSTRUCTION}")

    return MCBenchmark("videomme", questions, malformed, prompt,
                       {"files": [str(f) for f in files], "video_roots": [str(r) for r in roots]})


def read_nextqa_mc(ctx: BenchContext) -> MCBenchmark:
    files = _question_files(ctx.data, "nextqa_mc", ("*.csv", "*.parquet", "*.json", "*.jsonl"))
    roots = _roots(ctx, files, files[0].parent / "NExTVideo")
    mapping_file = roots[0] / "map_vid_vidorID.json"
    mapping = _load_json(mapping_file) if mapping_file.is_file() else {}

    def parse(row, where, path):
        options = [_field(row, f"a{i}") for i in range(5)]
        answer = _index(row.get("answer"), 5, "'answer'")
        video_id = _field(row, "video" if "video" in row or "video_id" not in row else "video_id")  # NExT-GQA
        qtype = str(row.get("type") or "").strip()
        categories = {"type": qtype, "group": NEXTQA_GROUPS.get(qtype[:1], "other")} if qtype else {}
        video = find_video(roots, mapping.get(video_id, video_id), suffixes=(".mp4", ".MP4"))
        qid = row.get("qid")
        return MCQuestion(f"{video_id}_{qid}" if qid is not None else where, video, _field(row, "question"),
                          [o.strip() for o in options], answer, "nextqa_mc", categories, where=where)

    questions, malformed = _collect(files, parse)

    def prompt(q):
        return f"{q.question}\n{lettered(q.options)}"

    return MCBenchmark("nextqa_mc", questions, malformed, prompt,
                       {"files": [str(f) for f in files], "video_roots": [str(r) for r in roots],
                        "video_map": str(mapping_file) if mapping else None})


def read_egoschema(ctx: BenchContext) -> MCBenchmark:
    files = _question_files(ctx.data, "egoschema", ("*.parquet", "*.json", "*.jsonl"))
    roots = _roots(ctx, files, files[0].parent / "videos")
    answers_file = ctx.option("answers")
    answers = _load_json(Path(answers_file)) if answers_file else {}

    def parse(row, where, path):
        if "q_uid" in row:  # the release's questions.json: option 0..option 4, answers in another file
            video_id = _field(row, "q_uid")
            options = [_field(row, f"option {i}") for i in range(5)]
            answer = _index(answers.get(video_id), 5, f"the answer of {video_id} in {answers_file}")
        else:  # lmms-eval's: option ["A. ...", ...], answer an index (None in the full set)
            video_id = _field(row, "video_idx")
            options = _option_list(row, "option", 5, strip_letters=True)
            answer = _index(row.get("answer"), 5, "'answer'")
        video = find_video(roots, video_id, suffixes=(".mp4", ".MP4"))
        return MCQuestion(video_id, video, _field(row, "question"), [o.strip() for o in options], answer,
                          "egoschema", where=where)

    questions, malformed = _collect(files, parse)

    def prompt(q):
        return f"{q.question}\n{lettered(q.options)}\n{LETTER_INSTRUCTION}"

    return MCBenchmark("egoschema", questions, malformed, prompt,
                       {"files": [str(f) for f in files], "video_roots": [str(r) for r in roots],
                        "answers": answers_file})


def _perceptiontest_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """The flat rows of lmms-eval's files, or the release's {video_id: {"mc_question": [...]}} JSON."""
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if isinstance(data, dict):
            for video_id, entry in data.items():
                questions = entry.get("mc_question") if isinstance(entry, dict) else None
                if not isinstance(questions, list):
                    yield f"{path} video {video_id}", BenchmarkFormatError("no 'mc_question' list")
                    continue
                for i, q in enumerate(questions):
                    where = f"{path} video {video_id} mc_question {i}"
                    yield where, {**q, "video_name": video_id, "question_id": q.get("id", i)} \
                        if isinstance(q, dict) else q
            return
    yield from read_rows(path)


def read_perceptiontest_mc(ctx: BenchContext) -> MCBenchmark:
    files = _question_files(ctx.data, "perceptiontest_mc", ("*.parquet", "*.json", "*.jsonl"))
    roots = _roots(ctx, files, files[0].parent / "videos")

    def parse(row, where, path):
        options = _option_list(row, "options", 3)
        video_id = _field(row, "video_name")
        answer = _index(row.get("answer_id"), len(options), "'answer_id'")
        categories = {k: row[k] for k in ("area", "reasoning") if isinstance(row.get(k), str) and row[k]}
        video = find_video(roots, video_id, suffixes=(".mp4", ".MP4"))
        return MCQuestion(f"{video_id}_{row.get('question_id', where)}", video, _field(row, "question"),
                          options, answer, "perceptiontest_mc", categories, where=where)

    questions, malformed = _collect(files, parse, _perceptiontest_rows)

    def prompt(q):
        return f"{q.question}\n{lettered(q.options)}\n{LETTER_INSTRUCTION}"

    return MCBenchmark("perceptiontest_mc", questions, malformed, prompt,
                       {"files": [str(f) for f in files], "video_roots": [str(r) for r in roots]})


READERS = {"mvbench": read_mvbench, "videomme": read_videomme, "nextqa_mc": read_nextqa_mc,
           "egoschema": read_egoschema, "perceptiontest_mc": read_perceptiontest_mc}


def bench(name: str) -> Callable[[BenchContext], BenchResult]:
    """The eval/run.py bench function of a public benchmark."""
    def run(ctx: BenchContext) -> BenchResult:
        return run_mc(ctx, READERS[name](ctx))

    run.__name__ = f"run_{name}"
    return run

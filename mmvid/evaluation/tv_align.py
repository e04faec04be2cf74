r"""`tv_align`: the TV-Align-style multiple-choice benchmark, per category and overall.

    python eval/run.py --bench tv_align [--data data/shapes] [--split test] \
        [--mode loglikelihood|generate|both]
    python eval/run.py --bench tv_align --data my_bench.jsonl [--video-root DIR]

Data: a synthetic world's `{split}/tv_align.jsonl` (default: the test split), or any JSONL of
`{"id", "video", "question", "options", "answer", "category"}` (answer: a letter, or the option
text). Video paths are relative to the JSONL's folder unless `video_root` is given.

Scoring modes:
- `loglikelihood` (default): each option's continuation of the user turn scored. The
  formulation (`option_format`, a comma list; the first is the headline `acc` / `acc_norm`, each
  other is reported beside it as `acc_<format>`; default `cloze,letter`):
  - `cloze`: the question alone as the user turn, each option's *text* scored (OLMES's cloze
    formulation, lm-eval's ARC/HellaSwag style): what a small LLM can learn, and what the built-in
    default is trained on;
  - `letter`: the question and lettered options (`multiple_choice_prompt`), "A".."D" scored (the
    multiple-choice formulation, for LLMs that can bind symbols);
  - `text`: the lettered prompt, the option texts scored.
  `acc` takes the highest summed log-prob, `acc_norm` the highest log-prob per byte.
  `end_of_answer` (`turn`, the default, or `none`): with `turn` each option is scored followed by the
  end-of-turn token, as the whole answer; with `none` (lm-eval's plain continuation) an option that
  extends another ("moves down and to the left" beside "moves down", 6 % of the world's action
  questions) can never win.
- `generate`: greedy answer, parsed as a letter or an option's text (`gen_acc`; `gen_unparsed`
  counts answers that named no option; they count as wrong).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from mmvid.data.shapes.text import multiple_choice_prompt
from mmvid.evaluation.runner import DEFAULT_DATA, BenchContext, BenchResult, Metric, mean_stderr
from mmvid.evaluation.scoring import continuation_logprobs, letters_for, parse_choice, pick
from mmvid.text_tokenizer import VIDEO_TOKEN

MODES = ("loglikelihood", "generate", "both")
OPTION_FORMATS = ("cloze", "letter", "text")
REQUIRED = ("id", "video", "question", "options", "answer", "category")


class BenchmarkFormatError(ValueError):
    """A benchmark file line that is not a valid question."""


def read_records(path: Path, required: tuple[str, ...]):
    """(where, record) for each non-empty line of a JSONL whose records need `required` keys; a bad
    line raises BenchmarkFormatError naming the file and line."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkFormatError(f"{where}: invalid JSON ({e.msg})") from e
        if not isinstance(item, dict):
            raise BenchmarkFormatError(f"{where}: expected a JSON object")
        missing = [k for k in required if k not in item]
        if missing:
            raise BenchmarkFormatError(f"{where}: missing {missing} (each line needs {list(required)})")
        yield where, item


def answer_index(item: dict) -> int:
    """The index of a question's answer, given as a letter or as an option's text (ValueError otherwise)."""
    letters, options, answer = letters_for(item["options"]), item["options"], item["answer"]
    if answer in letters:
        return letters.index(answer)
    if answer in options:
        return options.index(answer)
    raise ValueError(f"answer {answer!r} is neither a letter in {letters} nor an option")


def load_questions(path: str | Path) -> list[dict]:
    """Read and check a benchmark JSONL; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    questions = []
    for where, item in read_records(path, REQUIRED):
        options = item["options"]
        if not (isinstance(options, list) and 2 <= len(options) <= 26
                and all(isinstance(o, str) and o for o in options)):
            raise BenchmarkFormatError(f"{where}: 'options' must be a list of 2-26 non-empty strings")
        try:
            item["answer_index"] = answer_index(item)
        except ValueError as e:
            raise BenchmarkFormatError(f"{where}: {e}") from None
        questions.append(item)
    if not questions:
        raise BenchmarkFormatError(f"{path}: no questions")
    return questions


def benchmark_file(ctx: BenchContext) -> Path:
    data = Path(ctx.data or DEFAULT_DATA)
    if data.suffix == ".jsonl":
        return data
    return data / ctx.option("split", "test") / "tv_align.jsonl"


def run(ctx: BenchContext) -> BenchResult:
    mode = ctx.option("mode", "loglikelihood")
    formats = [f.strip() for f in str(ctx.option("option_format", "cloze,letter")).split(",") if f.strip()]
    if mode not in MODES:
        raise ValueError(f"unknown tv_align mode {mode!r}; known: {list(MODES)}")
    if not formats or any(f not in OPTION_FORMATS for f in formats) or len(set(formats)) != len(formats):
        raise ValueError(f"option_format must be a comma list of distinct {list(OPTION_FORMATS)}, got "
                         f"{ctx.option('option_format', 'cloze,letter')!r}")
    end_of_answer = str(ctx.option("end_of_answer", "turn"))
    if end_of_answer not in ("turn", "none"):
        raise ValueError(f"end_of_answer must be 'turn' or 'none', got {end_of_answer!r}")
    path = benchmark_file(ctx)
    questions = load_questions(path)[: ctx.limit]
    root = Path(ctx.option("video_root") or path.parent)
    model = ctx.load_model()
    hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    samples = []
    cache: dict[str, torch.Tensor] = {}  # video path -> projected features: questions share videos
    strict = ctx.flag("strict")
    unreadable: dict[str, str] = {}  # video path -> why it could not be read
    for q in tqdm(questions, desc="tv_align", unit="question"):
        video_path = str(root / q["video"])
        if video_path not in cache and video_path not in unreadable:
            cache.clear()  # questions of one video are adjacent; keep one video's features
            try:
                cache[video_path] = model.encode_video(model.processor.load_video(video_path)[None])
            except (OSError, ValueError, RuntimeError) as e:  # missing, undecodable, too short
                if strict:
                    raise
                unreadable[video_path] = f"{type(e).__name__}: {e}"
                tqdm.write(f"tv_align: cannot read {video_path} ({unreadable[video_path]}); its questions "
                           "are counted as unscorable (--strict stops instead)")
        if video_path in unreadable:
            samples.append({"id": q["id"], "category": q["category"], "video": video_path,
                            "unscorable": unreadable[video_path]})
            continue
        features = cache[video_path]
        messages = [{"role": "user",
                     "content": f"{VIDEO_TOKEN}\n{multiple_choice_prompt(q['question'], q['options'])}"}]
        letters = letters_for(q["options"])
        record = {"id": q["id"], "category": q["category"], "answer": letters[q["answer_index"]]}
        if mode in ("loglikelihood", "both"):
            for k, fmt in enumerate(formats):
                suffix = "" if k == 0 else f"_{fmt}"
                prompt = messages if fmt != "cloze" else [{"role": "user",
                                                           "content": f"{VIDEO_TOKEN}\n{q['question']}"}]
                choices = letters if fmt == "letter" else q["options"]
                scores = continuation_logprobs(model, prompt, choices, features,
                                               end_of_answer=end_of_answer == "turn")
                raw, norm = pick(scores, choices)
                for name, choice in ((f"acc{suffix}", raw), (f"acc_norm{suffix}", norm)):
                    hit = float(choice == q["answer_index"])
                    hits[name]["overall"].append(hit)
                    hits[name][q["category"]].append(hit)
                record[f"loglikelihoods{suffix}"] = scores
                record[f"choice{suffix}"] = letters[raw]
        if mode in ("generate", "both"):
            text = model.generate(messages=messages, video_features=features,
                                  max_new_tokens=int(ctx.option("max_new_tokens", "8")))
            choice = parse_choice(text, q["options"], letters)
            hit = float(choice == q["answer_index"])
            hits["gen_acc"]["overall"].append(hit)
            hits["gen_acc"][q["category"]].append(hit)
            hits["gen_unparsed"]["overall"].append(float(choice is None))
            record.update(generated=text, parsed=None if choice is None else letters[choice])
        samples.append(record)
    unscorable = sum(1 for r in samples if "unscorable" in r)
    metrics = [Metric("unscorable", float(unscorable), n=len(questions))]
    for name, groups in hits.items():
        for group in ["overall"] + sorted(g for g in groups if g != "overall"):
            value, stderr = mean_stderr(groups[group])
            metrics.append(Metric(name if group == "overall" else f"{group}/{name}", value, stderr,
                                  len(groups[group])))
    settings = {"file": str(path), "mode": mode, "option_format": formats[0],
                "headline": f"acc = {formats[0]} formulation", "end_of_answer": end_of_answer,
                "also_reported": {f"acc_{f}": f"{f} formulation" for f in formats[1:]},
                "questions": len(questions), "chance": 1 / len(questions[0]["options"]),
                "unscorable_questions": unscorable, "unreadable_videos": unreadable, "strict": strict}
    return BenchResult("tv_align", metrics, settings, samples)

"""Multiple-choice video QA, scored the two ways video benchmarks are reported: the engine behind the
public-benchmark benches (`mmvid.evaluation.benchmarks`: mvbench, videomme, nextqa_mc, egoschema,
perceptiontest_mc).

A reader turns a benchmark's own file into `MCQuestion`s (and `Malformed` rows, reported with their
file and row); `run_mc` scores them:

- `generate` (the benchmark's formulation): the benchmark's prompt (question, lettered options and its
  instruction, as lmms-eval's task for it writes them), a greedy answer of up to `max_new_tokens` (16, as
  lmms-eval's tasks), parsed by `extract_choice`. `gen_acc` counts an answer that names no option as
  wrong and `gen_unparsed` counts those answers: a parse failure is never scored as a guess (lmms-eval's
  NExT-QA task picks a random letter instead).
- `loglikelihood` (the option log-likelihood, lmms-eval's "mcppl" tasks): each option scored as the whole
  assistant answer (`end_of_answer`, see `mmvid.evaluation.scoring`). `option_format=cloze` (default):
  the question alone, the option texts scored; `letter`: the benchmark's prompt, the letters scored.
  `acc` is the highest summed log-prob, `acc_norm` the highest per byte.

Metrics: overall, then `<task>/<metric>` per task and `<field>=<value>/<metric>` per category field
(Video-MME's duration, domain, ...). `unscorable` counts questions whose video cannot be read (reported per
file; `--strict` stops instead), `malformed_rows` rows the reader refused, `no_answer_key` questions
without a published answer (EgoSchema's full set, PerceptionTest's test split: predictions only).

Batches: `ctx.batch_size` questions at a time: their videos are encoded together and all their options
scored in one left-padded forward pass; scores do not depend on the batch size (tested). Each sample
record (`--log-samples`, also written as JSONL) has the source frame indices that were read.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from mmvid.data.video_io import frames_to_tensor
from mmvid.evaluation.runner import BenchContext, BenchResult, Metric, mean_stderr
from mmvid.evaluation.scoring import batch_continuation_logprobs, letters_for, pick
from mmvid.evaluation.tv_align import BenchmarkFormatError  # one error for every benchmark file
from mmvid.text_tokenizer import VIDEO_TOKEN

MODES = ("loglikelihood", "generate", "both")
LL_FORMATS = ("cloze", "letter")


@dataclass
class MCQuestion:
    id: str
    video: str  # the resolved path (file or frame folder)
    question: str
    options: list[str]  # option texts, without letter prefixes
    answer_index: int | None  # None: the benchmark publishes no answer for it
    task: str
    categories: dict[str, str] = field(default_factory=dict)  # field -> value, e.g. {"duration": "short"}
    start: float | None = None  # seconds: only frames shown in [start, end) are sampled
    end: float | None = None
    where: str = ""  # file and row


@dataclass
class Malformed:
    where: str
    error: str


@dataclass
class MCBenchmark:
    """A reader's output: the questions, the refused rows, and how the benchmark prompts."""

    name: str
    questions: list[MCQuestion]
    malformed: list[Malformed]
    prompt: Callable[[MCQuestion], str]  # the benchmark's prompt: question, lettered options, instruction
    settings: dict = field(default_factory=dict)  # reader settings recorded in the JSON (files, roots, ...)
    per_task_limit: bool = False  # --limit counts per task (lmms-eval's MVBench is one task per file)

    def limited(self, limit: int | None) -> list[MCQuestion]:
        if limit is None or not self.per_task_limit:
            return self.questions[:limit]
        taken: dict[str, int] = defaultdict(int)
        out = []
        for q in self.questions:
            if taken[q.task] < limit:
                taken[q.task] += 1
                out.append(q)
        return out


_ALONE = re.compile(r"^\W*\(?([A-Z])\)?\W*$")  # "B", "(B)", "B.", "B)"
_BRACKETED = re.compile(r"\(([A-Z])\)")  # "... (B) ..."
_PHRASE = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*\(?([A-Z])[).:]")  # "B. red", "B) red", "B: red"
_LEADING_WORD = re.compile(r"^\W*([A-Z])(?:\s+(?![a-z])|$)")  # "B Red"; not "A small ..." (an article)


def extract_choice(text: str, options: list[str]) -> int | None:
    """The option a generated answer names, or None (a parse failure). In order: the answer is a letter
    ("B", "(B)", "B."); a bracketed letter "(B)"; "answer is B" / "option B"; a leading "B." / "B)" / "B:";
    the one option whose text the answer contains (the longest, when one option contains another); a
    leading "B " not followed by a lower-case word ("A small circle" is prose). Only letters of the
    question's options count."""
    letters = letters_for(options)
    answer = text.strip()
    if not answer:
        return None
    for pattern in (_ALONE, _BRACKETED, _PHRASE, _LEADING):
        found = {m.upper() for m in pattern.findall(answer) if m.upper() in letters}
        if len(found) == 1:
            return letters.index(found.pop())
    lowered = answer.lower()
    hits = [i for i, option in enumerate(options) if option.strip() and option.strip().lower() in lowered]
    hits = [i for i in hits if not any(j != i and options[i].lower() in options[j].lower() for j in hits)]
    if len(hits) == 1:
        return hits[0]
    lead = _LEADING_WORD.match(answer)
    if lead and lead.group(1) in letters and not hits:
        return letters.index(lead.group(1))
    return None


def lettered(options: list[str], style: str = "{letter}. {option}") -> str:
    pairs = zip(letters_for(options), options)
    return "\n".join(style.format(letter=letter, option=option) for letter, option in pairs)


def _options(ctx: BenchContext) -> tuple[str, str, int, bool]:
    mode = str(ctx.option("mode", "both"))
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {list(MODES)}")
    fmt = str(ctx.option("option_format", "cloze"))
    if fmt not in LL_FORMATS:
        raise ValueError(f"option_format must be one of {list(LL_FORMATS)} here, got {fmt!r}")
    max_new_tokens = int(ctx.option("max_new_tokens", "16"))
    strict = ctx.flag("strict")
    return mode, fmt, max_new_tokens, strict


class _VideoCache:
    """Projected features of the videos of the current batch (a benchmark's questions share videos)."""

    def __init__(self, model):
        self.model = model
        self.features: dict[tuple, torch.Tensor] = {}
        self.indices: dict[tuple, list[int]] = {}
        self.unreadable: dict[str, str] = {}

    def load(self, batch: list[MCQuestion], strict: bool) -> None:
        wanted = {(q.video, q.start, q.end) for q in batch}
        keys = [k for k in dict.fromkeys((q.video, q.start, q.end) for q in batch)
                if k not in self.features and k[0] not in self.unreadable]
        self.features = {k: v for k, v in self.features.items() if k in wanted}
        videos, read = [], []
        for key in keys:
            try:
                decoded = self.model.processor.read_decoded(key[0], start_time=key[1], end_time=key[2])
            except (OSError, ValueError, RuntimeError) as e:  # missing, undecodable, empty window
                if strict:
                    raise
                self.unreadable[key[0]] = f"{type(e).__name__}: {e}"
                tqdm.write(f"cannot read {key[0]} ({self.unreadable[key[0]]}); its questions are counted as "
                           "unscorable (--strict stops instead)")
                continue
            videos.append(frames_to_tensor(decoded.frames))
            self.indices[key] = decoded.indices.tolist()
            read.append(key)
        if videos:
            encoded = self.model.encode_video(torch.stack(videos))
            self.features.update({key: encoded[i:i + 1] for i, key in enumerate(read)})


def _score_batch(model, benchmark: MCBenchmark, batch: list[MCQuestion], cache: _VideoCache,
                 mode: str, fmt: str, max_new_tokens: int) -> list[dict]:
    records, scorable = [], []
    for q in batch:
        record = {"id": q.id, "where": q.where, "task": q.task, **{f"category:{k}": v for k, v in
                                                                   q.categories.items()},
                  "video": q.video, "window": None if q.start is None and q.end is None else [q.start, q.end],
                  "answer": None if q.answer_index is None else letters_for(q.options)[q.answer_index]}
        if q.video in cache.unreadable:
            record["unscorable"] = cache.unreadable[q.video]
        else:
            record["frame_indices"] = cache.indices[(q.video, q.start, q.end)]
            scorable.append((q, record))
        records.append(record)
    if mode in ("loglikelihood", "both") and scorable:
        requests = []
        for q, _ in scorable:
            text = q.question if fmt == "cloze" else benchmark.prompt(q)
            requests.append(([{"role": "user", "content": f"{VIDEO_TOKEN}\n{text}"}],
                             q.options if fmt == "cloze" else letters_for(q.options),
                             cache.features[(q.video, q.start, q.end)]))
        for (q, record), scores in zip(scorable, batch_continuation_logprobs(model, requests, True)):
            letters = letters_for(q.options)
            raw, norm = pick(scores, letters if fmt == "letter" else q.options)
            record.update(loglikelihoods=scores, choice=letters[raw], choice_norm=letters[norm])
    if mode in ("generate", "both"):
        for q, record in scorable:
            messages = [{"role": "user", "content": f"{VIDEO_TOKEN}\n{benchmark.prompt(q)}"}]
            text = model.generate(messages=messages, video_features=cache.features[(q.video, q.start, q.end)],
                                  max_new_tokens=max_new_tokens)
            choice = extract_choice(text, q.options)
            record.update(generated=text, parsed=None if choice is None else letters_for(q.options)[choice])
    return records


def _hits(record: dict) -> dict[str, float]:
    """metric -> value for one scored record with an answer key."""
    out = {}
    if "choice" in record:
        out["acc"] = float(record["choice"] == record["answer"])
        out["acc_norm"] = float(record["choice_norm"] == record["answer"])
    if "generated" in record:
        out["gen_acc"] = float(record["parsed"] == record["answer"])
    return out


def aggregate(records: list[dict], malformed: list[Malformed]) -> list[Metric]:
    """Overall, per-task and per-category metrics, and the counts of what could not be scored."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unparsed = []
    for r in records:
        if "unscorable" in r:
            continue
        if "generated" in r:
            unparsed.append(float(r["parsed"] is None))
        if r["answer"] is None:
            continue
        keys = ["", f"{r['task']}/"] + [f"{k.split(':', 1)[1]}={v}/" for k, v in r.items()
                                        if k.startswith("category:")]
        for name, hit in _hits(r).items():
            for key in dict.fromkeys(keys):
                groups[key][name].append(hit)
    n = len(records)
    metrics = [Metric("unscorable", float(sum("unscorable" in r for r in records)), n=n),
               Metric("malformed_rows", float(len(malformed))),
               Metric("no_answer_key", float(sum(r["answer"] is None for r in records)), n=n)]
    if unparsed:
        metrics.append(Metric("gen_unparsed", *mean_stderr(unparsed), len(unparsed)))
    for key in sorted(groups, key=lambda k: (k != "", k)):
        for name, hits in groups[key].items():
            metrics.append(Metric(f"{key}{name}", *mean_stderr(hits), len(hits)))
    return metrics


def run_mc(ctx: BenchContext, benchmark: MCBenchmark) -> BenchResult:
    """Score a benchmark's questions (see the module docstring) and report per task and category."""
    mode, fmt, max_new_tokens, strict = _options(ctx)
    for bad in benchmark.malformed:
        if strict:
            raise BenchmarkFormatError(f"{bad.where}: {bad.error}")
        tqdm.write(f"{benchmark.name}: skipping malformed row {bad.where}: {bad.error}")
    questions = benchmark.limited(ctx.limit)
    if not questions:
        raise BenchmarkFormatError(f"{benchmark.name}: no questions to score in {benchmark.settings}")
    model = ctx.load_model()
    cache = _VideoCache(model)
    records: list[dict] = []
    size = max(1, ctx.batch_size)
    started = time.perf_counter()
    with torch.no_grad(), tqdm(total=len(questions), desc=benchmark.name, unit="question") as bar:
        for at in range(0, len(questions), size):
            batch = questions[at:at + size]
            cache.load(batch, strict)
            records += _score_batch(model, benchmark, batch, cache, mode, fmt, max_new_tokens)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    settings = {**benchmark.settings, "mode": mode, "option_format": fmt, "max_new_tokens": max_new_tokens,
                "headline": f"acc = option log-likelihood ({fmt}); gen_acc = generate, then extract_choice",
                "questions": len(questions), "batch_size": size, "strict": strict,
                "seconds": round(seconds, 3), "questions_per_second": round(len(questions) / seconds, 3),
                "unreadable_videos": cache.unreadable,
                "malformed": [{"where": m.where, "error": m.error} for m in benchmark.malformed]}
    return BenchResult(benchmark.name, aggregate(records, benchmark.malformed), settings, records)

"""The evaluation runner behind `python eval/run.py --bench NAME[,NAME...]`.

A bench is a function `run(ctx: BenchContext) -> BenchResult` in the `mmvid.evaluation.BENCHES` dict. The
runner loads the model once, runs each bench, prints one table and writes one JSON that also records
everything needed to reproduce the numbers (model, frames, sampling, prompt template, decode
backend, seed, git commit). `evaluate(model, benches, ...)` does the same on a live model, e.g.
every N training steps, without loading a second copy.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "runs/sft-default/final"
DEFAULT_DATA = "data/shapes"
SCHEMA_VERSION = 1


@dataclass
class Metric:
    name: str
    value: float
    stderr: float | None = None
    n: int | None = None  # how many items the value averages


@dataclass
class BenchResult:
    bench: str
    metrics: list[Metric]
    settings: dict[str, Any] = field(default_factory=dict)  # bench-specific settings that affect the numbers
    samples: list[dict] | None = None  # per-item records with --log-samples

    def to_dict(self) -> dict:
        return {
            "metrics": {m.name: {"value": m.value, "stderr": m.stderr, "n": m.n} for m in self.metrics},
            "settings": self.settings,
        }


@dataclass
class BenchContext:
    """What a bench may use. The model loads on first use, so model-free benches never load one."""

    model_path: str | None = DEFAULT_MODEL
    data: str | None = None  # None: each bench's default (the synthetic world)
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    log_samples: bool = False
    options: dict[str, str] = field(default_factory=dict)  # bench options (--mode, --shots, --tasks, ...)
    model: Any = None  # a live VideoLLM, when given

    def load_model(self):
        if self.model is None:
            from mmvid.videollm import VideoLLM

            path = Path(self.model_path or DEFAULT_MODEL)
            if not (path / "config.json").is_file():
                hint = " (train it with `deepspeed train/sft.py`)" if str(path) == DEFAULT_MODEL else ""
                raise FileNotFoundError(f"no VideoLLM checkpoint at {path}{hint}; pass --model PATH")
            self.model = VideoLLM.from_pretrained(path).eval()
            if self.option("video_decoder"):  # a decoder fine-tuned with train=decoder, swapped in
                self.model.load_video_decoder(self.option("video_decoder"))
        return self.model

    def option(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def flag(self, key: str) -> bool:
        """A yes/no option ("1", "true", "yes"; `--strict` sets strict=1)."""
        return str(self.options.get(key, "0")).lower() in ("1", "true", "yes")


def mean_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def model_settings(ctx: BenchContext) -> dict:
    """The settings of the evaluated model that decide its numbers (only when one was loaded)."""
    if ctx.model is None:
        return {"model": ctx.model_path}
    processor = ctx.model.processor
    c = processor.config
    return {
        "model": ctx.model_path,
        "frames": c.num_frames,
        "image_size": c.image_size,
        "sampling": c.sampling,
        "fps": c.fps,
        "video_tokenizer": ctx.model.video_tokenizer.preset,
        "tokens_per_video": c.tokens_per_video,
        "prompt_template": getattr(processor.text_tokenizer, "chat_template", None),
    }


def run_benches(names: list[str], ctx: BenchContext) -> dict:
    """Run benches in order; returns the results record (the JSON schema)."""
    from mmvid.data.video_io import available_backends
    from mmvid.evaluation import BENCHES

    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise KeyError(f"unknown bench {unknown[0]!r}; known: {sorted(BENCHES)}")
    results, samples = {}, {}
    for name in names:
        result = BENCHES[name](ctx)
        results[name] = result.to_dict()
        if ctx.log_samples and result.samples is not None:
            samples[name] = result.samples
    record = {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "settings": {**model_settings(ctx), "data": ctx.data, "limit": ctx.limit, "seed": ctx.seed,
                     "batch_size": ctx.batch_size, "decode_backend": (available_backends() or [None])[0],
                     "options": ctx.options},
        "results": results,
    }
    if samples:
        record["samples"] = samples
    return record


def evaluate(model, benches: list[str], output: str | Path | None = None, **kwargs) -> dict:
    """Run benches on a live model (no second copy) and optionally write the same JSON as eval/run.py."""
    ctx = BenchContext(model_path=kwargs.pop("model_path", None), model=model, **kwargs)
    was_training = model.training
    model.eval()
    try:
        record = run_benches(benches, ctx)
    finally:
        model.train(was_training)
    if output is not None:
        write_results(record, output)
    return record


def write_results(record: dict, path: str | Path) -> list[Path]:
    """The record as JSON at `path`, and each bench's per-item records (`--log-samples`) also as JSONL
    beside it, `<stem>_samples_<bench>.jsonl` (lm-eval's naming); returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    written = [path]
    for bench, samples in (record.get("samples") or {}).items():
        jsonl = path.with_name(f"{path.stem}_samples_{bench}.jsonl")
        jsonl.write_text("".join(json.dumps(s, default=str) + "\n" for s in samples))
        written.append(jsonl)
    return written


def format_table(record: dict) -> str:
    """One row per bench metric: | bench | metric | value | stderr | n |."""
    rows = [("bench", "metric", "value", "stderr", "n")]
    for bench, result in record["results"].items():
        for name, m in result["metrics"].items():
            value = m["value"]
            if isinstance(value, float) and not value.is_integer():
                text = f"{value:.4f}"
            else:
                text = str(int(value)) if isinstance(value, (int, float)) and math.isfinite(value) else str(
                    value)
            rows.append((bench, name, text, "" if m["stderr"] is None else f"{m['stderr']:.4f}",
                         "" if m["n"] is None else str(m["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    # what each score means, where a bench says (tv_align's formulations)
    for bench, result in record["results"].items():
        settings = result.get("settings") or {}
        if settings.get("headline"):
            also = "; ".join(f"{k} = {v}" for k, v in (settings.get("also_reported") or {}).items())
            lines.append(f"{bench}: {settings['headline']}" + (f"; {also}" if also else "") + " (acc_norm*: "
                                                                                              "per byte)")
    return "\n".join(lines)

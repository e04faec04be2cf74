"""The command line of `python eval/run.py` (lm-evaluation-harness conventions)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from mmvid.evaluation.runner import DEFAULT_MODEL, BenchContext, format_table, run_benches, write_results

# Bench options: flag -> default shown in --help. Both --a-b and --a_b spellings are accepted.
OPTIONS = {
    "split": "tv_align/recon: world split (default test)",
    "mode": "tv_align: loglikelihood | generate | both (default loglikelihood; the public benchmarks: both)",
    "option_format": "tv_align: comma list of cloze | letter | text; the first is the headline acc (default "
                     "cloze,letter); the public benchmarks: cloze | letter (default cloze)",
    "video_root": "tv_align and the public benchmarks: folder the benchmark's video paths are relative to",
    "answers": "egoschema: the release's subset_answers.json, for its questions.json",
    "max_new_tokens": "generate mode: answer length (default 8; the public benchmarks 16)",
    "ways": "fewshot: N classes per episode (default 5)",
    "shots": "fewshot: comma list of K (default 1,5)",
    "episodes": "fewshot: episodes per K (default 20; --limit overrides)",
    "video_as": "fewshot: video | text (a tokenizer's video_to_text hook)",
    "tokenizer": "recon: a saved video tokenizer folder or a preset (default: the model's)",
    "frames": "recon: frames per video; tokens: comma list of frame counts",
    "fvd_model": "recon: a TorchScript I3D feature extractor for FVD (optional)",
    "max_prefill_tokens": "tokens: longest sequence timed (default 4096)",
    "tasks": "lm_eval: comma list of tasks (default mmvid_shapes_captions)",
    "num_fewshot": "lm_eval: few-shot examples (default 0)",
    "model_args": "lm_eval: k=v,... (pretrained=PATH, ...)",
}


def parse_args(argv=None) -> argparse.Namespace:
    from mmvid.evaluation import BENCHES

    parser = argparse.ArgumentParser(prog="python eval/run.py", description="Run mmvid benchmarks.")
    parser.add_argument("--bench", required=True, help=f"comma list of: {', '.join(sorted(BENCHES))}")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a VideoLLM folder (default %(default)s)")
    parser.add_argument("--data", help="a synthetic world folder or a benchmark file (default data/shapes)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=8, dest="batch_size")
    parser.add_argument("--output", "--output_path",
                        help="results JSON (default runs/eval/<benches>-<time>.json)")
    parser.add_argument("--log-samples", "--log_samples", action="store_true",
                        help="store per-item records in the JSON")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any bench option")
    parser.add_argument("--strict", action="store_true",
                        help="tv_align and the public benchmarks: stop at the first unreadable video or "
                             "malformed row (default: report it, count it as unscorable, go on)")
    for key, text in OPTIONS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", f"--{key}", dest=key, help=text)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = {k: str(getattr(args, k)) for k in OPTIONS if getattr(args, k) is not None}
    for item in args.option:
        if "=" not in item:
            print(f"error: --option needs KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        options[key.replace("-", "_")] = value
    if args.strict:
        options["strict"] = "1"
    names = [n.strip() for n in args.bench.split(",") if n.strip()]
    ctx = BenchContext(model_path=args.model, data=args.data, limit=args.limit, seed=args.seed,
                       batch_size=args.batch_size, log_samples=args.log_samples, options=options)
    try:
        record = run_benches(names, ctx)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(format_table(record))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = Path(args.output or f"runs/eval/{'_'.join(names)}-{stamp}.json")
    for path in write_results(record, output):
        print(f"wrote {path}")
    return 0

"""Evaluation: `python eval/run.py --bench NAME[,NAME...]` and `evaluate(model, benches)` on a live model.

`BENCHES` maps each bench name to its `run(ctx) -> BenchResult` function.
"""

from mmvid.evaluation import benchmarks, coordtok_memory, fewshot, recon, tokens, tv_align, tv_align_gen
from mmvid.evaluation.runner import (
    BenchContext,
    BenchResult,
    Metric,
    evaluate,
    format_table,
    run_benches,
    write_results,
)


def _lm_eval(ctx: BenchContext) -> BenchResult:
    from mmvid.evaluation.lm_eval_bench import run  # lm-eval is slow to import; only when asked

    return run(ctx)


def _serve(ctx: BenchContext) -> BenchResult:
    from mmvid.evaluation.serve_bench import run  # fastapi and uvicorn: the serve extra, only when asked

    return run(ctx)


BENCHES = {
    "tv_align": tv_align.run,
    "tv_align_gen": tv_align_gen.run,
    "fewshot": fewshot.run,
    "recon": recon.run,
    "tokens": tokens.run,
    "coordtok_memory": coordtok_memory.run,
    "lm_eval": _lm_eval,
    "serve": _serve,
    **{name: benchmarks.bench(name) for name in benchmarks.READERS},  # public benchmarks, their own files
}

__all__ = ["BENCHES", "BenchContext", "BenchResult", "Metric", "evaluate", "format_table", "run_benches",
           "write_results"]

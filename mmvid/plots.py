"""Pictures of a run, from the files it wrote.

    python -m mmvid.plots curve runs/sft-default --output docs/learning_curve.png

`curve`: validation `tv_align` accuracy (overall and per category, the run's headline formulation)
against SFT training minutes, read from `RUN/curve.jsonl` (one line per evaluation: `eval_every`
and the final one), with the minutes spent in each preparation stage before SFT (`RUN/stages.jsonl`:
vision tower, video tokenizer, LLM pretraining) shown as shaded spans, so the x axis is the whole
run's wall time; the training loss (`RUN/metrics.jsonl`) below it. Chance is drawn as a dashed line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CATEGORY_ORDER = ("action", "colour", "count", "shape", "spatial", "temporal")


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported on first use: only plotting needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, output: str | Path, dpi: int = 110) -> Path:
    """tight_layout, write the PNG (its folder made when missing), close the figure; returns the path."""
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    pyplot().close(fig)
    return output


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curve(run: str | Path, output: str | Path, chance: float = 0.25) -> Path:
    """Write the learning-curve PNG of a run folder; raises FileNotFoundError without curve.jsonl."""
    plt = pyplot()
    run = Path(run)
    points = _lines(run / "curve.jsonl")
    if not points:
        raise FileNotFoundError(f"{run}/curve.jsonl has no evaluations; train with eval_every=N (the "
                                "default run does)")
    stages = _lines(run / "stages.jsonl")
    offset = sum(s["seconds"] for s in stages) / 60  # minutes before SFT starts
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.3]})
    start = 0.0
    for k, s in enumerate(stages):
        width = s["seconds"] / 60
        for ax in (top, bottom):
            ax.axvspan(start, start + width, color=f"C{k % 10}", alpha=0.12, lw=0)
        top.text(start + width / 2, 0.98, s["stage"].replace("_", "\n"), ha="center", va="top", fontsize=7)
        start += width
    x = [offset + p["train_seconds"] / 60 for p in points]
    formulation = points[-1].get("formulation", "")
    top.plot(x, [p["metrics"]["acc"] for p in points], "k-o", lw=2.2, ms=4, label="overall")
    categories = sorted({k.split("/")[0] for p in points for k in p["metrics"] if k.endswith("/acc")},
                        key=lambda c: CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else 99)
    for k, c in enumerate(categories):
        top.plot(x, [p["metrics"].get(f"{c}/acc", float("nan")) for p in points], "-", lw=1.2, color=f"C{k}",
                 label=c)
    if any("acc_letter" in p["metrics"] for p in points):
        top.plot(x, [p["metrics"].get("acc_letter", float("nan")) for p in points], "k:", lw=1.2,
                 label="overall (letter)")
    top.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    top.set_ylim(0, 1)
    top.set_ylabel(f"val tv_align accuracy ({formulation})")
    top.legend(fontsize=7, ncol=3, loc="lower right")
    top.grid(alpha=0.3)
    losses = [m for m in _lines(run / "metrics.jsonl") if "loss" in m and "seconds" in m]
    if losses:
        bottom.plot([offset + m["seconds"] / 60 for m in losses], [m["loss"] for m in losses], lw=1)
    bottom.set_ylabel("SFT loss")
    bottom.set_xlabel("minutes of the run (shaded: preparation stages, then align + SFT)")
    bottom.grid(alpha=0.3)
    top.set_title(f"{run}: learning curve")
    return save_figure(fig, output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curve = sub.add_parser("curve", help="validation accuracy and loss against minutes, from a run folder")
    curve.add_argument("run", help="an SFT run folder (curve.jsonl, stages.jsonl, metrics.jsonl)")
    curve.add_argument("--output", default=None, help="PNG path (default RUN/learning_curve.png)")
    curve.add_argument("--chance", type=float, default=0.25)
    args = parser.parse_args(argv)
    try:
        path = plot_curve(args.run, args.output or Path(args.run) / "learning_curve.png", chance=args.chance)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    print(path)


if __name__ == "__main__":
    main()

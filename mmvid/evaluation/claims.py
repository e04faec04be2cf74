"""The papers' headline claims, measured side by side on the built-in world (`python eval/claims.py CLAIM`).

Each claim trains what it needs through the project's own jobs (`train/sft.py`, `tokenizers/train.py`,
`eval/run.py`, run as subprocesses from the repository root), skips every piece whose output already
exists (so a killed command resumes where it was), and writes `runs/claims/<claim>/result.json` with every
setting and one PNG. The arms of a claim differ in one thing only; everything else (world, vision tower,
pretrained LLM, steps, minutes) is shared.

- `vtok`: VTok against frame sampling on the same frames through the same frozen vision tower, and frame
  sampling pooled to VTok's token budget (the token count apart from the layout); the default SFT recipe
  per arm and seed, scored on the world's test split.
- `sweettok`: SweetTok's decoupled queries against flattened (LARP-like) queries, and its language
  codebook against a plain learned one, at equal tokens and training minutes (reconstruction on test).
- `fewshot`: SweetTok's words for 5-way few-shot recognition of the held-out actions through the default's
  LLM, beside its own video tokens, a perfect class code (text alone) and nearest class means (features
  alone).
- `coordtok`: 128-frame clips, CoordTok against VTok and frame sampling at matched token counts and
  equal training minutes, with the memory bench beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean, median, stdev

import yaml

from mmvid.plots import pyplot, save_figure

ROOT = Path("runs/claims")
CATEGORIES = ("action", "colour", "count", "shape", "spatial", "temporal")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _job(args: list[str], log: Path, port: int | None = None) -> None:
    """Run one job script as a subprocess (a single-rank DeepSpeed world when it needs one), its output
    appended to `log` (follow it with `tail -f`); a failure stops the claim and names the log."""
    env = dict(os.environ)
    if port is not None:  # train/sft.py without the deepspeed launcher: a one-process gloo world
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(args)}    (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("a") as f:
        code = subprocess.run([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        raise RuntimeError(f"{args[0]} failed (exit {code}); see {log}")
    print(f"  done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)


def _write(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": _git_commit(), **record}
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return path


def mean_and_stderr(values: list[float], binomial: list[float]) -> tuple[float, float]:
    """The mean over seeds and its standard error: the spread between seeds (sample std / sqrt(n)) or,
    when that is smaller (or there is one seed), the runs' own binomial standard errors combined."""
    m = mean(values)
    within = math.sqrt(sum(s * s for s in binomial)) / len(binomial)
    between = stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, max(within, between)


# ---------------------------------------------------------------------------------------------- VTok

VTOK_ARMS = {  # arm -> the tokenizer config train/sft.py trains on the frozen tower
    "vtok": "tokenizers/vtok/vtok_base_midkey.yaml",
    "frames": "tokenizers/frames/frames_tower.yaml",
    "frames_pooled": "tokenizers/frames/frames_tower_pooled.yaml",
}
VTOK_LABELS = {"vtok": "VTok (key frame + residuals)", "frames": "frame sampling (all tokens)",
               "frames_pooled": "frame sampling pooled to VTok's budget"}


def run_vtok(seeds: list[int], arms: list[str], config: str, test_data: str, out: Path,
             overrides: list[str], limit: int | None = None, train: bool = True) -> dict:
    """Per arm and seed: `train/sft.py` (the default recipe; the arm's tokenizer config, its own tokenizer
    folder; the text tokenizer, vision tower and pretrained LLM shared), then `eval/run.py --bench tv_align`
    on `test_data`. Then the table per arm, the gap VTok - frame sampling with its standard error, a PNG.
    With `train=False` nothing runs: the summary covers the arm/seed runs that are finished."""
    for name in arms:
        if name not in VTOK_ARMS:
            raise KeyError(f"unknown arm {name!r}; known: {list(VTOK_ARMS)}")
    for seed in seeds if train else []:
        for name in arms:
            folder = out / f"{name}-s{seed}"
            if not (folder / "final" / "train_summary.json").is_file():
                _job(["train/sft.py", "--config", config, f"out={folder}", f"seed={seed}",
                      f"model.video_tokenizer={folder}/video-tokenizer",
                      f"data.video_tokenizer_config={VTOK_ARMS[name]}", "eval_every=0",
                      "data.video_decoder=null",  # the decoder stage draws, and this claim only reads
                      *overrides],
                     folder / "log.txt", port=29700 + seed)
            if not (folder / "eval-test.json").is_file():
                _job(["eval/run.py", "--bench", "tv_align", "--model", f"{folder}/final", "--data", test_data,
                      "--output", f"{folder}/eval-test.json", *(["--limit", str(limit)] if limit else [])],
                     folder / "log.txt")
    runs = {name: [_vtok_run(out / f"{name}-s{seed}", seed) for seed in seeds
                   if (out / f"{name}-s{seed}" / "eval-test.json").is_file()] for name in arms}
    runs = {name: r for name, r in runs.items() if r}
    if not runs:
        raise FileNotFoundError(f"no finished run under {out}; run without --no-train first")
    arms_table = {name: _vtok_arm(rs) for name, rs in runs.items()}
    settings = {"seeds": seeds, "arms": {a: VTOK_ARMS[a] for a in arms}, "config": config,
                "overrides": overrides, "test_data": test_data, "test_limit": limit,
                "seeds_per_arm": {name: [r["seed"] for r in rs] for name, rs in runs.items()}}
    record = {"claim": "vtok", "paper": "arXiv 2602.04202: S + (T-1) tokens, +3.4 points TV-Align over naive "
              "frame sampling", "settings": settings, "arms": arms_table, "runs": runs}
    if "vtok" in arms_table and "frames" in arms_table:
        a, b = arms_table["vtok"]["overall"], arms_table["frames"]["overall"]
        record["gap_vtok_minus_frames"] = {"value": a["mean"] - b["mean"],
                                           "stderr": math.hypot(a["stderr"], b["stderr"]),
                                           "token_ratio": arms_table["vtok"]["tokens_per_video"]
                                           / arms_table["frames"]["tokens_per_video"]}
    _write(out / "result.json", record)
    plot_vtok(record, out / "claim_vtok.png")
    print(vtok_table(record))
    return record


def vtok_table(record: dict) -> str:
    """The arms as a markdown table (what the README shows)."""
    lines = ["| arm | tokens / video | SFT min | tokenizer min | seeds: overall | overall (mean ± s.e.) | "
             + " | ".join(CATEGORIES) + " | letter |", "|---" * (7 + len(CATEGORIES)) + "|"]
    for name, arm in record["arms"].items():
        runs = record["runs"][name]
        seeds = ", ".join(f"{r['overall']:.3f}" for r in runs)
        letters = [r["letter"] for r in runs]
        letter = mean(letters) if None not in letters else float("nan")
        minutes = arm["sft_compute_minutes"] if arm["sft_compute_minutes"] is not None else arm["sft_minutes"]
        lines.append(f"| {VTOK_LABELS[name]} | {arm['tokens_per_video']} | {minutes:.1f} | "
                     f"{arm['tokenizer_minutes']:.1f} | {seeds} | {arm['overall']['mean']:.3f} ± "
                     f"{arm['overall']['stderr']:.3f} | "
                     + " | ".join(f"{arm['categories'].get(c, float('nan')):.3f}" for c in CATEGORIES)
                     + f" | {letter:.3f} |")
    gap = record.get("gap_vtok_minus_frames")
    if gap:
        lines.append(f"\nVTok - frame sampling: {gap['value']:+.3f} ± {gap['stderr']:.3f} overall, with "
                     f"{gap['token_ratio']:.3f} of its tokens")
    return "\n".join(lines)


def _vtok_run(folder: Path, seed: int) -> dict:
    test = json.loads((folder / "eval-test.json").read_text())
    metrics = test["results"]["tv_align"]["metrics"]
    summary = json.loads((folder / "final" / "train_summary.json").read_text())
    stages = [json.loads(line) for line in (folder / "stages.jsonl").read_text().splitlines()]
    tokenizer_seconds = sum(s["seconds"] for s in stages if s["stage"] == "video_tokenizer")
    return {"seed": seed, "folder": str(folder), "tokens_per_video": test["settings"]["tokens_per_video"],
            "overall": metrics["acc"]["value"], "stderr": metrics["acc"]["stderr"], "n": metrics["acc"]["n"],
            "categories": {c: metrics[f"{c}/acc"]["value"] for c in CATEGORIES if f"{c}/acc" in metrics},
            "letter": metrics.get("acc_letter", {}).get("value"),
            "tokenizer_minutes": round(tokenizer_seconds / 60, 2),
            "sft_minutes": round(summary["seconds"] / 60, 2), "sft_steps": summary["steps"],
            "sft_compute_minutes": _compute_minutes(folder / "metrics.jsonl", summary["steps"]),
            "peak_rss_gib": summary.get("peak_rss_gib")}


def _compute_minutes(metrics: Path, steps: int) -> float | None:
    """SFT minutes as the median step's compute time (data loading excluded) times the steps, per phase:
    a figure that another job on the machine, or a pause, does not inflate the way wall time is."""
    per_phase = defaultdict(list)
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        record = json.loads(line)
        if record.get("samples_per_s"):
            per_phase[record["phase"]].append(1 / record["samples_per_s"])  # seconds per sample
    logged = sum(len(v) for v in per_phase.values())
    if not logged:
        return None
    # samples per step: from the config the run saved (batch_size x grad_accum; the SFT defaults without one)
    config = metrics.parent / "config.yaml"
    cfg = yaml.safe_load(config.read_text()) if config.is_file() else {}
    batch = cfg.get("batch_size", 8) * cfg.get("grad_accum", 1)
    seconds = sum(steps * len(v) / logged * median(v) * batch for v in per_phase.values())
    return round(seconds / 60, 2)


def _vtok_arm(runs: list[dict]) -> dict:
    overall = mean_and_stderr([r["overall"] for r in runs], [r["stderr"] for r in runs])
    return {"tokens_per_video": runs[0]["tokens_per_video"], "seeds": len(runs),
            "overall": {"mean": overall[0], "stderr": overall[1]},
            "categories": {c: mean(r["categories"][c] for r in runs) for c in runs[0]["categories"]},
            "sft_minutes": round(mean(r["sft_minutes"] for r in runs), 2),
            "sft_compute_minutes": (round(mean(r["sft_compute_minutes"] for r in runs), 2)
                                    if all(r["sft_compute_minutes"] for r in runs) else None),
            "tokenizer_minutes": round(mean(r["tokenizer_minutes"] for r in runs), 2)}


def _subplots(panels: int, size: tuple[float, float]):
    """A row of `panels` axes (matplotlib headless)."""
    fig, axes = pyplot().subplots(1, panels, figsize=size, squeeze=False)
    return fig, axes[0]


def _save(fig, output: Path) -> Path:
    save_figure(fig, output, dpi=120)
    print(f"wrote {output}")
    return output


def plot_vtok(record: dict, output: Path) -> Path:
    arms = record["arms"]
    groups = ["overall", *CATEGORIES]
    fig, (ax,) = _subplots(1, (9, 3.6))
    width = 0.8 / len(arms)
    for i, (name, arm) in enumerate(arms.items()):
        values = [arm["overall"]["mean"], *(arm["categories"].get(c, float("nan")) for c in CATEGORIES)]
        errors = [arm["overall"]["stderr"], *([0] * len(CATEGORIES))]
        xs = [g + (i - (len(arms) - 1) / 2) * width for g in range(len(groups))]
        minutes = arm["sft_compute_minutes"] or arm["sft_minutes"]
        label = f"{VTOK_LABELS[name]}: {arm['tokens_per_video']} tokens, {minutes:.1f} SFT min"
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=label)
        for run in record["runs"][name]:  # each seed as a dot
            ax.scatter(xs[0], run["overall"], color="black", s=8, zorder=3)
    ax.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("tv_align test accuracy (cloze)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"VTok vs frame sampling, same frames and tower ({record['settings']['seeds']} seeds; "
                 "bars: mean, error: s.e.)", fontsize=9)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------- SweetTok

SWEETTOK_ARMS = {  # arm -> model_overrides on tokenizers/sweettok/sweettok_base.yaml (the paper's loss)
    "dqae_mlc": {},  # SweetTok as the paper: decoupled queries, language codebook
    "flattened_mlc": {"queries": "flattened"},  # claim 1's ablation: one set of S + G queries
    "dqae_plain": {"codebook": "plain"},  # claim 2's ablation: free learned codewords
    # levers for claim 2, not run by default (--arms): the MLC's word vectors from the default's pretrained
    # LLM (the paper uses a pretrained text encoder's; needs runs/sft-default/llm), and both codebooks with
    # the codebook-usage term (against the MLC's collapse onto a few words)
    "dqae_mlc_llm": {"hf_path": "runs/sft-default/llm"},
    "dqae_mlc_usage": {"usage_weight": 0.1, "usage_temperature": 0.01},
    "dqae_plain_usage": {"codebook": "plain", "usage_weight": 0.1, "usage_temperature": 0.01},
    # a sparser word graph (edges only between adjacent caption words): less GCN smoothing of the codewords
    "dqae_mlc_window1": {"cooccurrence_window": 1},
}
DEFAULT_SWEETTOK_ARMS = ["dqae_mlc", "flattened_mlc", "dqae_plain"]


def _overrides(values: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}"


def run_sweettok(seeds: list[int], arms: list[str], config: str, minutes: float, data: str, limit: int,
                 out: Path, parallel: bool, name: str = "result") -> dict:
    """Per arm and seed: `tokenizers/train.py` for `minutes` of training time (the arms of one seed run side
    by side with one thread each when `parallel`, so they share the machine alike), then `eval/run.py
    --bench recon` on `limit` test videos. Claim 1: dqae_mlc vs flattened_mlc; claim 2: dqae_mlc vs
    dqae_plain, on test PSNR (SSIM and frechet_proxy beside it). The summary is `out/<name>.json` and
    `out/claim_sweettok[_<name>].png`, so runs of other arms (the levers) keep their own."""
    for arm in arms:
        if arm not in SWEETTOK_ARMS:
            raise KeyError(f"unknown arm {arm!r}; known: {list(SWEETTOK_ARMS)}")
    for seed in seeds:
        jobs = []
        for arm in arms:
            folder = out / f"{arm}-s{seed}"
            if not (folder / "final" / "config.json").is_file():
                jobs.append((["tokenizers/train.py", "--config", config, f"out={folder}", f"seed={seed}",
                              f"max_minutes={minutes}", "data.num_workers=1",
                              f"threads={1 if parallel else 0}",
                              f"model_overrides={_overrides(SWEETTOK_ARMS[arm])}"], folder / "log.txt"))
        _jobs(jobs, parallel)
        for arm in arms:
            folder = out / f"{arm}-s{seed}"
            if not (folder / "recon-test.json").is_file():
                _job(["eval/run.py", "--bench", "recon", "--tokenizer", f"{folder}/final", "--data", data,
                      "--frames", "16", "--limit", str(limit), "--output", f"{folder}/recon-test.json"],
                     folder / "log.txt")
    runs = {arm: [_recon_run(out / f"{arm}-s{seed}", seed) for seed in seeds] for arm in arms}
    table = {arm: _recon_arm(rs) for arm, rs in runs.items()}
    record = {"claim": "sweettok", "paper": "arXiv 2412.10443: DQAE beats flattened (LARP-like) queries at "
              "equal tokens; the motion-enhanced language codebook beats a plain one",
              "settings": {"seeds": seeds, "arms": {a: SWEETTOK_ARMS[a] for a in arms}, "config": config,
                           "minutes": minutes, "data": data, "test_videos": limit, "parallel": parallel},
              "arms": table, "runs": runs}
    for first, other, key in (("dqae_mlc", "flattened_mlc", "dqae_minus_flattened"),
                              ("dqae_mlc", "dqae_plain", "mlc_minus_plain"),
                              ("dqae_mlc_llm", "dqae_plain", "mlc_llm_words_minus_plain"),
                              ("dqae_mlc_usage", "dqae_plain_usage", "mlc_minus_plain_with_usage"),
                              ("dqae_mlc_window1", "dqae_plain", "mlc_window1_minus_plain")):
        if first in table and other in table:
            a, b = table[first]["psnr"], table[other]["psnr"]
            record[key] = {"psnr": a["mean"] - b["mean"], "stderr": math.hypot(a["stderr"], b["stderr"])}
    _write(out / f"{name}.json", record)
    png = "claim_sweettok.png" if name == "result" else f"claim_sweettok_{name}.png"
    plot_bars(record, ["psnr", "ssim", "frechet_proxy"], out / png,
              "SweetTok: decoupled vs flattened queries, language vs plain codebook "
              f"({minutes:g} min each, test)")
    return record


def _jobs(jobs: list[tuple[list[str], Path]], parallel: bool) -> None:
    """Run jobs one after another, or all at once (each its own log)."""
    if not parallel:
        for args, log in jobs:
            _job(args, log)
        return
    import threading

    errors = []

    def one(args, log):
        try:
            _job(args, log)
        except RuntimeError as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _recon_run(folder: Path, seed: int) -> dict:
    metrics = json.loads((folder / "recon-test.json").read_text())["results"]["recon"]["metrics"]
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [s for s in steps if "step" in s and "seconds" in s]  # training and validation lines
    return {"seed": seed, "folder": str(folder), "tokens_per_video": metrics["tokens_per_video"]["value"],
            **{k: metrics[k]["value"] for k in ("psnr", "ssim", "frechet_proxy") if k in metrics},
            "psnr_stderr": metrics["psnr"]["stderr"], "ssim_stderr": metrics["ssim"]["stderr"],
            "steps": steps[-1]["step"] if steps else None,
            "train_minutes": round(steps[-1].get("seconds", 0) / 60, 2) if steps else None}


def _recon_arm(runs: list[dict]) -> dict:
    arm = {"tokens_per_video": runs[0]["tokens_per_video"], "seeds": len(runs),
           "steps": mean(r["steps"] or 0 for r in runs)}
    for key in ("psnr", "ssim"):
        m, se = mean_and_stderr([r[key] for r in runs], [r[f"{key}_stderr"] for r in runs])
        arm[key] = {"mean": m, "stderr": se}
    if all("frechet_proxy" in r for r in runs):  # one number per run: its error is the spread between seeds
        m, se = mean_and_stderr([r["frechet_proxy"] for r in runs], [0.0] * len(runs))
        arm["frechet_proxy"] = {"mean": m, "stderr": se}
    return arm


def plot_bars(record: dict, keys: list[str], output: Path, title: str) -> Path:
    """One panel per metric, one bar per arm (mean, s.e.), each seed a dot; with the record's "memory" (the
    CoordTok claim), a last panel of a training step's memory against clip length."""
    arms = record["arms"]
    keys = [k for k in keys if all(k in a for a in arms.values())]
    panels = len(keys) + ("memory" in record)
    fig, axes = _subplots(panels, (3.2 * panels, 3.4))
    if "memory" in record:
        _memory_panel(axes[-1], record["memory"])
    labels = [f"{n.replace('_', ' ')}\n{arms[n]['tokens_per_video']:.0f} tok, {arms[n]['steps']:.0f} steps"
              for n in arms]
    for ax, key in zip(axes, keys):
        names = list(arms)
        ax.bar(range(len(names)), [arms[n][key]["mean"] for n in names],
               yerr=[arms[n][key]["stderr"] for n in names], capsize=3,
               color=[f"C{i}" for i in range(len(names))])
        for i, n in enumerate(names):
            ax.scatter([i] * len(record["runs"][n]), [r[key] for r in record["runs"][n]], color="black", s=8,
                       zorder=3)
        if key == "psnr":  # dB: differences of a fraction of a dB matter, so do not start at 0
            low = min(min(r[key] for r in record["runs"][n]) for n in names)
            ax.set_ylim(math.floor(low) - 1, None)
        ax.set_xticks(range(len(names)), labels, fontsize=6)
        ax.set_title(key + (" (lower is better)" if "frechet" in key else ""), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------- CoordTok

COORDTOK_ARMS = {  # arm -> (config, overrides for T-frame clips); the *_long configs, retargeted
    "coordtok": ("tokenizers/coordtok/coordtok_long.yaml", ["model_overrides={{num_frames: {T}}}"]),
    "vtok": ("tokenizers/vtok/vtok_long.yaml", []),
    "frames": ("tokenizers/frames/frames_long.yaml", []),
}


def run_coordtok(arms: list[str], frames: int, minutes: float, data: str, limit: int, out: Path,
                 parallel: bool, seed: int = 0) -> dict:
    """Build the long-video world at `data` when missing (`frames`-frame clips at 64x64), train each arm for
    `minutes` of training time (side by side, one thread each, when `parallel`), reconstruct `limit` test
    clips, and run the memory bench (a step's memory and time against clip length, sampled vs full
    decoding)."""
    for name in arms:
        if name not in COORDTOK_ARMS:
            raise KeyError(f"unknown arm {name!r}; known: {list(COORDTOK_ARMS)}")
    if not (Path(data) / "world.json").is_file():
        _job(["-m", "mmvid.data.shapes", "--out", data, "--frames", str(frames), "--size", "64",
              "--train", "500", "--val", "50", "--test", "50", "--fewshot", "0"], out / "world-log.txt")
    jobs = []
    for name in arms:
        config, extra = COORDTOK_ARMS[name]
        folder = out / f"{name}-s{seed}"
        if not (folder / "final" / "config.json").is_file():
            jobs.append((["tokenizers/train.py", "--config", config, f"out={folder}", f"seed={seed}",
                          f"data.source={data}", f"data.num_frames={frames}", f"max_minutes={minutes}",
                          "data.num_workers=1", f"threads={1 if parallel else 0}",
                          *(e.format(T=frames) for e in extra)], folder / "log.txt"))
    _jobs(jobs, parallel)
    for name in arms:
        folder = out / f"{name}-s{seed}"
        if not (folder / "recon-test.json").is_file():
            _job(["eval/run.py", "--bench", "recon", "--tokenizer", f"{folder}/final", "--data", data,
                  "--frames", str(frames), "--limit", str(limit), "--batch-size", "4",
                  "--output", f"{folder}/recon-test.json"], folder / "log.txt")
    memory = out / "memory.json"
    if not memory.is_file():
        _job(["eval/run.py", "--bench", "coordtok_memory", "--option", "videos=4", "--option", "threads=2",
              "--output", str(memory)], out / "memory-log.txt")
    runs = {name: [_recon_run(out / f"{name}-s{seed}", seed)] for name in arms}
    from mmvid.video_tokenizers import video_tokenizer_from

    for name in arms:  # tokens x channels: what the comparison matches
        channels = video_tokenizer_from(str(out / f"{name}-s{seed}" / "final")).token_dim
        runs[name][0]["numbers_per_video"] = int(runs[name][0]["tokens_per_video"] * channels)
    memory_metrics = json.loads(memory.read_text())["results"]["coordtok_memory"]["metrics"]
    record = {"claim": "coordtok", "paper": "arXiv 2411.14762: 128 frames at 128x128 in 1280 tokens, "
              "training memory nearly flat in video length",
              "settings": {"arms": {a: COORDTOK_ARMS[a][0] for a in arms}, "frames": frames,
                           "minutes": minutes, "data": data, "test_videos": limit, "parallel": parallel,
                           "seed": seed},
              "arms": {name: _recon_arm(rs) for name, rs in runs.items()}, "runs": runs,
              "memory": {k: v["value"] for k, v in memory_metrics.items()}}
    _write(out / "result.json", record)
    plot_bars(record, ["psnr", "ssim", "frechet_proxy"], out / "claim_coordtok.png",
              f"{frames}-frame clips: CoordTok vs VTok vs frame sampling ({minutes:g} min each, test)")
    return record


# ---------------------------------------------------------------------------------------------- few-shot

FEWSHOT_MODES = {  # mode -> eval/run.py --bench fewshot options (the tokenizer and model are added)
    "llm_words": ["--video-as", "words", "--option", "words_tokenizer={tokenizer}", "--option",
                  "words_top={top}"],
    "llm_video": [],  # the LLM's own continuous video tokens (its projector), as it was trained
    "llm_oracle": ["--option", "video_as=oracle"],  # text alone: a perfect code of each class
    "prototype_words": ["--option", "scorer=prototype", "--video-as", "words", "--option",
                        "tokenizer={tokenizer}"],
    "prototype_vectors": ["--option", "scorer=prototype", "--option", "tokenizer={tokenizer}"],
}


def run_fewshot(model: str, tokenizer: str, episodes: int, top: int, out: Path) -> dict:
    """5-way 1- and 5-shot on the held-out actions: through the LLM with SweetTok's words, with the LLM's own
    continuous video tokens, and with a perfect class code (text alone); and without an LLM, the nearest
    class mean of the words and of SweetTok's vectors (features alone). The model is the default's
    (trained by `train/sft.py` when missing), the words tokenizer the SweetTok claim's DQAE + MLC arm
    (trained by that claim when missing)."""
    if not (Path(model) / "config.json").is_file():
        if model != "runs/sft-default/final":
            raise FileNotFoundError(f"{model} is not a saved VideoLLM")
        _job(["train/sft.py"], out / "sft-log.txt", port=29710)
    if not (Path(tokenizer) / "config.json").is_file():
        if tokenizer != str(ROOT / "sweettok" / "dqae_mlc-s0" / "final"):
            raise FileNotFoundError(f"{tokenizer} is not a saved SweetTok")
        run_sweettok([0], ["dqae_mlc"], "tokenizers/sweettok/sweettok_base.yaml", 6.0, "data/shapes", 200,
                     ROOT / "sweettok", parallel=False)
    results = {}
    for mode, options in FEWSHOT_MODES.items():
        path = out / f"{mode}.json"
        if not path.is_file():
            _job(["eval/run.py", "--bench", "fewshot", "--model", model, "--shots", "1,5", "--option",
                  f"episodes={episodes}", *(o.format(tokenizer=tokenizer, top=top) for o in options),
                  "--output", str(path)], out / "log.txt")
        metrics = json.loads(path.read_text())["results"]["fewshot"]["metrics"]
        results[mode] = {k.split("/")[0]: {"mean": v["value"], "stderr": v["stderr"]}
                         for k, v in metrics.items() if k.endswith("/acc")}
    record = {"claim": "fewshot", "paper": "arXiv 2412.10443: SweetTok's words make few-shot recognition "
              "possible through an LLM", "goal": "5-way 5-shot with words >= 0.60 (chance 0.20)",
              "settings": {"model": model, "words_tokenizer": tokenizer, "episodes": episodes,
                           "words_top": top, "modes": FEWSHOT_MODES},
              "arms": results}
    _write(out / "result.json", record)
    plot_fewshot(record, out / "claim_fewshot.png")
    return record


def _memory_panel(ax, memory: dict) -> None:
    frames = sorted(int(k[1:].split("/")[0]) for k in memory if k.endswith("/sampled_mib"))
    for kind, style in (("sampled", "o-"), ("full", "s--")):
        ax.plot(frames, [memory[f"T{t}/{kind}_mib"] for t in frames], style,
                label="random patches (stage 1)" if kind == "sampled" else "every patch")
    ax.set_xscale("log", base=2)
    ax.set_xticks(frames, [str(t) for t in frames])
    ax.set_xlabel("frames")
    ax.set_ylabel("MiB held at backward")
    ax.set_title("CoordTok step memory vs length", fontsize=8)
    ax.legend(fontsize=6)


def plot_fewshot(record: dict, output: Path) -> Path:
    arms = record["arms"]
    keys = sorted({k for arm in arms.values() for k in arm})
    fig, (ax,) = _subplots(1, (7, 3.2))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(arms))]
        ax.bar(xs, [arms[m][key]["mean"] for m in arms], width, yerr=[arms[m][key]["stderr"] for m in arms],
               capsize=3, label=key.replace("way_", "-way ").replace("shot", "-shot"))
    ax.axhline(0.2, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axhline(0.6, color="red", linestyle="--", linewidth=1, label="goal (5-shot, words)")
    ax.set_xticks(range(len(arms)), [m.replace("_", "\n") for m in arms], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    episodes = record["settings"]["episodes"]
    ax.set_title(f"few-shot recognition of the 5 held-out actions ({episodes} episodes)", fontsize=9)
    return _save(fig, output)

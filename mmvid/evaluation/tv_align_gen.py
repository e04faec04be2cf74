r"""`tv_align_gen`: text-to-video alignment, scored from the generated pixels by the synthetic world's
analyzer.

    python eval/run.py --bench tv_align_gen [--data data/shapes] [--split test] [--limit N]
    python eval/run.py --bench tv_align_gen --option guidance=5 --option steps=50 \
        --option save=runs/t2v-samples

Data: a synthetic world's `{split}/t2v.jsonl` (default: the test split; or a `.jsonl` given as `--data`,
video paths relative to its folder), one `{"id", "video", "prompt", "objects"}` per line, `objects` the
prompted `{shape, colour, size, action, ...}`. `--limit` prompts (default 100: generation is slow).

For prompt k the model generates `model.generate_video(prompt, guidance_scale=, temperature=, top_k=,
top_p=, steps=, seed=seed + k)` (uint8 (T, H, W, 3)), and `mmvid.data.shapes.analyzer.analyze` recovers
the objects it shows from the pixels alone. Options (`--option KEY=VALUE`): guidance (classifier-free
guidance scale, default 3.0), temperature (1.0), top_k (0 = off), top_p (1.0), steps (flow sampler
steps; default: the head's own), seed (default `--seed`), save (a folder: the first `save_count`,
default 8, videos as GIFs with a prompts.jsonl, and `contact_sheet.png`: each of those prompts with 4 frames
of its real video beside 4 of its generation).

Alignment metrics, each in [0, 1], higher is better:

    colour      per prompted object: a track of its colour was found
    shape       per prompted object: found, and of the prompted shape (a missing object is a miss, so
                a blank video cannot score; the analyzer's own `compare` skips missing objects)
    count       per video: the number of tracks equals the number of prompted objects
    action      per prompted object: found, doing the prompted action
    overall     the mean of the four accuracies above (stderr by the delta method over prompts)

The same five, computed in the same run on the same prompts, read the numbers against:

    real/*      the analyzer on each prompt's real video, decoded at the model's frames and size: the
                ceiling (the analyzer's own errors; a perfect generator scores this)
    shuffled/*  real videos against another prompt's objects (video k + 1 for prompt k): the chance level
                of the metric on this world (objects share colours, shapes and actions by chance)
    generated_shuffled/*  the generations against another prompt's objects, the same way: what they would
                score if they ignored their prompts (a video full of colours scores on colour here too),
                so `overall` minus `generated_shuffled/overall` is what follows from the prompt

Distribution metrics, so blank or collapsed videos cannot look good:

    blank               fraction of generated videos in which the analyzer finds no object
    frechet             Frechet distance between generated and real frames on the features below
    frechet_real_ref    the same distance between the two halves of the real videos
    diversity           mean pairwise L2 distance between generated videos' features over the same
                        for the real videos (1 = as varied as real videos, ~0 = collapse to one video)
    seconds_per_video   mean wall time of one generate_video call

Features (fixed, no network): per frame, the RGB average-pooled to 4x4 (48 values in [0, 1]) and the
fraction of pixels in each of 8 colour cells (each channel split at 128), float64; a video's feature is
the mean and standard deviation of its frame features over time. The Frechet distance fits a Gaussian
to each set of frame features (covariances + 1e-6 I, so small sets stay well posed).
How to read frechet: the prompts are split into halves A and B; `frechet_real_ref` = FD(real A, real B)
and `frechet` = mean of FD(generated A, real B) and FD(generated B, real A). Both compare sets of the
same sizes, so they carry the same small-sample bias: a generator that draws from the real
distribution scores about `frechet_real_ref` (one that returns each prompt's real video scores it
exactly), and a value many times larger means the frames do not look like the world's (on 40 prompts:
a real video for every prompt, one video for all ~7x, blank frames ~15x, noise ~60x). Compare frechet
values only at the same --limit. Frame statistics barely see the small objects: videos of the right
background with no objects score near frechet_real_ref; `blank` is the number that catches them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmvid.contact_sheet import contact_sheet
from mmvid.data import write_video
from mmvid.evaluation.runner import DEFAULT_DATA, BenchContext, BenchResult, Metric, mean_stderr
from mmvid.evaluation.tv_align import BenchmarkFormatError, read_records
from mmvid.metrics import frechet_distance

if TYPE_CHECKING:
    from mmvid.data.shapes.analyzer import Analysis

CATEGORIES = ("colour", "shape", "count", "action")
REFERENCES = ("real", "shuffled", "generated_shuffled")
DEFAULT_LIMIT = 100  # prompts when --limit is not given: generation takes seconds per video
DEFAULT_SAVE_COUNT = 8
SAVE_FPS = 8.0  # the synthetic world's default frame rate
RIDGE = 1e-6  # added to both covariances of the Frechet distance
REQUIRED = ("id", "video", "prompt", "objects")
OBJECT_KEYS = ("colour", "shape", "action")
NO_VALUE = ("", "none", "null")
FIX = ("train with a generation head (e.g. `deepspeed train/sft.py model.generation_head=auto` on data with "
       "text-to-video samples)")


class GenerationUnavailableError(ValueError):
    """The model cannot generate videos (no `generate_video`, or no generation head)."""


# ----------------------------------------------------------------------------------------------
# Prompts and scoring
# ----------------------------------------------------------------------------------------------


def prompts_file(ctx: BenchContext) -> Path:
    data = Path(ctx.data or DEFAULT_DATA)
    if data.suffix == ".jsonl":
        return data
    return data / ctx.option("split", "test") / "t2v.jsonl"


def load_prompts(path: str | Path) -> list[dict]:
    """Read and check a t2v JSONL; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text-to-video prompts not found: {path}; build the world first "
                                f"(`python -m mmvid.data.shapes --out {path.parent.parent}`) or pass --data")
    items = []
    for where, item in read_records(path, REQUIRED):
        objects = item["objects"]
        if not (isinstance(objects, list) and objects
                and all(isinstance(o, dict) and all(k in o for k in OBJECT_KEYS) for o in objects)):
            raise BenchmarkFormatError(f"{where}: 'objects' must be a non-empty list of objects with "
                                       f"{list(OBJECT_KEYS)}")
        items.append(item)
    if not items:
        raise BenchmarkFormatError(f"{path}: no prompts")
    return items


def score_objects(objects: list[dict], analysis: Analysis) -> dict[str, list[bool]]:
    """Hits per category for one video against its prompted objects.

    Args:
        objects: the prompted objects, dicts with at least `colour`, `shape` and `action`.
        analysis: what `analyze` found in the video.
    Returns:
        {"colour", "shape", "action": one hit per prompted object (a missing object is a miss in
        every one), "count": one hit per video}.
    """
    found = analysis.by_colour()
    hits: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    hits["count"].append(analysis.count == len(objects))
    for obj in objects:
        track = found.get(obj["colour"])
        hits["colour"].append(track is not None)
        hits["shape"].append(track is not None and track.shape == obj["shape"])
        hits["action"].append(track is not None and track.action == obj["action"])
    return hits


def category_metrics(per_prompt: list[dict[str, list[bool]]], prefix: str = "") -> list[Metric]:
    """Accuracy per category (items pooled over prompts) and `overall`, their mean.

    overall's stderr linearises the mean of ratios over prompts (the delta method): prompt k moves the
    accuracy of category c by (hits_kc - acc_c n_kc) / N_c, where N_c is the category's item count.
    """
    metrics, accuracy, totals = [], {}, {}
    for category in CATEGORIES:
        values = [float(h) for hits in per_prompt for h in hits[category]]
        accuracy[category], stderr = mean_stderr(values)
        totals[category] = len(values)
        metrics.append(Metric(prefix + category, accuracy[category], stderr, len(values)))
    overall = float(np.mean([accuracy[c] for c in CATEGORIES]))
    influence = np.array([  # (N,): each prompt's share of overall's deviation
        sum((sum(hits[c]) - accuracy[c] * len(hits[c])) / totals[c] for c in CATEGORIES) / len(CATEGORIES)
        for hits in per_prompt])
    n = len(per_prompt)
    stderr = float(np.sqrt(n / (n - 1) * (influence**2).sum())) if n > 1 else None
    metrics.append(Metric(prefix + "overall", overall, stderr, n))
    return metrics


# ----------------------------------------------------------------------------------------------
# Distribution: features, Frechet distance, diversity
# ----------------------------------------------------------------------------------------------


def frame_features(frames) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float64 (T, 56): 4x4 average-pooled RGB in [0, 1] and an 8-cell colour
    histogram."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).double() / 255.0  # (T, 3, H, W)
    pooled = F.adaptive_avg_pool2d(x, 4).flatten(1)  # (T, 48)
    bits = (x >= 128 / 255).long()  # (T, 3, H, W): each channel's half
    cell = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]  # (T, H, W) in [0, 8)
    histogram = F.one_hot(cell, 8).double().mean((1, 2))  # (T, 8), fractions of the frame
    return torch.cat([pooled, histogram], 1).numpy()


def video_feature(features: np.ndarray) -> np.ndarray:
    """Frame features (T, D) -> (2 D,): their mean and standard deviation over time (any T)."""
    return np.concatenate([features.mean(0), features.std(0)])


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean L2 distance over all pairs of rows of (N, D); nan below 2 rows."""
    if len(x) < 2:
        return float("nan")
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # (N, N)
    return float(d[np.triu_indices(len(x), 1)].mean())


def distribution_metrics(generated: list[np.ndarray], real: list[np.ndarray]) -> list[Metric]:
    """frechet, frechet_real_ref and diversity from per-video frame features (T, D), paired by prompt."""
    n = len(real)
    names = ("frechet", "frechet_real_ref", "diversity")
    if n < 2:
        return [Metric(name, float("nan"), None, n) for name in names]
    half = n // 2  # halves A = [0, half) and B = [half, n), their videos' frames pooled
    gen_a, gen_b = np.concatenate(generated[:half]), np.concatenate(generated[half:])
    real_a, real_b = np.concatenate(real[:half]), np.concatenate(real[half:])
    frechet = (frechet_distance(gen_a, real_b, RIDGE) + frechet_distance(gen_b, real_a, RIDGE)) / 2
    reference = frechet_distance(real_a, real_b, RIDGE)
    spread_real = mean_pairwise_distance(np.stack([video_feature(f) for f in real]))
    spread_gen = mean_pairwise_distance(np.stack([video_feature(f) for f in generated]))
    diversity = spread_gen / spread_real if spread_real > 0 else float("nan")
    return [Metric(name, value, None, n) for name, value in zip(names, (frechet, reference, diversity))]


# ----------------------------------------------------------------------------------------------
# The bench
# ----------------------------------------------------------------------------------------------


def _generator(model):
    """The model's generate_video, or a clear error when it cannot generate."""
    generate = getattr(model, "generate_video", None)
    if generate is None or getattr(model, "generation_head", True) is None:
        raise GenerationUnavailableError(f"{type(model).__name__} has no text-to-video generation head, so "
                                         f"tv_align_gen cannot run; {FIX}")
    return generate


def _as_frames(frames, prompt_id: str) -> torch.Tensor:
    frames = torch.as_tensor(frames).detach().cpu()
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"generate_video must return uint8 frames (T, H, W, 3); for {prompt_id} it returned "
                         f"{frames.dtype} {tuple(frames.shape)}")
    return frames


def _found(analysis: Analysis) -> list[dict]:
    return [{"colour": o.colour, "shape": o.shape, "size": o.size, "action": o.action, "event": o.event}
            for o in analysis.objects]


def _mismatched(items: list[dict], analyses: list[Analysis]) -> list[dict[str, list[bool]]]:
    """Video k + 1 scored against prompt k's objects (a fixed derangement); empty for a single prompt."""
    n = len(items)
    return [score_objects(items[k]["objects"], analyses[(k + 1) % n]) for k in range(n)] if n > 1 else []


def run(ctx: BenchContext) -> BenchResult:
    from mmvid.data.shapes.analyzer import analyze  # scipy and template set-up: only when this bench runs

    guidance = float(ctx.option("guidance", "3.0"))
    temperature = float(ctx.option("temperature", "1.0"))
    top_k = int(ctx.option("top_k", "0"))
    top_p = float(ctx.option("top_p", "1.0"))
    steps = ctx.option("steps")
    steps = None if steps is None or str(steps).lower() in NO_VALUE else int(steps)
    seed = int(ctx.option("seed", str(ctx.seed)))
    save = ctx.option("save")
    save = None if save is None or str(save).lower() in NO_VALUE else Path(save)
    save_count = int(ctx.option("save_count", str(DEFAULT_SAVE_COUNT)))

    path = prompts_file(ctx)
    items = load_prompts(path)[: ctx.limit if ctx.limit is not None else DEFAULT_LIMIT]
    root = path.parent
    model = ctx.load_model()
    generate = _generator(model)
    processor = model.processor  # reads the real videos as the model reads videos

    hits = {"generated": [], "real": []}
    real_analyses: list[Analysis] = []
    generated_analyses: list[Analysis] = []
    features = {"generated": [], "real": []}
    blank, seconds, samples, saved, sheet = [], [], [], [], []
    for k, item in enumerate(tqdm(items, desc="tv_align_gen", unit="prompt")):
        start = time.perf_counter()
        try:
            with torch.no_grad():
                frames = generate(item["prompt"], guidance_scale=guidance, temperature=temperature,
                                  top_k=top_k, top_p=top_p, steps=steps, seed=seed + k)
            frames = _as_frames(frames, item["id"])  # on the CPU: the timing includes the device's work
        except NotImplementedError as e:
            raise GenerationUnavailableError(f"{type(model).__name__}.generate_video is not implemented "
                                             f"({e}); {FIX}") from e
        seconds.append(time.perf_counter() - start)
        real = processor.read_frames(root / item["video"])
        generated_analysis, real_analysis = analyze(frames.numpy()), analyze(real.numpy())
        hits["generated"].append(score_objects(item["objects"], generated_analysis))
        hits["real"].append(score_objects(item["objects"], real_analysis))
        real_analyses.append(real_analysis)
        generated_analyses.append(generated_analysis)
        blank.append(float(generated_analysis.count == 0))
        features["generated"].append(frame_features(frames))
        features["real"].append(frame_features(real))
        if save is not None and k < save_count:
            name = f"{k:03d}-{item['id']}.gif"
            write_video(save / name, frames, fps=SAVE_FPS)
            saved.append({"id": item["id"], "file": name, "prompt": item["prompt"], "seed": seed + k})
            sheet.append((item["prompt"], {"real video": real.numpy(), "generated": frames.numpy()}))
        samples.append({"id": item["id"], "prompt": item["prompt"], "seed": seed + k, "seconds": seconds[-1],
                        "hits": hits["generated"][-1], "real_hits": hits["real"][-1],
                        "found": _found(generated_analysis)})
    if saved:
        contact_sheet(sheet, save / "contact_sheet.png")
        (save / "prompts.jsonl").write_text("".join(json.dumps(s) + "\n" for s in saved))
    # Chance level: each real video scored against the objects of a prompt it does not show; the same for
    # the generations (what a video that ignores its prompt would score).
    hits["shuffled"] = _mismatched(items, real_analyses)
    hits["generated_shuffled"] = _mismatched(items, generated_analyses)

    metrics = category_metrics(hits["generated"])
    for reference in REFERENCES:
        if hits[reference]:
            metrics += category_metrics(hits[reference], prefix=f"{reference}/")
    metrics.append(Metric("blank", *mean_stderr(blank), n := len(items)))
    metrics += distribution_metrics(features["generated"], features["real"])
    metrics.append(Metric("seconds_per_video", *mean_stderr(seconds), n))
    settings = {
        "file": str(path), "prompts": n, "guidance": guidance, "temperature": temperature, "top_k": top_k,
        "top_p": top_p, "steps": steps, "seed": seed, "frames": processor.config.num_frames,
        "image_size": processor.config.image_size,
        "chance": "shuffled/*: real videos scored against another prompt's objects; real/*: the analyzer's "
                  "ceiling",
        "features": "per frame: 4x4 average-pooled RGB + 8-cell colour histogram; frechet halves A/B, ridge "
                    "1e-6",
        "saved": str(save) if saved else None,
    }
    return BenchResult("tv_align_gen", metrics, settings, samples)

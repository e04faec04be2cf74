"""`fewshot`: N-way K-shot episodic action recognition on the held-out action classes.

    python eval/run.py --bench fewshot [--data data/shapes] [--ways 5] [--shots 1,5] [--episodes 20]

Each episode (fixed by the seed) draws N held-out classes, K support videos of each and one query.
The context is a conversation: for each support video (shuffled) the user shows it and asks what
the object does, and the assistant answers with the class label; then the query. Every class label
is scored as the answer's continuation (`acc`, and per-byte `acc_norm`). Chance is 1/N.

Hook: a video tokenizer with a `video_to_text(video) -> str` method (SweetTok's words) can stand in
for the video positions: `--video-as text` puts that text into the turns instead of `<video>`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from mmvid.data import frames_to_tensor, read_video
from mmvid.evaluation.runner import DEFAULT_DATA, BenchContext, BenchResult, Metric, mean_stderr
from mmvid.evaluation.scoring import continuation_logprobs, pick
from mmvid.text_tokenizer import VIDEO_TOKEN

QUESTION = "What does the object do?"


def load_fewshot(ctx: BenchContext) -> tuple[Path, list[dict]]:
    data = Path(ctx.data or DEFAULT_DATA)
    path = data if data.suffix == ".jsonl" else data / "fewshot" / "fewshot.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"few-shot file not found: {path} (build the world with `python -m mmvid.data.shapes`)")
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        if not all(k in item for k in ("video", "label")):
            raise ValueError(f"{path}:{lineno}: each line needs 'video' and 'label'")
        items.append(item)
    return path, items


def episodes(items: list[dict], ways: int, shots: int, count: int, seed: int) -> list[tuple[list[dict], dict, list[str]]]:
    """Fixed episodes: (support items, query item, the N class labels in a fixed order)."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_label[item["label"]].append(item)
    usable = sorted(label for label, group in by_label.items() if len(group) >= shots + 1)
    if len(usable) < ways:
        raise ValueError(f"{ways}-way {shots}-shot needs {ways} classes with {shots + 1}+ videos; "
                         f"the data has {len(usable)} such classes")
    rng = random.Random(seed * 1000 + ways * 100 + shots)
    out = []
    for e in range(count):
        labels = sorted(rng.sample(usable, ways))
        query_label = labels[e % ways]  # queries cycle through the classes, so chance stays 1/N
        support, query = [], None
        for label in labels:
            chosen = rng.sample(by_label[label], shots + (label == query_label))
            if label == query_label:
                query = chosen.pop()
            support += chosen
        rng.shuffle(support)
        out.append((support, query, labels))
    return out


def run(ctx: BenchContext) -> BenchResult:
    ways = int(ctx.option("ways", "5"))
    shot_list = [int(s) for s in str(ctx.option("shots", "1,5")).split(",") if s]
    count = int(ctx.option("episodes", "20") if ctx.limit is None else ctx.limit)
    video_as = ctx.option("video_as", "video")
    path, items = load_fewshot(ctx)
    model = ctx.load_model()
    to_text = getattr(model.video_tokenizer, "video_to_text", None)
    if video_as == "text" and to_text is None:
        raise ValueError(f"--video-as text needs a video tokenizer with video_to_text(); {model.video_tokenizer.preset} has none")
    cache: dict[str, torch.Tensor] = {}

    def video(item) -> torch.Tensor:
        key = str(path.parent / item["video"])
        if key not in cache:
            decoded = read_video(key, num_frames=model.config.num_frames, size=model.image_size)
            cache[key] = frames_to_tensor(decoded.frames)
        return cache[key]

    metrics, samples = [], []
    for shots in shot_list:
        hits: dict[str, list[float]] = {"acc": [], "acc_norm": []}
        for support, query, labels in tqdm(episodes(items, ways, shots, count, ctx.seed), desc=f"fewshot {ways}-way {shots}-shot"):
            messages, videos = [], []
            for item in support + [query]:
                if video_as == "text":
                    content = f"{to_text(video(item)[None])}\n{QUESTION}"
                else:
                    content = f"{VIDEO_TOKEN}\n{QUESTION}"
                    videos.append(video(item))
                messages.append({"role": "user", "content": content})
                if item is not query:
                    messages.append({"role": "assistant", "content": item["label"]})
            features = model.encode_video(torch.stack(videos)) if videos else None
            scores = continuation_logprobs(model, messages, labels, features)
            raw, norm = pick(scores, labels)
            answer = labels.index(query["label"])
            hits["acc"].append(float(raw == answer))
            hits["acc_norm"].append(float(norm == answer))
            samples.append({"shots": shots, "query": query["video"], "label": query["label"], "labels": labels,
                            "loglikelihoods": scores, "choice": labels[raw]})
        for name, values in hits.items():
            value, stderr = mean_stderr(values)
            metrics.append(Metric(f"{ways}way_{shots}shot/{name}", value, stderr, len(values)))
    settings = {"file": str(path), "ways": ways, "shots": shot_list, "episodes": count, "video_as": video_as,
                "chance": 1 / ways, "question": QUESTION}
    return BenchResult("fewshot", metrics, settings, samples)

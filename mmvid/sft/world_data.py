"""Training text for the built-in default, drawn from a synthetic world's *training* split only.

    # LLaVA samples: caption + every question
    conversations = cloze_conversations("data/shapes", "train")
    # colour and shape questions only (data.curriculum)
    curriculum = attribute_conversations("data/shapes", "train")
    # (caption + question, answer) for text pretraining
    pairs = reading_comprehension("data/shapes", "train")

Answers are option *texts* (the cloze formulation), not letters: a small LLM trained from scratch
cannot learn multiple-choice symbol binding in minutes (measured: the 4-layer default stays at
chance, loss ln 4, on letters with the caption in its context; it reaches 0.6-0.8 on the option
texts), which is why OLMES scores small models in cloze form. `tv_align`'s `option_format=cloze`
scores exactly this prompt: the question alone, each option's text as the answer.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmvid.data.conversations import GPT, HUMAN, VIDEO_PLACEHOLDER

CAPTION_REQUEST = "Describe the video."
# a caption does not say where things are
TEXT_ONLY_CATEGORIES = ("colour", "shape", "count", "action", "temporal")


def _questions_by_video(world: Path, split: str) -> dict[str, list[dict]]:
    path = world / split / "tv_align.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; build the world with python -m mmvid.data.shapes --out "
                                f"{world}")
    by_video: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            by_video[q["video"]].append(q)
    return by_video


def _captions_by_video(world: Path, split: str) -> dict[str, list[str]]:
    path = world / split / "captions.jsonl"
    return {
        item["video"]: item["captions"] for item in map(json.loads, path.read_text().splitlines()) if item}


def object_questions(scene) -> list[tuple[str, str, str]]:
    """(category, question, answer) about *every* object of a scene, in the benchmark's templates: the
    shape of each colour, the colour of each object named without its colour (when that name is
    unique), what each object does, where each object is relative to each other one, and how many of
    each shape. The benchmark asks one of each about one random object; binding an attribute to a
    named object is what a small LLM learns slowest, so training asks about all of them."""
    from mmvid.data.shapes import text, world

    objects = scene.objects
    out = []
    for obj in objects:
        out.append(("shape", f"What shape is the {obj.colour} object?", obj.shape))
        for describe in (lambda o: f"the {o.shape}", lambda o: f"the {o.size} {o.shape}",
                         lambda o: f"the object that {text.action_phrase(o, with_speed=False)}"):
            names = [describe(o) for o in objects]
            if names.count(describe(obj)) == 1:
                out.append(("colour", f"What colour is {describe(obj)}?", obj.colour))
                break
        out.append(("action", f"What does {text._the(obj)} do?", text.ACTION_PHRASES[obj.action]))
    for a in objects:
        for b in objects:
            relation = text._spatial_relation(a, b, scene) if a is not b else None
            if relation is not None:
                out.append(("spatial", f"Where is {text._the(a)} relative to {text._the(b)} at the start?",
                            relation))
    for shape in world.SHAPES:
        count = sum(o.shape == shape for o in objects)
        if count:
            out.append(("count", f"How many {shape} shapes are there?", text._number(count)))
    return out


def cloze_conversations(world: str | Path, split: str = "train", captions: int = 1, seed: int = 0,
                        all_objects: bool = True, categories: tuple[str, ...] | None = None) -> list[dict]:
    """One LLaVA sample per video of `split`: `captions` caption rounds ("Describe the video." -> a
    caption), then every benchmark question of that video answered with its option text, and with
    `all_objects` the same questions about every other object too (`object_questions`, from the
    split's ground truth). `categories` keeps only the questions of those categories (the attribute
    curriculum: `attribute_conversations`)."""
    world, questions, caps, rng = _training_split(world, split, seed)
    samples = []
    for video in sorted(set(questions) | set(caps)):
        rounds = []
        options = caps.get(video, [])
        for k in rng.permutation(len(options))[:captions]:
            rounds.append((CAPTION_REQUEST, options[k]))
        asked = [(q["category"], q["question"], q["answer_text"]) for q in questions.get(video, [])]
        if all_objects:
            seen = {q for _, q, _ in asked}
            asked += [(c, q, a) for c, q, a in object_questions(_scene(world, split, video)) if q not in seen]
        rounds += [(q, a) for c, q, a in asked if categories is None or c in categories]
        if not rounds:
            continue
        turns = []
        for i, (human, gpt) in enumerate(rounds):
            turns += [{"from": HUMAN, "value": (f"{VIDEO_PLACEHOLDER}\n" if i == 0 else "") + human},
                      {"from": GPT, "value": gpt}]
        samples.append({"id": f"{split}-{Path(video).stem}-cloze", "video": video, "conversations": turns})
    return samples


ATTRIBUTE_CATEGORIES = ("colour", "shape")


def attribute_conversations(world: str | Path, split: str = "train", seed: int = 0) -> list[dict]:
    """The attribute curriculum (`data.curriculum`): per video of `split`, only the colour and shape
    questions, about every object, and no caption. On the full mixture the default LLM leaves colour and
    shape at chance while it learns count and action (issue 17); on these alone it reads them within a
    few hundred steps, and keeps them when the mixture follows."""
    samples = cloze_conversations(world, split, captions=0, seed=seed, categories=ATTRIBUTE_CATEGORIES)
    return [dict(s, id=s["id"].replace("-cloze", "-attributes")) for s in samples]


def _training_split(world: str | Path, split: str, seed: int):
    """(world folder, questions by video, captions by video, rng); refuses the validation and test splits."""
    if split in ("val", "test"):
        raise ValueError(f"training text must not come from the {split} split")
    world = Path(world)
    rng = np.random.default_rng(seed)
    return world, _questions_by_video(world, split), _captions_by_video(world, split), rng


def _scene(world: Path, split: str, video: str):
    from mmvid.data.shapes import world as w

    record = json.loads((world / split / video).with_suffix(".json").read_text())
    return w.Scene.from_dict(record["scene"])


def reading_comprehension(world: str | Path, split: str = "train", seed: int = 0,
                          all_objects: bool = True) -> list[list[dict]]:
    """Text-only conversations for pretraining the LLM stand-in: a caption of the video in place of the
    video, a question about it, its answer text (spatial questions left out: captions do not say where
    things are); plus captions as answers to the caption request, so the LLM knows how captions read."""
    world, questions, caps, rng = _training_split(world, split, seed)
    out = []
    for video, options in sorted(caps.items()):
        pairs = [(q["category"], q["question"], q["answer_text"]) for q in questions.get(video, [])]
        if all_objects:
            asked = {p[1] for p in pairs}
            pairs += [p for p in object_questions(_scene(world, split, video)) if p[1] not in asked]
        for category, question, answer in pairs:
            if category in TEXT_ONLY_CATEGORIES:
                caption = options[int(rng.integers(len(options)))]
                out.append([{"from": HUMAN, "value": f"{caption}\n{question}"},
                            {"from": GPT, "value": answer}])
        out.append([{"from": HUMAN, "value": CAPTION_REQUEST},
                    {"from": GPT, "value": options[int(rng.integers(len(options)))]}])
    return out


def world_texts(world: str | Path, split: str = "train") -> list[str]:
    """Every text of a split the LLM may meet (captions, questions, options): the text tokenizer's corpus."""
    world = Path(world)
    texts = [c for cs in _captions_by_video(world, split).values() for c in cs]
    for qs in _questions_by_video(world, split).values():
        for q in qs:
            texts += [q["question"], *q["options"]]
    return texts

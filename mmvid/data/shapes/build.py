"""Write a synthetic-world data set folder.

    python -m mmvid.data.shapes --out data/shapes --train 5000 --val 500 --test 500 --frames 16 --size 64

Folder layout (video paths in every file are relative to the split folder):

    world.json                     settings, counts, held-out actions, build speed, complete flag
    lexicon.json                   word -> part of speech for every word the text can contain
    {train,val,test}/videos/NNNNNN.mp4 and .json (ground truth: the scene and per-frame states)
    {train,val,test}/captions.jsonl     {id, video, captions}
    {train,val,test}/sft.jsonl          LLaVA conversations: captioning, open and multiple-choice QA
    {train,val,test}/tv_align.jsonl     {id, video, question, options, answer, category}
    {train,val,test}/t2v.jsonl          {id, video, prompt, objects, count}: text-to-video prompts
    fewshot/videos/..., fewshot/fewshot.jsonl  one object doing a held-out action: {id, video, action, label}

Splits come from disjoint seeds (seed * 10^8 + split * 10^7 + index); train/val/test never show a
held-out action. Re-running with the same settings is a no-op (or finishes an interrupted build);
different settings on an existing folder are refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmvid.data.shapes import text, world
from mmvid.data.video_io import write_video

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test", "fewshot")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
MAX_PER_SPLIT = 10**7


@dataclass
class WorldSettings:
    train: int = 5000
    val: int = 500
    test: int = 500
    fewshot: int = 20  # videos per held-out action
    frames: int = 16
    size: int = 64  # height and width, pixels (even, for H.264)
    fps: float = 8.0
    seed: int = 0
    held_out: tuple[str, ...] = world.DEFAULT_HELD_OUT
    crf: int = 18  # H.264 quality (0-51, lower is better)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.held_out = tuple(self.held_out)
        for name in ("train", "val", "test", "fewshot"):
            n = getattr(self, name)
            if not (isinstance(n, int) and 0 <= n < MAX_PER_SPLIT):
                raise ValueError(f"{name} must be an int in [0, {MAX_PER_SPLIT}), got {n!r}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be an even number >= 16, got {self.size}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        unknown = set(self.held_out) - set(world.ACTIONS)
        if unknown:
            raise ValueError(f"unknown held-out actions {sorted(unknown)}; known: {list(world.ACTIONS)}")
        if len(self.main_actions) < 2:
            raise ValueError("hold out fewer actions: the main world needs at least two")

    @property
    def main_actions(self) -> tuple[str, ...]:
        return tuple(a for a in world.ACTIONS if a not in self.held_out)

    def count(self, split: str) -> int:
        return self.fewshot * len(self.held_out) if split == "fewshot" else getattr(self, split)

    def scene_seed(self, split: str, index: int) -> int:
        return self.seed * 10**8 + SPLIT_IDS[split] * MAX_PER_SPLIT + index

    def to_json(self) -> dict:
        data = asdict(self)
        data["held_out"] = list(self.held_out)
        return data


def scene_for(settings: WorldSettings, split: str, index: int) -> world.Scene:
    """The scene of video `index` of `split`, deterministic from the settings."""
    seed = settings.scene_seed(split, index)
    if split == "fewshot":  # one object doing one held-out action, classes in turn
        action = settings.held_out[index % len(settings.held_out)]
        return world.sample_scene(seed, settings.frames, settings.size, settings.size, actions=(action,),
                                  num_objects=1)
    return world.sample_scene(seed, settings.frames, settings.size, settings.size,
                              actions=settings.main_actions)


def video_name(index: int) -> str:
    return f"videos/{index:06d}.mp4"


def _write_one(args: tuple[dict, str, int, str]) -> None:
    """Render and write one video and its ground truth (runs in a worker process)."""
    settings_json, split, index, root = args
    settings = WorldSettings(**settings_json)
    scene = scene_for(settings, split, index)
    mp4 = Path(root) / split / video_name(index)
    truth = mp4.with_suffix(".json")
    if mp4.exists() and truth.exists():
        return  # finished by an earlier, interrupted build
    write_video(mp4, world.render(scene), fps=settings.fps, crf=settings.crf)
    states = []
    for obj in scene.objects:
        st = world.object_states(obj, scene.num_frames)
        states.append({k: np.round(getattr(st, k), 5).tolist() for k in ("x", "y", "scale", "angle")}
                      | {"visible": st.visible.tolist()})
    tmp = truth.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"split": split, "index": index, "scene": scene.to_dict(), "states": states}))
    os.replace(tmp, truth)


def load_truth(path: str | Path) -> world.Scene:
    """The scene stored in a ground-truth JSON (`videos/NNNNNN.json`)."""
    return world.Scene.from_dict(json.loads(Path(path).read_text())["scene"])


class WorldExistsError(ValueError):
    """The output folder holds a different world (or something else)."""


def read_settings(out: str | Path) -> tuple[WorldSettings, dict]:
    """The settings and the full record of a built (or partly built) world folder."""
    record = json.loads((Path(out) / "world.json").read_text())
    known = {f.name for f in fields(WorldSettings)}
    return WorldSettings(**{k: v for k, v in record["settings"].items() if k in known}), record


def build_world(out: str | Path, settings: WorldSettings, workers: int = 1, progress: bool = True) -> dict:
    """Build (or finish building) a world folder; returns the world.json record.

    Raises:
        WorldExistsError: `out` holds a world with other settings, or files that are not a world.
    """
    out = Path(out)
    manifest = out / "world.json"
    if manifest.exists():
        previous, record = read_settings(out)
        if previous != settings:
            diff = {f.name: (getattr(previous, f.name), getattr(settings, f.name)) for f in fields(
                WorldSettings)
                    if getattr(previous, f.name) != getattr(settings, f.name)}
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise WorldExistsError(f"{out} already holds a world built with other settings ({changes}); "
                                   f"choose another --out or delete it")
        if record.get("complete"):
            return {**record, "reused": True}
    elif out.exists() and any(out.iterdir()):
        raise WorldExistsError(f"{out} is not empty and has no world.json; refusing to write a world into it")
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings.to_json(), "complete": False}
    manifest.write_text(json.dumps(record, indent=1))

    tasks = [
        (settings.to_json(), split, i, str(out)) for split in SPLITS for i in range(settings.count(split))]
    for split in SPLITS:
        (out / split / "videos").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), desc=f"building {out}", unit="video", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, tasks, chunksize=16):
                bar.update()
    else:
        for task in tasks:
            _write_one(task)
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    counts = {split: write_text_files(out, settings, split) for split in SPLITS}
    (out / "lexicon.json").write_text(
        json.dumps({"parts_of_speech": text.LEXICON, "actions": text.ACTION_PHRASES}, indent=1))
    record = {
        "settings": settings.to_json(),
        "complete": True,
        "counts": counts,
        "main_actions": list(settings.main_actions),
        "held_out_actions": list(settings.held_out),
        "build_seconds": round(seconds, 2),
        "videos_per_second": round(len(tasks) / seconds, 1) if seconds > 0 and tasks else None,
        "workers": workers,
    }
    manifest.write_text(json.dumps(record, indent=1))
    return record


def write_text_files(out: Path, settings: WorldSettings, split: str) -> dict[str, int]:
    """Captions, conversations, benchmark questions and prompts of one split, from its ground truth."""
    folder = out / split
    n = settings.count(split)
    if split == "fewshot":
        rows = []
        for i in range(n):
            scene = load_truth(folder / video_name(i).replace(".mp4", ".json"))
            action = scene.objects[0].action
            rows.append({"id": f"fewshot-{i:06d}", "video": video_name(i), "action": action,
                         "label": text.ACTION_PHRASES[action], "objects": _objects(scene)})
        _write_jsonl(folder / "fewshot.jsonl", rows)
        return {"videos": n}
    captions, sft, bench, t2v = [], [], [], []
    sft_positions: dict[str, int] = {}
    bench_positions: dict[str, int] = {}
    for i in range(n):
        scene = load_truth(folder / video_name(i).replace(".mp4", ".json"))
        video, vid = video_name(i), f"{split}-{i:06d}"
        rng = np.random.default_rng([settings.seed, SPLIT_IDS[split], i, 1])  # text randomness, per video
        captions.append({"id": vid, "video": video, "captions": text.captions(scene, rng)})
        sft.append(text.conversation(scene, video, vid, rng, sft_positions, settings.main_actions))
        bench += text.benchmark_questions(scene, video, vid, rng, bench_positions, settings.main_actions)
        t2v.append({"id": vid, "video": video, **text.t2v_prompt(scene, rng)})
    for name, rows in (("captions", captions), ("sft", sft), ("tv_align", bench), ("t2v", t2v)):
        _write_jsonl(folder / f"{name}.jsonl", rows)
    return {"videos": n, "questions": len(bench)}


def _objects(scene: world.Scene) -> list[dict]:
    return [{k: getattr(o, k) for k in ("shape", "colour", "size", "action", "speed", "event")}
            for o in scene.objects]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


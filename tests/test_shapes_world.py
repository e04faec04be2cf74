"""The synthetic world: determinism, constraints, the analyzer, and the data set folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmvid.data import load_conversations, read_video, write_video
from mmvid.data.shapes import world
from mmvid.data.shapes.__main__ import main as build_main
from mmvid.data.shapes.analyzer import ATTRIBUTES, analyze, compare, evaluate_split
from mmvid.data.shapes.build import WorldExistsError, WorldSettings, build_world, load_truth, scene_for
from mmvid.data.shapes.text import LETTERS
from mmvid.data.validate import validate_file

# ---------------------------------------------------------------- world


def test_vocabulary_is_as_rich_as_promised():
    assert len(world.SHAPES) >= 6 and len(world.COLOURS) >= 6
    assert len(world.ACTIONS) - len(world.DEFAULT_HELD_OUT) >= 12  # the main world alone has 12+
    assert set(world.DEFAULT_HELD_OUT) < set(world.ACTIONS)


def test_scenes_and_frames_are_deterministic_from_the_seed():
    a, b = world.sample_scene(7), world.sample_scene(7)
    assert a == b
    assert np.array_equal(world.render(a), world.render(b))
    assert world.sample_scene(8) != a


@pytest.mark.parametrize("frames, height, width", [(16, 32, 32), (16, 64, 64), (5, 40, 24), (32, 128, 128)])
def test_renders_any_length_and_resolution(frames, height, width):
    video = world.render(world.sample_scene(3, frames, height, width))
    assert video.shape == (frames, height, width, 3) and video.dtype == np.uint8


def test_scene_constraints_hold_over_many_seeds():
    objects = Counter()
    for seed in range(300):
        scene = world.sample_scene(seed, 16, 64, 64, actions=world.ACTIONS)
        assert 1 <= len(scene.objects) <= 4
        assert len({o.colour for o in scene.objects}) == len(scene.objects)  # a colour names an object
        states = [world.object_states(o, 16) for o in scene.objects]
        for obj, st in zip(scene.objects, states):
            objects[obj.action] += 1
            r = world.SIZES[obj.size] * st.scale
            v = st.visible
            assert np.all((st.x - r >= world.MARGIN - 1e-9)[v]) and np.all(
                (st.x + r <= 1 - world.MARGIN + 1e-9)[v])
            assert np.all((st.y - r >= world.MARGIN - 1e-9)[v]) and np.all(
                (st.y + r <= 1 - world.MARGIN + 1e-9)[v])
            assert not (obj.action == "spin" and obj.shape == "circle")
            if obj.event:
                assert obj.action in world.EVENT_ACTIONS and v.mean() >= 0.6
        for i in range(len(states)):
            for j in range(i):
                both = states[i].visible & states[j].visible
                gap = np.hypot(states[i].x - states[j].x, states[i].y - states[j].y)
                need = (world.SIZES[scene.objects[i].size] * states[i].scale
                        + world.SIZES[scene.objects[j].size] * states[j].scale)
                assert np.all((gap >= need)[both])
    assert set(objects) == set(world.ACTIONS)
    events = sum(o.event is not None for s in range(300) for o in world.sample_scene(s).objects)
    assert events > 30  # temporal order exists in a good share of scenes


def test_default_scenes_never_use_held_out_actions():
    for seed in range(100):
        assert not {o.action for o in world.sample_scene(seed).objects} & set(world.DEFAULT_HELD_OUT)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown or no actions"):
        world.sample_scene(0, actions=("fly",))
    with pytest.raises(ValueError, match="at least 2 frames"):
        world.sample_scene(0, num_frames=1)


# ---------------------------------------------------------------- analyzer


def _single(action: str, shape: str = "square", colour: str = "red", speed: str = "slow",
            event=None) -> world.Scene:
    obj = world.ObjectSpec(shape=shape, colour=colour, size="large", action=action, speed=speed, x=0.5, y=0.5)
    if action in world.MOVES:  # start where the move stays inside the frame
        dx, dy = world.MOVES[action]
        obj.x, obj.y = 0.5 - dx * 0.175, 0.5 - dy * 0.175
    if action == "bounce":
        obj.y = 0.75
    if action == "zigzag":
        obj.x = 0.3
    if event:
        obj.event, obj.event_frame = event, 5 if event == "appear" else 11
    return world.Scene(seed=0, num_frames=16, height=64, width=64, background="navy", texture="noise",
                       objects=[obj])


@pytest.mark.parametrize("action", world.ACTIONS)
def test_analyzer_recovers_each_action(action):
    scene = _single(action, shape="star" if action == "spin" else "square")
    (track,) = analyze(world.render(scene)).objects
    assert (track.colour, track.shape, track.action) == ("red", scene.objects[0].shape, action)


@pytest.mark.parametrize("event", ["appear", "leave"])
def test_analyzer_recovers_events(event):
    (track,) = analyze(world.render(_single("move_right", event=event))).objects
    assert track.event == event and track.action == "move_right"
    assert track.event_frame == (5 if event == "appear" else 11)


def test_analyzer_accuracy_on_rendered_and_mp4_decoded_videos(tmp_path):
    hits = {"rendered": {a: [] for a in ATTRIBUTES}, "mp4": {a: [] for a in ATTRIBUTES}}
    for seed in range(24):
        scene = world.sample_scene(500 + seed, 16, 64, 64, actions=world.ACTIONS)
        frames = world.render(scene)
        decoded = read_video(write_video(tmp_path / f"{seed}.mp4", frames, fps=8)).frames.numpy()
        for source, video in (("rendered", frames), ("mp4", decoded)):
            for attribute, values in compare(scene, analyze(video)).items():
                hits[source][attribute] += values
    for source in hits:
        accuracy = {a: np.mean(v) for a, v in hits[source].items() if v}
        assert min(accuracy["colour"], accuracy["count"], accuracy["direction"]) >= 0.97, (source, accuracy)
        assert min(accuracy["shape"], accuracy["action"]) >= 0.93, (source, accuracy)


def test_analyzer_sees_an_empty_video_as_empty_and_rejects_bad_input():
    empty = world.render(world.Scene(0, 8, 32, 32, "black", "plain", []))
    assert analyze(empty).count == 0
    with pytest.raises(ValueError, match="uint8 frames"):
        analyze(np.zeros((4, 32, 32, 3), np.float32))


def test_compare_counts_misses():
    scene = _single("move_left")
    other = _single("move_right", colour="blue")
    hits = compare(scene, analyze(world.render(other)))
    assert hits["colour"] == [False] and hits["count"] == [True] and hits["shape"] == []


# ---------------------------------------------------------------- the data set folder

TINY = dict(train=8, val=4, test=4, fewshot=2, frames=16, size=32)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world") / "shapes"
    record = build_world(out, WorldSettings(**TINY), workers=1, progress=False)
    return out, record


def test_build_writes_every_file_in_its_format(tiny_world):
    out, record = tiny_world
    assert record["complete"] and record["counts"]["train"]["videos"] == 8
    assert record["counts"]["fewshot"]["videos"] == 2 * len(world.DEFAULT_HELD_OUT)
    for split in ("train", "val", "test"):
        folder = out / split
        assert len(list((folder / "videos").glob("*.mp4"))) == TINY[split]
        assert len(list((folder / "videos").glob("*.json"))) == TINY[split]
        report = validate_file(folder / "sft.jsonl", progress=False)
        assert report.num_errors == 0, report.errors
        captions = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
        assert all(len(c["captions"]) >= 1 and (folder / c["video"]).exists() for c in captions)
        for row in map(json.loads, (folder / "tv_align.jsonl").read_text().splitlines()):
            assert set(row) >= {"id", "video", "question", "options", "answer", "category"}
            assert len(row["options"]) == 4 == len(set(row["options"])) and row["answer"] in LETTERS
            assert row["options"][LETTERS.index(row["answer"])] == row["answer_text"]
        for row in map(json.loads, (folder / "t2v.jsonl").read_text().splitlines()):
            assert row["prompt"] and row["count"] == len(row["objects"])
    shots = [json.loads(line) for line in (out / "fewshot" / "fewshot.jsonl").read_text().splitlines()]
    assert Counter(s["action"] for s in shots) == {a: 2 for a in world.DEFAULT_HELD_OUT}
    lexicon = json.loads((out / "lexicon.json").read_text())
    assert lexicon["parts_of_speech"]["red"] == "adjective"


def test_ground_truth_matches_the_seeded_scene_and_splits_are_disjoint(tiny_world):
    out, _ = tiny_world
    settings = WorldSettings(**TINY)
    seeds = {}
    for split in ("train", "val", "test", "fewshot"):
        for path in sorted((out / split / "videos").glob("*.json")):
            scene = load_truth(path)
            index = int(path.stem)
            assert scene == scene_for(settings, split, index)
            seeds[(split, index)] = scene.seed
            held = {o.action for o in scene.objects} & set(settings.held_out)
            assert bool(held) == (split == "fewshot")
    assert len(set(seeds.values())) == len(seeds)
    frames = read_video(out / "train" / "videos" / "000000.mp4").frames
    assert frames.shape == (16, 32, 32, 3)


def test_answer_positions_are_balanced(tmp_path):
    out = tmp_path / "w"
    build_world(out, WorldSettings(train=0, val=60, test=0, fewshot=0, frames=16, size=32), progress=False)
    rows = [json.loads(line) for line in (out / "val" / "tv_align.jsonl").read_text().splitlines()]
    by_category: dict[str, Counter] = {}
    for row in rows:
        by_category.setdefault(row["category"], Counter())[row["answer"]] += 1
    assert set(by_category) >= {"colour", "shape", "count", "action", "spatial", "temporal"}
    for category, letters in by_category.items():
        assert max(letters.values()) - min(letters[letter] for letter in LETTERS) <= 1, (category, letters)


def test_rebuild_is_a_no_op_and_other_settings_are_refused(tiny_world, tmp_path, capsys):
    out, _ = tiny_world
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    args = ["--out", str(out)] + [f"--{k}={v}" for k, v in TINY.items()] + ["--workers", "1"]
    assert build_main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert build_main(args[:-2] + ["--train", "9", "--workers", "1"]) == 2
    assert "train: 8 -> 9" in capsys.readouterr().err
    with pytest.raises(WorldExistsError):
        build_world(out, WorldSettings(**{**TINY, "seed": 1}), progress=False)
    stranger = tmp_path / "not-a-world"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(WorldExistsError, match="no world.json"):
        build_world(stranger, WorldSettings(**TINY), progress=False)


def test_an_interrupted_build_finishes_on_rerun(tmp_path):
    out = tmp_path / "w"
    settings = WorldSettings(train=3, val=1, test=1, fewshot=0, frames=8, size=32)
    build_world(out, settings, progress=False)
    # Simulate a kill mid-way: the manifest says incomplete and one video is missing.
    record = json.loads((out / "world.json").read_text())
    (out / "world.json").write_text(json.dumps({"settings": record["settings"], "complete": False}))
    (out / "train" / "videos" / "000001.mp4").unlink()
    (out / "train" / "sft.jsonl").unlink()
    again = build_world(out, settings, progress=False)
    assert again["complete"] and "reused" not in again
    assert (out / "train" / "videos" / "000001.mp4").exists()
    assert len(load_conversations(out / "train" / "sft.jsonl")) == 3


def test_settings_are_validated():
    with pytest.raises(ValueError, match="even"):
        WorldSettings(size=33)
    with pytest.raises(ValueError, match="unknown held-out"):
        WorldSettings(held_out=("fly",))


def test_analyzer_command_on_a_built_world(tiny_world):
    out, _ = tiny_world
    result = evaluate_split(out, "val", workers=1, progress=False)
    assert set(result) == {"rendered", "mp4"}
    assert result["rendered"]["count"][1] == TINY["val"]


def test_action_distractors_follow_the_held_out_setting(tmp_path):
    out = tmp_path / "w"
    held_out = ("zigzag", "orbit", "shake", "spin", "bounce")  # bounce held out, pulse in the main world
    build_world(out, WorldSettings(train=0, val=40, test=0, fewshot=0, frames=16, size=32, held_out=held_out),
                progress=False)
    options = {o for line in (out / "val" / "tv_align.jsonl").read_text().splitlines()
               for row in [json.loads(line)] if row["category"] == "action" for o in row["options"]}
    assert "bounces" not in options and "pulses" in options

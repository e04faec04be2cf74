"""tv_align_gen: text-to-video alignment scored by the analyzer, with fake generators (no LLM needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmvid.data import read_video
from mmvid.data.shapes.analyzer import Analysis, TrackedObject
from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.evaluation import BenchContext, run_benches
from mmvid.evaluation.tv_align import BenchmarkFormatError
from mmvid.evaluation.tv_align_gen import (
    CATEGORIES,
    GenerationUnavailableError,
    frechet_distance,
    score_objects,
)
from mmvid.processor import VideoProcessor, VideoProcessorConfig

FRAMES, SIZE, PROMPTS = 8, 48, 6  # 48 px: the analyzer still finds every object of the tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t2v") / "world"
    build_world(out, WorldSettings(train=0, val=0, test=PROMPTS, fewshot=0, frames=FRAMES, size=SIZE),
                progress=False)
    return out


class FakeGenerator:
    """What the bench (and the runner's record) reads of a VideoLLM, with `generate_video` from a function."""

    def __init__(self, make=None):
        self.processor = VideoProcessor(None, VideoProcessorConfig(num_frames=FRAMES, image_size=SIZE))
        self.video_tokenizer = SimpleNamespace(preset="fake")
        self.calls = []
        if make is not None:
            self.make = make

    def generate_video(self, prompt, *, guidance_scale, temperature, top_k, top_p, steps, seed):
        self.calls.append(dict(prompt=prompt, guidance_scale=guidance_scale, temperature=temperature,
                               top_k=top_k, top_p=top_p, steps=steps, seed=seed))
        return self.make(prompt)


def real_videos(world: Path) -> dict[str, torch.Tensor]:
    """prompt -> its real video, decoded as the bench decodes it."""
    rows = [json.loads(line) for line in (world / "test" / "t2v.jsonl").read_text().splitlines()]
    return {r["prompt"]: read_video(world / "test" / r["video"], num_frames=FRAMES, size=SIZE).frames
            for r in rows}


def _bench(model, world, limit=PROMPTS, **options):
    ctx = BenchContext(model=model, data=str(world), limit=limit, log_samples=True,
                       options={k: str(v) for k, v in options.items()})
    record = run_benches(["tv_align_gen"], ctx)
    result = record["results"]["tv_align_gen"]
    return {k: v["value"] for k, v in result["metrics"].items()}, result, record


@pytest.fixture(scope="module")
def copy_run(world):
    videos = real_videos(world)
    model = FakeGenerator(lambda prompt: videos[prompt])
    return (*_bench(model, world, guidance=5, steps=7, seed=10), model)


@pytest.fixture(scope="module")
def blank_run(world):
    blank = FakeGenerator(lambda prompt: torch.zeros(FRAMES, SIZE, SIZE, 3, dtype=torch.uint8))
    return _bench(blank, world)[0]


@pytest.fixture(scope="module")
def collapsed_run(world):
    first = next(iter(real_videos(world).values()))
    return _bench(FakeGenerator(lambda prompt: first.clone()), world)[0]


def test_copying_the_real_video_reaches_the_real_reference(copy_run):
    metrics, result, record, model = copy_run
    for name in (*CATEGORIES, "overall"):
        assert metrics[name] == pytest.approx(metrics[f"real/{name}"]), name
    assert metrics["overall"] > 0.8 and metrics["shuffled/overall"] < metrics["real/overall"] - 0.3
    # a generator that returns each prompt's real video scores the real videos' chance level when its
    # videos are matched to the wrong prompts
    for name in (*CATEGORIES, "overall"):
        assert metrics[f"generated_shuffled/{name}"] == pytest.approx(metrics[f"shuffled/{name}"]), name
    assert metrics["blank"] == 0 and metrics["diversity"] == pytest.approx(1.0)
    assert (metrics["frechet"] == pytest.approx(metrics["frechet_real_ref"])
            and metrics["frechet_real_ref"] > 0)
    assert metrics["seconds_per_video"] >= 0 and result["metrics"]["colour"]["stderr"] is not None
    # one call signature; prompt k gets seed + k; the options reach the model and the settings
    assert [c["seed"] for c in model.calls] == list(range(10, 10 + PROMPTS))
    assert model.calls[0] | {"prompt": None} == dict(prompt=None, guidance_scale=5.0, temperature=1.0,
                                                     top_k=0, top_p=1.0, steps=7, seed=10)
    assert (result["settings"]["guidance"] == 5.0 and result["settings"]["prompts"] == PROMPTS
            and "chance" in result["settings"])
    sample = record["samples"]["tv_align_gen"][0]
    assert {"id", "prompt", "hits", "found"} <= set(sample) and set(sample["hits"]) == set(CATEGORIES)


def test_blank_videos_score_nothing(blank_run, copy_run):
    assert blank_run["colour"] == blank_run["shape"] == blank_run["action"] == blank_run["count"] == 0
    assert blank_run["blank"] == 1.0
    # 4x on 6 prompts; the reference shrinks with more
    assert blank_run["frechet"] > 3 * copy_run[0]["frechet_real_ref"]
    # references do not depend on the model
    assert blank_run["real/overall"] == pytest.approx(copy_run[0]["real/overall"])


def test_one_video_for_every_prompt_has_no_diversity(collapsed_run, copy_run):
    assert collapsed_run["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert collapsed_run["overall"] < copy_run[0]["real/overall"] - 0.3


def test_score_objects_counts_missing_objects_as_misses():
    def track(colour, shape, action):
        present = np.ones(FRAMES, bool)
        return TrackedObject(colour, present, np.full(FRAMES, 0.5), np.full(FRAMES, 0.5),
                             np.full(FRAMES, 50.0), shape=shape, action=action)

    objects = [{"colour": "red", "shape": "circle", "action": "move_left"},
               {"colour": "blue", "shape": "square", "action": "grow"},
               {"colour": "green", "shape": "star", "action": "blink"}]
    analysis = Analysis([track("red", "circle", "move_left"), track("blue", "star", "grow"),
                         track("white", "star", "blink")])
    assert score_objects(objects, analysis) == {"colour": [True, True, False], "shape": [True, False, False],
                                                "count": [True], "action": [True, True, False]}
    assert score_objects(objects, Analysis()) == {"colour": [False] * 3, "shape": [False] * 3,
                                                  "count": [False], "action": [False] * 3}


def test_frechet_distance_golden_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    a -= a.mean(0)  # so scaling moves no mean
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # mean shift only
    assert frechet_distance(a, a + np.array([3.0, 0.0, 4.0])) == pytest.approx(25.0, abs=1e-6)
    # (2 - 1)^2 tr S
    assert frechet_distance(a, 2 * a) == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-4)


def test_missing_prompts_or_generator_are_clear_errors(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="build the world"):
        run_benches(["tv_align_gen"], BenchContext(model=FakeGenerator(), data=str(tmp_path / "no-world")))
    understanding_only = SimpleNamespace(processor=FakeGenerator().processor)
    with pytest.raises(GenerationUnavailableError, match="generation head"):
        run_benches(["tv_align_gen"], BenchContext(model=understanding_only, data=str(world), limit=1))

    def unavailable(prompt):
        raise NotImplementedError("no head")

    with pytest.raises(GenerationUnavailableError, match="train with a generation head"):
        run_benches(["tv_align_gen"],
                    BenchContext(model=FakeGenerator(unavailable), data=str(world), limit=1))
    bad = tmp_path / "t2v.jsonl"
    bad.write_text(json.dumps({"id": "a", "video": "v.mp4", "prompt": "a red circle"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"t2v\.jsonl:1: missing \['objects'\]"):
        run_benches(["tv_align_gen"], BenchContext(model=FakeGenerator(), data=str(bad)))


def test_save_writes_gifs_with_their_prompts(world, tmp_path):
    videos = real_videos(world)
    metrics, result, _ = _bench(FakeGenerator(lambda prompt: videos[prompt]), world, limit=3,
                                save=tmp_path / "saved",
                             save_count=2)
    lines = [json.loads(line) for line in (tmp_path / "saved" / "prompts.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and sorted(p.name for p in (tmp_path / "saved").glob("*.gif")) == [
        s["file"] for s in lines]
    gif = read_video(tmp_path / "saved" / lines[0]["file"]).frames
    assert gif.shape == (FRAMES, SIZE, SIZE, 3)
    # one 256-colour palette for the clip
    assert (gif.float() - videos[lines[0]["prompt"]].float()).abs().mean() < 4
    assert result["settings"]["saved"] == str(tmp_path / "saved")
    from PIL import Image

    with Image.open(tmp_path / "saved" / "contact_sheet.png") as sheet:
        assert sheet.width > sheet.height > 100  # two rows of frame strips


def test_a_contact_sheet_refuses_rows_that_do_not_match_and_frames_that_are_not_video(tmp_path):
    import numpy as np

    from mmvid.contact_sheet import contact_sheet, strip

    video = np.zeros((8, 16, 16, 3), np.uint8)
    assert strip(video, 4).shape == (16, 4 * 16 + 3 * 2, 3) and strip(video[:2], 4).shape[1] == 2 * 16 + 2
    with pytest.raises(ValueError, match="the videos"):
        contact_sheet([("a", {"real": video}), ("b", {"generated": video})], tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8 frames"):
        contact_sheet([("a", {"real": video.astype(np.float32)})], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one row"):
        contact_sheet([], tmp_path / "x.png")

"""Text from ground truth (mmvid.data.shapes.text): captions, benchmark questions, SFT samples."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmvid.data import check_sample
from mmvid.data.shapes import text, world
from mmvid.data.shapes.world import ObjectSpec, Scene

SEEDS = range(300)


def _scene(*objects: ObjectSpec, num_frames: int = 16) -> Scene:
    return Scene(seed=0, num_frames=num_frames, height=64, width=64, background="black", texture="plain",
                 objects=list(objects))


def _obj(colour: str, shape: str = "star", x: float = 0.5, y: float = 0.5, **kwargs) -> ObjectSpec:
    fields = {"size": "small", "action": "stay_still", "speed": "slow", **kwargs}
    return ObjectSpec(shape=shape, colour=colour, x=x, y=y, **fields)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [world.sample_scene(seed, num_frames=16, height=64, width=64, actions=world.ACTIONS)
            for seed in SEEDS]


@pytest.fixture(scope="module")
def benchmark(scenes) -> list[tuple[Scene, list[dict]]]:
    positions: dict[str, int] = {}
    rngs = [np.random.default_rng(i) for i in range(len(scenes))]
    return [(scene, text.benchmark_questions(scene, f"v{i}.mp4", f"q{i}", rngs[i], positions))
            for i, scene in enumerate(scenes)]


def _conversation(scene: Scene, seed: int, positions: dict | None = None) -> dict:
    return text.conversation(scene, f"v{seed}.mp4", f"s{seed}", np.random.default_rng(seed),
                             {} if positions is None else positions)


# ----------------------------------------------------------------------------------------------
# Phrases and vocabulary
# ----------------------------------------------------------------------------------------------


def test_phrases():
    star = _obj("red", size="small", action="move_left", speed="fast")
    assert text.object_phrase(star) == "a small red star"
    assert text.object_phrase(star, article="the") == "the small red star"
    assert text.object_phrase(star, with_size=False, article="") == "red star"
    assert text.object_phrase(_obj("orange", "circle"), with_size=False) == "an orange circle"
    assert text.action_phrase(star) == "moves left quickly"
    assert text.action_phrase(star, with_speed=False) == "moves left"
    assert text.action_phrase(_obj("red", speed="fast")) == "stays still"
    assert set(text.ACTION_PHRASES) == set(world.ACTIONS)
    assert len(set(text.ACTION_PHRASES.values())) == len(world.ACTIONS)
    assert text.multiple_choice_prompt("Q?", ["w", "x", "y", "z"]) == (
        "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer with the option's letter."
    )


def test_lexicon_covers_every_word(scenes):
    assert set(text.LEXICON.values()) <= set(text.PARTS_OF_SPEECH)
    fixed = [*text.ACTION_PHRASES.values(), *text.SPEED_ADVERBS.values(), *text.CAPTION_REQUESTS,
             *text.SPATIAL_OPTIONS, *text.NUMBER_WORDS, text.MC_SUFFIX, " ".join(world.SHAPES),
             " ".join(world.COLOURS), " ".join(world.SIZES), " ".join(text.LETTERS)]
    emitted = []
    for seed, scene in enumerate(scenes[:150]):
        rng = np.random.default_rng(seed)
        emitted += text.captions(scene, rng, n=4)
        for q in text.benchmark_questions(scene, "v.mp4", "q", rng, {}):
            emitted.append(text.multiple_choice_prompt(q["question"], q["options"]))
        emitted += [turn["value"] for turn in _conversation(scene, seed)["conversations"]]
    missing = {w for line in fixed + emitted for w in text.words(line)} - set(text.LEXICON)
    assert not missing, f"words missing from LEXICON: {sorted(missing)}"
    assert text.LEXICON["star"] == "noun" and text.LEXICON["red"] == "adjective"
    assert text.LEXICON["bounces"] == "verb" and text.LEXICON["quickly"] == "adverb"
    assert text.LEXICON["the"] == "other" and text.words("A <video>\nB's") == ["a", "video", "b", "s"]


# ----------------------------------------------------------------------------------------------
# Captions and prompts
# ----------------------------------------------------------------------------------------------


def test_captions_mention_every_object(scenes):
    for seed, scene in enumerate(scenes):
        caps = text.captions(scene, np.random.default_rng(seed))
        assert len(caps) == 3 and len(set(caps)) == 3
        for caption in caps:
            assert caption[0].isupper() and caption.endswith(".")
            for obj in scene.objects:
                assert f"{obj.colour} {obj.shape}" in caption, (caption, obj)
                assert text.ACTION_PHRASES[obj.action] in caption


def test_captions_say_events_and_are_deterministic():
    scene = _scene(_obj("green", "circle", event="appear", event_frame=5, action="grow", speed="slow"),
                   _obj("blue", "square", x=0.2, event="leave", event_frame=10))
    for seed in range(10):
        caps = text.captions(scene, np.random.default_rng(seed), n=5)
        assert caps == text.captions(scene, np.random.default_rng(seed), n=5)
        assert len(set(caps)) == 5
        for caption in caps:
            assert "green circle" in caption and "appears later and grows slowly" in caption
            assert "stays still and then leaves" in caption or "stays still and then disappears" in caption


def test_captions_bad_input():
    with pytest.raises(ValueError, match="nothing to caption"):
        text.captions(_scene(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="1 to 4"):
        text.captions(_scene(_obj("red")), np.random.default_rng(0), n=5)
    with pytest.raises(ValueError, match="distinct"):
        text.captions(_scene(_obj("red"), _obj("red", "square")), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown action 'fly'"):
        text.captions(_scene(_obj("red", action="fly")), np.random.default_rng(0))


def test_t2v_prompt():
    scene = world.sample_scene(3, actions=world.ACTIONS)
    prompt = text.t2v_prompt(scene, np.random.default_rng(0))
    assert prompt == text.t2v_prompt(scene, np.random.default_rng(0))
    assert prompt["count"] == len(scene.objects) == len(prompt["objects"])
    assert set(prompt["objects"][0]) == {"shape", "colour", "size", "action", "speed", "event"}
    assert all(f"{o['colour']} {o['shape']}" in prompt["prompt"] for o in prompt["objects"])


# ----------------------------------------------------------------------------------------------
# Benchmark questions
# ----------------------------------------------------------------------------------------------


def test_questions_are_well_formed(benchmark):
    held_out = {text.ACTION_PHRASES[a] for a in world.DEFAULT_HELD_OUT}
    seen_categories = set()
    for i, (scene, questions) in enumerate(benchmark):
        categories = [q["category"] for q in questions]
        assert len(set(categories)) == len(categories) and set(categories) <= set(text.CATEGORIES)
        assert {"shape", "count", "action"} <= set(categories)
        seen_categories |= set(categories)
        for q in questions:
            assert set(q) == {"id", "video", "question", "options", "answer", "answer_text", "category"}
            assert q["id"] == f"q{i}-{q['category']}" and q["video"] == f"v{i}.mp4"
            assert len(q["options"]) == 4 and len(set(q["options"])) == 4
            assert q["options"][text.LETTERS.index(q["answer"])] == q["answer_text"]
            if q["category"] == "count" and q["question"] == "How many objects appear in the video?":
                assert q["answer_text"] == text.NUMBER_WORDS[len(scene.objects)]
            if q["category"] == "count" and q["question"].endswith("shapes are there?"):
                shape = q["question"].split()[2]
                assert q["answer_text"] == text.NUMBER_WORDS[sum(o.shape == shape for o in scene.objects)]
            if q["category"] == "action":
                assert not held_out & (set(q["options"]) - {q["answer_text"]})
            if q["category"] == "spatial":
                assert set(q["options"]) == set(text.SPATIAL_OPTIONS)
    assert seen_categories == set(text.CATEGORIES)


def test_answer_positions_are_balanced(benchmark):
    letters: dict[str, Counter] = {}
    for _, questions in benchmark:
        for q in questions:
            letters.setdefault(q["category"], Counter())[q["answer"]] += 1
    for category, counts in letters.items():
        total = sum(counts.values())
        if total >= 20:
            assert all(0.2 <= counts[letter] / total <= 0.3 for letter in text.LETTERS), (category, counts)


def test_questions_are_deterministic(scenes):
    for seed in range(20):
        runs = [text.benchmark_questions(scenes[seed], "v.mp4", "q", np.random.default_rng(seed), {})
                for _ in range(2)]
        assert runs[0] == runs[1]


def _ask(scene: Scene, category: str, seed: int = 0) -> dict | None:
    questions = text.benchmark_questions(scene, "v.mp4", "q", np.random.default_rng(seed), {})
    return next((q for q in questions if q["category"] == category), None)


def test_spatial_answer():
    scene = _scene(_obj("red", x=0.2, y=0.5), _obj("blue", "square", x=0.8, y=0.55))
    for seed in range(10):
        q = _ask(scene, "spatial", seed)
        expected = "left of it" if q["question"].startswith("Where is the red star") else "right of it"
        assert q["answer_text"] == expected
        assert q["question"].endswith("at the start?")
    vertical = _scene(_obj("red", x=0.5, y=0.8), _obj("blue", "square", x=0.5, y=0.2))
    q = _ask(vertical, "spatial")
    assert q["answer_text"] == ("below it" if "the red star relative" in q["question"] else "above it")
    diagonal = _scene(_obj("red", x=0.3, y=0.3), _obj("blue", "square", x=0.7, y=0.7))
    assert _ask(diagonal, "spatial") is None
    close = _scene(_obj("red", x=0.45, y=0.5), _obj("blue", "square", x=0.55, y=0.5))
    assert _ask(close, "spatial") is None


def test_spatial_uses_first_frame_where_both_show():
    # The blue square moves right past the red star; it appears only once it is to the star's right.
    scene = _scene(_obj("red", x=0.3, y=0.5),
                   _obj("blue", "square", x=0.1, y=0.5, action="move_right", speed="fast", event="appear",
                        event_frame=12))
    q = _ask(scene, "spatial")
    blue_first = "the blue square relative" in q["question"]
    assert q["answer_text"] == ("right of it" if blue_first else "left of it")  # "left" at frame 0


def test_temporal_answer_is_earliest_event():
    scene = _scene(_obj("red", x=0.2, event="appear", event_frame=5),
                   _obj("blue", "square", x=0.8, event="leave", event_frame=10),
                   _obj("green", "circle", y=0.2))
    for seed in range(10):
        q = _ask(scene, "temporal", seed)
        assert q["question"] == "What happens first?"
        assert q["answer_text"] == "the red star appears"
        assert "the blue square leaves" in q["options"]
        assert "the red star leaves" not in q["options"]
    tied = _scene(_obj("red", x=0.2, event="appear", event_frame=5),
                  _obj("blue", "square", x=0.8, event="leave", event_frame=5))
    assert _ask(tied, "temporal") is None
    at_start = _scene(_obj("red", event="appear", event_frame=0))
    assert _ask(at_start, "temporal") is None
    assert _ask(_scene(_obj("red")), "temporal") is None


def test_colour_question_needs_a_unique_referent():
    two_stars = _scene(_obj("red", x=0.2), _obj("blue", x=0.8, size="large"))
    assert _ask(two_stars, "colour")["question"] in (
        "What colour is the small star?", "What colour is the large star?")
    by_action = _scene(_obj("red", x=0.2), _obj("blue", x=0.8, action="bounce"))
    assert _ask(by_action, "colour")["question"] in (
        "What colour is the object that stays still?", "What colour is the object that bounces?")
    twins = _scene(_obj("red", x=0.2), _obj("blue", x=0.8))
    assert _ask(twins, "colour") is None


def test_benchmark_bad_input():
    assert text.benchmark_questions(_scene(), "v.mp4", "q", np.random.default_rng(0), {}) == []
    with pytest.raises(ValueError, match="distinct"):
        text.benchmark_questions(_scene(_obj("red"), _obj("red", "square")), "v.mp4", "q",
                                 np.random.default_rng(0), {})


# ----------------------------------------------------------------------------------------------
# Conversations
# ----------------------------------------------------------------------------------------------


def test_conversations_are_valid_llava_samples(scenes):
    positions: dict[str, int] = {}
    letters = Counter()
    for seed, scene in enumerate(scenes):
        sample = _conversation(scene, seed, positions)
        assert check_sample(sample) == [], sample
        turns = sample["conversations"]
        assert sample["id"] == f"s{seed}" and sample["video"] == f"v{seed}.mp4"
        assert turns[0]["value"].startswith("<video>\n") and turns[0]["value"][8:] in text.CAPTION_REQUESTS
        assert sum(t["value"].count("<video>") for t in turns) == 1
        assert all(f"{o.colour} {o.shape}" in turns[1]["value"] for o in scene.objects)
        assert 3 <= len(turns) // 2 <= 5
        choices = [(h, g) for h, g in zip(turns[2::2], turns[3::2]) if "\nA. " in h["value"]]
        assert choices and all(g["value"] in text.LETTERS for _, g in choices)
        letters.update(g["value"] for _, g in choices)
    assert all(0.2 <= letters[letter] / sum(letters.values()) <= 0.3 for letter in text.LETTERS)


def test_conversation_is_deterministic_and_right():
    scene = world.sample_scene(7, actions=world.ACTIONS)
    assert _conversation(scene, 1) == _conversation(scene, 1)
    one = _scene(_obj("red", action="bounce", speed="fast"))
    replies = {"red", "a star", "one", "zero", "it bounces quickly", *text.LETTERS}
    for seed in range(30):
        turns = _conversation(one, seed)["conversations"]
        assert {t["value"] for t in turns[3::2]} <= replies
    with pytest.raises(ValueError):
        _conversation(_scene(), 0)

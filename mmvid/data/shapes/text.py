"""Text from ground truth: captions, multiple-choice benchmark questions, SFT conversations and
text-to-video prompts for scenes of the synthetic world (`mmvid.data.shapes.world`).

Everything is templated English over a closed vocabulary, `LEXICON` (word -> part of speech), so
a tokenizer can split its vocabulary by part of speech and tests can check that no stray word gets
out. Every function that chooses takes an `np.random.Generator`, so the same seed gives the same
text. Colours are distinct within a scene, so "the red object" always names one object.

Multiple-choice questions share one prompt format (`multiple_choice_prompt`) between the benchmark
and SFT, and their answer letters are balanced: the caller owns a `positions` dict (category ->
counter) and each new question of a category puts its answer one letter further along A-D.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from mmvid.data.conversations import VIDEO_PLACEHOLDER
from mmvid.data.shapes import world

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

CATEGORIES = ("colour", "shape", "count", "action", "spatial", "temporal")
LETTERS = ("A", "B", "C", "D")
ACTION_PHRASES = {  # present tense, without speed
    "stay_still": "stays still",
    "move_left": "moves left",
    "move_right": "moves right",
    "move_up": "moves up",
    "move_down": "moves down",
    "move_up_left": "moves up and to the left",
    "move_up_right": "moves up and to the right",
    "move_down_left": "moves down and to the left",
    "move_down_right": "moves down and to the right",
    "bounce": "bounces",
    "grow": "grows",
    "shrink": "shrinks",
    "blink": "blinks",
    "zigzag": "zigzags",
    "orbit": "circles around",
    "shake": "shakes",
    "spin": "spins",
    "pulse": "pulses",
}
SPEED_ADVERBS = {"slow": "slowly", "fast": "quickly"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")  # 8 colours at most
SPATIAL_OPTIONS = ("left of it", "right of it", "above it", "below it")
CAPTION_REQUESTS = (
    "Describe the video.",
    "What happens in this video?",
    "Describe what you see in the video.",
    "What is going on in this clip?",
    "Give a short description of the video.",
)
MC_SUFFIX = "Answer with the option's letter."


def _lexicon(**groups: tuple[str, ...]) -> dict[str, str]:
    """word -> part of speech; a word in two groups is a bug in the tables, caught at import."""
    lexicon: dict[str, str] = {}
    for pos, group in groups.items():
        for word in group:
            if lexicon.setdefault(word, pos) != pos:
                raise ValueError(f"word {word!r} is both {lexicon[word]!r} and {pos!r}")
    return lexicon


# Every lower-case word the templates can emit. "circles" only ever occurs as the verb of
# "circles around": shape counts are asked as "How many star shapes ...", never with a plural shape.
# Function words (articles, prepositions, conjunctions, pronouns, wh-words, numerals and the
# letters of option labels) are "other", so the content classes stay about appearance and motion.
LEXICON = _lexicon(
    noun=(*world.SHAPES, "object", "objects", "shape", "shapes", "colour", "video", "clip", "description",
          "start", "option", "letter"),
    adjective=(*world.COLOURS, *world.SIZES, "short"),
    verb=("stays", "moves", "bounces", "grows", "shrinks", "blinks", "zigzags", "circles", "shakes",
          "spins", "pulses", "appears", "appear", "leaves", "disappears", "happens", "shows", "see",
          "describe", "give", "going", "is", "are", "does", "do", "answer"),
    adverb=("slowly", "quickly", "left", "right", "up", "down", "still", "around", "later", "then", "first"),
    other=("a", "an", "the", "and", "to", "of", "in", "on", "at", "with", "while", "that", "this", "it",
           "you", "there", "what", "where", "how", "many", "relative", "above", "below", "s", "b", "c", "d",
           *NUMBER_WORDS),
)
PARTS_OF_SPEECH = ("noun", "adjective", "verb", "adverb", "other")


def words(text: str) -> list[str]:
    """Lower-case word tokens of `text` (split on anything that is not a letter)."""
    return re.findall(r"[a-z]+", text.lower())


# ----------------------------------------------------------------------------------------------
# Phrases
# ----------------------------------------------------------------------------------------------


def object_phrase(obj: world.ObjectSpec, with_size: bool = True, article: str = "a") -> str:
    """'a small red star'; article 'the' -> 'the small red star', '' -> 'small red star'.

    'a' becomes 'an' before a vowel ('an orange circle').
    """
    if article not in ("a", "the", ""):
        raise ValueError(f"article must be 'a', 'the' or '', got {article!r}")
    _check_object(obj)
    phrase = f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"
    if article == "a" and phrase[0] in "aeiou":
        article = "an"
    return f"{article} {phrase}" if article else phrase


def action_phrase(obj: world.ObjectSpec, with_speed: bool = True) -> str:
    """'moves left quickly' (with_speed) or 'moves left'; 'stays still' never gets an adverb."""
    _check_object(obj)
    phrase = ACTION_PHRASES[obj.action]
    if with_speed and obj.action != "stay_still":
        phrase = f"{phrase} {SPEED_ADVERBS[obj.speed]}"
    return phrase


def multiple_choice_prompt(question: str, options: list[str]) -> str:
    """The one multiple-choice format shared by the benchmark, SFT and the eval harness
    (the world always has 4 options; user benchmarks may have 2-26)."""
    if not 2 <= len(options) <= 26:
        raise ValueError(f"a multiple-choice question needs 2-26 options, got {len(options)}")
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(string.ascii_uppercase, options))
    return f"{question}\n{lines}\n{MC_SUFFIX}"


def _check_object(obj: world.ObjectSpec) -> None:
    for name, value, known in (
        ("shape", obj.shape, world.SHAPES), ("colour", obj.colour, world.COLOURS),
        ("size", obj.size, world.SIZES), ("action", obj.action, world.ACTIONS),
        ("speed", obj.speed, world.SPEEDS), ("event", obj.event, (None, *world.EVENTS)),
    ):
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; known: {list(known)}")


def _check_scene(scene: world.Scene) -> None:
    """Raise ValueError for unknown attributes or a colour used twice (it would not name one object)."""
    colours = [obj.colour for obj in scene.objects]
    if len(set(colours)) != len(colours):
        raise ValueError(f"colours must be distinct within a scene, got {colours}")
    for obj in scene.objects:
        _check_object(obj)


def _real_event(obj: world.ObjectSpec, num_frames: int) -> str | None:
    """The object's event if it happens inside the clip (an event at frame 0 is no event)."""
    return obj.event if obj.event is not None and 0 < obj.event_frame < num_frames else None


def _the(obj: world.ObjectSpec) -> str:
    return object_phrase(obj, with_size=False, article="the")


def _join(items: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _number(n: int) -> str:
    if not 0 <= n < len(NUMBER_WORDS):
        raise ValueError(f"cannot say {n} in words; at most {len(NUMBER_WORDS) - 1}")
    return NUMBER_WORDS[n]


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


def _predicate(obj: world.ObjectSpec, num_frames: int, rng: np.random.Generator) -> str:
    """What the object does, with speed and event: 'appears later and grows slowly'."""
    event = _real_event(obj, num_frames)
    if event == "appear":
        return f"appears later and {action_phrase(obj)}"
    if event == "leave":
        return f"{action_phrase(obj)} and then {rng.choice(['leaves', 'disappears'])}"
    return action_phrase(obj)


CAPTION_TEMPLATES = ("list", "while", "counted", "in_video", "shows")  # "while" needs two objects


def _caption(
    template: str, objects: list[world.ObjectSpec], num_frames: int, rng: np.random.Generator
) -> str:
    """One caption sentence in `template`, naming `objects` in the order given."""
    said = [_predicate(o, num_frames, rng) for o in objects]
    clauses = [f"{object_phrase(o)} {p}" for o, p in zip(objects, said)]
    if template == "list":  # "A small red star bounces quickly and a large blue square moves left slowly."
        text = _join(clauses)
    elif template == "while":
        text = f"{clauses[0]} while {_join(clauses[1:])}"
    elif template == "counted":  # "There are two objects: a small red star that bounces quickly and ..."
        number = "is one object" if len(objects) == 1 else f"are {_number(len(objects))} objects"
        text = f"there {number}: " + _join([f"{object_phrase(o)} that {p}" for o, p in zip(objects, said)])
    elif template == "in_video":
        text = f"in the video, {_join(clauses)}"
    else:  # "shows": "The video shows a small red star and ...: the red star bounces quickly and ..."
        named = _join([object_phrase(o) for o in objects])
        doings = [f"it {said[0]}"] if len(objects) == 1 else [f"{_the(o)} {p}" for o, p in zip(objects, said)]
        text = f"the video shows {named}: {_join(doings)}"
    return text[0].upper() + text[1:] + "."


def captions(scene: world.Scene, rng: np.random.Generator, n: int = 3) -> list[str]:
    """`n` different captions, each one sentence mentioning every object, its action, speed and event.

    Each uses a different template of `CAPTION_TEMPLATES` and its own order of the objects.

    Raises:
        ValueError: no objects, a bad scene, or more captions asked than templates (4 for one object,
            5 for more).
    """
    _check_scene(scene)
    if not scene.objects:
        raise ValueError("a scene with no objects has nothing to caption")
    templates = [t for t in CAPTION_TEMPLATES if t != "while" or len(scene.objects) > 1]
    if not 1 <= n <= len(templates):
        raise ValueError(f"can write 1 to {len(templates)} different captions for this scene, asked for {n}")
    result = []
    for index in rng.choice(len(templates), size=n, replace=False):
        objects = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
        result.append(_caption(templates[index], objects, scene.num_frames, rng))
    return result


# ----------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------


@dataclass
class _Question:
    """One multiple-choice question before its answer gets a letter."""

    category: str
    question: str
    answer: str
    distractors: list[str]  # exactly 3, distinct, none equal to the answer
    reply: str | None = None  # the short answer when asked as an open question in SFT


def _others(rng: np.random.Generator, pool, answer: str, k: int = 3) -> list[str]:
    """k distinct entries of `pool` other than `answer`, drawn with rng."""
    candidates = sorted({str(p) for p in pool} - {answer})
    return [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)]


def _colour_referent(scene: world.Scene, rng: np.random.Generator) -> tuple[world.ObjectSpec, str] | None:
    """An object and a description of it that does not use its colour; None if none is unique.

    Prefers its shape ('the star'), then size and shape ('the small star'), then its action
    ('the object that bounces').
    """
    objects = scene.objects
    describe = (
        lambda o: f"the {o.shape}",
        lambda o: f"the {o.size} {o.shape}",
        lambda o: f"the object that {action_phrase(o, with_speed=False)}",
    )
    for name in describe:
        names = [name(o) for o in objects]
        unique = [i for i, text in enumerate(names) if names.count(text) == 1]
        if unique:
            i = unique[int(rng.integers(len(unique)))]
            return objects[i], names[i]
    return None


def _spatial_relation(a: world.ObjectSpec, b: world.ObjectSpec, scene: world.Scene) -> str | None:
    """Where a is relative to b in the first frame both show, or None if not clearly one direction."""
    sa, sb = world.object_states(a, scene.num_frames), world.object_states(b, scene.num_frames)
    both = sa.visible & sb.visible
    if not both.any():
        return None
    t = int(np.argmax(both))
    dx = (sa.x[t] - sb.x[t]) * scene.width  # pixels, right is positive
    dy = (sa.y[t] - sb.y[t]) * scene.height  # pixels, down is positive
    if abs(dx) > 0.15 * scene.width and abs(dx) > 1.5 * abs(dy):
        return "left of it" if dx < 0 else "right of it"
    if abs(dy) > 0.15 * scene.height and abs(dy) > 1.5 * abs(dx):
        return "above it" if dy < 0 else "below it"
    return None


def _temporal_question(scene: world.Scene, rng: np.random.Generator) -> _Question | None:
    """'What happens first?' over the real events, or None without events or with a tie first."""
    verbs = {"appear": "appears", "leave": "leaves"}
    events = sorted(
        (o.event_frame, f"{_the(o)} {verbs[_real_event(o, scene.num_frames)]}")
        for o in scene.objects if _real_event(o, scene.num_frames)
    )
    if not events or (len(events) > 1 and events[1][0] == events[0][0]):
        return None
    first_frame, answer = events[0]
    later = [text for frame, text in events[1:] if frame > first_frame]
    distractors = [later[i] for i in rng.permutation(len(later))][:3]
    # Fabricated events: objects that never appear or leave (blinking ones do, in a way), then
    # colour + shape pairs that are not in the scene.
    calm = [o for o in scene.objects if not _real_event(o, scene.num_frames) and o.action != "blink"]
    fabricated = [f"{_the(calm[i])} {rng.choice(['appears', 'leaves'])}" for i in rng.permutation(len(calm))]
    unused = [c for c in world.COLOURS if c not in {o.colour for o in scene.objects}]
    for i in rng.permutation(len(unused)):
        fabricated.append(f"the {unused[i]} {rng.choice(world.SHAPES)} {rng.choice(['appears', 'leaves'])}")
    for text in fabricated:
        if len(distractors) == 3:
            break
        if text not in distractors and text != answer:
            distractors.append(text)
    if len(distractors) < 3:
        return None
    return _Question("temporal", "What happens first?", answer, distractors)


def _count_shape(scene: world.Scene, rng: np.random.Generator) -> str:
    """A shape to count: one in the scene three times in four, else one that is absent (answer zero)."""
    present = sorted({o.shape for o in scene.objects})
    absent = [s for s in world.SHAPES if s not in present]
    pool = present if (rng.random() < 0.75 or not absent) else absent
    return pool[int(rng.integers(len(pool)))]


def _questions(scene: world.Scene, rng: np.random.Generator,
               actions: tuple[str, ...] | None = None) -> list[_Question]:
    """At most one question per category, in CATEGORIES order, skipping those not unambiguous.

    `actions` is the world's action vocabulary that action distractors come from (default: every
    action not held out by default)."""
    _check_scene(scene)
    objects = scene.objects
    if not objects:
        return []
    questions = []
    referent = _colour_referent(scene, rng)
    if referent is not None:
        obj, name = referent
        questions.append(_Question("colour", f"What colour is {name}?", obj.colour,
                                   _others(rng, world.COLOURS, obj.colour), reply=obj.colour))
    obj = objects[int(rng.integers(len(objects)))]
    questions.append(_Question("shape", f"What shape is the {obj.colour} object?", obj.shape,
                               _others(rng, world.SHAPES, obj.shape), reply=f"a {obj.shape}"))
    if rng.random() < 0.5:
        n = len(objects)
        numbers = [_number(k) for k in range(1, max(5, n) + 1)]
        questions.append(_Question("count", "How many objects appear in the video?", _number(n),
                                   _others(rng, numbers, _number(n)), reply=_number(n)))
    else:
        shape = _count_shape(scene, rng)
        answer = _number(sum(o.shape == shape for o in objects))
        numbers = [_number(k) for k in range(0, 5)]
        questions.append(_Question("count", f"How many {shape} shapes are there?", answer,
                                   _others(rng, numbers, answer), reply=answer))
    obj = objects[int(rng.integers(len(objects)))]
    if actions is None:
        actions = tuple(a for a in world.ACTIONS if a not in world.DEFAULT_HELD_OUT)
    seen = [ACTION_PHRASES[a] for a in actions]
    answer = ACTION_PHRASES[obj.action]
    questions.append(_Question("action", f"What does {_the(obj)} do?", answer, _others(rng, seen, answer),
                               reply=f"it {action_phrase(obj)}"))
    pairs = [(a, b, rel) for a in objects for b in objects if a is not b
             for rel in [_spatial_relation(a, b, scene)] if rel is not None]
    if pairs:
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        questions.append(_Question("spatial", f"Where is {_the(a)} relative to {_the(b)} at the start?", rel,
                                   [o for o in SPATIAL_OPTIONS if o != rel]))
    temporal = _temporal_question(scene, rng)
    if temporal is not None:
        questions.append(temporal)
    return questions


def _with_letters(q: _Question, positions: dict[str, int], rng: np.random.Generator) -> tuple[list[str], str]:
    """Options with the answer at the category's next balanced letter, distractors shuffled around it."""
    if len(set(q.distractors)) != 3 or q.answer in q.distractors:
        raise ValueError(f"{q.category} question needs 3 distinct distractors besides {q.answer!r}, "
                         f"got {q.distractors}")
    slot = positions.get(q.category, 0) % len(LETTERS)
    positions[q.category] = positions.get(q.category, 0) + 1
    distractors = [q.distractors[i] for i in rng.permutation(3)]
    return distractors[:slot] + [q.answer] + distractors[slot:], LETTERS[slot]


def benchmark_questions(
    scene: world.Scene, video: str, id_prefix: str, rng: np.random.Generator, positions: dict[str, int],
    actions: tuple[str, ...] | None = None,
) -> list[dict]:
    """TV-Align-style multiple-choice questions about one video, at most one per category.

    Args:
        video: the video path stored with each question.
        id_prefix: each question's id is f"{id_prefix}-{category}".
        positions: category -> count of questions so far, owned by the caller (start with {}) and
            updated here, so the answers of a split spread evenly over A-D.
        actions: the actions action distractors are drawn from (default: those not held out by default).

    Returns:
        dicts {"id", "video", "question", "options" (4 distinct strings), "answer" (a letter),
        "answer_text", "category"}; [] for a scene without objects.

    Raises:
        ValueError: a colour used twice in the scene, or an unknown attribute.
    """
    result = []
    for q in _questions(scene, rng, actions):
        options, letter = _with_letters(q, positions, rng)
        result.append({"id": f"{id_prefix}-{q.category}", "video": video, "question": q.question,
                       "options": options, "answer": letter, "answer_text": q.answer, "category": q.category})
    return result


# ----------------------------------------------------------------------------------------------
# Conversations and prompts
# ----------------------------------------------------------------------------------------------


def conversation(
    scene: world.Scene, video: str, sample_id: str, rng: np.random.Generator, positions: dict[str, int],
    actions: tuple[str, ...] | None = None,
) -> dict:
    """One LLaVA-format SFT sample: a caption turn, then 2-4 question turns, at least one multiple-choice.

    The first human turn is "<video>\\n" + a caption request; multiple-choice turns use
    `multiple_choice_prompt` and are answered with the letter alone; open questions get a short
    phrase ("red", "a star", "three", "it bounces quickly"). No category is asked twice.

    Args:
        positions: balancing counters for the multiple-choice answers (see `benchmark_questions`);
            keep a separate dict from the benchmark's.
        actions: as in `benchmark_questions`.

    Raises:
        ValueError: a scene without objects, or a bad scene.
    """
    caption = captions(scene, rng, n=1)[0]
    request = CAPTION_REQUESTS[int(rng.integers(len(CAPTION_REQUESTS)))]
    turns = [(f"{VIDEO_PLACEHOLDER}\n{request}", caption)]
    num_turns = int(rng.integers(2, 5))
    pool = _questions(scene, rng, actions)
    pool = [pool[i] for i in rng.permutation(len(pool))]
    num_choice = int(rng.integers(1, min(num_turns, len(pool)) + 1))
    qa = []
    for q in pool[:num_choice]:
        options, letter = _with_letters(q, positions, rng)
        qa.append((multiple_choice_prompt(q.question, options), letter))
    # Open questions from the categories left, so no category is asked twice.
    qa += [(q.question, q.reply) for q in pool[num_choice:] if q.reply is not None][: num_turns - num_choice]
    turns += [qa[i] for i in rng.permutation(len(qa))]
    messages = []
    for human, gpt in turns:
        messages += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return {"id": sample_id, "video": video, "conversations": messages}


def t2v_prompt(scene: world.Scene, rng: np.random.Generator) -> dict:
    """A text-to-video prompt (one caption) with the objects it must show, for generation metrics."""
    objects = [{"shape": o.shape, "colour": o.colour, "size": o.size, "action": o.action, "speed": o.speed,
                "event": o.event} for o in scene.objects]
    return {"prompt": captions(scene, rng, n=1)[0], "objects": objects, "count": len(objects)}

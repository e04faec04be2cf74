"""From LLaVA conversations to model inputs: chat template, video-span expansion, label masks.

    encoded = encode_conversation(tokenizer, sample["conversations"], video_ids, tokens_per_video=79)
    encoded.input_ids   # list[int]: <video> became <|video_start|> + 79 x <video> + <|video_end|>
    encoded.labels      # list[int]: -100 everywhere except the assistant turns (and their end token)

Label masks come from the tokenizer's own chat template, not from hand-written separators (the
"all labels masked, loss 0" bug family): each assistant turn's span is the difference between the
template rendered up to that turn with a generation prompt and the template rendered through it.
A template for which that is not a clean prefix is refused with a clear error rather than masked
wrongly. Nothing is ever truncated: a sample longer than `max_length` raises `SampleTooLongError`.
`pack_rounds` stores the rounds of one video's conversation as one `PackedSample`: the shared
prefix (the video) once, then each round's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


class SampleTooLongError(ValueError):
    """A sample does not fit `max_length`; it is rejected whole, never cut inside a video span."""


@dataclass(frozen=True)
class VideoTokenIds:
    placeholder: int  # "<video>": what users write, and what each video position holds after expansion
    start: int  # "<|video_start|>"
    end: int  # "<|video_end|>"


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    num_videos: int
    targets: list[bool] | None = None  # per <video> span: inside an assistant turn (a text-to-video target)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PackedSample:
    """Several sequences that open with the same tokens (the rounds of one video's conversation), stored
    once: the shared prefix, then each round's own tokens. `VideoProcessor.collate` gives it a block mask and
    positions under which every segment sees the prefix and its own earlier tokens only, at the positions
    it would have alone, so the LLM computes the prefix (the video) once instead of once per round."""

    input_ids: list[int]
    labels: list[int]
    num_videos: int  # the video spans, all in the prefix
    prefix_length: int  # P: the tokens every segment attends to
    # [start, end) of each round's own tokens; positions P, P + 1, ... in each
    segments: list[tuple[int, int]]
    targets: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def to_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA turns ({"from": "human"|"gpt"|"system", "value"}) -> chat messages ({"role", "content"})."""
    messages = []
    for i, turn in enumerate(conversations):
        role = ROLES.get(turn.get("from"))
        if role is None or not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {i} must be {{'from': one of {sorted(ROLES)}, 'value': str}}, got "
                             f"{turn!r}")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    try:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja2's TemplateError, e.g. Gemma's "System role not supported"
        if type(e).__module__.startswith("jinja2"):
            raise ValueError(f"the chat template refuses this conversation: {e}") from e
        raise
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _special_ids(tokenizer) -> set[int]:
    """Every special token id: the named ones and added tokens marked special."""
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items()
                                             if getattr(t, "special", False)}


def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends an assistant turn in the tokenizer's chat template: the first special token the
    template writes after the assistant's content (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama 3,
    `<end_of_turn>` in Gemma, `<|end|>` in Phi-3 and mmvid's own, `</s>` in Mistral's). It is not always the
    eos: Gemma's eos is `<eos>` and Phi-3's `<|endoftext|>`, yet their turns end on the tokens above, so
    that is where generation stops and what scores an option as a whole answer. Falls back to the eos when
    the template ends turns without a special token."""
    user = [{"role": "user", "content": "Hi"}]
    try:
        before = _render(tokenizer, user, generation_prompt=True)
        answer = [{"role": "assistant", "content": "Yes"}]
        through = _render(tokenizer, user + answer, generation_prompt=False)
    except ValueError:  # a template that refuses this probe (e.g. needs a system turn): the eos
        return tokenizer.eos_token_id
    special = _special_ids(tokenizer)
    if through[: len(before)] == before:
        for token in through[len(before):]:
            if token in special:
                return token
    return tokenizer.eos_token_id


def _turn_end(tokenizer, full: list[int], before: list[int], through: list[int]) -> int:
    """Where an assistant turn ends in the whole conversation's ids: `through` (the conversation rendered up
    to and with the turn) is a prefix of `full`, or differs from it only by a closing tail of special
    tokens that a template writes after the last message (Phi-3's eos)."""
    common = shared_prefix(full, through)
    clean = full[: len(before)] == before and common > len(before)
    if not clean or (common < len(through) and not set(through[common:]) <= _special_ids(tokenizer)):
        raise ValueError("the chat template does not render conversations as clean prefixes, so "
                         "assistant turns cannot be masked reliably; use a template whose turns only append")
    return common


def encode_conversation(
    tokenizer,
    conversations: list[dict],
    video_ids: VideoTokenIds,
    tokens_per_video: int | list[int],
    max_length: int | None = None,
    sample_id: str | None = None,
) -> EncodedSample:
    """Tokenize a conversation with the chat template, supervise only assistant turns, and expand
    every `<video>` into start + N positions + end.

    Args:
        tokens_per_video: N for every video, or one N per video in order.

    Raises:
        ValueError: the template cannot give clean assistant spans, or no assistant turn exists.
        SampleTooLongError: the expanded sample is longer than `max_length`.
    """
    messages = to_messages(conversations)
    full = _render(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    supervised = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], generation_prompt=True)
        through = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        end = _turn_end(tokenizer, full, before, through)
        labels[len(before) : end] = full[len(before) : end]
        supervised += end - len(before)
    if supervised == 0:
        raise ValueError(f"sample {sample_id!r} has no assistant tokens to learn from")

    input_ids, out_labels = expand_videos(full, labels, video_ids, tokens_per_video, sample_id)
    targets = [labels[i] != IGNORE_INDEX for i, t in enumerate(full) if t == video_ids.placeholder]
    if max_length is not None and len(input_ids) > max_length:
        raise SampleTooLongError(
            f"sample {sample_id!r} needs {len(input_ids)} tokens (with {full.count(video_ids.placeholder)} "
            f"video span(s)) but max_length is {max_length}; use fewer frames, a smaller video token budget, "
            "or a larger max_length"
        )
    return EncodedSample(input_ids, out_labels, len(targets), targets)


def expand_videos(ids: list[int], labels: list[int] | None, video_ids: VideoTokenIds,
                  tokens_per_video: int | list[int],
                  sample_id: str | None = None) -> tuple[list[int], list[int] | None]:
    """Replace each placeholder by start + N placeholders + end; video positions get no labels."""
    count = ids.count(video_ids.placeholder)
    per_video = [tokens_per_video] * count if isinstance(tokens_per_video, int) else list(tokens_per_video)
    if len(per_video) != count:
        raise ValueError(f"sample {sample_id!r}: {count} video placeholder(s) in the text but "
                         f"{len(per_video)} video(s)")
    out_ids: list[int] = []
    out_labels: list[int] = []
    v = 0
    for i, token in enumerate(ids):
        if token == video_ids.placeholder:
            span = [video_ids.start] + [video_ids.placeholder] * per_video[v] + [video_ids.end]
            out_ids += span
            out_labels += [IGNORE_INDEX] * len(span)
            v += 1
        else:
            out_ids.append(token)
            out_labels.append(labels[i] if labels is not None else IGNORE_INDEX)
    return out_ids, (out_labels if labels is not None else None)


def encode_prompt(tokenizer, messages: list[dict], video_ids: VideoTokenIds,
                  tokens_per_video: int | list[int]) -> list[int]:
    """Token ids of a chat ending in a generation prompt, with video spans expanded (for `generate`)."""
    return expand_videos(_render(tokenizer, messages, generation_prompt=True), None, video_ids,
                         tokens_per_video)[0]


def pack_rounds(samples: list[EncodedSample], video_ids: VideoTokenIds,
                sample_id: str | None = None) -> PackedSample:
    """Encodings that share their opening (system turn, user header, the video) -> one PackedSample:
    their longest common token prefix, then each one's remaining tokens.

    The prefix stops before the first supervised token of any of them, so it holds no labels and every
    segment opens with an unsupervised token. That keeps the shifted next-token loss exact: the prefix's
    last token predicts what it predicts in every lone sequence (never a label), and a segment's last
    token, which in the packed row sits before the next segment, predicts nothing either.

    Raises:
        ValueError: the prefix does not hold every video span (each segment would need its own copy).
    """
    first = samples[0].input_ids
    P = min(len(s) for s in samples)
    for s in samples[1:]:  # the longest common prefix
        P = shared_prefix(first[:P], s.input_ids)
    # Cut so that no round has a label at or before position P (its first segment token); every round has one.
    P = max(0, min([P] + [next(i for i, label in enumerate(s.labels) if label != IGNORE_INDEX) - 1
                          for s in samples]))
    video = {video_ids.placeholder, video_ids.start, video_ids.end}
    if video_ids.end not in first[:P] or any(video & set(s.input_ids[P:]) for s in samples):
        raise ValueError(f"sample {sample_id!r}: the rounds' common prefix ({P} tokens) does not hold the "
                         "whole video span, so they cannot share it; the chat template must render the "
                         "video before anything that differs between rounds")
    input_ids, labels, segments = list(first[:P]), list(samples[0].labels[:P]), []
    for s in samples:
        segments.append((len(input_ids), len(input_ids) + len(s) - P))
        input_ids += s.input_ids[P:]
        labels += s.labels[P:]
    return PackedSample(input_ids, labels, samples[0].num_videos, P, segments, samples[0].targets)

"""One text generation engine for a VideoLLM: sampling, streaming, stop strings, KV-cache reuse.

    from mmvid.generation import PromptCache, SamplingParams, generate, stream

    # the chat template; each <video> expanded for its features
    ids = model.prompt_ids(messages, features)
    params = SamplingParams(temperature=0.7, top_p=0.9, seed=0, max_new_tokens=64, stop=("\\n",))
    out = generate(model, ids, params, video_features=features)
    out.text, out.token_ids, out.finish_reason, out.usage
    # finish_reason: "stop" (eos or a stop string) | "length"

    cache = PromptCache()                                # one per conversation, kept between its requests
    for delta in stream(model, ids, params, video_features=features, cache=cache):
        print(delta.text, end="")                        # the last delta carries finish_reason and usage

Each request's prompt is the whole conversation so far, as an OpenAI-style server receives it. With a
`PromptCache` only what the cache cannot serve is run: the longest prefix the prompt shares with the
tokens run before (the video span, earlier questions and answers) comes from the KV cache, up to the
first video whose features changed. `PromptCache.video_features` encodes a video resent under the
same key only once.

`sample_tokens` is the one sampler: text tokens here, discrete video ids in `VideoLLM.generate_video`
(through `DiscreteVideoHead.sample`). Temperature 0 is greedy: the argmax, what Hugging Face's greedy
`generate` picks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch

from mmvid.prompting import shared_prefix

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte fallback

# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _check_filter(top_k: int, top_p: float) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf what top-k (0 = off) and then nucleus top-p (1.0 = off) exclude, along the last dim.

    Top-k keeps exactly the k largest; top-p keeps the smallest prefix of the sorted distribution
    whose mass reaches top_p. The argmax is always kept. Returns a new tensor.
    """
    _check_filter(top_k, top_p)
    if top_k > 0 and top_k < logits.shape[-1]:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # 0 for the argmax, so it is always kept
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to the original order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of logits (B, V) -> (B,) long: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) after top-k, then top-p (`filter_logits`)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token and when to stop: the sampling fields of an OpenAI-style request."""

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus mass (1: off)
    top_k: int = 0  # keep the k most likely tokens (0: off)
    seed: int | None = None  # a fresh torch.Generator per request; None: torch's global RNG
    max_new_tokens: int = 64  # tokens sampled at most, an eos included
    stop: tuple[str, ...] = ()  # the text ends before the first of these strings

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", tuple(s for s in stop if s))  # "" would stop at once
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check_filter(self.top_k, self.top_p)

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(int(self.seed))


# ----------------------------------------------------------------------------------------------
# Requests' results
# ----------------------------------------------------------------------------------------------


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the KV cache instead of run
    completion_tokens: int = 0  # sampled tokens, an eos not counted


@dataclass
class Delta:
    """What one sampled token adds to a streamed answer."""

    text: str = ""  # "" while the text could still become a stop string or is a partial character
    token_ids: list[int] = field(default_factory=list)  # the token (none for an eos)
    finish_reason: str | None = None  # the last delta only: "stop" | "length"
    usage: Usage | None = None  # the last delta only


@dataclass
class Completion:
    text: str  # cut before a stop string
    token_ids: list[int]  # every sampled token but an eos (those that spelled a stop string included)
    finish_reason: str  # "stop" (eos or a stop string) | "length" (max_new_tokens)
    usage: Usage


# ----------------------------------------------------------------------------------------------
# The cache a conversation keeps
# ----------------------------------------------------------------------------------------------


class PromptCache:
    """What a conversation keeps between requests: the LLM's KV cache of `ids` (every token run so far;
    the last sampled one was never run), the video features they were run with, and encoded videos by key."""

    def __init__(self, max_videos: int = 8):
        self.max_videos = max_videos
        self.videos: dict[Hashable, torch.Tensor] = {}
        self.reused = 0  # prompt tokens the last request took from the cache
        self.reset()

    def reset(self) -> None:
        """Forget the KV cache; the encoded videos stay."""
        self.kv, self.ids, self.features = None, [], None

    def video_features(self, key: Hashable, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The features of the video named `key` (a path, a URL, a hash), from `encode()` the first time
        only."""
        if key not in self.videos:
            if len(self.videos) >= self.max_videos:
                self.videos.pop(next(iter(self.videos)))  # the oldest
            self.videos[key] = encode()
        return self.videos[key]

    def reuse(self, ids: list[int], features: torch.Tensor | None, placeholder: int) -> tuple[int, int]:
        """Crop the KV cache to the longest prefix of `ids` it can serve; that length and the number of
        videos in it. The prefix never ends inside a video span, nor passes a video whose features changed."""
        if self.kv is None:
            return 0, 0
        keep = shared_prefix(self.ids, ids)
        cached = self.kv.get_seq_length()
        keep = min(keep, cached, len(ids) - 1)  # at least one token runs, for the logits
        per_video = 1 if features is None else features.shape[1]
        video_positions = [i for i, t in enumerate(ids[:keep]) if t == placeholder]
        videos = min(len(video_positions) // per_video, _same_videos(self.features, features))
        if len(video_positions) > videos * per_video:
            keep = video_positions[videos * per_video]  # back to the start of the first video that must run
        if keep == 0:
            self.reset()
            return 0, 0
        if cached > keep:
            self.kv.crop(keep - cached)  # negative: drop that many tokens from the end
        return keep, videos


def _same_videos(old: torch.Tensor | None, new: torch.Tensor | None) -> int:
    """How many leading videos two feature tensors (V, N, D) share."""
    if old is None or new is None:
        return 0
    count = 0
    while count < min(len(old), len(new)) and old[count].shape == new[count].shape and torch.equal(
        old[count], new[count]):
        count += 1
    return count


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------


def prefill(model, prompt_ids: list[int], video_features: torch.Tensor | None = None,
            cache: PromptCache | None = None) -> torch.Tensor:
    """The next-token logits (V,) after `prompt_ids`, running only the tokens `cache` cannot serve;
    `cache` then holds the prompt, and `cache.reused` how many of its tokens it served."""
    cache = PromptCache() if cache is None else cache
    keep, videos = cache.reuse(prompt_ids, video_features, model.video_ids.placeholder)
    new = torch.tensor([prompt_ids[keep:]], device=model.device)
    pending = None if video_features is None or videos == len(video_features) else video_features[videos:]
    logits, cache.kv = model.next_token_logits(new, video_features=pending, cache=cache.kv)
    cache.ids, cache.features, cache.reused = list(prompt_ids), video_features, keep
    return logits[0]


def stream(model, prompt_ids: list[int], params: SamplingParams = SamplingParams(),
           video_features: torch.Tensor | None = None, cache: PromptCache | None = None,
           generator: torch.Generator | None = None) -> Iterator[Delta]:
    """Continue `prompt_ids` (a VideoLLM's `prompt_ids`), one Delta per sampled token; the last one has
    `finish_reason` and `usage`. `video_features` (V, N, hidden) fill the prompt's video spans. `generator`
    overrides `params.seed` (a conversation may keep one for all its turns).

    At every yield `cache` is consistent (stopping the iteration early keeps it usable); an error or an
    interrupt inside a forward pass resets it.
    """
    if not prompt_ids:
        raise ValueError("empty prompt: nothing to continue")
    cache = PromptCache() if cache is None else cache
    generator = params.generator(model.device) if generator is None else generator
    ends = {model.text_tokenizer.eos_token_id, model.processor.end_of_turn_id} - {None}  # the turn's end
    vocab = len(model.text_tokenizer)
    text = _Text(model.text_tokenizer, params.stop)
    usage = Usage(prompt_tokens=len(prompt_ids))
    try:
        logits = prefill(model, prompt_ids, video_features, cache)
        usage.cached_tokens = cache.reused
        for step in range(params.max_new_tokens):
            if logits.shape[-1] > vocab:  # rows past the tokenizer (a padded vocabulary: Qwen2.5's 151936)
                logits = logits.clone()
                logits[vocab:] = float("-inf")
            token = int(
                sample_tokens(logits[None], params.temperature, params.top_k, params.top_p, generator)[0])
            cache.ids.append(token)
            if token in ends:
                yield Delta(text.flush(), [], "stop", usage)
                return
            usage.completion_tokens += 1
            piece = text.add(token)
            finish = "stop" if text.stopped else "length" if step == params.max_new_tokens - 1 else None
            if finish:
                yield Delta(piece + text.flush(), [token], finish, usage)
                return
            yield Delta(piece, [token])
            logits, cache.kv = model.next_token_logits(torch.tensor([[token]], device=model.device),
                                                       cache=cache.kv)
            logits = logits[0]
    except GeneratorExit:
        raise
    except BaseException:
        cache.reset()  # a forward pass may have stopped halfway through the cache's layers
        raise


def generate(model, prompt_ids: list[int], params: SamplingParams = SamplingParams(),
             video_features: torch.Tensor | None = None, cache: PromptCache | None = None,
             generator: torch.Generator | None = None) -> Completion:
    """`stream`, collected into one Completion."""
    pieces, token_ids = [], []
    for delta in stream(model, prompt_ids, params, video_features, cache, generator):
        pieces.append(delta.text)
        token_ids += delta.token_ids
    return Completion("".join(pieces), token_ids, delta.finish_reason, delta.usage)


class _Text:
    """Sampled ids -> text, cut before the first stop string, handed out in pieces that will not change.

    Decoding all ids again can rewrite the end of the text: a run of byte-fallback tokens (`<0xC4>`,
    SentencePiece) that is not valid UTF-8 decodes to one U+FFFD per byte, ASCII bytes of the run
    included, and with byte-level BPE an incomplete character decodes to U+FFFD until its last byte
    comes. So text is handed out only up to the last token that is neither a byte nor a special token
    (skipped when decoding, it does not end a byte run), and never with a trailing U+FFFD.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.special = set(tokenizer.all_special_ids)
        self.ids: list[int] = []
        self.text, self.shown, self.settled, self.stopped = "", 0, 0, False

    def add(self, token: int) -> str:
        """The new text, after `token`, that is safe to show."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.stopped = self.text[:min(cuts)], True
            return self.flush()
        if token not in self.special and not _BYTE_TOKEN.fullmatch(
            self.tokenizer.convert_ids_to_tokens(token)):
            self.settled = len(self.text)
        return self._take(self._safe_end())

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return piece

    def _safe_end(self) -> int:
        incomplete = len(self.text.rstrip("\ufffd"))  # byte-level BPE: a character's first bytes
        starts = [
            len(self.text) - k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])]
        return min([self.settled, incomplete, *starts])

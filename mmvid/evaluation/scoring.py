"""Scoring a VideoLLM on choices: log-likelihood of continuations, and generate-then-parse.

Log-likelihood follows lm-eval's conventions: the chat prompt (ending in the assistant's generation
prompt) is the context; each choice is a continuation; `acc` takes the highest summed log-prob and
`acc_norm` the highest log-prob per byte of the continuation.

`end_of_answer=True` appends the tokenizer's end-of-turn token (its eos, which ends every assistant turn
the chat template trains) to each choice, so a choice is scored as the *whole* answer. Without it, a choice
that extends another ("moves down and to the left" beside "moves down") can never win on summed log-prob,
since its probability is the shorter one's times more factors below 1.

One scorer, `score_sequences`, serves these benches and the lm_eval bench: rows are padded on the
left with position ids that count each row's real tokens from 0, so a sequence's score does not
depend on the batch it is in, and the scored tokens sit at the same last positions of every row.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mmvid.videollm import VideoLLM


@torch.no_grad()
def continuation_logprobs(model: VideoLLM, messages: list[dict], continuations: list[str],
                          video_features: torch.Tensor | None = None, end_of_answer: bool = False,
                          batch_size: int | None = None) -> list[float]:
    """Summed log-prob of each continuation after the chat `messages` (+ generation prompt).

    Args:
        video_features: (V, N, D) for the V `<video>` placeholders of the messages, in order.
        end_of_answer: score each continuation followed by the end-of-turn (eos) token: the whole answer.
        batch_size: continuations per forward pass (None: all at once); the scores do not depend on it.
    """
    context = model.prompt_ids(messages, video_features)
    pieces = continuation_pieces(model, continuations, end_of_answer)
    device = model.device
    if all(len(p) == 1 for p in pieces):  # one forward pass scores every single-token choice
        ids = torch.tensor([context], device=device)
        logits = model(input_ids=ids, video_features=video_features).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, -1)
        return [float(logprobs[p[0]]) for p in pieces]

    size = batch_size or len(pieces)
    scores = []
    for start in range(0, len(pieces), size):
        chunk = pieces[start:start + size]
        scored = _score_rows(model, [context + p for p in chunk], [len(p) for p in chunk],
                             None if video_features is None else [video_features] * len(chunk))
        scores += [total for total, _ in scored]
    return scores


def continuation_pieces(model: VideoLLM, continuations: list[str], end_of_answer: bool) -> list[list[int]]:
    """Each continuation's token ids, followed by the chat template's end-of-turn token with
    `end_of_answer` (the whole answer)."""
    tok = model.text_tokenizer
    pieces = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(p) == 0 for p in pieces):
        raise ValueError(f"a continuation encodes to no tokens: {continuations!r}")
    if end_of_answer:
        end = model.processor.end_of_turn_id
        if end is None:
            raise ValueError("end_of_answer=True needs a chat template that ends turns with a token (or an "
                             "eos)")
        pieces = [p + [end] for p in pieces]
    return pieces


def _score_rows(model: VideoLLM, sequences: list[list[int]], num_scored: list[int],
                features: list[torch.Tensor] | None) -> list[tuple[float, bool]]:
    """(summed log-prob, is_greedy) of each row's last tokens in one left-padded forward pass;
    `features[i]` (V, N, D) fill row i's video spans."""
    video_features = None if features is None else torch.cat(features)

    def forward(input_ids, attention_mask, position_ids, keep):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     video_features=video_features).logits

    tok = model.text_tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return score_sequences(forward, sequences, num_scored, pad, model.device)


@torch.no_grad()
def score_requests(model: VideoLLM, requests: list[tuple[list[dict], list[str], torch.Tensor | None]],
                   end_of_answer: bool = False) -> list[list[tuple[float, bool]]]:
    """(summed log-prob, is_greedy) of each request's continuations, all in one forward pass: each request
    is (messages, continuations, video_features (V, N, D) or None), every continuation one row of one
    left-padded batch, so the scores do not depend on which requests share it."""
    rows, num_scored, features, owner = [], [], [], []
    for k, (messages, continuations, video_features) in enumerate(requests):
        context = model.prompt_ids(messages, video_features)
        for piece in continuation_pieces(model, continuations, end_of_answer):
            rows.append(context + piece)
            num_scored.append(len(piece))
            owner.append(k)
            if video_features is not None:
                features.append(video_features)  # row order = the order of the batch's <video> spans
    scores: list[list[tuple[float, bool]]] = [[] for _ in requests]
    for k, score in zip(owner, _score_rows(model, rows, num_scored, features or None)):
        scores[k].append(score)
    return scores


def batch_continuation_logprobs(model: VideoLLM,
                                requests: list[tuple[list[dict], list[str], torch.Tensor | None]],
                                end_of_answer: bool = False) -> list[list[float]]:
    """`continuation_logprobs` of several prompts in one forward pass (see `score_requests`)."""
    return [[total for total, _ in scores] for scores in score_requests(model, requests, end_of_answer)]


@torch.no_grad()
def score_sequences(forward: Callable[..., torch.Tensor], sequences: list[list[int]], num_scored: list[int],
                    pad_id: int, device: torch.device | str) -> list[tuple[float, bool]]:
    """Log-likelihood of the last `num_scored[i]` tokens of each sequence given the tokens before them,
    and whether greedy decoding gives all of them: one batch, left-padded (see `left_pad`).

    Args:
        forward: (input_ids, attention_mask, position_ids, keep) -> logits (B, L, V), of which the last
            `keep` positions are read (a model may compute only those).
        sequences: token ids; num_scored: how many of each sequence's last tokens are scored.
    Returns:
        (summed log-prob, is_greedy) per sequence.
    """
    input_ids, attention_mask, position_ids = left_pad([seq[:-1] for seq in sequences], pad_id, device)
    keep = max(num_scored)
    # (B, keep, V)
    logprobs = forward(input_ids, attention_mask, position_ids, keep)[:, -keep:].float().log_softmax(-1)
    scores = []
    for row, (seq, n) in enumerate(zip(sequences, num_scored)):
        target = torch.tensor(seq[-n:], device=logprobs.device)
        picked = logprobs[row, keep - n:]  # (n, V): the last n positions predict the last n tokens
        scores.append((float(picked.gather(-1, target[:, None]).sum()),
                       bool((picked.argmax(-1) == target).all())))
    return scores


def left_pad(sequences: list[list[int]], pad_id: int,
             device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token id rows padded on the left to one width: input_ids, attention_mask and position_ids, each
    long (B, W); position ids count each row's real tokens from 0."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        input_ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attention_mask[row, width - len(s):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device)


def letters_for(options: list[str]) -> list[str]:
    """The option letters of a multiple-choice question: "A", "B", ... one per option."""
    return list(string.ascii_uppercase[: len(options)])


def pick(scores: list[float], continuations: list[str]) -> tuple[int, int]:
    """(argmax of the summed log-prob, argmax of the log-prob per byte): acc and acc_norm choices."""
    raw = max(range(len(scores)), key=scores.__getitem__)
    norm = max(range(len(scores)), key=lambda i: scores[i] / max(1, len(continuations[i].encode("utf-8"))))
    return raw, norm


_LETTER = re.compile(r"^\W*\(?([A-Z])\b")


def parse_choice(text: str, options: list[str], letters: list[str]) -> int | None:
    """The chosen option from a generated answer: a leading letter ("B", "(B)", "B. red"), else the
    one option whose text it contains (ignoring case); None when it cannot tell."""
    match = _LETTER.match(text.strip())
    if match and match.group(1) in letters:
        return letters.index(match.group(1))
    lowered = text.strip().lower()
    hits = [i for i, option in enumerate(options) if option.lower() in lowered]
    if len(hits) == 1:
        return hits[0]
    exact = [i for i in hits if options[i].lower() == lowered]
    return exact[0] if len(exact) == 1 else None

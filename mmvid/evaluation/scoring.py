"""Scoring a VideoLLM on choices: log-likelihood of continuations, and generate-then-parse.

Log-likelihood follows lm-eval's conventions: the chat prompt (ending in the assistant's generation
prompt) is the context; each choice is a continuation; `acc` takes the highest summed log-prob and
`acc_norm` the highest log-prob per byte of the continuation.

`end_of_answer=True` appends the tokenizer's end-of-turn token (its eos, which ends every assistant turn
the chat template trains) to each choice, so a choice is scored as the *whole* answer. Without it, a choice
that extends another ("moves down and to the left" beside "moves down") can never win on summed log-prob,
since its probability is the shorter one's times more factors below 1.
"""

from __future__ import annotations

import re

import torch

from mmvid.prompting import encode_prompt
from mmvid.videollm import VideoLLM


@torch.no_grad()
def continuation_logprobs(model: VideoLLM, messages: list[dict], continuations: list[str],
                          video_features: torch.Tensor | None = None, end_of_answer: bool = False) -> list[float]:
    """Summed log-prob of each continuation after the chat `messages` (+ generation prompt).

    Args:
        video_features: (V, N, D) for the V `<video>` placeholders of the messages, in order.
        end_of_answer: score each continuation followed by the end-of-turn (eos) token: the whole answer.
    """
    tok = model.text_tokenizer
    count = 0 if video_features is None else video_features.shape[0]
    per_video = 0 if video_features is None else video_features.shape[1]
    context = encode_prompt(tok, messages, model.video_ids, [per_video] * count)
    pieces = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(p) == 0 for p in pieces):
        raise ValueError(f"a continuation encodes to no tokens: {continuations!r}")
    if end_of_answer:
        if tok.eos_token_id is None:
            raise ValueError("end_of_answer=True needs a tokenizer with an eos (end-of-turn) token")
        pieces = [p + [tok.eos_token_id] for p in pieces]
    device = model._device()
    if all(len(p) == 1 for p in pieces):  # one forward pass scores every single-token choice
        ids = torch.tensor([context], device=device)
        logits = model(input_ids=ids, video_features=video_features).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, -1)
        return [float(logprobs[p[0]]) for p in pieces]
    width = len(context) + max(len(p) for p in pieces)
    pad = tok.pad_token_id
    ids = torch.full((len(pieces), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(pieces):
        seq = context + p
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    features = None if video_features is None else video_features.repeat(len(pieces), 1, 1)
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask, video_features=features).logits.float(), -1)
    scores = []
    for i, p in enumerate(pieces):
        positions = torch.arange(len(context) - 1, len(context) - 1 + len(p), device=device)
        scores.append(float(logprobs[i, positions, torch.tensor(p, device=device)].sum()))
    return scores


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

"""The LLM's text tokenizer: a SentencePiece model trained locally, served as a Hugging Face tokenizer.

The built-in default LLM is a tiny model built from a config, and nothing may be downloaded at run
time, so its tokenizer is trained here on text we have (e.g. the captions and questions of
`mmvid.data.shapes`). Any Hugging Face tokenizer works with mmvid; `add_video_special_tokens` and
`ensure_chat_template` make one ready for video (the VideoLLM must then resize its embeddings to
`len(tokenizer)`).

Special tokens:
    <video>                              the placeholder users write in LLaVA data; always one id.
    <|video_start|> <|video_end|>        framing the video tokens the projector inserts.
    <|system|> <|user|> <|assistant|>    chat role markers.
    <|end|>                              end of a turn, and the eos token: the model learns to stop on it.
    <s> <pad> <unk>                      bos, padding, unknown (never produced: byte fallback).

DEFAULT_CHAT_TEMPLATE renders messages [{"role": "system"|"user"|"assistant", "content": str}] as

    <s><|user|>\\n<video>\\nWhat moves?<|end|>\\n<|assistant|>\\nA red star.<|end|>\\n

i.e. bos once, then `<|role|>\\n{content}{eos}\\n` per turn; `add_generation_prompt=True` appends
`<|assistant|>\\n`. The turn end is the tokenizer's eos token (`<|end|>` for ours), so whatever
tokenizer the template is put on, the assistant learns to emit the token generation stops on. The
assistant's content and its eos are wrapped in `{% generation %}`, so
`apply_chat_template(..., tokenize=True, return_dict=True, return_assistant_tokens_mask=True)` gives
the answer tokens (the training labels) for any fast tokenizer. An unknown role raises.

Encoding is exact and context-free: `encode` adds no bos/eos (the chat template adds bos), every
space is kept as "▁" (no dummy prefix, no normalization, no whitespace collapsing), and characters
outside the vocabulary fall back to bytes, so `decode(encode(text))` is `text` (one exception with
"unigram", as in every SentencePiece-converted HF tokenizer: literal text such as "<0x41>" is read as
that byte piece). A message's content gets the same ids inside a chat as alone, because the role
markers and `<|end|>` are special tokens and a newline (a byte piece) never merges with its neighbours.

Why this conversion: `transformers.convert_slow_tokenizer` needs `protobuf` (not a dependency) to read
the .model file and applies its own conventions (strip trailing spaces, collapse runs of spaces,
prepend a space) that break exact round trips. Instead we read pieces, scores and types through
`sentencepiece` itself and build the equivalent `tokenizers.Tokenizer` (a Unigram model with the
SentencePiece scores, or a BPE model with merges recovered from the piece ranks), wrapped in
`PreTrainedTokenizerFast`. It gives the same ids as the SentencePiece model, and its `tokenizer.json`
loads with `AutoTokenizer.from_pretrained(out_dir)` offline, without sentencepiece or protobuf.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

VIDEO_TOKEN = "<video>"  # the placeholder users write in LLaVA data (mmvid.data.conversations)
VIDEO_START, VIDEO_END = "<|video_start|>", "<|video_end|>"
VIDEO_SPECIAL_TOKENS = (VIDEO_TOKEN, VIDEO_START, VIDEO_END)

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES)
END_TOKEN = "<|end|>"  # end of a turn; the eos token of the tokenizers trained here
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN = "<pad>", "<unk>", "<s>"

SPM_MODEL_FILE = "spm.model"  # the raw SentencePiece model kept beside tokenizer.json, for reference
MODEL_TYPES = ("unigram", "bpe")

# Every tag trims the whitespace of the template source around it (`{%-`, `-%}`, `{{-`, `-}}`) and
# every output character is a string literal, so the output is exactly what the module docstring shows.
DEFAULT_CHAT_TEMPLATE = r"""{%- if bos_token -%}{{- bos_token -}}{%- endif -%}
{%- set end = eos_token if eos_token else '<|end|>' -%}
{%- for message in messages -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception("unknown role '" ~ message['role'] ~ "'; known: system, user, assistant") -}}
    {%- endif -%}
    {{- '<|' ~ message['role'] ~ '|>\n' -}}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}{{- message['content'] ~ end -}}{%- endgeneration -%}
    {%- else -%}
        {{- message['content'] ~ end -}}
    {%- endif -%}
    {{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\n' -}}
{%- endif -%}
"""


# ----------------------------------------------------------------------------------------------
# Special tokens and chat template for any tokenizer
# ----------------------------------------------------------------------------------------------


def add_video_special_tokens(tokenizer) -> dict[str, int]:
    """Add `VIDEO_SPECIAL_TOKENS` as additional special tokens where missing (idempotent).

    Special tokens are never split and are skipped by `decode(..., skip_special_tokens=True)`. A
    token already in the vocabulary keeps its id; a new one gets the next id, so the caller must
    resize the model's embeddings to `len(tokenizer)`.

    Returns:
        {token: id} for the three tokens.
    """
    missing = [t for t in VIDEO_SPECIAL_TOKENS if t not in tokenizer.all_special_tokens]
    if missing:
        # Positional second argument: `replace_additional_special_tokens` in transformers 4,
        # `replace_extra_special_tokens` in 5; False extends the list instead of replacing it.
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, False)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in VIDEO_SPECIAL_TOKENS}


def ensure_chat_template(tokenizer) -> bool:
    """Give `tokenizer` DEFAULT_CHAT_TEMPLATE if it has no chat template. Returns True if it set it."""
    if getattr(tokenizer, "chat_template", None) is not None:
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


# ----------------------------------------------------------------------------------------------
# SentencePiece -> tokenizers
# ----------------------------------------------------------------------------------------------


def _bpe_merges(pieces: list[str], normal: list[bool]) -> list[tuple[str, str]]:
    """Merges that rebuild SentencePiece BPE: a piece's rank is its id (pieces are stored in merge
    order), and each way of splitting a piece into two known pieces is a merge of that rank."""
    rank = {p: i for i, (p, ok) in enumerate(zip(pieces, normal)) if ok}
    merges = []
    for piece, i in rank.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in rank and right in rank:
                merges.append((i, rank[left], rank[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


def _hf_tokenizer_from_spm(model_file: str | os.PathLike, model_type: str):
    """The `PreTrainedTokenizerFast` equivalent of a SentencePiece model trained by `train_text_tokenizer`
    (`model_type` as trained: the .model file records it, but only protobuf could read it)."""
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    ids = range(sp.get_piece_size())
    pieces = [sp.id_to_piece(i) for i in ids]
    # Controls (pad, unk, bos, eos) and our user-defined symbols become special added tokens: matched
    # before the model, never split. Byte pieces stay in the model for byte fallback. The rest is text.
    specials = [p for i, p in enumerate(pieces)
                if sp.is_control(i) or sp.is_unknown(i) or p in ROLE_TOKENS + VIDEO_SPECIAL_TOKENS]
    normal = [p not in specials and not sp.is_byte(i) and not sp.is_unused(i) for i, p in enumerate(pieces)]

    if model_type == "bpe":
        model = models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=_bpe_merges(pieces, normal),
                           unk_token=UNK_TOKEN, fuse_unk=True, byte_fallback=True)
    else:
        vocab = [(p, sp.get_score(i)) for i, p in zip(ids, pieces)]
        model = models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True)
    tokenizer = Tokenizer(model)
    # No normalizer and no dummy prefix, as in training: spaces become "▁" and start a new word.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=END_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
    )


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train_text_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 2000,
    model_type: str = "unigram",
    seed: int = 0,
):
    """Train a SentencePiece tokenizer on `texts` and save it as a Hugging Face tokenizer in `out_dir`.

    Deterministic: every sentence is used, in order (no sampling, no shuffling, one thread), so the
    same texts give the same vocabulary. Each line of a text is one training sentence. The
    vocabulary holds the special tokens (see the module docstring) and the 256 byte pieces, so any
    text is encodable; the rest is learned.

    Args:
        texts: training text; newlines separate sentences.
        out_dir: created if needed; receives tokenizer.json, tokenizer_config.json,
            chat_template.jinja (or the template inside tokenizer_config.json) and spm.model.
        vocab_size: exact size of the vocabulary, special and byte pieces included.
        model_type: "unigram" or "bpe".
        seed: seed of SentencePiece's random generator.

    Returns:
        the tokenizer reloaded from `out_dir` with `transformers.AutoTokenizer`.

    Raises:
        ValueError: no text, an unknown model type, or a vocab_size the corpus cannot fill (or that
            is smaller than the special, byte and character pieces need); the message gives the
            bound SentencePiece reports. The vocabulary is never silently shrunk
            (`hard_vocab_limit` stays on), so `vocab_size` is what the embedding table gets.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {list(MODEL_TYPES)}")
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no text to train the tokenizer on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(Path(tmp) / "spm"),
                model_type=model_type,
                vocab_size=vocab_size,
                input_sentence_size=0,  # use every sentence: no sampling ...
                shuffle_input_sentence=False,  # ... and no shuffling, so training is deterministic
                num_threads=1,
                byte_fallback=True,
                # Exact round trips: no NFKC, no whitespace collapsing, no dummy prefix space.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                pad_id=0, pad_piece=PAD_TOKEN,
                unk_id=1, unk_piece=UNK_TOKEN,
                bos_id=2, bos_piece=BOS_TOKEN,
                eos_id=3, eos_piece=END_TOKEN,
                user_defined_symbols=[*ROLE_TOKENS, *VIDEO_SPECIAL_TOKENS],
                minloglevel=2,  # warnings and errors only
            )
        except RuntimeError as e:
            raise ValueError(_vocab_size_message(str(e), vocab_size, len(lines))) from e
        (out_dir / SPM_MODEL_FILE).write_bytes((Path(tmp) / "spm.model").read_bytes())

    tokenizer = _hf_tokenizer_from_spm(out_dir / SPM_MODEL_FILE, model_type)
    add_video_special_tokens(tokenizer)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def _vocab_size_message(error: str, vocab_size: int, num_lines: int) -> str:
    """A ValueError message for a SentencePiece training failure, with the bound it reports."""
    too_high = re.search(r"value <= (\d+)", error)
    if too_high:
        return (f"the corpus ({num_lines} sentences) is too small for vocab_size={vocab_size}: it supports "
                f"at most {too_high.group(1)} pieces; pass a smaller vocab_size or more text")
    too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", error)
    if too_low:
        return (f"vocab_size={vocab_size} is too small: the special, byte and character pieces alone "
                f"need {too_low.group(1)}; pass a larger vocab_size")
    return f"SentencePiece training failed (vocab_size={vocab_size}): {error}"

"""The LLM's text tokenizer (mmvid.text_tokenizer): SentencePiece training, HF wrapper, chat template."""

from __future__ import annotations

import socket

import jinja2
import numpy as np
import pytest

from mmvid.data.shapes import text, world
from mmvid.text_tokenizer import (
    DEFAULT_CHAT_TEMPLATE,
    SPM_MODEL_FILE,
    VIDEO_SPECIAL_TOKENS,
    VIDEO_TOKEN,
    add_video_special_tokens,
    ensure_chat_template,
    train_text_tokenizer,
)

VOCAB_SIZE = 400  # the unigram model of this corpus supports ~419 pieces
MESSAGES = [
    {"role": "system", "content": "You describe videos."},
    {"role": "user", "content": "<video>\nWhat moves?"},
    {"role": "assistant", "content": "A red star moves left."},
]
EXPECTED_CHAT = ("<s><|system|>\nYou describe videos.<|end|>\n<|user|>\n<video>\nWhat moves?<|end|>\n"
                 "<|assistant|>\nA red star moves left.<|end|>\n")
ROUND_TRIPS = [
    "A small red star bounces quickly while a large blue square moves left slowly.",
    "<video>\nWhat moves?",
    "x<video>y",
    "Describe the video. <video> <video>",
    "  two leading spaces, a double  space, a tab\tand a trailing space ",
    "Unseen: é, 漢字, emoji 🙂, <s>-like text.",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """Captions and SFT turns of 300 synthetic scenes (~3300 lines)."""
    texts, positions = [], {}
    for seed in range(300):
        scene, rng = world.sample_scene(seed), np.random.default_rng(seed)
        texts += text.captions(scene, rng)
        sample = text.conversation(scene, "clip.mp4", str(seed), rng, positions)
        texts += [turn["value"] for turn in sample["conversations"]]
    return texts


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("text_tokenizer")
    return out_dir, train_text_tokenizer(corpus, out_dir, vocab_size=VOCAB_SIZE)


@pytest.fixture
def tokenizer(trained):
    return trained[1]


def _word_level_tokenizer():
    """A tokenizer that is not ours: no chat template, no video tokens."""
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


# ----------------------------------------------------------------------------------------------
# Training and loading
# ----------------------------------------------------------------------------------------------


def test_loads_offline_with_auto_tokenizer(trained, monkeypatch):
    from transformers import AutoTokenizer

    out_dir, tokenizer = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = AutoTokenizer.from_pretrained(out_dir)
    assert (out_dir / SPM_MODEL_FILE).exists()
    assert len(loaded) == VOCAB_SIZE
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    specials = [loaded.pad_token, loaded.unk_token, loaded.bos_token, loaded.eos_token]
    assert specials == ["<pad>", "<unk>", "<s>", "<|end|>"]
    assert loaded.convert_tokens_to_ids(specials) == [0, 1, 2, 3]
    assert loaded.eos_token_id == 3


def test_training_is_deterministic(corpus, trained, tmp_path):
    again = train_text_tokenizer(corpus, tmp_path, vocab_size=VOCAB_SIZE)
    assert again.get_vocab() == trained[1].get_vocab()
    # tokenizer.json holds pieces, scores and merges (spm.model also records the temporary input path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (trained[0] / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_same_ids_as_sentencepiece(corpus, trained, tmp_path, model_type):
    import sentencepiece as spm

    if model_type == "unigram":
        out_dir, tokenizer = trained
    else:
        out_dir = tmp_path
        tokenizer = train_text_tokenizer(corpus, out_dir, vocab_size=VOCAB_SIZE, model_type="bpe")
    reference = spm.SentencePieceProcessor(model_file=str(out_dir / SPM_MODEL_FILE))
    for line in corpus[:500]:
        assert tokenizer.encode(line, add_special_tokens=False) == reference.encode(line), line
    for line in ROUND_TRIPS:
        assert tokenizer.decode(tokenizer.encode(line), skip_special_tokens=False) == line


def test_too_small_corpus_raises(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"too small for vocab_size=2000.*at most \d+ pieces.*smaller"):
        train_text_tokenizer(corpus[:30], tmp_path, vocab_size=2000)
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small.*need \d+"):
        train_text_tokenizer(corpus[:30], tmp_path, vocab_size=100)
    with pytest.raises(ValueError, match="no text"):
        train_text_tokenizer(["", "  \n"], tmp_path)
    with pytest.raises(ValueError, match="unknown model_type 'word'"):
        train_text_tokenizer(corpus, tmp_path, model_type="word")


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ROUND_TRIPS)
def test_round_trip(tokenizer, line):
    ids = tokenizer.encode(line)
    assert tokenizer.unk_token_id not in ids  # byte fallback instead
    assert tokenizer.decode(ids, skip_special_tokens=False) == line


@pytest.mark.parametrize("line", ["<video>", "<video>\nWhat moves?", "x<video>y", "Describe it.<video>"])
def test_video_token_is_one_id(tokenizer, line):
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    ids = tokenizer.encode(line)
    assert ids.count(video_id) == 1
    assert tokenizer.convert_ids_to_tokens(ids).count(VIDEO_TOKEN) == 1


def test_video_tokens_are_special_and_single(tokenizer):
    for token in VIDEO_SPECIAL_TOKENS:
        assert token in tokenizer.all_special_tokens
        assert len(tokenizer.encode(token)) == 1
        assert tokenizer.decode(tokenizer.encode(f"a{token}b"), skip_special_tokens=True) == "ab"


# ----------------------------------------------------------------------------------------------
# Chat template
# ----------------------------------------------------------------------------------------------


def test_chat_template_exact_string(tokenizer):
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False) == EXPECTED_CHAT
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == EXPECTED_CHAT.split("<|assistant|>")[0] + "<|assistant|>\n"


def test_chat_template_tokenized(tokenizer):
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tokenizer.encode(EXPECTED_CHAT)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.eos_token_id) == 3  # one <|end|> per turn
    assert tokenizer.decode(ids, skip_special_tokens=False) == EXPECTED_CHAT


def test_assistant_mask_is_answer_and_eos(tokenizer):
    out = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    answer = [i for i, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert answer == tokenizer.encode(MESSAGES[-1]["content"]) + [tokenizer.eos_token_id]


def test_chat_template_rejects_unknown_role(tokenizer):
    with pytest.raises(jinja2.TemplateError, match="unknown role 'tool'"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_ensure_chat_template(tokenizer):
    foreign = _word_level_tokenizer()
    assert foreign.chat_template is None
    assert ensure_chat_template(foreign) is True
    assert foreign.chat_template == DEFAULT_CHAT_TEMPLATE
    tokenizer.chat_template, own = "{{ messages[0]['content'] }}", tokenizer.chat_template
    try:
        assert ensure_chat_template(tokenizer) is False
        assert tokenizer.chat_template == "{{ messages[0]['content'] }}"
    finally:
        tokenizer.chat_template = own


# ----------------------------------------------------------------------------------------------
# Video special tokens on any tokenizer
# ----------------------------------------------------------------------------------------------


def test_add_video_special_tokens_is_idempotent(tokenizer):
    size = len(tokenizer)
    ids = add_video_special_tokens(tokenizer)
    assert len(tokenizer) == size  # ours already has them
    assert add_video_special_tokens(tokenizer) == ids


def test_add_video_special_tokens_to_foreign_tokenizer():
    foreign = _word_level_tokenizer()
    ids = add_video_special_tokens(foreign)
    assert list(ids) == list(VIDEO_SPECIAL_TOKENS)
    assert sorted(ids.values()) == [3, 4, 5] and len(foreign) == 6
    assert add_video_special_tokens(foreign) == ids and len(foreign) == 6
    assert all(token in foreign.all_special_tokens for token in VIDEO_SPECIAL_TOKENS)
    assert foreign.encode("a<video>b", add_special_tokens=False) == [1, ids[VIDEO_TOKEN], 2]

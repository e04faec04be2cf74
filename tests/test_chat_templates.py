"""Label masks, video spans and the end of a turn under the chat templates of the model families users train:
ChatML (Qwen2/2.5/3), Llama 3, Gemma (no system role), Phi-3 and Mistral. Each template is the family's
format written here as a Jinja string, on a tokenizer built here (the world's sentencepiece tokenizer with
the family's special tokens); nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from mmvid.generation import SamplingParams, stream
from mmvid.prompting import IGNORE_INDEX
from mmvid.testing import tiny_videollm, world_text_tokenizer
from mmvid.text_tokenizer import VIDEO_START

CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

# family -> (template, special tokens, bos, eos, the turn's end token, has a system role,
#            what the template writes for an assistant answer A: in the middle, and as the last turn)
FAMILIES = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], None, "<|im_end|>", "<|im_end|>",
               True, "{a}<|im_end|>\n", "{a}<|im_end|>\n"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", True,
               "{a}<|eot_id|>", "{a}<|eot_id|>"),
    "gemma": (GEMMA, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
              "<end_of_turn>", False, "{a}<end_of_turn>\n", "{a}<end_of_turn>\n"),
    "phi3": (PHI3, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"], None,
             "<|endoftext|>", "<|end|>", True, "{a}<|end|>\n", "{a}<|end|>\n<|endoftext|>"),
    "mistral": (MISTRAL, ["[INST]", "[/INST]"], "<s>", "</s>", "</s>", False, "{a}</s>", "{a}</s>"),
}
ANSWERS = ["A small red star moves left.", "It is red."]


def family_tokenizer(folder, family: str):
    template, specials, bos, eos, *_ = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": specials + [t for t in (bos, eos) if t]})
    tok.bos_token, tok.eos_token = bos, eos
    tok.pad_token = None
    tok.chat_template = template
    return tok


def conversation(system: bool) -> list[dict]:
    turns = [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": ANSWERS[0]},
             {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": ANSWERS[1]}]
    return ([{"from": "system", "value": "Answer briefly."}] if system else []) + turns


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return world_text_tokenizer(tmp_path_factory.mktemp("templates") / "text-tokenizer")


@pytest.fixture(scope="module")
def models(tokenizer_dir, tmp_path_factory):
    out = {}
    for family in FAMILIES:
        tok = family_tokenizer(tokenizer_dir, family)
        out[family] = tiny_videollm(tokenizer_dir.parent, text_tokenizer=tok)
    return out


def _runs(labels: list[int]) -> list[list[int]]:
    """The contiguous runs of supervised labels."""
    runs, current = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_assistant_only_labels_are_exact(models, family):
    model = models[family]
    tok = model.text_tokenizer
    *_, system, middle, last = FAMILIES[family]
    encoded = model.processor.encode_sample(conversation(system), sample_id="s1")
    runs = _runs(encoded.labels)
    expected = [middle.format(a=ANSWERS[0]), last.format(a=ANSWERS[1])]
    assert [tok.decode(run) for run in runs] == expected  # each answer and its end of turn, nothing else
    masked = sum(label == IGNORE_INDEX for label in encoded.labels)
    assert masked + sum(len(r) for r in runs) == len(encoded.input_ids)
    rendered = tok.apply_chat_template([{"role": "user", "content": "<video>\nWhat moves?"}], tokenize=False,
                                       add_generation_prompt=True)
    print(f"\n{family}: {sum(len(r) for r in runs)} supervised, {masked} masked of {len(encoded.input_ids)};"
          f" prompt rendered: {rendered!r}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_video_span_sits_where_the_template_puts_the_users_content(models, family):
    model = models[family]
    tok = model.text_tokenizer
    system = FAMILIES[family][5]
    messages = [{"role": "system", "content": "Answer briefly."}] if system else []
    messages.append({"role": "user", "content": "<video>\nWhat moves?"})
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before_video = tok(text[: text.index("<video>")], add_special_tokens=False)["input_ids"]
    ids = model.processor.encode_sample(conversation(system)).input_ids
    start = ids.index(tok.convert_tokens_to_ids(VIDEO_START))
    assert ids[:start] == before_video
    span = model.processor.config.tokens_per_video
    assert ids[start + span + 1] == tok.convert_tokens_to_ids("<|video_end|>")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_stops_at_the_templates_end_of_turn(models, family):
    model = models[family]
    tok = model.text_tokenizer
    end = tok.convert_tokens_to_ids(FAMILIES[family][4])
    assert model.processor.end_of_turn_id == end
    script = tok(" red", add_special_tokens=False)["input_ids"] + [end]
    steps = []

    def write_red_then_end(module, inputs, output):  # the LM head writes "red", then the turn's end
        output[..., script[min(len(steps), len(script) - 1)]] += 1e4
        steps.append(1)

    handle = model.llm.get_output_embeddings().register_forward_hook(write_red_then_end)
    try:
        video = torch.zeros(1, 3, 8, model.image_size, model.image_size)
        features = model.encode_video(video)
        ids = model.prompt_ids([{"role": "user", "content": "<video>\nWhat colour?"}], features)
        deltas = list(stream(model, ids, SamplingParams(max_new_tokens=8), video_features=features))
    finally:
        handle.remove()
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.completion_tokens == len(script) - 1
    assert "".join(d.text for d in deltas).strip() == "red"


def test_a_template_without_a_system_role_refuses_one_clearly(models):
    with pytest.raises(ValueError, match="System role not supported"):
        models["gemma"].processor.encode_sample(conversation(True), sample_id="s1")

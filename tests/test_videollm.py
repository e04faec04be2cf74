"""VideoLLM: merge, label masks, no truncation, LLM families, projectors, save/load, generate, LoRA."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import pytest
import torch

from mmvid.data import frames_to_tensor
from mmvid.data.shapes import world
from mmvid.prompting import IGNORE_INDEX, SampleTooLongError, encode_conversation
from mmvid.testing import world_text_tokenizer
from mmvid.videollm import VideoLLM, VideoLLMConfig, choose_attn_implementation, supported_attention

FAMILIES = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
    # GPT-NeoX: parallel attention/MLP residual, LayerNorm with bias, partial rotary embeddings.
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=512, use_parallel_residual=True,
                     rotary_pct=0.25),
}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return world_text_tokenizer(tmp_path_factory.mktemp("text-tokenizer") / "tok", vocab_size=400)


def _model(tokenizer_dir, family="llama", **overrides) -> VideoLLM:
    torch.manual_seed(0)
    settings = dict(llm_config=dict(FAMILIES[family]), text_tokenizer=str(tokenizer_dir),
                    video_tokenizer="vtok_tiny", num_frames=8, max_length=256)
    config = VideoLLMConfig(**{**settings, **overrides})
    return VideoLLM.build(config)


def _video(seed=0, frames=8, size=32) -> torch.Tensor:
    return frames_to_tensor(world.render(world.sample_scene(seed, frames, size, size)))


def _sample(answer="A small red star bounces.", question="<video>\nDescribe the video."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer},
            {"from": "human", "value": "What colour is the star?"}, {"from": "gpt", "value": "red"}]


# ---------------------------------------------------------------- text side


def test_video_span_expansion_and_label_mask_cover_exactly_the_answers(tokenizer_dir):
    model = _model(tokenizer_dir)
    tok = model.text_tokenizer
    encoded = model.processor.encode_sample(_sample())
    ids, labels = encoded.input_ids, encoded.labels
    n = model.tokens_per_video
    start = ids.index(model.video_ids.start)
    assert ids[start + 1 : start + 1 + n] == [model.video_ids.placeholder] * n
    assert ids[start + 1 + n] == model.video_ids.end and ids.count(model.video_ids.placeholder) == n
    supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert supervised == [label for label in labels if label != IGNORE_INDEX]
    assert tok.decode(supervised, skip_special_tokens=False).replace(" ", "") == \
        "A small red star bounces.<|end|>\nred<|end|>\n".replace(" ", "")
    assert all(label == IGNORE_INDEX for label in labels[start : start + n + 2])


@pytest.mark.parametrize("template", ["default", "chatml"])
def test_masks_are_non_empty_and_exact_for_every_template(tokenizer_dir, template):
    model = _model(tokenizer_dir)
    tok = model.text_tokenizer
    if template == "chatml":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = CHATML
    encoded = encode_conversation(tok, _sample(answer="it bounces"), model.video_ids, 5)
    answer_ids = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert answer_ids
    decoded = tok.decode(answer_ids, skip_special_tokens=False)
    assert "it bounces" in decoded and "red" in decoded
    assert "Describe" not in decoded and "colour" not in decoded


def test_samples_longer_than_max_length_are_rejected_whole_with_their_id(tokenizer_dir):
    model = _model(tokenizer_dir, max_length=40)
    sample = {"id": "long-1", "conversations": _sample()}
    needed = model.processor.count_tokens(sample)
    assert needed > 40
    with pytest.raises(SampleTooLongError, match=rf"'long-1' needs {needed} tokens"):
        model.processor.encode_sample(sample["conversations"], sample_id="long-1")


def test_several_videos_in_one_sample(tokenizer_dir):
    model = _model(tokenizer_dir)
    conv = [{"from": "human", "value": "<video>\n<video>\nSame objects?"}, {"from": "gpt", "value": "no"}]
    encoded = model.processor.encode_sample(conv, num_videos=2)
    batch = model.processor.collate([encoded], videos=[_video(0), _video(1)])
    assert torch.isfinite(model(**batch).loss)
    with pytest.raises(ValueError, match="2 <video> placeholder"):
        model.processor.encode_sample(conv, num_videos=1)


def test_sequences_sharing_a_video_equal_the_video_repeated(tokenizer_dir):
    """video_index: three sequences over two videos encode each video once and give the same loss
    as passing the videos repeated, one per span."""
    model = _model(tokenizer_dir).eval()
    encode = model.processor.encode_sample
    encoded = [encode(_sample()), encode(_sample("A blue circle stays still.")),
               encode(_sample("A red star bounces."))]
    shared = model.processor.collate(encoded, videos=[_video(0), _video(1)], video_index=[1, 0, 1])
    repeated = model.processor.collate(encoded, videos=[_video(1), _video(0), _video(1)])
    with torch.no_grad():
        torch.testing.assert_close(model(**shared).logits, model(**repeated).logits)
    with pytest.raises(ValueError, match="one entry per <video> span"):
        model.processor.collate(encoded, videos=[_video(0)], video_index=[0, 1, 0])
    with pytest.raises(ValueError, match="one entry per <video> span"):
        model.processor.collate(encoded, videos=[_video(0)], video_index=[0, 0])


def test_span_loss_weighs_each_answer_once(tokenizer_dir):
    """answer_span_loss by hand: a 3-token answer and a 1-token answer weigh the same; with equal-length
    answers it is the token mean; text_loss="span" through forward gives it; an unknown name is refused."""
    from mmvid.videollm import answer_span_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 1:4] = torch.tensor([1, 2, 3])  # one 3-token answer (predicted from positions 0-2)
    labels[1, 2] = 4  # one 1-token answer
    labels[1, 5] = 0  # and another
    token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1),
                                              reduction="none")
    token = token.view(2, 5)
    by_hand = (token[0, 0:3].mean() + token[1, 1] + token[1, 4]) / 3
    torch.testing.assert_close(answer_span_loss(logits, labels), by_hand)
    equal = torch.full((2, 6), IGNORE_INDEX)
    equal[0, 2], equal[1, 4] = 1, 3
    torch.testing.assert_close(answer_span_loss(logits, equal),
                               torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 5),
                                                                 equal[:, 1:].reshape(-1)))
    assert answer_span_loss(logits, torch.full((2, 6), IGNORE_INDEX)).item() == 0.0

    model = _model(tokenizer_dir).eval()
    batch = model.processor.collate([model.processor.encode_sample(_sample())], videos=[_video(0)])
    with torch.no_grad():
        out = model(**batch, text_loss="span")
        torch.testing.assert_close(out.loss, answer_span_loss(out.logits, batch["labels"]))
        # a caption and a one-word answer: not the token mean
        assert not torch.allclose(out.loss, model(**batch).loss)
    with pytest.raises(ValueError, match="unknown text_loss"):
        model(**batch, text_loss="sequence")


def test_projector_output_norm_puts_video_at_the_text_scale(tokenizer_dir, tmp_path):
    model = _model(tokenizer_dir, projector_kwargs={"output_norm": True})
    text = model.llm.get_input_embeddings().weight.detach()
    video = model.encode_video(_video()[None]).detach()
    ratio = float(video.norm(dim=-1).mean() / text.norm(dim=-1).mean())
    assert 0.7 < ratio < 1.4, ratio
    plain = _model(tokenizer_dir).encode_video(_video()[None]).detach()
    assert torch.allclose(video.mean(-1), torch.zeros(1), atol=1e-4) and not torch.allclose(
        plain.mean(-1), torch.zeros(1), atol=1e-4)
    reloaded = VideoLLM.from_pretrained(model.save_pretrained(tmp_path / "m"))
    torch.testing.assert_close(reloaded.encode_video(_video()[None]), video)


# ---------------------------------------------------------------- merge


def test_merge_refuses_a_count_mismatch(tokenizer_dir):
    model = _model(tokenizer_dir)
    batch = model.processor.collate([model.processor.encode_sample(_sample())])
    features = model.encode_video(torch.stack([_video(0), _video(1)]))  # two videos for one span
    with pytest.raises(ValueError,
                       match=rf"tokens: {model.tokens_per_video}, features: {2 * model.tokens_per_video}"):
        model(input_ids=batch["input_ids"], video_features=features)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_llm_family_trains(tokenizer_dir, family):
    model = _model(tokenizer_dir, family)
    encode = model.processor.encode_sample
    batch = model.processor.collate([encode(_sample()), encode(_sample("A blue circle stays still."))],
                                    videos=[_video(0), _video(1)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.mark.parametrize("projector, kwargs", [("linear", {}), ("mlp2x_gelu", {}), ("mlp3x_gelu", {}),
                                               ("pool", {"budget": 6}),
                                               ("resampler", {"num_queries": 4, "depth": 1})])
def test_each_projector_feeds_the_llm(tokenizer_dir, projector, kwargs):
    model = _model(tokenizer_dir, projector=projector, projector_kwargs=kwargs)
    if projector in ("pool", "resampler"):
        assert model.tokens_per_video == next(iter(kwargs.values()))
    else:
        assert model.tokens_per_video == model.video_tokenizer.num_tokens(8, 32, 32)
    batch = model.processor.collate([model.processor.encode_sample(_sample())], videos=[_video()])
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters() if p.requires_grad)


# ---------------------------------------------------------------- freezing, attention


def test_freezing_flags_and_lora(tokenizer_dir):
    model = _model(tokenizer_dir, train_llm=False)
    counts = model.apply_trainable()
    assert counts["llm"] == 0 and counts["projector"] > 0 and counts["video_tokenizer"] == 0
    lora = _model(tokenizer_dir, lora=True, lora_r=4)
    names = [n for n, p in lora.llm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_attention_choice_on_cpu():
    assert choose_attn_implementation("auto", "cpu", torch.float32) == "sdpa"
    assert choose_attn_implementation("eager", "cpu", torch.float32) == "eager"
    with pytest.raises(ValueError, match="flash-attn"):
        choose_attn_implementation("flash_attention_2", "cpu", torch.bfloat16)


def test_attention_follows_what_each_architecture_supports(tokenizer_dir):
    """Gemma2 refuses SDPA: auto falls back to eager; asking for SDPA names what it accepts."""
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM

    assert supported_attention(LlamaForCausalLM) == ["flash_attention_2", "sdpa", "eager"]
    assert supported_attention(Gemma2ForCausalLM) == ["flash_attention_2", "eager"]
    assert choose_attn_implementation("auto", "cpu", torch.float32, Gemma2ForCausalLM) == "eager"
    refused = r"Gemma2ForCausalLM does not support .*'sdpa'.*\['flash_attention_2', 'eager'\]"
    with pytest.raises(ValueError, match=refused):
        choose_attn_implementation("sdpa", "cpu", torch.float32, Gemma2ForCausalLM)
    gemma2 = dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    model = VideoLLM.build(VideoLLMConfig(llm_config=gemma2, text_tokenizer=str(tokenizer_dir),
                                          video_tokenizer="vtok_tiny", num_frames=8, max_length=256))
    assert model.llm.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="accepts"):
        VideoLLM.build(VideoLLMConfig(llm_config=gemma2, text_tokenizer=str(tokenizer_dir), num_frames=8,
                                      video_tokenizer="vtok_tiny", attn_implementation="sdpa"))


@pytest.mark.parametrize("model_type", ["phi3", "smollm3"])
def test_special_ids_of_a_model_built_from_a_config_are_its_tokenizers(tokenizer_dir, model_type, caplog):
    """Phi-3's and SmolLM3's configs default to pad ids 32000 and 128004, outside a 400-token vocabulary."""
    llm_config = dict(model_type=model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=7)
    with caplog.at_level("WARNING", logger="mmvid.videollm"):
        model = VideoLLM.build(VideoLLMConfig(llm_config=llm_config, text_tokenizer=str(tokenizer_dir),
                                              video_tokenizer="vtok_tiny", num_frames=8, max_length=256))
    tok = model.text_tokenizer
    assert [getattr(model.llm.config, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")] == \
        [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    assert "llm_config sets pad_token_id=7" in caplog.text  # a different id given in the config is replaced
    video = torch.zeros(1, 3, 8, model.image_size, model.image_size)
    assert model.generate(video=video, prompt="What moves?", max_new_tokens=3) is not None


def test_a_pretrained_llm_whose_ids_disagree_with_its_tokenizer_is_warned(tokenizer_dir, tmp_path, caplog):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(**{**FAMILIES["llama"], "vocab_size": len(tok) + 8, "eos_token_id": 5,
                                     "bos_token_id": tok.bos_token_id})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    with caplog.at_level("WARNING", logger="mmvid.videollm"):
        VideoLLM.build(VideoLLMConfig(llm=str(tmp_path / "llm"), video_tokenizer="vtok_tiny", num_frames=8))
    assert f"eos_token_id=5 but its text tokenizer's is {tok.eos_token_id}" in caplog.text
    assert "bos_token_id" not in caplog.text


# ---------------------------------------------------------------- checkpoints and generation


@pytest.mark.parametrize("overrides", [{}, {"lora": True, "lora_r": 4}])
def test_save_load_round_trip_gives_identical_logits(tokenizer_dir, tmp_path, overrides):
    model = _model(tokenizer_dir, "qwen2", **overrides).eval()
    if overrides.get("lora"):  # make the adapters non-trivial
        with torch.no_grad():
            for n, p in model.llm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    batch = model.processor.collate([model.processor.encode_sample(_sample())], videos=[_video()])
    model.save_pretrained(tmp_path)
    again = VideoLLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert again.manifest() == model.manifest()


def test_loading_checks_the_manifest_and_the_folder(tokenizer_dir, tmp_path):
    model = _model(tokenizer_dir)
    model.save_pretrained(tmp_path / "ok")
    record = json.loads((tmp_path / "ok" / "config.json").read_text())
    record["manifest"]["tokens_per_video"] += 1
    (tmp_path / "ok" / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="tokens_per_video"):
        VideoLLM.from_pretrained(tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="not a VideoLLM checkpoint"):
        VideoLLM.from_pretrained(tmp_path / "missing")


def test_a_decoder_fine_tuned_alone_swaps_in_and_a_changed_encoder_is_refused(tokenizer_dir, tmp_path):
    model = _model(tokenizer_dir).eval()
    video = _video()[None]
    tokens = model.video_tokenizer.encode(video)
    tuned = copy.deepcopy(model.video_tokenizer)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if name in set(tuned.decoder_parameter_names()):
                param.add_(0.01)
    tuned.save_pretrained(tmp_path / "tuned")
    with torch.no_grad():
        before = model.video_tokenizer.decode(tokens, num_frames=8)
        model.load_video_decoder(tmp_path / "tuned")
        torch.testing.assert_close(model.video_tokenizer.encode(video), tokens, rtol=0, atol=0)
        after = model.video_tokenizer.decode(tokens, num_frames=8)
        torch.testing.assert_close(after, tuned.decode(tokens, num_frames=8), rtol=0, atol=0)
    assert not torch.equal(before, after)
    with torch.no_grad():
        next(p for n, p in tuned.named_parameters() if n.startswith("to_tokens")).add_(0.01)
    tuned.save_pretrained(tmp_path / "encoder-changed")
    with pytest.raises(ValueError, match="encoder weight 'to_tokens"):
        model.load_video_decoder(tmp_path / "encoder-changed")
    from mmvid.video_tokenizers import build_video_tokenizer

    build_video_tokenizer("frames_tiny").save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="different video tokenizer"):
        model.load_video_decoder(tmp_path / "other")
    # a decoder of another shape (tuned alone with decoder_head=conv) replaces the tokenizer whole
    from mmvid.video_tokenizers import load_video_tokenizer

    mine = model.video_tokenizer
    conv = build_video_tokenizer(mine.preset, **{**asdict(mine.config), "decoder_head": "conv"})
    conv.load_state_dict(mine.state_dict(), strict=False)
    with torch.no_grad():
        conv.decoder.refine.out.weight.add_(0.01)
    conv.save_pretrained(tmp_path / "conv")
    model.load_video_decoder(tmp_path / "conv")
    assert model.video_tokenizer.config.decoder_head == "conv"
    assert all(not p.requires_grad for p in model.video_tokenizer.parameters())  # frozen, as before
    with torch.no_grad():
        torch.testing.assert_close(model.video_tokenizer.encode(video), tokens, rtol=0, atol=0)
        torch.testing.assert_close(model.video_tokenizer.decode(tokens, num_frames=8),
                                   conv.eval().decode(tokens, num_frames=8))
    model.save_pretrained(tmp_path / "with-conv")
    assert VideoLLM.from_pretrained(tmp_path / "with-conv").video_tokenizer.config.decoder_head == "conv"
    assert load_video_tokenizer(tmp_path / "conv").config.decoder_head == "conv"
    wider = build_video_tokenizer(mine.preset, **{**asdict(mine.config), "token_dim": 2})
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(ValueError, match="token_dim"):
        model.load_video_decoder(tmp_path / "wider")


def test_generate_with_and_without_a_cached_video(tokenizer_dir):
    from transformers.generation.streamers import BaseStreamer

    model = _model(tokenizer_dir).eval()
    video = _video()
    direct = model.generate(video, "What moves?", max_new_tokens=6)
    cached = model.generate(prompt="What moves?", video_features=model.encode_video(video[None]),
                            max_new_tokens=6)
    assert direct == cached

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value)

        def end(self):
            self.chunks.append("end")

    streamer = Collect()
    model.generate(video, "What moves?", max_new_tokens=4, streamer=streamer)
    assert streamer.chunks[-1] == "end" and len(streamer.chunks) >= 2
    torch.manual_seed(0)
    a = model.generate(video, "What moves?", max_new_tokens=6, do_sample=True, temperature=1.5)
    torch.manual_seed(0)
    assert model.generate(video, "What moves?", max_new_tokens=6, do_sample=True, temperature=1.5) == a
    with pytest.raises(ValueError, match="non-empty prompt"):
        model.generate(video, "   ")
    assert isinstance(model.generate(prompt="Hello", max_new_tokens=3), str)  # text only


def test_llm_from_a_local_pretrained_folder(tokenizer_dir, tmp_path):
    """The real loading path: AutoModelForCausalLM.from_pretrained on a folder (saved here, offline)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = dict(FAMILIES["llama"])
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(data.pop("model_type"),
                                                                vocab_size=len(tokenizer), **data))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    model = VideoLLM.build(VideoLLMConfig(llm=str(tmp_path / "llm"), video_tokenizer="vtok_tiny",
                                          num_frames=8))
    torch.testing.assert_close(model.llm.get_input_embeddings().weight, llm.get_input_embeddings().weight)
    batch = model.processor.collate([model.processor.encode_sample(_sample())], videos=[_video()])
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("model_type", ["llama", "openai-gpt", "rwkv"])
def test_the_video_generation_stream_sees_the_whole_sequence(tokenizer_dir, model_type):
    """After feeding generated embeddings, the stream's hidden state is the one of the whole sequence run at
    once, with a KV cache (llama) or without one (openai-gpt, rwkv: each step runs the sequence again)."""
    from transformers import AutoTokenizer

    from mmvid.llm_registry import tiny_llm_config
    from mmvid.videollm import _Stream

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir)) + 3
    torch.manual_seed(0)
    model = VideoLLM.build(VideoLLMConfig(llm_config=tiny_llm_config(model_type, vocab_size=vocab),
                                          text_tokenizer=str(tokenizer_dir), video_tokenizer="vtok_tiny",
                                          num_frames=8)).eval()
    ids = model.text_tokenizer("a red circle moves left", add_special_tokens=False)["input_ids"]
    fed = torch.randn(1, 2, model.llm.get_input_embeddings().embedding_dim)
    with torch.no_grad():
        stream = _Stream(model, ids)
        stream.feed(fed[:, :1])
        stream.feed(fed[:, 1:])
        whole = torch.cat([model.embed(torch.tensor([ids])), fed], 1)
        expected = model.llm(inputs_embeds=whole, output_hidden_states=True).hidden_states[-1][:, -1]
    torch.testing.assert_close(stream.hidden, expected, rtol=1e-4, atol=1e-4)

"""The text generation engine (mmvid.generation): greedy parity with Hugging Face's generate, seeded
sampling, stop strings, streaming, and KV-cache reuse across turns, on a tiny model built from config."""

from __future__ import annotations

import pytest
import torch

from mmvid.generation import (
    PromptCache,
    SamplingParams,
    filter_logits,
    generate,
    prefill,
    sample_tokens,
    stream,
)
from mmvid.testing import tiny_videollm, world_clips
from mmvid.text_tokenizer import VIDEO_TOKEN

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTION = [{"role": "user", "content": f"{VIDEO_TOKEN}\nWhat moves?"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_videollm(tmp_path_factory.mktemp("engine"), seed=0)


@pytest.fixture(scope="module")
def videos(model):
    clips = world_clips(2, model.config.num_frames, model.image_size)
    return [model.encode_video(clip[None]) for clip in clips]  # two different videos, (1, N, hidden) each


def hf_greedy(model, ids, features, n):
    """The reference: Hugging Face's greedy generate on the same embeddings, cut at eos."""
    input_ids = torch.tensor([ids])
    embeds = model.embed(input_ids, video_features=features)
    eos = model.text_tokenizer.eos_token_id
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=n,
                             do_sample=False, eos_token_id=eos,
                             pad_token_id=model.text_tokenizer.pad_token_id)
    tokens = out[0].tolist()
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


def prompt(model, videos, with_video):
    features = videos[0] if with_video else None
    messages = QUESTION if with_video else [{"role": "user", "content": "There are two objects:"}]
    return messages, model.prompt_ids(messages, features), features


@pytest.mark.parametrize("with_video", [True, False])
def test_greedy_matches_hf_generate_token_for_token(model, videos, with_video):
    messages, ids, features = prompt(model, videos, with_video)
    expected = hf_greedy(model, ids, features, 20)
    out = generate(model, ids, SamplingParams(max_new_tokens=20), video_features=features)
    assert out.token_ids == expected
    assert out.finish_reason == ("length" if len(expected) == 20 else "stop")
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(expected)
    assert out.usage.cached_tokens == 0
    assert model.generate(messages=messages, video_features=features, max_new_tokens=20) == \
        model.text_tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_seeded_sampling_repeats_and_top_k_one_is_greedy(model, videos):
    ids = model.prompt_ids(QUESTION, videos[0])

    def run(**kw):
        params = SamplingParams(max_new_tokens=12, **kw)
        return generate(model, ids, params, video_features=videos[0]).token_ids

    a = run(temperature=1.0, seed=3)
    assert run(temperature=1.0, seed=3) == a
    # an explicit generator, same draws
    assert generate(model, ids, SamplingParams(max_new_tokens=12, temperature=1.0), video_features=videos[0],
                    generator=torch.Generator().manual_seed(3)).token_ids == a
    assert any(run(temperature=1.0, seed=s) != a for s in (4, 5, 6))
    assert run(temperature=1.0, top_k=1, seed=0) == run()


@pytest.mark.parametrize("with_video", [True, False])
def test_stream_gives_the_text_of_hf_generate_and_stops_at_strings(model, videos, with_video):
    """The untrained model writes runs of byte tokens that decode differently once more bytes come:
    the pieces still add up to the text of all the ids decoded at once."""
    _, ids, features = prompt(model, videos, with_video)
    text = model.text_tokenizer.decode(hf_greedy(model, ids, features, 20), skip_special_tokens=True)
    deltas = list(stream(model, ids, SamplingParams(max_new_tokens=20), video_features=features))
    assert "".join(d.text for d in deltas) == text and sum(bool(d.text) for d in deltas) >= 2
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1]) and deltas[-1].finish_reason
    stop = text.strip()[len(text.strip()) // 2:][:2]  # two characters from the middle of the answer
    params = SamplingParams(max_new_tokens=20, stop=("never said", stop))
    deltas = list(stream(model, ids, params, video_features=features))
    assert "".join(d.text for d in deltas) == text[:text.index(stop)]
    assert deltas[-1].finish_reason == "stop" and all(stop not in d.text for d in deltas)
    assert generate(model, ids, params, video_features=features).text == text[:text.index(stop)]


def test_a_later_turn_reuses_the_cache_and_gets_the_logits_of_a_fresh_run(model, videos):
    cache = PromptCache()
    first = generate(model, model.prompt_ids(QUESTION, videos[0]), SamplingParams(max_new_tokens=6),
                     video_features=videos[0], cache=cache)
    later = QUESTION + [{"role": "assistant", "content": first.text},
                        {"role": "user", "content": "And its colour?"}]
    ids = model.prompt_ids(later, videos[0])
    reused = prefill(model, ids, videos[0], cache)
    assert cache.reused > model.tokens_per_video  # the video span and the first turn came from the cache
    torch.testing.assert_close(reused, prefill(model, ids, videos[0]))
    # Another video in the same place: only the text before it is reused, and the logits are the new video's.
    other = prefill(model, ids, videos[1], cache)
    assert 0 < cache.reused <= ids.index(model.video_ids.placeholder)
    torch.testing.assert_close(other, prefill(model, ids, videos[1]))
    assert not torch.allclose(other, reused)


def test_usage_counts_cached_tokens_and_stopping_early_keeps_the_cache(model, videos):
    cache = PromptCache()
    ids = model.prompt_ids(QUESTION, videos[0])
    for delta in stream(model, ids, SamplingParams(max_new_tokens=8), video_features=videos[0], cache=cache):
        break  # a client that goes away after the first token
    again = generate(model, ids, SamplingParams(max_new_tokens=8), video_features=videos[0], cache=cache)
    assert again.usage.cached_tokens == len(ids) - 1  # all the prompt but its last token
    fresh = generate(model, ids, SamplingParams(max_new_tokens=8), video_features=videos[0])
    assert again.token_ids == fresh.token_ids


def test_video_features_are_encoded_once_per_key():
    cache, calls = PromptCache(max_videos=2), []
    def encode(name):
        return lambda: calls.append(name) or torch.full((1, 2, 3), float(len(calls)))

    first = cache.video_features("a.mp4", encode("a"))
    assert cache.video_features("a.mp4", encode("a")) is first and calls == ["a"]
    cache.video_features("b.mp4", encode("b"))
    cache.video_features("c.mp4", encode("c"))  # the oldest, a, goes
    cache.reset()  # forgets the KV cache, not the videos
    assert list(cache.videos) == ["b.mp4", "c.mp4"]


def test_sampler_and_bad_params():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0]])
    assert sample_tokens(logits).tolist() == [1]
    draws = sample_tokens(logits.expand(200, 4), temperature=1.0, top_k=2,
                          generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}
    assert torch.isinf(filter_logits(logits, top_p=0.5)).sum() == 3
    assert SamplingParams(stop="\n").stop == ("\n",) and SamplingParams(stop=["", "x"]).stop == ("x",)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_ids_past_the_tokenizer_are_never_sampled(tmp_path):
    """A padded vocabulary (Qwen2.5: 151936 rows, 151665 tokens): rows past the tokenizer are never sampled,
    even when they score highest."""
    padded = tiny_videollm(tmp_path, seed=0)
    vocab = len(padded.text_tokenizer)
    padded.llm.resize_token_embeddings(vocab + 64)

    def prefer_padding(module, inputs, output):
        output[..., vocab + 3] += 1e4

    handle = padded.llm.get_output_embeddings().register_forward_hook(prefer_padding)
    try:
        ids = padded.prompt_ids([{"role": "user", "content": "There are two objects:"}])
        done = generate(padded, ids, SamplingParams(max_new_tokens=4))
    finally:
        handle.remove()
    assert done.token_ids and all(t < vocab for t in done.token_ids)

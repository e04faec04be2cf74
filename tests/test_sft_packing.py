"""pack_questions: one video's question/answer rounds as one packed row (the video computed once) that
gives every answer exactly what its split sequence gives, and nothing from the other rounds."""

from __future__ import annotations

import json

import pytest
import torch

from mmvid.prompting import IGNORE_INDEX, pack_rounds
from mmvid.sft.data import SFTDataset, collate, split_rounds
from mmvid.testing import tiny_videollm, world_clips

SYSTEM = {"from": "system", "value": "Answer briefly."}


def conversation(first_question="What happens?", first_answer="A red circle moves left."):
    return [SYSTEM,
            {"from": "human", "value": f"<video>\n{first_question}"}, {"from": "gpt", "value": first_answer},
            {"from": "human", "value": "What colour is the circle?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many objects are there?"}, {"from": "gpt", "value": "two"}]


def same_questions():
    """Rounds whose tokens agree up to the answers: the prefix must stop before the first answer token."""
    turns = [SYSTEM]
    for answer in ("A red circle moves left.", "red", "two"):
        turns += [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": answer}]
    return turns


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("packing")


def rounds_and_packed(model, conv):
    rounds = [model.processor.encode_sample(turns, num_videos=1) for turns in split_rounds(conv)]
    return rounds, pack_rounds(rounds, model.video_ids)


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(L, V) logits and (L,) labels of one row -> the log-prob of each supervised token, in order
    (the logits at t - 1 predict the label at t, as the LLM's loss shifts them)."""
    logp = torch.log_softmax(logits[:-1].float(), -1)
    target = labels[1:]
    keep = target != IGNORE_INDEX
    return logp[keep].gather(-1, target[keep, None])[:, 0]


def test_packed_row_holds_the_prefix_once_then_each_round(workdir, one_thread):
    model = tiny_videollm(workdir)
    rounds, packed = rounds_and_packed(model, conversation())
    P = packed.prefix_length
    assert len(packed) == P + sum(end - start for start, end in packed.segments) < sum(len(r) for r in rounds)
    assert (packed.input_ids.index(model.video_ids.end) < P and packed.num_videos == 1
            and packed.targets == [False])
    for r, (start, end) in zip(rounds, packed.segments):
        assert packed.input_ids[:P] == r.input_ids[:P] and packed.input_ids[start:end] == r.input_ids[P:]
        assert packed.labels[start:end] == r.labels[P:] and packed.labels[start] == IGNORE_INDEX
    assert set(packed.labels[:P]) == {IGNORE_INDEX}
    # The video saved per extra round: its span and everything before it.
    K = len(rounds)
    assert sum(len(r) for r in rounds) - len(packed) == (K - 1) * P > (K - 1) * model.tokens_per_video
    # Rounds that differ before their video cannot share it.
    apart = [model.processor.encode_sample([{"from": "human", "value": f"{word} <video>"},
                                            {"from": "gpt", "value": "ok"}])
             for word in ("Look:", "Watch this:")]
    with pytest.raises(ValueError, match="does not hold the whole video"):
        pack_rounds(apart, model.video_ids)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("turns", [conversation, same_questions])
def test_packed_answers_score_exactly_as_split_ones(workdir, one_thread, attn, turns):
    model = tiny_videollm(workdir, attn_implementation=attn)
    assert model.llm.config._attn_implementation == attn
    rounds, packed = rounds_and_packed(model, turns())
    video = world_clips(1, model.config.num_frames, model.image_size)[0]
    split = model.processor.collate(rounds, videos=[video], video_index=[0] * len(rounds))
    together = model.processor.collate([packed], videos=[video])
    assert together["attention_mask"].shape == (1, 1, len(packed), len(packed))
    with torch.no_grad():
        split_out, packed_out = model(**split), model(**together)
    expected = torch.cat(
        [answer_logprobs(split_out.logits[i], split["labels"][i]) for i in range(len(rounds))])
    got = answer_logprobs(packed_out.logits[0], together["labels"][0])
    assert len(expected) == sum(sum(label != IGNORE_INDEX for label in r.labels) for r in rounds)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # summed answer log-likelihood
    torch.testing.assert_close(got.sum(), expected.sum(), atol=1e-4, rtol=1e-5)
    # mean over the same tokens
    torch.testing.assert_close(packed_out.loss, split_out.loss, atol=1e-5, rtol=1e-5)


def test_a_round_never_sees_another_rounds_text(workdir, one_thread):
    model = tiny_videollm(workdir)
    video = world_clips(1, model.config.num_frames, model.image_size)[0]
    _, a = rounds_and_packed(model, conversation())
    changed = conversation("Which shape is there?", "A large blue square blinks twice, then stops.")
    _, b = rounds_and_packed(model, changed)
    # round 1 changed, length too
    assert a.segments[0][1] - a.segments[0][0] != b.segments[0][1] - b.segments[0][0]
    with torch.no_grad():
        logits_a = model(**model.processor.collate([a], videos=[video])).logits[0]
        logits_b = model(**model.processor.collate([b], videos=[video])).logits[0]
    for (sa, ea), (sb, eb) in zip(a.segments[1:], b.segments[1:]):
        torch.testing.assert_close(logits_a[sa:ea], logits_b[sb:eb], atol=1e-5, rtol=1e-5)
    # The check has teeth: under a plain causal mask the later rounds read round 1 and change with it.
    batch = model.processor.collate([a], videos=[video])
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        causal = model(**batch).logits[0]
    start, end = a.segments[1]
    assert (causal[start:end] - logits_a[start:end]).abs().max() > 1e-3


def test_a_batch_mixing_packed_plain_and_text_to_video_rows_trains(workdir, one_thread):
    model = tiny_videollm(workdir, generation_head="auto", generation_head_kwargs={"width": 32, "depth": 2})
    _, packed = rounds_and_packed(model, conversation())
    # unsplit, 4 rounds
    plain = model.processor.encode_sample(conversation() + [{"from": "human", "value": "And then?"},
                                                            {"from": "gpt", "value": "The circle stops."}])
    t2v = model.processor.encode_sample([{"from": "human", "value": "A red circle moves left."},
                                         {"from": "gpt", "value": "<video>"}])
    videos = list(world_clips(3, model.config.num_frames, model.image_size))
    batch = model.processor.collate([packed, plain, t2v], videos=videos)
    assert batch["video_targets"].tolist() == [False, False, True]
    assert batch["position_ids"].shape == batch["input_ids"].shape
    assert len(packed) < batch["input_ids"].shape[1]  # the packed row is padded too
    # every query, padding too, attends somewhere (an empty row: NaN)
    assert batch["attention_mask"].any(-1).all()
    # In eval, every row's logits are those it has in a batch of its own kind (plain rows: the 2D-mask batch).
    with torch.no_grad():
        mixed = model(**batch).logits
        alone = model(**model.processor.collate([packed], videos=videos[:1])).logits[0]
        unpacked = model(**model.processor.collate([plain, t2v], videos=videos[1:])).logits
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed[0, : len(packed)], alone, atol=1e-5, rtol=1e-5)
    for row, s in ((1, plain), (2, t2v)):
        torch.testing.assert_close(mixed[row, : len(s)], unpacked[row - 1, : len(s)], atol=1e-5, rtol=1e-5)
    model.train()
    out = model(**batch)
    assert torch.isfinite(out.loss) and torch.isfinite(out.lm_loss) and torch.isfinite(out.gen_loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert next(model.generation_head.parameters()).grad is not None


def test_dataset_packs_a_videos_rounds_and_keeps_the_rest_apart(workdir, one_thread, tmp_path):
    from mmvid.data import write_video
    from mmvid.data.video_io import tensor_to_frames

    model = tiny_videollm(workdir, generation_head="auto", generation_head_kwargs={"width": 32, "depth": 2})
    (tmp_path / "videos").mkdir()
    for k, clip in enumerate(world_clips(3, 8, 32)):
        write_video(tmp_path / "videos" / f"{k}.mp4", tensor_to_frames(clip), fps=8)
    qa = [{"id": "q0", "video": "videos/0.mp4", "conversations": conversation()},
          # q1: one round, nothing to pack
          {"id": "q1", "video": "videos/1.mp4", "conversations": conversation()[:3]}]
    t2v = [{"id": "t0", "video": "videos/0.mp4", "prompt": "A red circle moves left."},  # joins q0
           {"id": "t2", "video": "videos/2.mp4", "prompt": "A blue square blinks."}]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(x) for x in qa))
    (tmp_path / "t2v.jsonl").write_text("\n".join(json.dumps(x) for x in t2v))
    files = [str(tmp_path / "sft.jsonl"), str(tmp_path / "t2v.jsonl")]
    data = SFTDataset(files, model.processor, split_turns=True, pack_questions=True)
    split = SFTDataset(files, model.processor, split_turns=True)
    items = [data[i] for i in range(3)]
    assert [[type(e).__name__ for e in item["encoded"]] for item in items] == [
        ["PackedSample", "EncodedSample"], ["EncodedSample"], ["EncodedSample"]]
    assert items[0]["spans"] == [0, 0] and len(items[0]["videos"]) == 1
    assert len(items[0]["encoded"][0]) < sum(len(e) for e in split[0]["encoded"][:3])
    batch = collate(model.processor, items)
    assert batch["video_index"].tolist() == [0, 0, 1, 2] and batch["attention_mask"].ndim == 4
    batch.pop("index")
    model.train()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with pytest.raises(ValueError, match="needs split_turns"):
        SFTDataset(files, model.processor, pack_questions=True)


def test_flash_attention_cannot_take_packed_rows(workdir, one_thread, monkeypatch, tmp_path):
    from mmvid.sft.config import SFTConfig, SFTData
    from mmvid.sft.trainer import build_phases

    model = tiny_videollm(workdir)
    rounds, packed = rounds_and_packed(model, conversation())
    video = world_clips(1, model.config.num_frames, model.image_size)[0]
    block = model.processor.collate([packed], videos=[video])
    (tmp_path / "sft.jsonl").write_text(json.dumps({"id": "q", "video": "v.mp4",
                                                    "conversations": conversation()}))
    monkeypatch.setattr(model.llm.config, "_attn_implementation", "flash_attention_2")
    cfg = SFTConfig(data=SFTData(train=[str(tmp_path / "sft.jsonl")], split_turns=True, pack_questions=True,
                                 curriculum_steps=0))
    with pytest.raises(ValueError, match="need attn_implementation 'sdpa' or 'eager'"):
        build_phases(cfg, model, rank=0, world_size=1)  # the SFT data refuse before reading any
    with pytest.raises(ValueError, match="'flash_attention_2'"):
        model(**block)
    # Without packed rows the batch is the plain one, which flash attention takes.
    plain = model.processor.collate(rounds, videos=[video], video_index=[0] * len(rounds))
    assert set(plain) == {"input_ids", "attention_mask", "labels", "videos", "video_index"}
    assert plain["attention_mask"].shape == plain["input_ids"].shape

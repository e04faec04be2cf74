"""Text-to-video through VideoLLM: the generation head on assistant-turn <video> spans, sampling,
save/load, and the SFT data that feeds it (heads alone: test_generation_heads.py)."""

import json

import pytest
import torch

from mmvid.generation_heads import DiscreteVideoHead, FlowVideoHead
from mmvid.sft.data import SFTDataset, collate, is_text_to_video, t2v_conversation
from mmvid.testing import tiny_videollm, world_clips
from mmvid.videollm import VideoLLM

PROMPT = "There are two objects: a small red circle that moves left and a large blue square that blinks."


def t2v_turns(prompt=PROMPT):
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": "<video>"}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("generation")


def flow_model(workdir, **config):
    settings = dict(generation_head="auto",
                    generation_head_kwargs={"width": 32, "depth": 2, "sample_steps": 4})
    return tiny_videollm(workdir, **{**settings, **config})


def sweet_model(workdir, **config):
    settings = dict(video_tokenizer="sweettok_tiny", video_tokenizer_overrides={"output": "ids"},
                    projector="embedding", num_frames=5, generation_head="auto")
    return tiny_videollm(workdir, **{**settings, **config})


def t2v_batch(model, n=2, seed=0):
    videos = list(world_clips(n, model.config.num_frames, model.image_size, seed=seed))
    encoded = [model.processor.encode_sample(t2v_turns(f"{PROMPT} {k}")) for k in range(n)]
    return model.processor.collate(encoded, videos)


def test_auto_picks_the_head_for_the_tokenizer(workdir, one_thread):
    assert isinstance(flow_model(workdir).generation_head, FlowVideoHead)
    model = sweet_model(workdir)
    assert isinstance(model.generation_head, DiscreteVideoHead)
    manifest = model.manifest()["generation"]
    assert manifest["head"] == "discrete" and manifest["id_offset"] == len(model.text_tokenizer)
    assert manifest["extended_vocab_size"] == len(model.text_tokenizer) + model.video_tokenizer.codebook_size
    assert tiny_videollm(workdir).manifest()["generation"] is None


def test_flow_kwargs_with_auto_on_ids_warn_and_with_discrete_raise(workdir, one_thread, caplog):
    """The default config's flow-head kwargs must not break a switch to SweetTok ids under "auto"."""
    flow_kwargs = {"width": 32, "depth": 2}
    with caplog.at_level("WARNING", logger="mmvid.videollm"):
        model = sweet_model(workdir, generation_head_kwargs=flow_kwargs)
    assert isinstance(model.generation_head, DiscreteVideoHead)
    assert "not used" in caplog.text and "width" in caplog.text
    with pytest.raises(ValueError, match="discrete generation head takes no generation_head_kwargs"):
        sweet_model(workdir, generation_head="discrete", generation_head_kwargs=flow_kwargs)


def test_video_in_an_assistant_turn_is_a_target(workdir, one_thread):
    model = flow_model(workdir)
    understanding = model.processor.encode_sample([{"from": "human", "value": "<video>\nWhat moves?"},
                                                   {"from": "gpt", "value": "a circle"}])
    generation = model.processor.encode_sample(t2v_turns())
    assert understanding.targets == [False] and generation.targets == [True]
    videos = list(world_clips(2, model.config.num_frames, model.image_size))
    batch = model.processor.collate([understanding, generation], videos)
    assert batch["video_targets"].tolist() == [False, True]
    out = model(**batch)
    assert torch.isfinite(out.gen_loss) and torch.isfinite(out.lm_loss)
    assert torch.allclose(out.loss, out.lm_loss + out.gen_loss)


@pytest.mark.parametrize("kind", ["flow", "regression", "discrete"])
def test_each_head_learns_a_tiny_batch_end_to_end(workdir, one_thread, kind):
    model = sweet_model(workdir) if kind == "discrete" else flow_model(workdir, generation_head=kind)
    model.train()
    batch = t2v_batch(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(40):
        loss = model(**batch).gen_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_flow_generation_prompt_to_frames_is_seeded(workdir, one_thread):
    model = flow_model(workdir)
    a = model.generate_video(PROMPT, seed=3, guidance_scale=2.0)
    T, S = model.config.num_frames, model.image_size
    assert a.shape == (T, S, S, 3) and a.dtype == torch.uint8
    assert torch.equal(a, model.generate_video(PROMPT, seed=3, guidance_scale=2.0))
    assert not torch.equal(a, model.generate_video(PROMPT, seed=4, guidance_scale=2.0))


def test_guidance_one_is_no_guidance(workdir, one_thread, monkeypatch):
    model = flow_model(workdir)
    calls = []
    original = model.generation_head.sample
    monkeypatch.setattr(model.generation_head, "sample",
                        lambda h, u=None, **kw: calls.append(u) or original(h, u, **kw))
    model.generate_video(PROMPT, seed=0, guidance_scale=1.0)
    assert calls and all(u is None for u in calls)  # no unconditional stream at all
    calls.clear()
    model.generate_video(PROMPT, seed=0, guidance_scale=3.0)
    assert all(u is not None for u in calls)


def test_discrete_ids_stay_in_their_slots_and_decode(workdir, one_thread, monkeypatch):
    model = sweet_model(workdir)
    seen = []
    decode = model.video_tokenizer.decode
    monkeypatch.setattr(model.video_tokenizer, "decode",
                        lambda ids, num_frames=None: seen.append(ids) or decode(ids, num_frames))
    frames = model.generate_video(PROMPT, seed=0, temperature=3.0, guidance_scale=2.0)
    ids = seen[0]
    assert ids.dtype == torch.long and ids.shape == (1, model.video_tokenizer.num_tokens(5, 32, 32))
    model.video_tokenizer.check_ids(ids)  # raises when an id is outside its part-of-speech slot
    assert int(ids.min()) >= 0 and int(ids.max()) < model.video_tokenizer.codebook_size
    assert frames.shape == (5, 32, 32, 3)


def test_generated_video_is_written(workdir, one_thread, tmp_path):
    from mmvid.data import read_video

    model = flow_model(workdir)
    path = tmp_path / "out.gif"
    frames = model.generate_video(PROMPT, seed=0, output=path)
    assert path.is_file() and read_video(path).frames.shape[0] == frames.shape[0]


def test_save_load_keeps_the_head(workdir, one_thread, tmp_path):
    model = flow_model(workdir)
    model.train()
    batch = t2v_batch(model)
    model(**batch).loss.backward()  # initialises the head's token normalisation
    model.eval()
    model.save_pretrained(tmp_path / "m")
    loaded = VideoLLM.from_pretrained(tmp_path / "m").eval()
    assert bool(loaded.generation_head.initialized)
    assert torch.equal(model.generate_video(PROMPT, seed=1), loaded.generate_video(PROMPT, seed=1))


def test_clear_errors(workdir, one_thread):
    plain = tiny_videollm(workdir)
    with pytest.raises(ValueError, match="no generation head"):
        plain.generate_video(PROMPT)
    with pytest.raises(ValueError, match="generation head"):
        plain(**plain.processor.collate([plain.processor.encode_sample(t2v_turns())],
                                        list(world_clips(1, 8, 32))))
    with pytest.raises(ValueError, match="discrete video tokenizer"):
        tiny_videollm(workdir, generation_head="discrete")
    with pytest.raises(ValueError, match="token-by-token projector"):
        tiny_videollm(workdir, generation_head="flow", projector="pool", projector_kwargs={"budget": 4})
    with pytest.raises(ValueError, match="unknown generation_head"):
        tiny_videollm(workdir, generation_head="diffusion")
    model = flow_model(workdir)
    batch = t2v_batch(model, n=1)
    with pytest.raises(ValueError, match="need `videos`"):
        model(input_ids=batch["input_ids"], video_features=model.encode_video(batch["videos"]),
              video_targets=batch["video_targets"])


def test_sft_data_reads_world_t2v_lines_with_prompt_dropout(workdir, one_thread, tmp_path):
    from mmvid.data import write_video
    from mmvid.data.video_io import tensor_to_frames

    model = flow_model(workdir)
    (tmp_path / "videos").mkdir()
    lines = []
    for k, clip in enumerate(world_clips(4, 8, 32)):
        write_video(tmp_path / "videos" / f"{k}.mp4", tensor_to_frames(clip), fps=8)
        lines.append({"id": f"v{k}", "video": f"videos/{k}.mp4", "prompt": f"{PROMPT} {k}", "objects": [],
                      "count": 0})
    (tmp_path / "t2v.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    sample = t2v_conversation(lines[0])
    assert is_text_to_video(sample["conversations"]) and sample["conversations"][0]["value"].startswith(
        PROMPT)
    assert t2v_conversation({"conversations": []}) == {"conversations": []}  # other samples pass through

    torch.manual_seed(0)
    dropped = SFTDataset([str(tmp_path / "t2v.jsonl")], model.processor, prompt_dropout=0.5)
    empties = 0
    for _ in range(10):
        for i in range(4):
            ids = dropped[i]["encoded"][0].input_ids
            empties += model.text_tokenizer.decode(ids).count("red circle") == 0
    assert 5 < empties < 35  # about half of 40
    batch = collate(model.processor, [dropped[0], dropped[1]])
    assert batch["video_targets"].tolist() == [True, True]
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "index"}).gen_loss)
    with pytest.raises(ValueError, match="prompt_dropout"):
        SFTDataset([str(tmp_path / "t2v.jsonl")], model.processor, prompt_dropout=1.0)


def test_t2v_samples_join_the_understanding_sample_of_their_video(workdir, one_thread, tmp_path):
    from mmvid.data import write_video
    from mmvid.data.video_io import tensor_to_frames

    model = flow_model(workdir)
    (tmp_path / "videos").mkdir()
    qa, t2v = [], []
    for k, clip in enumerate(world_clips(3, 8, 32)):
        write_video(tmp_path / "videos" / f"{k}.mp4", tensor_to_frames(clip), fps=8)
        qa.append({"id": f"q{k}", "video": f"videos/{k}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "a circle"},
            {"from": "human", "value": "And then?"}, {"from": "gpt", "value": "it stops"}]})
        t2v.append({"id": f"t{k}", "video": f"videos/{k}.mp4", "prompt": f"{PROMPT} {k}"})
    # same video: joins q0 too
    t2v.append({"id": "alone", "video": "videos/0.mp4", "prompt": "no match", "extra": 1})
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(x) for x in qa[:2]))  # video 2 has no QA sample
    (tmp_path / "t2v.jsonl").write_text("\n".join(json.dumps(x) for x in t2v))
    data = SFTDataset([str(tmp_path / "sft.jsonl"), str(tmp_path / "t2v.jsonl")], model.processor,
                      split_turns=True)
    assert len(data) == 3  # q0 (+ t0, alone), q1 (+ t1), t2 on its own
    first = data[0]
    assert [e.targets for e in first["encoded"]] == [[False], [False], [True], [True]] and first["spans"] == [
        0, 0, 0, 0]
    assert [e.targets for e in data[2]["encoded"]] == [[True]]
    batch = collate(model.processor, [data[0], data[2]])
    assert batch["videos"].shape[0] == 2 and batch["video_index"].tolist() == [0, 0, 0, 0, 1]
    out = model(**{k: v for k, v in batch.items() if k != "index"})
    assert torch.isfinite(out.gen_loss) and torch.isfinite(out.lm_loss)
    unmerged = SFTDataset([str(tmp_path / "sft.jsonl"), str(tmp_path / "t2v.jsonl")], model.processor,
                          merge_t2v=False)
    assert len(unmerged) == 6

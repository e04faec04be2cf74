"""The built-in default's stand-ins and data: the vision tower, the pretrained LLM, cloze conversations,
the cloze formulation of tv_align, the align stage's schedule and the learning-curve plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmvid.data.shapes.build import WorldSettings, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe") / "world"
    build_world(root, WorldSettings(train=24, val=8, test=8, fewshot=0, frames=8, size=32), progress=False)
    return root


# ---------------------------------------------------------------- training text: train split only


def test_cloze_conversations_ask_every_question_with_its_option_text(world):
    from mmvid.sft.world_data import cloze_conversations

    samples = cloze_conversations(world, "train")
    questions = [json.loads(line) for line in (world / "train" / "tv_align.jsonl").read_text().splitlines()]
    by_video = {s["video"]: s for s in samples}
    assert len(samples) == 24
    for q in questions:
        turns = by_video[q["video"]]["conversations"]
        asked = {(h["value"].replace("<video>\n", ""), g["value"]) for h, g in zip(turns[::2], turns[1::2])}
        assert (q["question"], q["answer_text"]) in asked  # the option text, never a letter
    first = samples[0]["conversations"]
    assert first[0]["value"].startswith("<video>\n") and sum("<video>" in t["value"] for t in first) == 1
    with pytest.raises(ValueError, match="must not come from the test split"):
        cloze_conversations(world, "test")


def test_the_attribute_curriculum_holds_only_colour_and_shape_questions(world):
    from mmvid.sft.world_data import attribute_conversations, cloze_conversations

    samples = attribute_conversations(world, "train")
    full = {s["video"]: s for s in cloze_conversations(world, "train")}
    assert len(samples) == 24
    for sample in samples:
        turns = sample["conversations"]
        questions = [h["value"].replace("<video>\n", "") for h in turns[::2]]
        assert (questions
                and all(q.startswith(("What colour is", "What shape is")) for q in questions)), questions
        assert turns[0]["value"].startswith("<video>\n")  # no caption round first
        every = full[sample["video"]]["conversations"]
        kept = {(h["value"].replace("<video>\n", ""), g["value"]) for h, g in zip(every[::2], every[1::2])
                if h["value"].replace("<video>\n", "").startswith(("What colour is", "What shape is"))}
        # all of them, the same answers
        assert {(q, g["value"]) for q, g in zip(questions, turns[1::2])} == kept
    with pytest.raises(ValueError, match="must not come from the val split"):
        attribute_conversations(world, "val")


def test_reading_comprehension_puts_a_caption_in_place_of_the_video(world):
    from mmvid.sft.world_data import reading_comprehension, world_texts

    convs = reading_comprehension(world, "train")
    captions = {c for line in (world / "train" / "captions.jsonl").read_text().splitlines()
                for c in json.loads(line)["captions"]}
    assert convs and all("<video>" not in turn["value"] for conv in convs for turn in conv)
    assert all(conv[0]["value"].split("\n")[0] in captions for conv in convs if "\n" in conv[0]["value"])
    assert not any("relative to" in conv[0]["value"] for conv in convs)  # captions say nothing about where
    # The tokenizer corpus is exactly the training split's captions, questions and options.
    train_questions = [
        json.loads(line) for line in (world / "train" / "tv_align.jsonl").read_text().splitlines()]
    expected = sorted(
        captions_list(world) + [t for q in train_questions for t in (q["question"], *q["options"])])
    assert sorted(world_texts(world, "train")) == expected
    with pytest.raises(ValueError):
        reading_comprehension(world, "val")


def captions_list(world: Path) -> list[str]:
    return [c for line in (world / "train" / "captions.jsonl").read_text().splitlines()
            for c in json.loads(line)["captions"]]


# ---------------------------------------------------------------- the vision tower


def test_cell_labels_follow_the_ground_truth():
    from mmvid.data.shapes import world as w
    from mmvid.vision_tower import cell_labels

    scene = w.Scene(seed=0, num_frames=4, height=64, width=64, background=list(w.BACKGROUNDS)[0],
                    texture="plain",
                    objects=[w.ObjectSpec(shape="square", colour="red", size="large", action="stay_still",
                                          speed="slow",
                                          x=0.3, y=0.7, angle=0.0, clockwise=True, event=None,
                                          event_frame=0)])
    labels = cell_labels({"scene": scene.to_dict()}, [0], 64, 8)[0]  # (4, 8, 8)
    gy, gx = int(0.7 * 64 // 8), int(0.3 * 64 // 8)
    assert labels[2].sum() == 1 and labels[2, gy, gx] == 1  # the centre cell
    assert labels[0, gy, gx] == 1 + list(w.COLOURS).index("red") and labels[1, gy, gx] == 1 + w.SHAPES.index(
        "square")
    assert labels[0, 0, 7] == 0 and labels[1, 0, 7] == 0  # far away: background
    assert (labels[0] > 0).sum() >= 4  # a large square covers several cells


@pytest.mark.parametrize("objective", ["dense", "contrastive"])
def test_the_tower_trains_saves_and_feeds_vtok_like_a_downloaded_model(world, tmp_path, objective,
                                                                       one_thread):
    from transformers import AutoModel

    from mmvid.video_tokenizers import build_video_tokenizer
    from mmvid.vision_tower import TowerConfig, train_tower

    cfg = TowerConfig(world=str(world), out=str(tmp_path / "tower"), objective=objective, image_size=32,
                      grid=4, max_steps=3, minutes=5, batch_size=8, val_videos=4, train_videos=None)
    folder = train_tower(cfg)
    record = json.loads((folder / "tower.json").read_text())
    assert record["steps"] == 3 and record["config"]["objective"] == objective
    assert AutoModel.from_pretrained(folder).config.model_type == "resnet"
    tok = build_video_tokenizer("vtok_tiny", feature_extractor="hf", hf_path=str(folder)).eval()
    assert not any(p.requires_grad for p in tok.features.parameters())
    video = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    assert tok.encode(video).shape == (2, 16 + 7, tok.config.token_dim)
    # the frame-sampling baseline reads the same frames through the same frozen tower
    frames = build_video_tokenizer("frames_tiny", feature_extractor="hf", hf_path=str(folder)).eval()
    pooled = build_video_tokenizer("frames_tiny", feature_extractor="hf", hf_path=str(folder), pool="grid",
                                   pool_size=2).eval()
    assert not any(p.requires_grad for p in frames.encoder.parameters())
    with torch.no_grad():
        assert torch.equal(frames.encoder(video[:, :, 0]), tok.features(video[:, :, 0]))
        assert frames.encode(video).shape == (2, 8 * 16, frames.config.token_dim)
        assert pooled.encode(video).shape == (2, 8 * 4, pooled.config.token_dim)
        assert frames.decode(frames.encode(video)).shape == video.shape
    mtime = (folder / "model.safetensors").stat().st_mtime
    train_tower(cfg)  # a finished tower is not trained again
    assert (folder / "model.safetensors").stat().st_mtime == mtime


def test_a_conv_tower_whose_grid_does_not_match_vtok_is_refused(world, tmp_path, one_thread):
    from mmvid.video_tokenizers import build_video_tokenizer
    from mmvid.vision_tower import TowerConfig, train_tower

    folder = train_tower(TowerConfig(world=str(world), out=str(tmp_path / "t"), image_size=32, grid=4,
                                     max_steps=1, batch_size=4, val_videos=2, train_videos=4))
    with pytest.raises(ValueError, match="patch_size=8"):
        build_video_tokenizer("vtok_tiny", feature_extractor="hf", hf_path=str(folder), patch_size=4)
    with pytest.raises(ValueError, match="unknown tower objective"):
        TowerConfig(objective="pixels")


def test_the_dense_objective_learns_on_one_batch(one_thread):
    from transformers import ResNetModel

    from mmvid.vision_tower import DenseHeads, TowerConfig, resnet_config

    torch.manual_seed(0)
    model, heads = ResNetModel(resnet_config(TowerConfig(image_size=32, grid=4))), DenseHeads(128)
    pixels = torch.randn(4, 3, 32, 32)
    labels = torch.stack([torch.randint(0, n, (4, 4, 4)) for n in heads.sizes], 1)
    opt = torch.optim.Adam([*model.parameters(), *heads.parameters()], lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = heads.loss(model(pixel_values=pixels).last_hidden_state, labels)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ---------------------------------------------------------------- the pretrained LLM


def test_text_pretraining_saves_an_llm_folder_that_videollm_loads(tmp_path, one_thread):
    from mmvid.sft.text_pretrain import TextPretrainConfig, is_pretrained, pretrain_llm
    from mmvid.testing import world_text_tokenizer
    from mmvid.videollm import VideoLLM, VideoLLMConfig

    tokenizer = world_text_tokenizer(tmp_path / "text-tokenizer")
    llm = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    convs = [[{"from": "human", "value": f"a red star bounces.\nWhat colour is the star? {i}"},
              {"from": "gpt", "value": "red"}] for i in range(8)]
    out = pretrain_llm(TextPretrainConfig(out=str(tmp_path / "llm"), tokenizer=str(tokenizer), llm_config=llm,
                                          max_steps=25, batch_size=8, lr=3e-3, warmup_steps=1), convs)
    record = json.loads((out / "pretrain.json").read_text())
    assert is_pretrained(out) and record["steps"] == 25
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]
    model = VideoLLM.build(VideoLLMConfig(llm=str(out), video_tokenizer="vtok_tiny", num_frames=8))
    assert model.llm.get_input_embeddings().num_embeddings == len(model.text_tokenizer)  # no resize needed
    with pytest.raises(ValueError, match="model_type"):
        TextPretrainConfig(llm_config={})


# ---------------------------------------------------------------- the default's two spellings


def test_the_default_yaml_is_exactly_the_config_defaults():
    """train/configs/default.yaml spells out what `deepspeed train/sft.py` with no arguments runs
    (SFTConfig's defaults): a change to one must be made to the other."""
    from mmvid.config import config_to_dict, load_config
    from mmvid.sft.config import SFTConfig

    root = Path(__file__).resolve().parents[1]
    written = load_config(SFTConfig, root / "train" / "configs" / "default.yaml")
    assert config_to_dict(written) == config_to_dict(SFTConfig())


# ---------------------------------------------------------------- align, then SFT: the schedule


def test_align_steps_keep_the_llm_frozen_first():
    from mmvid.sft.config import SFTConfig, SFTData
    from mmvid.sft.trainer import lr_lambda

    cfg = SFTConfig(warmup_steps=10, steps=100, align_steps=20, data=SFTData(curriculum_steps=0))
    llm, projector = lr_lambda(cfg, 100, delay=20), lr_lambda(cfg, 100)
    assert ([llm(s) for s in (0, 19)] == [0.0, 0.0] and llm(20) == pytest.approx(0.1)
            and llm(29) == pytest.approx(1.0))
    assert projector(0) == pytest.approx(0.1) and projector(15) > 0.9
    assert llm(99) < 0.01


# ---------------------------------------------------------------- the learning curve


def test_the_learning_curve_is_drawn_from_a_runs_files(tmp_path):
    from mmvid.plots import plot_curve

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="curve.jsonl"):
        plot_curve(run, tmp_path / "x.png")
    (run / "stages.jsonl").write_text(json.dumps({"stage": "vision_tower", "seconds": 60}) + "\n")
    points = [{"step": s, "stage": "sft", "train_seconds": 30 * s, "formulation": "cloze",
               "metrics": {"acc": 0.25 + 0.1 * s, "colour/acc": 0.3, "acc_letter": 0.25}} for s in range(
                   1, 4)]
    (run / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3 - s / 10, "seconds": s})
                                               + "\n" for s in range(10)))
    path = plot_curve(run, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ---------------------------------------------------------------- SFT data knobs: max_rounds, t2v_fraction


def test_max_rounds_keeps_the_first_round_and_t2v_fraction_drops_generation_sequences(
    world, tmp_path, one_thread):
    from mmvid.sft.data import SFTDataset
    from mmvid.sft.world_data import cloze_conversations
    from mmvid.testing import tiny_videollm

    model = tiny_videollm(tmp_path / "m", generation_head="auto")
    samples = cloze_conversations(world, "train")
    (world / "train" / "cloze-test.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    files = [str(world / "train" / "cloze-test.jsonl"), str(world / "train" / "t2v.jsonl")]
    full = SFTDataset(files, model.processor, split_turns=True, t2v_fraction=1.0)
    capped = SFTDataset(files, model.processor, split_turns=True, max_rounds=3, t2v_fraction=0.0)
    rounds = len(samples[0]["conversations"]) // 2
    assert rounds > 3
    a, b = full[0], capped[0]
    assert len(a["encoded"]) == rounds + 1  # every round, and the video's text-to-video sequence
    # first round + 2 drawn; no text-to-video at fraction 0
    assert len(b["encoded"]) == 3 and not capped.extras
    assert b["encoded"][0].input_ids == a["encoded"][0].input_ids  # the caption round is always kept
    torch.manual_seed(1)
    draws = {tuple(tuple(e.input_ids) for e in capped[0]["encoded"]) for _ in range(6)}
    assert len(draws) > 1  # a fresh draw each read
    with pytest.raises(ValueError, match="max_rounds"):
        SFTDataset(files, model.processor, split_turns=True, max_rounds=0)
    with pytest.raises(ValueError, match="t2v_fraction"):
        SFTDataset(files, model.processor, split_turns=True, t2v_fraction=1.5)


# ---------------------------------------------------------------- the text tokenizer


def test_the_default_bpe_tokenizer_keeps_every_attribute_word_whole(world, tmp_path):
    from mmvid.data.shapes import world as shapes
    from mmvid.sft.config import SFTConfig
    from mmvid.sft.world_data import world_texts
    from mmvid.text_tokenizer import train_text_tokenizer

    cfg = SFTConfig()
    assert cfg.data.text_corpus_model_type == "bpe"
    tok = train_text_tokenizer(world_texts(world, "train"), tmp_path / "tok",
                               vocab_size=cfg.data.text_corpus_vocab,
                               model_type=cfg.data.text_corpus_model_type)
    text = " ".join(captions_list(world))
    words = [w for w in (*shapes.COLOURS, *shapes.SHAPES) if f" {w} " in text]
    assert len(words) >= 8
    for w in words:  # a word the LLM must bind is one piece, leading space included
        assert len(tok.encode(f" {w}", add_special_tokens=False)) == 1, (w, tok.tokenize(f" {w}"))
    with pytest.raises(ValueError, match="text_corpus_model_type"):
        SFTConfig(data=type(cfg.data)(text_corpus_model_type="wordpiece"))

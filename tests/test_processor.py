"""VideoProcessor: saved and loaded with the model, the same ids and frames as the model's own settings,
the processor a checkpoint without processor_config.json implies, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mmvid.config import ConfigError
from mmvid.data import frames_to_tensor, read_video
from mmvid.processor import PROCESSOR_FILE, VideoProcessor, VideoProcessorConfig, config_from_checkpoint
from mmvid.prompting import IGNORE_INDEX, encode_conversation
from mmvid.testing import tiny_videollm
from mmvid.video_tokenizers import build_video_tokenizer
from mmvid.videollm import VideoLLM

SAMPLE = [{"from": "human", "value": "<video>\nWhat moves?"},
          {"from": "gpt", "value": "A red circle moves left."}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("processor")


@pytest.fixture(scope="module")
def model(workdir):
    return tiny_videollm(workdir)  # vtok_tiny: 32 px, at least 2 frames; 8 frames


def test_defaults_come_from_the_model_and_its_video_tokenizer(model):
    c = model.processor.config
    assert (c.num_frames, c.image_size, c.max_length) == (model.config.num_frames, 32,
                                                          model.config.max_length)
    assert (c.min_frames, c.max_frames, c.sampling, c.fps) == (2, None, "uniform", None)
    assert c.tokens_per_video == model.tokens_per_video and model.processor.video_ids == model.video_ids
    assert model.processor.text_tokenizer is model.text_tokenizer


def test_same_ids_and_frames_as_the_model_settings_gave(model, make_video):
    """What the five call sites computed from model.config.num_frames and model.image_size, and what
    VideoLLM.encode_sample computed, is what the processor gives."""
    path = make_video(num_frames=24)
    before = frames_to_tensor(
        read_video(path, num_frames=model.config.num_frames, size=model.image_size).frames)
    video = model.processor.load_video(path)
    assert torch.equal(video, before) and video.shape == (3, 8, 32, 32)
    assert torch.equal(model.processor.read_frames(path), read_video(path, num_frames=8, size=32).frames)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(video[None]), model.encode_video(before[None]), rtol=0,
                                   atol=0)
    encoded = model.processor.encode_sample(SAMPLE, sample_id="s")
    reference = encode_conversation(model.text_tokenizer, SAMPLE, model.video_ids, model.tokens_per_video,
                                    model.config.max_length, "s")
    assert encoded == reference and model.processor.count_tokens({"conversations": SAMPLE}) == len(reference)
    # Per call: 4 frames at 4 fps is what read_video gives with those settings.
    fps = model.processor.load_video(path, num_frames=4, fps=4.0)
    assert torch.equal(fps, frames_to_tensor(read_video(path, num_frames=4, fps=4.0, sampling="fps",
                                                        size=32).frames))


def test_collate_pads_on_the_right(model):
    short = model.processor.encode_sample(SAMPLE)
    long = model.processor.encode_sample([SAMPLE[0],
                                          {"from": "gpt", "value": "A red circle moves left, then stops."}])
    batch = model.processor.collate([short, long])
    n, width = len(short), len(long)
    assert batch["input_ids"].shape == (2, width) and set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"][0, :n].tolist() == short.input_ids
    assert (batch["input_ids"][0, n:] == model.text_tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"][0].tolist() == short.labels + [IGNORE_INDEX] * (width - n)


def test_saved_and_loaded_with_the_model(model, tmp_path, make_video):
    model.processor.config = dataclasses.replace(model.processor.config, sampling="fps", fps=4.0)
    try:
        model.save_pretrained(tmp_path)
    finally:
        model.processor.config = dataclasses.replace(model.processor.config, sampling="uniform", fps=None)
    assert (tmp_path / PROCESSOR_FILE).is_file()
    alone = VideoProcessor.from_pretrained(tmp_path)
    loaded = VideoLLM.from_pretrained(tmp_path)
    for processor in (alone, loaded.processor):
        assert processor.config == dataclasses.replace(model.processor.config, sampling="fps", fps=4.0)
        assert processor.video_ids == model.video_ids
        assert processor.encode_sample(SAMPLE) == model.processor.encode_sample(SAMPLE)
    assert loaded.processor.text_tokenizer is loaded.text_tokenizer
    path = make_video(num_frames=24)
    expected = read_video(path, num_frames=8, fps=4.0, sampling="fps", size=32).frames
    assert torch.equal(alone.read_frames(path), expected)


@pytest.mark.parametrize("video_tokenizer", ["vtok_tiny", "coordtok_tiny"])
def test_a_checkpoint_without_the_file_gets_the_processor_its_config_implies(workdir, tmp_path,
                                                                             video_tokenizer):
    """Every checkpoint saved before the processor existed has no processor_config.json."""
    model = tiny_videollm(workdir, video_tokenizer=video_tokenizer)
    model.save_pretrained(tmp_path)
    (tmp_path / PROCESSOR_FILE).unlink()  # now exactly what the earlier save_pretrained wrote
    derived = VideoProcessor.from_pretrained(tmp_path)
    assert derived.config == model.processor.config
    assert derived.encode_sample(SAMPLE) == model.processor.encode_sample(SAMPLE)
    loaded = VideoLLM.from_pretrained(tmp_path)
    assert loaded.processor.config == model.processor.config
    if video_tokenizer == "coordtok_tiny":  # the frame limit comes from the tokenizer's config
        assert (derived.config.max_frames == model.video_tokenizer.max_frames
                == model.video_tokenizer.clip_frames)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / PROCESSOR_FILE).read_text())["config"]["num_frames"] == 8
    with pytest.raises(ValueError, match="not a VideoLLM config.json"):
        config_from_checkpoint({"architecture": "vtok"})
    with pytest.raises(FileNotFoundError, match=PROCESSOR_FILE):
        VideoProcessor.from_pretrained(tmp_path / "missing")


def test_frame_counts_the_video_tokenizer_cannot_take_are_refused_before_decoding(model, workdir, tmp_path):
    missing = tmp_path / "not-read.mp4"  # never opened: the count is checked first
    with pytest.raises(ValueError, match=r"num_frames=1, but the video tokenizer takes at least 2 frames"):
        model.processor.load_video(missing, num_frames=1)  # VTok needs a key frame and one more
    coordtok = tiny_videollm(workdir, video_tokenizer="coordtok_tiny")
    limit = coordtok.video_tokenizer.max_frames
    with pytest.raises(ValueError,
                       match=rf"num_frames={limit + 1}, but the video tokenizer takes 1 to {limit} frames"):
        coordtok.processor.load_video(missing, num_frames=limit + 1)
    with pytest.raises(ValueError, match="takes 1 to"):
        VideoProcessorConfig(num_frames=9, max_frames=8)
    with pytest.raises(FileNotFoundError):
        model.processor.load_video(missing, num_frames=2)  # a valid count reaches the file


@pytest.mark.parametrize("preset, max_frames", [("frames_tiny", None), ("vtok_tiny", None),
                                                ("coordtok_tiny", 128), ("sweettok_tiny", None)])
def test_video_tokenizers_declare_their_longest_clip(preset, max_frames):
    """max_frames is the processor's bound: CoordTok's clip_frames; SweetTok's clip_frames (5 here) is only
    what decode assumes, and longer clips encode."""
    tok = build_video_tokenizer(preset)
    assert tok.max_frames == max_frames
    if max_frames is None:
        assert tok.num_tokens(40, 32, 32) > 0
    else:
        with pytest.raises(ValueError, match=f"at most {max_frames} frames"):
            tok.num_tokens(max_frames + 8, 32, 32)


@pytest.mark.parametrize("fields, message", [
    ({"num_frames": 0}, "num_frames=0"),
    ({"sampling": "random"}, "unknown sampling"),
    ({"sampling": "fps"}, "needs a positive fps"),
    ({"fps": 2.0}, "only it takes one"),
    ({"image_size": 0}, "image_size"),
])
def test_bad_config_values_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        VideoProcessorConfig(**fields)


def test_a_processor_that_does_not_fit_the_model_is_refused(model, tmp_path):
    parts = (model.config, model.llm, model.text_tokenizer, model.video_tokenizer, model.projector)
    wrong_size = VideoProcessor(model.text_tokenizer,
                                dataclasses.replace(model.processor.config, image_size=48))
    with pytest.raises(ValueError, match="reads 48x48 frames but the video tokenizer takes 32x32"):
        VideoLLM(*parts, processor=wrong_size)
    wrong_count = VideoProcessor(model.text_tokenizer,
                                 dataclasses.replace(model.processor.config, tokens_per_video=3))
    with pytest.raises(ValueError,
                       match=r"expands each <video> to 3 positions, but 8 frames give "
                             rf"{model.tokens_per_video}"):
        VideoLLM(*parts, processor=wrong_count)
    with pytest.raises(ValueError, match="the model's text tokenizer"):
        VideoLLM(*parts, processor=VideoProcessor(None, model.processor.config))
    model.save_pretrained(tmp_path)
    record = json.loads((tmp_path / PROCESSOR_FILE).read_text())
    record["config"]["image_size"] = 48
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="reads 48x48 frames"):
        VideoLLM.from_pretrained(tmp_path)
    record["config"]["frames"] = 8
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="unknown key 'frames'"):
        VideoProcessor.from_pretrained(tmp_path)
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ValueError, match="newer mmvid"):
        VideoProcessor.from_pretrained(tmp_path)


def test_a_processor_for_videos_alone_has_no_text_side(make_video):
    processor = VideoProcessor(None, VideoProcessorConfig(num_frames=4, image_size=16))
    assert processor.load_video(make_video()).shape == (3, 4, 16, 16)
    with pytest.raises(ValueError, match="no text tokenizer"):
        processor.encode_sample(SAMPLE)

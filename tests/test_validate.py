from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmvid.data import DataFormatError, check_sample, load_conversations
from mmvid.data.validate import main as validate_main
from mmvid.data.validate import validate_file


def _sample(id, video="a.mp4", question="<video>\nWhat moves?", answer="a circle"):
    sample = {"id": id,
              "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if video is not None:
        sample["video"] = video
    return sample


def test_check_sample_finds_each_problem():
    assert check_sample(_sample("ok")) == []
    assert check_sample(_sample("text", video=None, question="Hello?")) == []
    assert check_sample({**_sample("two", video=["a.mp4", "b.mp4"], question="<video><video> same?")}) == []
    kinds = lambda s: sorted(p.kind for p in check_sample(s))  # noqa: E731
    assert kinds(_sample("x", question="no placeholder")) == ["placeholder"]
    assert kinds(_sample("x", question="<video><video> two")) == ["placeholder"]
    assert kinds(_sample("x", answer="  ")) == ["empty_answer"]
    assert kinds(_sample("x", answer="<video> echo")) == ["placeholder"]
    assert kinds(_sample("x", question="")) == ["empty_question", "placeholder"]
    assert kinds({"id": "x", "video": "a.mp4", "conversations": []}) == ["malformed"]
    assert kinds({"id": "x", "video": 3, "conversations": [{"from": "human", "value": "<video>"}]}) == [
        "malformed"]
    swapped = _sample("x")
    swapped["conversations"].reverse()
    assert "malformed" in kinds(swapped)
    unanswered = _sample("x")
    unanswered["conversations"] = unanswered["conversations"][:1]
    assert kinds(unanswered) == ["empty_answer"]
    assert kinds("not a dict") == ["malformed"]


def test_load_conversations_reads_json_and_jsonl_and_names_bad_lines(tmp_path):
    samples = [_sample("a"), _sample("b")]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n\n")
    assert load_conversations(tmp_path / "d.json") == samples
    assert load_conversations(tmp_path / "d.jsonl") == samples
    (tmp_path / "bad.jsonl").write_text(json.dumps(samples[0]) + "\n{oops\n")
    with pytest.raises(DataFormatError, match="line 2"):
        load_conversations(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_conversations(tmp_path / "nothing.json")


@pytest.mark.timeout(120)
def test_validate_reports_every_kind_and_exits_non_zero(make_video, tmp_path, capsys):
    make_video("good.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    samples = [
        _sample("good", video="good.mp4"),
        _sample("missing", video="missing.mp4"),
        _sample("corrupt", video="corrupt.mp4"),
        _sample("count", video="good.mp4", question="no placeholder here"),
        _sample("empty", video="good.mp4", answer=""),
        _sample("good", video="good.mp4"),  # duplicate id: a warning
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(s) for s in samples))
    report = validate_file(data, progress=False)
    assert report.samples == 6 and report.videos == 3
    assert {k: len(v) for k, v in report.errors.items()} == {
        "missing_video": 1, "unreadable_video": 1, "placeholder": 1, "empty_answer": 1}
    assert "duplicate_id" in report.warnings
    assert validate_main([str(data), "--report", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    for kind in ("missing_video", "unreadable_video", "placeholder", "empty_answer", "FAILED: 4 errors"):
        assert kind in out
    assert "missing.mp4" in out and "'corrupt' (#2)" in out
    assert json.loads((tmp_path / "r.json").read_text())[0]["samples"] == 6


def test_validate_clean_file_exits_zero_and_unreadable_file_exits_two(make_video, tmp_path, capsys):
    make_video("v/a.mp4")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([_sample("a", video="v/a.mp4")]))
    assert validate_main([str(data)]) == 0
    assert "OK" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("[{]")
    assert validate_main([str(tmp_path / "broken.json")]) == 2
    assert "invalid JSON" in capsys.readouterr().err
    # A video root other than the data file's folder.
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps([_sample("a", video="a.mp4")]))
    assert validate_main([str(elsewhere), "--video-root", str(tmp_path / "v")]) == 0


def test_validate_runs_as_a_module(make_video, tmp_path):
    make_video("a.mp4")
    (tmp_path / "d.json").write_text(json.dumps([_sample("a"), _sample("b", video="gone.mp4")]))
    out = subprocess.run([sys.executable, "-m", "mmvid.data.validate", str(tmp_path / "d.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "missing_video: 1" in out.stdout


def _video_with_a_corrupt_middle(path) -> None:
    """48 frames, a keyframe every 8, then the packets of the middle third overwritten with noise: the first
    and the last frame still decode, the frames in between do not."""
    import av
    import numpy as np

    from mmvid.data.shapes.world import render, sample_scene

    frames = render(sample_scene(1, 48, 64, 64))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.gop_size = 8
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 8
    end = start + (len(data) - start) * 2 // 3
    start = start + (len(data) - start) // 3
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_validate_decodes_what_training_reads(tmp_path, capsys):
    from mmvid.data import read_video

    _video_with_a_corrupt_middle(tmp_path / "mid.mp4")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([_sample("a", video="mid.mp4")]))
    with pytest.raises(ValueError):  # what training asks for: 8 frames spread over the video
        read_video(tmp_path / "mid.mp4", num_frames=8)
    assert validate_main([str(data)]) == 1
    out = capsys.readouterr().out
    assert "decoded as training reads them: 8 frames (uniform)" in out and "unreadable_video: 1" in out
    assert validate_main([str(data), "--num-frames", "0"]) == 1  # every frame
    assert validate_main([str(data), "--no-decode"]) == 0  # said plainly: existence only
    assert "existence only" in capsys.readouterr().out

"""The chat script, driven through a pipe and in process, on a tiny saved model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmvid.chat import ChatSession
from mmvid.data import write_video
from mmvid.data.shapes.world import render, sample_scene
from mmvid.testing import tiny_videollm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    model = tiny_videollm(folder)
    model.save_pretrained(folder / "model")
    for name, seed in (("a.mp4", 1), ("b.mp4", 2)):
        write_video(folder / name, render(sample_scene(seed, 16, 32, 32)), fps=8)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    return folder, model


def _chat(folder: Path, lines: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mmvid.chat", "--model", str(folder / "model"), "--max-new-tokens", "6",
           *args]
    return subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_multi_turn_conversation_through_a_pipe(setup):
    folder, _ = setup
    lines = ["What moves?", "And its colour?", f"/video {folder / 'b.mp4'}",
             f"/video {folder / 'missing.mp4'}",
             f"/video {folder / 'broken.mp4'}", "", "/frames 4", "Describe it.", "/bogus",
             f"/save {folder / 't.json'}", "/help", "/quit", "never read"]
    result = _chat(folder, lines, "--video", str(folder / "a.mp4"))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.count("assistant> ") == 3
    assert "video not found" in out and "cannot use video" in out and "cannot decode video" in out
    assert "(empty prompt" in out and "unknown command /bogus" in out and "/reset" in out
    assert "[4 frames]" in out
    transcript = json.loads((folder / "t.json").read_text())
    # the bad videos changed nothing
    assert transcript["video"].endswith("b.mp4") and transcript["num_frames"] == 4
    # /video b started a new conversation
    assert [t["role"] for t in transcript["turns"]] == ["user", "assistant"]
    assert transcript["turns"][1]["ttft_s"] > 0


def test_prompt_mode_answers_once_and_fixed_seeds_repeat(setup):
    folder, _ = setup
    args = ("--video", str(folder / "a.mp4"), "--prompt", "What moves?", "--temperature", "1.0", "--seed",
            "3")
    first, second = _chat(folder, [], *args), _chat(folder, [], *args)
    assert first.returncode == 0 and first.stdout == second.stdout
    other = _chat(folder, [], *args[:-1], "4")
    assert other.returncode == 0
    empty = _chat(folder, [], "--prompt", "  ")
    assert empty.returncode == 2 and "empty prompt" in empty.stderr


def test_a_folder_that_is_not_a_checkpoint_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmvid.chat", "--model", str(tmp_path), "--prompt", "hi"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "no VideoLLM checkpoint" in result.stderr


def test_the_video_is_encoded_once_and_later_turns_reuse_the_cache(setup, monkeypatch):
    folder, model = setup
    session = ChatSession(model, max_new_tokens=5)
    calls = {"encode": 0, "llm_lengths": []}
    encode = model.encode_video

    def counting_encode(videos):
        calls["encode"] += 1
        return encode(videos)

    monkeypatch.setattr(model, "encode_video", counting_encode)
    hook = model.llm.register_forward_pre_hook(lambda m, args, kwargs: calls["llm_lengths"].append(
        kwargs["inputs_embeds"].shape[1]),
                                               with_kwargs=True)
    try:
        session.set_video(str(folder / "a.mp4"))
        session.ask("What moves?")
        first_prompt = calls["llm_lengths"][0]
        calls["llm_lengths"].clear()
        second = session.ask("And its colour?")
    finally:
        hook.remove()
    assert calls["encode"] == 1 and session.encode_calls == 1
    assert first_prompt > model.tokens_per_video  # the first turn runs the video span
    assert session.reused_tokens >= model.tokens_per_video + 2  # the video span comes from the cache
    assert calls["llm_lengths"][0] < first_prompt  # the second turn runs only what is new
    # The cached answer equals a from-scratch greedy answer to the same conversation.
    assert session.messages()[0]["content"].startswith("<video>\n")
    fresh = ChatSession(model, max_new_tokens=5)
    fresh.set_video(str(folder / "a.mp4"))
    fresh.turns = list(session.turns[:2])  # the first question and answer, but no cache
    assert fresh.ask("And its colour?").content == second.content


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'mmvid-chat = "mmvid.chat:main"' in text

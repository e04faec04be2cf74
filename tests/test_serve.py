"""The OpenAI-compatible server (mmvid.serve): in process through FastAPI's TestClient, through the official
`openai` client against a real uvicorn server on loopback, as a separate process, and its chat page in
headless Chromium (skipped when no browser is installed; .ci/run installs one)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402

from mmvid.data import write_video  # noqa: E402
from mmvid.data.shapes.world import render, sample_scene  # noqa: E402
from mmvid.serve import ServeSettings, create_app  # noqa: E402
from mmvid.serve.loadtest import free_port  # noqa: E402
from mmvid.testing import tiny_videollm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    model = tiny_videollm(folder, generation_head="flow")
    model.save_pretrained(folder / "model")
    media = folder / "media"
    media.mkdir()
    for name, seed in (("a.mp4", 1), ("b.mp4", 2)):
        write_video(media / name, render(sample_scene(seed, 16, 32, 32)), fps=8)
    good = (media / "a.mp4").read_bytes()
    (media / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (media / "random.mp4").write_bytes(os.urandom(4096))
    (media / "text.mp4").write_text("this is not a video\n" * 20)
    (media / "empty.mp4").write_bytes(b"")
    (folder / "secret.mp4").write_bytes(good)  # outside the allowed root
    (media / "link.mp4").symlink_to(folder / "secret.mp4")
    return folder, model


def _data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _messages(url: str, question: str = "What moves?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
        }
    ]


@pytest.fixture(scope="module")
def client(setup):
    folder, model = setup
    settings = ServeSettings(
        allowed_local_media_path=str(folder / "media"), max_video_bytes=300_000, max_videos_per_request=2
    )
    return TestClient(create_app(model, settings))


def _events(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_and_health(client):
    assert client.get("/health").json() == {"status": "ok"}
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["id"] == "mmvid"
    assert body["data"][0]["max_model_len"] == 1024 and body["data"][0]["video_generation"] is True


def test_chat_usage_is_exact_and_streaming_matches(setup, client):
    folder, model = setup
    url = _data_url((folder / "media" / "a.mp4").read_bytes())
    request = {"model": "mmvid", "messages": _messages(url), "max_tokens": 6, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=request)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    # the prompt as the model sees it: the chat template with the video's positions
    features = model.encode_video(model.processor.load_video(folder / "media" / "a.mp4")[None])
    ids = model.prompt_ids([{"role": "user", "content": "<video>\nWhat moves?"}], features)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(ids)
    assert usage["prompt_tokens_details"]["video_tokens"] == features.shape[1]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (choice["finish_reason"] == "length") == (usage["completion_tokens"] == 6)

    streamed = client.post(
        "/v1/chat/completions", json={**request, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] == choice["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == choice["message"]["content"]
    assert (
        events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == usage["completion_tokens"]
    )
    # the same conversation again: served from the KV cache, the video not decoded again
    assert events[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] >= features.shape[1]


def test_a_second_turn_reuses_the_video_and_the_kv_prefix(setup, client):
    folder, _ = setup
    engine = client.app.state.engine
    url = _data_url((folder / "media" / "b.mp4").read_bytes())
    first = _chat(client, _messages(url), max_tokens=4, temperature=0).json()
    encoded = engine.encoded
    messages = _messages(url) + [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And its colour?"},
    ]
    second = _chat(client, messages, max_tokens=4, temperature=0).json()
    assert engine.encoded == encoded  # the resent video came from the cache
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"] - 1  # the whole first prompt, video span included


def test_a_seed_repeats_a_sampled_answer(client):
    answers = [
        _chat(client, max_tokens=6, temperature=1.0, seed=7).json()["choices"][0]["message"]["content"]
        for _ in range(2)
    ]
    assert answers[0] == answers[1]


def _chat(client, messages: list[dict] | None = None, **fields):
    """POST a chat completion about media/a.mp4 (or `messages`) with `fields`."""
    body = {"model": "mmvid", "messages": messages or _messages("a.mp4"), **fields}
    return client.post("/v1/chat/completions", json=body)


def test_local_paths_and_frame_budgets(setup, client):
    default = _chat(client, max_tokens=2)
    ok = _chat(client, max_tokens=2, mm_processor_kwargs={"num_frames": 4})
    assert default.status_code == ok.status_code == 200, ok.text
    video_tokens = [r.json()["usage"]["prompt_tokens_details"]["video_tokens"] for r in (default, ok)]
    assert video_tokens[1] < video_tokens[0]  # fewer frames, fewer tokens
    by_rate = _chat(client, max_completion_tokens=3, mm_processor_kwargs={"fps": 4.0})
    assert by_rate.status_code == 200, by_rate.text
    assert by_rate.json()["usage"]["completion_tokens"] <= 3
    bad = _chat(client, mm_processor_kwargs={"num_frames": 1})
    assert bad.status_code == 400 and "num_frames" in bad.json()["error"]["message"]


def _bad_requests(folder: Path) -> list[tuple[str, dict | bytes, int, str]]:
    media = folder / "media"
    good = (media / "a.mp4").read_bytes()
    text = {"type": "text", "text": "hi"}

    def chat(**fields):
        return {"model": "mmvid", "messages": _messages(_data_url(good)), **fields}

    return [
        ("malformed json", b'{"model": "mmvid", "messages": [', 400, "malformed JSON"),
        ("not an object", b"[1, 2]", 400, "JSON object"),
        ("missing field", {"model": "mmvid"}, 400, "missing field 'messages'"),
        ("unknown field", chat(frequency_penalty_x=1), 400, "unknown field 'frequency_penalty_x'"),
        (
            "unknown part",
            {
                "model": "mmvid",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            400,
            "image_url",
        ),
        ("unknown model", {**chat(), "model": "gpt-4o"}, 404, "does not exist"),
        ("empty video", chat(messages=_messages("empty.mp4")), 400, "decode"),
        ("empty data url", chat(messages=_messages("data:video/mp4;base64,")), 400, "empty"),
        ("truncated video", chat(messages=_messages("truncated.mp4")), 400, "could not decode"),
        ("random bytes", chat(messages=_messages(_data_url(os.urandom(2048)))), 400, "could not decode"),
        ("text as video", chat(messages=_messages("text.mp4")), 400, "could not decode"),
        ("bad base64", chat(messages=_messages("data:video/mp4;base64,@@@")), 400, "base64"),
        ("not a video type", chat(messages=_messages(_data_url(good, "text/plain"))), 400, "video/*"),
        (
            "too many videos",
            {
                "model": "mmvid",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "video_url", "video_url": {"url": "a.mp4"}}] * 3 + [text],
                    }
                ],
            },
            400,
            "at most 2",
        ),
        ("longer than the context", chat(max_tokens=5000), 400, "context is 1024"),
        ("outside the root", chat(messages=_messages(str(folder / "secret.mp4"))), 403, "outside"),
        ("dot dot", chat(messages=_messages("../secret.mp4")), 403, "outside"),
        ("symlink out", chat(messages=_messages("link.mp4")), 403, "outside"),
        ("missing file", chat(messages=_messages("nope.mp4")), 404, "no such video"),
        ("remote url", chat(messages=_messages("https://example.com/v.mp4")), 400, "--allow-remote-media"),
        ("other scheme", chat(messages=_messages("ftp://example.com/v.mp4")), 400, "scheme"),
        ("over max-video-bytes", chat(messages=_messages(_data_url(good * 200))), 413, "max-video-bytes"),
        (
            "reserved token",
            {"model": "mmvid", "messages": [{"role": "user", "content": "<video> hi"}]},
            400,
            "reserved",
        ),
        (
            "assistant last",
            {"model": "mmvid", "messages": [{"role": "assistant", "content": "hi"}]},
            400,
            "last message",
        ),
        ("bad temperature", chat(temperature=-1), 400, "temperature"),
        ("n > 1", chat(n=2), 400, "n"),
        ("five stops", chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ]


def test_bad_requests_get_openai_errors_and_the_server_stays_healthy(setup, client):
    folder, _ = setup
    good = {"model": "mmvid", "messages": _messages("a.mp4"), "max_tokens": 2}
    for name, body, status, words in _bad_requests(folder):
        if isinstance(body, bytes):
            response = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
        else:
            response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == status, (name, response.status_code, response.text[:300])
        error = response.json()["error"]
        assert words in error["message"] and error["type"], (name, error)
        assert client.post("/v1/chat/completions", json=good).status_code == 200, name


def test_an_oversized_body_is_refused_before_it_is_read(client):
    response = client.post(
        "/v1/chat/completions",
        content=b"x" * 10,
        headers={"content-type": "application/json", "content-length": str(10**9)},
    )
    assert response.status_code == 413 and "over the limit" in response.json()["error"]["message"]


def test_api_key(setup):
    _, model = setup
    keyed = TestClient(create_app(model, ServeSettings(api_key="sekret")))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = keyed.get("/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert keyed.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
    assert keyed.get("/health").status_code == 200 and keyed.get("/").status_code == 200


def test_text_to_video_returns_an_mp4(setup, client):
    response = client.post(
        "/v1/videos/generations", json={"model": "mmvid", "prompt": "a red circle", "seed": 0, "steps": 2}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4" and response.content[4:8] == b"ftyp"
    assert response.headers["x-mmvid-frames"] == "8" and response.headers["x-mmvid-size"] == "32x32"
    assert client.post("/v1/videos/generations", json={"model": "mmvid", "prompt": ""}).status_code == 400
    _, model = setup
    head, model.generation_head = model.generation_head, None
    try:
        response = client.post("/v1/videos/generations", json={"model": "mmvid", "prompt": "x"})
        assert response.status_code == 400 and "generation head" in response.json()["error"]["message"]
    finally:
        model.generation_head = head


# ----------------------------------------------------------------------------------------------
# A real server: uvicorn on a free loopback port, in a thread (the openai client, load) or a process
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(setup):
    import uvicorn

    folder, model = setup
    port = free_port()
    app = create_app(model, ServeSettings(allowed_local_media_path=str(folder / "media")))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=10)


def test_the_official_openai_client(setup, server):
    openai = pytest.importorskip("openai")
    folder, _ = setup
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["mmvid"]
    messages = _messages(_data_url((folder / "media" / "a.mp4").read_bytes()), "Describe the video.")
    plain = client.chat.completions.create(model="mmvid", messages=messages, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="mmvid",
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="other", messages=messages)
    with pytest.raises(openai.BadRequestError, match="could not decode"):
        client.chat.completions.create(model="mmvid", messages=_messages("text.mp4"))


def test_concurrent_streams_all_finish(server):
    from mmvid.serve.loadtest import run_load

    base, _ = server
    report = run_load(base, clients=4, requests=8, video="a.mp4", max_tokens=6)
    assert report["completed"] == 8 and report["failed"] == 0 and report["lost"] == 0
    assert len(set(report["answers"])) == 1  # temperature 0: every client got the same whole answer
    assert report["latency_s"]["p95"] >= report["latency_s"]["p50"] > 0
    assert report["ttft_s"]["p50"] > 0


def test_the_server_process_starts_answers_and_shuts_down_gracefully(setup):
    folder, _ = setup
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mmvid.serve",
        "--model",
        str(folder / "model"),
        "--port",
        str(port),
        "--allowed-local-media-path",
        str(folder / "media"),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(
                "the server did not start: " + (proc.stdout.read() if proc.poll() is not None else "")
            )
        body = {
            "model": "mmvid",
            "messages": _messages("a.mp4"),
            "max_tokens": 40,
            "stream": True,
            "temperature": 0,
        }
        lines = []
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if not lines:
                    proc.send_signal(signal.SIGTERM)  # mid-stream: the stream must still end cleanly
                lines.append(line)
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert "data: [DONE]" in lines and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        # uvicorn finishes the stream, then exits with the signal it caught
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (
        subprocess.run(
            [sys.executable, "-m", "mmvid.serve", "--model", str(folder / "missing")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        ).returncode
        == 2
    )


# ----------------------------------------------------------------------------------------------
# The chat page in a real browser
# ----------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_chat_page_in_headless_chromium(setup, server):
    sync_api = pytest.importorskip("playwright.sync_api")
    folder, _ = setup
    base, _ = server
    import httpx

    expected = httpx.post(
        base + "/v1/chat/completions",
        timeout=60,
        json={
            "model": "mmvid",
            "messages": _messages(_data_url((folder / "media" / "a.mp4").read_bytes())),
            "temperature": 0,
        },
    ).json()["choices"][0]["message"]["content"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.startsWith('mmvid')")
            page.set_input_files("#video-file", str(folder / "media" / "a.mp4"))
            page.wait_for_function("document.getElementById('status').textContent.startsWith('video loaded')")
            page.fill("#question", "What moves?")
            page.click("#send")
            page.wait_for_selector(".assistant[data-done='1']", timeout=60_000)
            shown = page.inner_text(".assistant")
            assert "error" not in page.get_attribute(".assistant", "class")
            assert shown.strip() == expected.strip()
            assert "first token" in page.inner_text("#status")
            page.fill("#gen-prompt", "a small red circle moves left")
            page.click("#generate")
            page.wait_for_selector("#generated[data-bytes]", timeout=120_000)
            assert int(page.get_attribute("#generated", "data-bytes")) > 1000
            if os.environ.get("MMVID_SCREENSHOT"):
                page.screenshot(path=os.environ["MMVID_SCREENSHOT"], full_page=True)
        finally:
            browser.close()


def test_the_serve_bench_measures_both_paths_the_second_turn_and_the_load(setup):
    from mmvid.evaluation import evaluate

    folder, model = setup
    data = folder / "bench"
    (data / "test").mkdir(parents=True, exist_ok=True)
    for seed in (3, 4):
        write_video(data / "test" / f"{seed}.mp4", render(sample_scene(seed, 16, 32, 32)), fps=8)
    record = evaluate(
        model,
        ["serve"],
        data=str(data),
        limit=2,
        options={"clients": "2", "requests": "3", "max_tokens": "4"},
    )
    m = {k: v["value"] for k, v in record["results"]["serve"]["metrics"].items()}
    assert m["load_completed"] == 3 and m["load_lost"] == 0
    assert m["inproc_ttft_s"] > 0 and m["server_ttft_s"] > 0 and m["ttft_ratio_server_over_inproc"] > 0
    assert 0.5 < m["turn2_cached_prompt_share"] <= 1  # the video span and the first turn came from the cache
    assert m["load_latency_p95_s"] >= m["load_latency_p50_s"] > 0

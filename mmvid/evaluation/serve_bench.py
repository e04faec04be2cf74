"""`--bench serve`: the OpenAI-compatible server's overhead, its KV-cache reuse, and a load test.

    python eval/run.py --bench serve --limit 8 --option clients=4 --option requests=16 --option max_tokens=32

On the test videos of the synthetic world (`--limit`, default 8), with the model the runner loads:
  inproc_*      each video asked about through `generation.stream` in this process (read + encode + prefill
                + sampling, a fresh KV cache each time): time to first token and tokens/s
  server_*      the same questions through a real uvicorn server on a loopback port, streamed over HTTP
                (the video as a server-side path), and the ratios server / in-process
  turn1/turn2   a first question, then a second turn that resends the video and the first answer: time to
                first token of each, and how many prompt tokens the second took from the KV cache
  load_*        `mmvid.serve.loadtest`: `clients` concurrent streaming clients sending `requests` requests;
                latency and time-to-first-token percentiles, completed / lost requests
Answers are greedy (temperature 0) and capped at `max_tokens`; a model that ends its answer early makes
tokens/s count fewer tokens, the same for both paths.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import torch

from mmvid.data.video_dataset import list_videos
from mmvid.evaluation.runner import DEFAULT_DATA, BenchContext, BenchResult, Metric, mean_stderr

QUESTION = "Describe the video."


def _inproc(model, path: Path, max_tokens: int) -> tuple[float, float, int]:
    """(ttft, seconds, completion tokens) of one question in this process."""
    from mmvid.generation import PromptCache, SamplingParams, stream

    start = time.perf_counter()
    with torch.no_grad():
        features = model.encode_video(model.processor.load_video(path)[None].to(model.device))
        ids = model.prompt_ids([{"role": "user", "content": f"<video>\n{QUESTION}"}], features)
        first, tokens = None, 0
        for delta in stream(model, ids, SamplingParams(max_new_tokens=max_tokens), features, PromptCache()):
            if first is None and (delta.text or delta.finish_reason):  # as stream_chat times the server
                first = time.perf_counter() - start
            tokens += len(delta.token_ids)
    return first, time.perf_counter() - start, tokens


def _http(base: str, messages: list[dict], max_tokens: int) -> dict:
    """One greedy streamed answer through the server (`loadtest.stream_chat`); raises when it fails."""
    from mmvid.serve.loadtest import stream_chat

    body = {
        "model": "mmvid",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = stream_chat(base, body, timeout=600)
    if not result["ok"] or not result["done"]:
        raise RuntimeError(f"the server's answer failed: {result.get('error', 'no [DONE]')}")
    return result


def _rate(tokens: int, seconds: float, ttft: float) -> float:
    return tokens / max(seconds - ttft, 1e-9) if tokens > 1 else float("nan")


def _ask(path: Path) -> list[dict]:
    video = {"type": "video_url", "video_url": {"url": str(Path(path).resolve())}}
    return [{"role": "user", "content": [video, {"type": "text", "text": QUESTION}]}]


def _through_server(model, videos: list[Path], max_tokens: int, clients: int, requests: int) -> tuple:
    """(answers one by one, (first, second) turns, the load report) from a uvicorn server in a thread."""
    import uvicorn

    from mmvid.serve import ServeSettings, create_app
    from mmvid.serve.loadtest import free_port, run_load

    app = create_app(model, ServeSettings(allowed_local_media_path=str(Path(videos[0]).resolve().parent)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base, engine = f"http://127.0.0.1:{port}", app.state.engine
    try:
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("the server did not start")
        _http(base, _ask(videos[0]), 2)  # warm-up
        served, turns = [], []
        for v in videos:
            engine.forget()  # the same work as in process: every video read and encoded
            served.append(_http(base, _ask(v), max_tokens))
        for v in videos:
            engine.forget()
            first = _http(base, _ask(v), max_tokens)
            follow = _ask(v) + [
                {"role": "assistant", "content": first["text"]},
                {"role": "user", "content": "What colour is it?"},
            ]
            turns.append((first, _http(base, follow, max_tokens)))
        load = run_load(
            base,
            clients=clients,
            requests=requests,
            video=str(Path(videos[0]).resolve()),
            question=QUESTION,
            max_tokens=max_tokens,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return served, turns, load


def run(ctx: BenchContext) -> BenchResult:
    model = ctx.load_model()
    max_tokens = int(ctx.option("max_tokens", "32"))
    clients, requests = int(ctx.option("clients", "4")), int(ctx.option("requests", "16"))
    videos = list_videos(ctx.data or DEFAULT_DATA, ctx.option("split", "test"))[: ctx.limit or 8]
    if not videos:
        raise ValueError(f"no videos in {ctx.data or DEFAULT_DATA}")
    _inproc(model, videos[0], 2)  # warm-up: first-call costs out of both paths
    inproc = [_inproc(model, v, max_tokens) for v in videos]
    served, turns, load = _through_server(model, videos, max_tokens, clients, requests)

    n, med = len(videos), statistics.median
    in_ttft = [t for t, _, _ in inproc]
    in_rate = [r for t, s, k in inproc if (r := _rate(k, s, t)) == r]
    sv_ttft = [x["ttft"] for x in served]
    sv_rate = [
        r for x in served if (r := _rate(x["usage"]["completion_tokens"], x["latency"], x["ttft"])) == r
    ]
    t1, t2 = [a["ttft"] for a, _ in turns], [b["ttft"] for _, b in turns]
    cached = [
        b["usage"]["prompt_tokens_details"]["cached_tokens"] / b["usage"]["prompt_tokens"] for _, b in turns
    ]
    metrics = [
        Metric("inproc_ttft_s", *mean_stderr(in_ttft), n=n),
        Metric("server_ttft_s", *mean_stderr(sv_ttft), n=n),
        Metric("ttft_ratio_server_over_inproc", med(sv_ttft) / med(in_ttft), n=n),
        Metric("inproc_tokens_per_s", *mean_stderr(in_rate), n=len(in_rate)),
        Metric("server_tokens_per_s", *mean_stderr(sv_rate), n=len(sv_rate)),
    ]
    if in_rate and sv_rate:
        metrics.append(Metric("tokens_per_s_ratio_server_over_inproc", med(sv_rate) / med(in_rate)))
    metrics += [
        Metric("turn1_ttft_s", *mean_stderr(t1), n=n),
        Metric("turn2_ttft_s", *mean_stderr(t2), n=n),
        Metric("turn2_over_turn1_ttft", med(t2) / med(t1), n=n),
        Metric("turn2_cached_prompt_share", *mean_stderr(cached), n=n),
        Metric("load_completed", float(load["completed"]), n=requests),
        Metric("load_lost", float(load["lost"] + load["failed"]), n=requests),
        Metric("load_latency_p50_s", load["latency_s"]["p50"]),
        Metric("load_latency_p95_s", load["latency_s"]["p95"]),
        Metric("load_ttft_p50_s", load["ttft_s"]["p50"]),
        Metric("load_ttft_p95_s", load["ttft_s"]["p95"]),
        Metric("load_tokens_per_s", load["tokens_per_s"]),
    ]
    settings = {
        "videos": n,
        "max_tokens": max_tokens,
        "clients": clients,
        "requests": requests,
        "question": QUESTION,
        "device": str(model.device),
        "load_errors": load["errors"],
        "torch_threads": torch.get_num_threads(),
    }
    return BenchResult("serve", metrics, settings)

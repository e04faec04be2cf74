"""A bounded load test of a running mmvid server: N concurrent streaming clients on loopback.

    python -m mmvid.serve.loadtest --url http://127.0.0.1:8000 --clients 4 --requests 16 --video a.mp4

`--video` is a path the server may read (under its --allowed-local-media-path) or a local file sent as a
data URL (`--send`). Prints a JSON report: completed / failed / lost requests (lost: a stream that ended
without `data: [DONE]`), latency and time-to-first-token percentiles, tokens/s, and each answer's text.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    """A free TCP port on loopback, for a server started next (tests, `--bench serve`)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {
        "p50": round(at(0.5), 4),
        "p95": round(at(0.95), 4),
        "max": round(ordered[-1], 4),
        "mean": round(statistics.fmean(ordered), 4),
    }


def stream_chat(url: str, body: dict, headers: dict | None = None, timeout: float = 300.0) -> dict:
    """One streamed chat completion against the server at `url`: {"ok", "done" (saw [DONE]), "latency",
    "ttft" (to the first chunk with text or a finish_reason: a sampled token, not the role chunk), "text",
    "usage", "completion_tokens"}, or {"ok": False, "error"}."""
    import httpx

    start, first, text, done, usage = time.perf_counter(), None, [], False, None
    try:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                return {"ok": False, "error": f"HTTP {response.status_code}: {response.read()[:200]!r}"}
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return {"ok": False, "error": chunk["error"]["message"]}
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    if first is None and (piece or choice.get("finish_reason")):
                        first = time.perf_counter() - start
                    if piece:
                        text.append(piece)
    except Exception as e:  # noqa: BLE001 - a load test reports every failure
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {
        "ok": True,
        "done": done,
        "latency": time.perf_counter() - start,
        "ttft": first,
        "text": "".join(text),
        "usage": usage,
        "completion_tokens": (usage or {}).get("completion_tokens"),
    }


def run_load(
    url: str,
    clients: int = 4,
    requests: int = 16,
    video: str | None = None,
    send: bool = False,
    question: str = "What moves?",
    max_tokens: int = 32,
    model: str = "mmvid",
    api_key: str | None = None,
    timeout: float = 300.0,
) -> dict:
    """Send `requests` streaming chat requests from `clients` threads at once; the report."""
    content: list[dict] = []
    if video is not None:
        ref = (
            ("data:video/mp4;base64," + base64.b64encode(Path(video).read_bytes()).decode())
            if send
            else video
        )
        content.append({"type": "video_url", "video_url": {"url": ref}})
    content.append({"type": "text", "text": question})
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(
            pool.map(lambda _: stream_chat(url.rstrip("/"), body, headers, timeout), range(requests))
        )
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"] and r["done"]]
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    return {
        "url": url,
        "clients": clients,
        "requests": requests,
        "max_tokens": max_tokens,
        "completed": len(ok),
        "failed": sum(1 for r in results if not r["ok"]),
        "lost": sum(1 for r in results if r["ok"] and not r["done"]),
        "errors": sorted({r["error"] for r in results if not r["ok"]}),
        "latency_s": _percentiles([r["latency"] for r in ok]),
        "ttft_s": _percentiles([r["ttft"] for r in ok if r["ttft"] is not None]),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "answers": [r["text"] for r in ok],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mmvid.serve.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--video", default=None)
    p.add_argument(
        "--send", action="store_true", help="send --video as a data URL (else: a server-side path)"
    )
    p.add_argument("--question", default="What moves?")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--model", default="mmvid")
    p.add_argument("--api-key", default=None)
    p.add_argument("--output", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        p.error("--clients and --requests must be >= 1")
    report = run_load(
        args.url,
        args.clients,
        args.requests,
        args.video,
        args.send,
        args.question,
        args.max_tokens,
        args.model,
        args.api_key,
    )
    text = json.dumps({k: v for k, v in report.items() if k != "answers"}, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0 if report["failed"] == 0 and report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

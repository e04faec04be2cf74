"""The server: an OpenAI-compatible API over one VideoLLM, and the chat page.

Endpoints (all JSON errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}}):

    GET  /v1/models                  the one model, with its context length
    POST /v1/chat/completions        vLLM's message shape: content parts {"type": "text"} and
                                     {"type": "video_url", "video_url": {"url": data:video/...;base64,... |
                                     a path under --allowed-local-media-path | http(s) with
                                     --allow-remote-media}}; "stream": true answers with server-sent events
    POST /v1/videos/generations      {"model", "prompt", ...} -> the generated video as video/mp4 bytes
    GET  /health                     {"status": "ok"}
    GET  /                           the chat page (static HTML + JS)

One model answers one forward pass at a time: every request's model work (decoding and encoding its
videos, the prefill, each sampled token) runs under one lock, so concurrent streams interleave token by
token and none is lost. Each conversation's KV cache is a `generation.PromptCache` checked out of a small
pool: a request whose prompt starts with the tokens a cached conversation ran (the same video, earlier
turns) continues from that cache. Encoded videos are kept by content hash, so a resent video is not
decoded or encoded again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mmvid.generation import PromptCache, SamplingParams, shared_prefix, stream
from mmvid.text_tokenizer import VIDEO_TOKEN

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
VIDEO_SUFFIXES = {
    "mp4": ".mp4",
    "webm": ".webm",
    "x-matroska": ".mkv",
    "quicktime": ".mov",
    "gif": ".gif",
    "avi": ".avi",
    "x-msvideo": ".avi",
    "mpeg": ".mpg",
    "ogg": ".ogv",
}


# ----------------------------------------------------------------------------------------------
# Settings and errors
# ----------------------------------------------------------------------------------------------


@dataclass
class ServeSettings:
    model_name: str = "mmvid"  # the id clients send as "model"
    api_key: str | None = None  # when set, every /v1 request needs "Authorization: Bearer <key>"
    allowed_local_media_path: str | None = None  # video_url paths must resolve inside it; None: refused
    allow_remote_media: bool = False  # fetch http(s) video URLs (refused by default)
    max_video_bytes: int = 64 * 2**20  # one video, decoded from its data URL or file
    max_videos_per_request: int = 1
    default_max_tokens: int = 256  # when a request gives none (capped by the context left)
    max_pending: int = 64  # requests in flight at once; more get 429
    conversations: int = 8  # KV caches kept for conversations that come back
    videos: int = 32  # encoded videos kept, by content
    remote_timeout_s: float = 30.0

    @property
    def max_request_bytes(self) -> int:
        """A request body: its videos as base64 (4/3 of the bytes) and 1 MiB of text."""
        return self.max_videos_per_request * (self.max_video_bytes * 4 // 3 + 4) + 2**20


class APIError(Exception):
    """An error answered as {"error": {...}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class VideoURL(_Strict):
    url: str


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL


Part = Annotated[Union[TextPart, VideoPart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ProcessorKwargs(_Strict):
    num_frames: int | None = Field(None, ge=1)
    fps: float | None = Field(None, gt=0)


class ChatRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # vLLM's extension (0: off)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    mm_processor_kwargs: ProcessorKwargs | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request
    user: str | None = None  # accepted and ignored


class VideoRequest(_Strict):
    model: str
    prompt: str = Field(min_length=1)
    guidance_scale: float = Field(3.0, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    steps: int | None = Field(None, ge=1, le=1000)
    seed: int | None = None
    fps: float = Field(8.0, gt=0, le=120)
    response_format: Literal["mp4", "gif"] = "mp4"


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line from pydantic's errors, and the first one's field."""
    parts, param = [], None
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        if e.get("type") == "json_invalid":
            return f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", None
        if not loc:  # the body as a whole
            return (
                f"the request body must be a JSON object (Content-Type: application/json): {e.get('msg')}",
                None,
            )
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        elif e.get("type") == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            parts.append(f"{loc}: {e.get('msg')}")
        param = param or loc or None
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more, param


# ----------------------------------------------------------------------------------------------
# Videos in requests
# ----------------------------------------------------------------------------------------------


@dataclass
class VideoSource:
    key: str  # what the features are kept under: a content hash, or a file's identity
    path: Path
    temporary: bool

    def cleanup(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


_DATA_URL = re.compile(
    r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.IGNORECASE
)


def _temporary(data: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="mmvid-serve-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def resolve_video(url: str, settings: ServeSettings) -> VideoSource:
    """A video_url -> a readable file, or APIError naming what is wrong with it."""
    url = url.strip()
    if url.lower().startswith("data:"):
        return _data_video(url, settings)
    if url.lower().startswith(("http://", "https://")):
        if not settings.allow_remote_media:
            raise APIError(
                400,
                "remote video URLs are refused: send the video as a data URL, or start the "
                "server with --allow-remote-media",
                param="video_url",
                code="remote_media_refused",
            )
        return _download(url, settings)
    path = url[len("file://") :] if url.lower().startswith("file://") else url
    if re.match(r"^[a-zA-Z][\w+.-]*://", path):
        raise APIError(
            400,
            f"unsupported video URL scheme in {url[:40]!r}: use data:, a local path or http(s)",
            param="video_url",
        )
    return _local_video(path, settings)


def _data_video(url: str, settings: ServeSettings) -> VideoSource:
    """A data:video/...;base64, URL, written to a temporary file."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise APIError(400, "a video data URL must be data:video/<type>;base64,<data>", param="video_url")
    mime = (match.group("mime") or "").lower()
    if not mime.startswith("video/") and mime not in ("image/gif", "application/octet-stream"):
        raise APIError(
            400, f"a video data URL must have a video/* type, got {mime or 'none'!r}", param="video_url"
        )
    payload = url[match.end() :]
    if len(payload) > settings.max_video_bytes * 4 // 3 + 4:  # refused before decoding
        raise _too_large("the video", None, settings)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the video data URL is not valid base64", param="video_url") from None
    suffix = VIDEO_SUFFIXES.get(mime.split("/", 1)[1], ".mp4") if "/" in mime else ".mp4"
    return _video_bytes(data, "the video", suffix, settings)


def _too_large(what: str, size: int | None, settings: ServeSettings) -> APIError:
    bytes_ = "" if size is None else f"{size} bytes, "
    return APIError(
        413,
        f"{what} is {bytes_}over --max-video-bytes ({settings.max_video_bytes})",
        param="video_url",
        code="video_too_large",
    )


def _video_bytes(data: bytes, what: str, suffix: str, settings: ServeSettings) -> VideoSource:
    """A video's bytes (a data URL's, a download's): checked, written to a temporary file, keyed by its
    content."""
    if not data:
        raise APIError(400, f"{what} is empty (0 bytes)", param="video_url", code="video_decode_error")
    if len(data) > settings.max_video_bytes:
        raise _too_large(what, len(data), settings)
    return VideoSource("sha256:" + hashlib.sha256(data).hexdigest(), _temporary(data, suffix), True)


def _local_video(path: str, settings: ServeSettings) -> VideoSource:
    """A path that must resolve (symlinks followed) inside --allowed-local-media-path."""
    if settings.allowed_local_media_path is None:
        raise APIError(
            403,
            "local video paths are refused: start the server with --allowed-local-media-path DIR",
            type="permission_error",
            param="video_url",
            code="local_media_refused",
        )
    root = Path(settings.allowed_local_media_path).resolve()
    candidate = Path(path) if Path(path).is_absolute() else root / path
    try:
        real = candidate.resolve(strict=True)  # symlinks followed: where the file really is
    except (FileNotFoundError, RuntimeError, OSError):
        raise APIError(404, f"no such video: {path}", param="video_url", code="video_not_found") from None
    if not real.is_relative_to(root):
        raise APIError(
            403,
            f"{path} is outside the allowed media path",
            type="permission_error",
            param="video_url",
            code="path_not_allowed",
        )
    if not real.is_file():
        raise APIError(400, f"{path} is not a file", param="video_url")
    stat = real.stat()
    if stat.st_size > settings.max_video_bytes:
        raise _too_large(path, stat.st_size, settings)
    return VideoSource(f"file:{real}:{stat.st_size}:{stat.st_mtime_ns}", real, False)


def _download(url: str, settings: ServeSettings) -> VideoSource:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=settings.remote_timeout_s) as response:  # noqa: S310
            data = response.read(settings.max_video_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise APIError(
            400, f"could not fetch {url}: {e}", param="video_url", code="video_fetch_error"
        ) from None
    return _video_bytes(data, url, Path(url.split("?")[0]).suffix or ".mp4", settings)


def split_messages(messages: list[Message]) -> tuple[list[dict], list[str]]:
    """Request messages -> the model's chat messages (each video part becomes <video>) and the video URLs in
    order."""
    out, urls = [], []
    for i, message in enumerate(messages):
        parts = (
            [TextPart(type="text", text=message.content)]
            if isinstance(message.content, str)
            else message.content
        )
        pieces = []
        for part in parts:
            if isinstance(part, VideoPart):
                if message.role != "user":
                    raise APIError(
                        400,
                        f"messages[{i}]: only user messages may hold videos",
                        param=f"messages.{i}.content",
                    )
                urls.append(part.video_url.url)
                pieces.append(VIDEO_TOKEN)
            else:
                if VIDEO_TOKEN in part.text:
                    raise APIError(
                        400,
                        f"messages[{i}]: the text holds {VIDEO_TOKEN}, which is reserved; send "
                        "the video as a video_url part",
                        param=f"messages.{i}.content",
                    )
                pieces.append(part.text)
        out.append({"role": message.role, "content": "\n".join(p for p in pieces if p)})
    if out[-1]["role"] == "assistant":
        raise APIError(
            400, "the last message must not be the assistant's: there is nothing to answer", param="messages"
        )
    return out, urls


# ----------------------------------------------------------------------------------------------
# The engine: one model, one lock, caches
# ----------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    ids: list[int]
    features: torch.Tensor | None
    params: SamplingParams
    cache: PromptCache
    video_positions: int


class Engine:
    """The model and what requests share: the lock, the encoded videos, the conversations' KV caches."""

    def __init__(self, model, settings: ServeSettings):
        self.model, self.settings = model, settings
        self.lock = threading.Lock()
        self.videos = PromptCache(max_videos=settings.videos)  # its keyed store of encoded videos only
        self.caches: list[PromptCache] = []  # free caches, least recently used first
        self.pending = 0
        self.encoded = 0  # videos decoded and encoded (the tests check that a resent video is not)
        config = getattr(model.llm, "config", None)
        limits = [getattr(config, "max_position_embeddings", None), model.processor.config.max_length]
        self.context = min(x for x in limits if x) if any(limits) else 2048

    # -- videos ----------------------------------------------------------------------------------------

    def features(self, sources: list[VideoSource], num_frames: int | None, fps: float | None):
        """(V, N, hidden) features of the request's videos, from the cache or decoded and encoded now."""
        from mmvid.data import VideoDecodeError

        if not sources:
            return None
        processor = self.model.processor
        try:
            frames = processor.config.check_frames(num_frames) if num_frames is not None else None
        except ValueError as e:
            raise APIError(400, f"mm_processor_kwargs: {e}", param="mm_processor_kwargs.num_frames") from None

        def encode(k: int, source: VideoSource) -> torch.Tensor:
            try:
                video = processor.load_video(source.path, num_frames=frames, fps=fps)
            except (VideoDecodeError, ValueError, OSError) as e:
                raise APIError(
                    400, f"video {k}: could not decode it: {e}", param="video_url", code="video_decode_error"
                ) from None
            self.encoded += 1
            with torch.no_grad():
                return self.model.encode_video(video[None].to(self.model.device))

        out = [
            self.videos.video_features((s.key, frames, fps), functools.partial(encode, k, s))
            for k, s in enumerate(sources)
        ]
        if len({f.shape[1:] for f in out}) > 1:
            raise APIError(
                400,
                "the request's videos give different numbers of tokens; send them with the same num_frames",
                param="mm_processor_kwargs",
            )
        return torch.cat(out)

    # -- conversations ----------------------------------------------------------------------------------

    def checkout(self, ids: list[int]) -> PromptCache:
        """The free cache whose run tokens share the longest prefix with `ids`, else a fresh one (the least
        recently used is dropped when the pool is full). The caller owns it until `checkin`."""
        with self.lock:
            best, best_len = None, 0
            for cache in self.caches:
                n = shared_prefix(cache.ids, ids)
                if n > best_len:
                    best, best_len = cache, n
            if best is not None:
                self.caches.remove(best)
                return best
            return PromptCache(max_videos=0)

    def forget(self) -> None:
        """Drop every encoded video and conversation cache (the serve bench measures cold requests)."""
        with self.lock:
            self.videos.videos.clear()
            self.caches.clear()

    def checkin(self, cache: PromptCache) -> None:
        with self.lock:
            if cache.kv is None:
                return
            self.caches.append(cache)
            while len(self.caches) > self.settings.conversations:
                self.caches.pop(0)

    # -- a chat request --------------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> Prepared:
        """Everything before the first token: the videos, the prompt ids, the checks. Raises APIError."""
        messages, urls = split_messages(request.messages)
        if len(urls) > self.settings.max_videos_per_request:
            raise APIError(
                400,
                f"{len(urls)} videos in the request; at most {self.settings.max_videos_per_request} "
                "are allowed (--max-videos-per-request)",
                param="messages",
                code="too_many_videos",
            )
        kwargs = request.mm_processor_kwargs or ProcessorKwargs()
        sources = [resolve_video(url, self.settings) for url in urls]
        try:
            with self.lock:
                features = self.features(sources, kwargs.num_frames, kwargs.fps)
                ids = self.model.prompt_ids(messages, features)
        finally:
            for source in sources:
                source.cleanup()
        video_positions = 0 if features is None else features.shape[0] * features.shape[1]
        wanted = request.max_completion_tokens or request.max_tokens
        left = self.context - len(ids)
        if left < 1 or (wanted is not None and wanted > left):
            asked = f"; you asked for {wanted} more tokens" if wanted else ""
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens ({video_positions} of them video positions), "
                f"and the model's context is {self.context}{asked}",
                param="messages",
                code="context_length_exceeded",
            )
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        if len(stop) > 4:
            raise APIError(400, f"at most 4 stop strings, got {len(stop)}", param="stop")
        params = SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            seed=request.seed,
            stop=stop,
            max_new_tokens=wanted or min(self.settings.default_max_tokens, left),
        )
        return Prepared(ids, features, params, self.checkout(ids), video_positions)

    def deltas(self, prepared: Prepared) -> Iterator:
        """The sampled deltas; each forward pass runs under the lock, and the cache goes back to the pool at
        the end (also when the client goes away)."""
        it = stream(self.model, prepared.ids, prepared.params, prepared.features, prepared.cache)
        try:
            while True:
                with self.lock, torch.no_grad():
                    delta = next(it, None)
                if delta is None:
                    return
                yield delta
        finally:
            it.close()
            self.checkin(prepared.cache)


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def _usage(usage, prepared: Prepared) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "video_tokens": prepared.video_positions,
        },
    }


def create_app(model, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `model` (a VideoLLM in eval mode)."""
    settings = settings or ServeSettings()
    engine = Engine(model, settings)
    app = FastAPI(title="mmvid", version="1", docs_url=None, redoc_url=None)
    app.state.engine = engine
    _install_errors(app)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        refused = _refuse(request, settings)
        return refused.response() if refused is not None else await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/v1/models")
    async def models():
        card = {
            "id": settings.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "mmvid",
            "max_model_len": engine.context,
            "video_generation": model.generation_head is not None,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest):
        return await _chat(engine, request)

    @app.post("/v1/videos/generations")
    async def videos(request: VideoRequest):
        return await _video(engine, request)

    return app


def _install_errors(app: FastAPI) -> None:
    """Every error as OpenAI's {"error": {...}} body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc.errors())
        return APIError(400, message, param=param).response()

    @app.exception_handler(404)
    async def _not_found(request: Request, exc):
        return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()

    @app.exception_handler(405)
    async def _not_allowed(request: Request, exc):
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()


def _refuse(request: Request, settings: ServeSettings) -> APIError | None:
    """A /v1 request without the API key, or with a body larger than any allowed one."""
    if not request.url.path.startswith("/v1/"):
        return None
    if settings.api_key is not None:
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            return APIError(
                401,
                "missing or wrong API key (Authorization: Bearer <key>)",
                type="authentication_error",
                code="invalid_api_key",
            )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
        return APIError(
            413,
            f"the request is {length} bytes, over the limit of {settings.max_request_bytes} "
            "(--max-video-bytes sets it)",
            code="request_too_large",
        )
    return None


def _check_model(name: str, settings: ServeSettings) -> None:
    if name != settings.model_name:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {settings.model_name!r}",
            param="model",
            code="model_not_found",
        )


async def _chat(engine: Engine, request: ChatRequest):
    """POST /v1/chat/completions: a chat.completion, or a stream of chunks."""
    settings = engine.settings
    _check_model(request.model, settings)
    if engine.pending >= settings.max_pending:
        raise APIError(
            429,
            f"the server has {engine.pending} requests in flight; try again later",
            type="rate_limit_error",
            code="server_busy",
        )
    engine.pending += 1
    released = False
    try:
        prepared = await run_in_threadpool(engine.prepare, request)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        deltas = engine.deltas(prepared)
        if not request.stream:
            collected = await run_in_threadpool(list, deltas)  # one thread hop for the whole answer
            last = collected[-1]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(d.text for d in collected)},
                "finish_reason": last.finish_reason,
                "logprobs": None,
            }
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": settings.model_name,
                "choices": [choice],
                "usage": _usage(last.usage, prepared),
            }
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        released = True  # the stream lowers the count when it ends
        return StreamingResponse(
            _sse(engine, deltas, prepared, rid, created, settings.model_name, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    finally:
        if not released:
            engine.pending -= 1


async def _video(engine: Engine, request: VideoRequest) -> Response:
    """POST /v1/videos/generations: the generated video's bytes."""
    model = engine.model
    _check_model(request.model, engine.settings)
    if model.generation_head is None:
        raise APIError(
            400,
            "this model has no generation head: it cannot make videos",
            param="model",
            code="no_generation_head",
        )
    suffix = "." + request.response_format
    fd, name = tempfile.mkstemp(prefix="mmvid-gen-", suffix=suffix)
    os.close(fd)
    start = time.perf_counter()

    def work():
        with engine.lock, torch.no_grad():
            return model.generate_video(
                request.prompt,
                guidance_scale=request.guidance_scale,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                steps=request.steps,
                seed=request.seed,
                output=name,
                fps=request.fps,
            )

    try:
        frames = await run_in_threadpool(work)
        data = Path(name).read_bytes()
    except ValueError as e:
        raise APIError(400, str(e), param="prompt") from None
    finally:
        Path(name).unlink(missing_ok=True)
    T, H, W = (int(x) for x in frames.shape[:3])
    return Response(
        data,
        media_type="video/mp4" if suffix == ".mp4" else "image/gif",
        headers={
            "X-Mmvid-Frames": str(T),
            "X-Mmvid-Size": f"{W}x{H}",
            "X-Mmvid-Fps": str(request.fps),
            "X-Mmvid-Seconds": f"{time.perf_counter() - start:.3f}",
        },
    )


async def _sse(
    engine: Engine,
    deltas: Iterator,
    prepared: Prepared,
    rid: str,
    created: int,
    name: str,
    include_usage: bool,
):
    """chat.completion.chunk events: the role first, then the text, then finish_reason; usage and [DONE]."""
    import json

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        if include_usage and "usage" not in body:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    producer = _Producer(deltas)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            try:
                delta = await producer.get()
            except Exception as e:  # an error after the first byte: an error event, then the end
                log.exception("generation failed")
                error = APIError(500, f"generation failed: {e}", type="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
                break
            if delta is None:
                break
            if delta.finish_reason is None:
                if delta.text:
                    yield chunk({"content": delta.text})
                continue
            yield chunk({"content": delta.text} if delta.text else {}, delta.finish_reason)
            if include_usage:
                body = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [],
                    "usage": _usage(delta.usage, prepared),
                }
                yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    except asyncio.CancelledError:  # the client went away, or the server is shutting down
        raise
    finally:
        producer.stop()
        engine.pending -= 1


class _Producer:
    """Runs a stream's deltas in a thread of its own and hands them to the event loop through a queue: one
    thread for the whole answer instead of a thread-pool hop per token (which halved tokens/s)."""

    def __init__(self, deltas: Iterator):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stopped = threading.Event()
        threading.Thread(target=self._run, args=(deltas,), daemon=True, name="mmvid-stream").start()

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            self.stopped.set()

    def _run(self, deltas: Iterator) -> None:
        try:
            for delta in deltas:
                if self.stopped.is_set():
                    break
                self._put(("delta", delta))
        except Exception as e:  # noqa: BLE001 - handed to the stream, which reports it
            self._put(("error", e))
        finally:
            deltas.close()  # the KV cache goes back to the pool, consistent
            self._put(("end", None))

    async def get(self):
        """The next delta; None at the end; the generation's exception, raised here."""
        kind, value = await self.queue.get()
        if kind == "error":
            raise value
        return value if kind == "delta" else None

    def stop(self) -> None:
        """The client went away: the thread stops after the token it is sampling."""
        self.stopped.set()

"""`python -m mmvid.serve --model runs/sft-default/final` (also `mmvid-serve`): the OpenAI-compatible
server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_MODEL = "runs/sft-default/final"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mmvid-serve", description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a VideoLLM save_pretrained folder")
    p.add_argument("--served-model-name", default="mmvid", help="the id clients send as 'model'")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--api-key",
        default=os.environ.get("MMVID_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $MMVID_API_KEY; none: open)",
    )
    p.add_argument(
        "--allowed-local-media-path",
        default=None,
        help="video_url may name files under this folder (default: none may)",
    )
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) video URLs")
    p.add_argument("--max-video-bytes", type=int, default=64 * 2**20)
    p.add_argument("--max-videos-per-request", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=256, help="when a request gives none")
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/Ctrl-C: seconds in-flight requests get to finish before they are cancelled",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = Path(args.model)
    if not (path / "config.json").is_file():
        hint = " (train one with `deepspeed train/sft.py`)" if args.model == DEFAULT_MODEL else ""
        print(f"error: no VideoLLM checkpoint at {path}{hint}", file=sys.stderr)
        return 2
    if args.allowed_local_media_path is not None and not Path(args.allowed_local_media_path).is_dir():
        print(
            f"error: --allowed-local-media-path {args.allowed_local_media_path} is not a folder",
            file=sys.stderr,
        )
        return 2
    import torch
    import uvicorn

    from mmvid.serve.app import ServeSettings, create_app
    from mmvid.videollm import VideoLLM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = VideoLLM.from_pretrained(path, device=device).eval()
    if args.dtype:
        model.to(getattr(torch, args.dtype))
    settings = ServeSettings(
        model_name=args.served_model_name,
        api_key=args.api_key or None,
        allowed_local_media_path=args.allowed_local_media_path,
        allow_remote_media=args.allow_remote_media,
        max_video_bytes=args.max_video_bytes,
        max_videos_per_request=args.max_videos_per_request,
        default_max_tokens=args.max_tokens,
    )
    app = create_app(model, settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

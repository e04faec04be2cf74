r"""Reconstruction quality of a trained video tokenizer on a data split: PSNR, SSIM, tokens per video.

    python tokenizers/reconstruct.py runs/vtok-base/final --data data/shapes --split test \
        [--frames 16] [--limit 500]
"""

import argparse
import json
import sys
import time

import torch
from torch.utils.data import DataLoader

from mmvid.data.video_dataset import VideoClipDataset, list_videos
from mmvid.video_tokenizers import load_video_tokenizer
from mmvid.video_tokenizers.trainer import evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a folder written by save_pretrained (e.g. runs/x/final)")
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", help="also write the result as JSON")
    args = parser.parse_args()
    try:
        tokenizer = load_video_tokenizer(args.model)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    size = tokenizer.config.image_size
    videos = list_videos(args.data, args.split)[: args.limit]
    loader = DataLoader(VideoClipDataset(videos, args.frames, size), batch_size=args.batch_size)
    start = time.perf_counter()
    result = evaluate(tokenizer, loader, torch.device("cpu"))
    result.update(videos=len(videos), tokens_per_video=tokenizer.num_tokens(args.frames, size, size),
                  seconds=round(time.perf_counter() - start, 1), model=args.model, split=args.split)
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)

"""The last decoder lever of issue 20: an adversarial term. Fine-tunes a VTok's decoder alone (the tokens stay
the same) with the foreground-weighted MSE plus a hinge GAN loss from a small patch discriminator on frames
(PatchGAN-style, as VQGAN's decoder training adds one after reconstruction has converged).

    python docs/experiments/decoder_gan.py INIT OUT MINUTES [ADV_WEIGHT] [LR]
    python eval/run.py --bench recon --option tokenizer=OUT --option frames=8 --limit 100

INIT: a save_pretrained VTok whose decoder already reconstructs
(e.g. runs/sft-default/video-tokenizer-decoder).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import DataLoader

from mmvid.data.video_dataset import VideoClipDataset, list_videos
from mmvid.video_tokenizers import video_tokenizer_from
from mmvid.video_tokenizers.losses import reconstruction_loss


def discriminator(width: int = 32) -> nn.Module:
    """64 x 64 frame -> 8 x 8 real/fake logits (each sees a ~22-pixel patch)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.GroupNorm(8, 4 * width), nn.LeakyReLU(0.2),
        nn.Conv2d(4 * width, 1, 3, 1, 1))


def main(init: str, out: str, minutes: float, adv_weight: float = 0.1, lr: float = 3e-4) -> dict:
    torch.manual_seed(0)
    tok = video_tokenizer_from(init)
    tok.train_only_decoder()
    tok.train()
    disc = discriminator()
    params = [p for p in tok.parameters() if p.requires_grad]
    opt_g = torch.optim.AdamW(params, lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    videos = list_videos("data/shapes", "train")
    loader = DataLoader(VideoClipDataset(videos, 8, tok.image_size, seed=0), batch_size=8, shuffle=True,
                        num_workers=1, drop_last=True)
    start, step, log = time.perf_counter(), 0, []
    while time.perf_counter() - start < minutes * 60:
        for batch in loader:
            x = batch["video"]
            with torch.no_grad():
                tokens = tok.encode(x)
            y = tok.decode(tokens)
            frames_real = rearrange(x, "b c t h w -> (b t) c h w")
            frames_fake = rearrange(y, "b c t h w -> (b t) c h w")
            # discriminator: hinge
            d_loss = F.relu(1 - disc(frames_real)).mean() + F.relu(1 + disc(frames_fake.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # decoder: reconstruction + adversarial
            rec, parts = reconstruction_loss(y, x, foreground_weight=10.0)
            g_adv = -disc(frames_fake).mean()
            loss = rec + adv_weight * g_adv
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt_g.step()
            step += 1
            if step % 50 == 0:
                log.append({"step": step, "rec": round(float(rec), 4), "g_adv": round(float(g_adv), 4),
                            "d": round(float(d_loss), 4), "s": round(time.perf_counter() - start, 1)})
                print(log[-1], flush=True)
            if time.perf_counter() - start >= minutes * 60:
                break
    tok.eval()
    tok.save_pretrained(out)
    record = {"init": init, "minutes": minutes, "adv_weight": adv_weight, "lr": lr, "steps": step, "log": log}
    (Path(out) / "gan_run.json").write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], float(a[2]), float(a[3]) if len(a) > 3 else 0.1, float(a[4]) if len(a) > 4 else 3e-4)

"""Golden outputs of CoordTok, SweetTok and VTok as the code stood before issue 18 (commit 6dcf5aa, three
Attention / Block families, objectives inside the models), read by tests/test_tokenizer_parity.py.

No weights are stored: every state-dict entry is a fixed function of its key (`synthetic_state`), so a
file holds the old code's key names and shapes, its config record, its seed-0 init (per-key sums) and
what encode / decode / the training losses returned on fixed inputs. Regenerate from that commit:

    git worktree add /tmp/mmvid-6dcf5aa 6dcf5aa
    cd /tmp/mmvid-6dcf5aa
    python $REPO/tests/data/tokenizer_golden/make.py --out $REPO/tests/data/tokenizer_golden
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import asdict
from pathlib import Path

import torch


def synthetic_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Key -> a tensor drawn from a generator seeded by the key: 1 + 0.1 N(0, 1) for 1-D `weight`s
    (LayerNorm scales), 0.1 N(0, 1) for everything else. The parity test loads this file by path and
    calls this, `video` and `mean_abs`, so keep this module's top level free of mmvid imports."""
    state = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        value = 0.1 * torch.randn(shape, generator=g)
        state[key] = value + 1 if key.endswith("weight") and len(shape) == 1 else value
    return state


def video(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A stand-in for the perceptual loss."""
    return (a - b).abs().mean()


def init_sums(tokenizer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"init/{k}": v.double().sum().float()[None] for k, v in tokenizer.state_dict().items()}


def record(tokenizer, note: str) -> dict[str, str]:
    shapes = {k: list(v.shape) for k, v in tokenizer.state_dict().items()}
    return {"note": note, "keys": json.dumps(shapes), "config": json.dumps(asdict(tokenizer.config))}


def built(preset: str, overrides: dict) -> tuple[torch.nn.Module, dict, dict]:
    """The preset at seed 0 (its init recorded), then loaded with the key-seeded synthetic weights."""
    from mmvid.video_tokenizers import build_video_tokenizer

    torch.manual_seed(0)
    tok = build_video_tokenizer(preset, **overrides).eval()
    out = init_sums(tok)
    meta = record(tok, json.dumps(overrides))
    tok.load_state_dict(synthetic_state(json.loads(meta["keys"])))
    return tok, out, meta


@torch.no_grad()
def coordtok() -> tuple[dict, dict]:
    from mmvid.video_tokenizers.coordtok import coordtok_training_loss

    overrides = {"num_frames": 16, "stage2_frames": 4}
    tok, out, meta = built("coordtok_tiny", overrides)
    x = video((2, 3, 16, 32, 32), 1)
    out["encode"] = tok.encode(x)
    out["encode_padded"] = tok.encode(x, num_valid_frames=torch.tensor([5, 16]))  # one padded temporal patch
    out["decode"] = tok.decode(out["encode"][:1], num_frames=2)
    coords = torch.tensor([[[0, 1, 2], [3, 0, 0], [15, 3, 3], [7, 2, 1], [1, 1, 1]]]).expand(2, -1, -1)
    padding = torch.tensor([[False, False, True, False, True], [False] * 5])  # True = padded query
    out["decode_patches"] = tok.decode_patches(out["encode"], coords, key_padding_mask=padding)
    with torch.enable_grad():
        for stage in (1, 2):
            g = torch.Generator().manual_seed(stage)
            loss, parts = coordtok_training_loss(tok, x, stage=stage, num_valid_frames=torch.tensor([12, 16]),
                                                 perceptual=mean_abs, perceptual_weight=0.5, generator=g)
            out[f"loss{stage}"] = loss.detach()[None]
            out.update({f"loss{stage}/{k}": torch.tensor([v]) for k, v in parts.items()})
    return out, meta


@torch.no_grad()
def sweettok() -> tuple[dict, dict]:
    overrides = {"image_size": 16, "proxy_codebook_size": 3, "usage_weight": 0.5, "usage_temperature": 0.05,
                 "proxy_weight": 0.7}
    tok, out, meta = built("sweettok_tiny", overrides)
    x = video((2, 3, 5, 16, 16), 2)
    q = tok.quantize(x)
    out.update({f"quantize/{k}": v for k, v in q.items() if k != "usage_loss"})
    out["quantize/usage_loss"] = q["usage_loss"][None]
    out["decode"] = tok.decode(q["vectors"][:1], num_frames=5)
    out["decode_ids"] = tok.decode(q["ids"][1:], num_frames=3)
    tok.config.reading = "released"
    out["released/ids"] = tok.encode_ids(x)
    tok.config.reading = "paper"
    targets = torch.randint(0, 3, (2, 2, 4), generator=torch.Generator().manual_seed(3))
    with torch.enable_grad():
        loss, parts = tok.training_loss(x, mean_abs, 0.5, proxy_targets=targets)
    out["loss"] = loss.detach()[None]
    out.update({f"loss/{k}": torch.tensor([float(v)]) for k, v in parts.items()})
    out["proxy_targets"] = targets
    return out, meta


@torch.no_grad()
def vtok() -> tuple[dict, dict]:
    overrides = {"image_size": 16}
    tok, out, meta = built("vtok_tiny", overrides)
    x = video((2, 3, 3, 16, 16), 4)
    out["encode"] = tok.encode(x)
    out["decode"] = tok.decode(out["encode"], num_frames=3)
    return out, meta


def main() -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("coordtok", coordtok), ("sweettok", sweettok), ("vtok", vtok)):
        tensors, meta = make()
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(out / f"{name}.safetensors"), metadata=meta)
        print(name, sum(v.numel() for v in tensors.values()), "values")


if __name__ == "__main__":
    main()

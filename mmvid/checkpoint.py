"""Atomic, rotating training checkpoints: `run/checkpoints/step_000200/` folders.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete,
so a save killed halfway never becomes the one `latest_checkpoint` returns. The newest `keep`
are kept. Contents: `model.safetensors` (weights) and `state.pt` (optimizer, scheduler, sampler,
RNG and step; plain tensors and Python values, read back with `weights_only=True`).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{6,})$")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root/checkpoints`, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, as tensors and plain values (safe for weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep`."""
    from safetensors.torch import save_file

    folder = Path(root) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:06d}"
    tmp = folder / f".step_{step:06d}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into `model` (strict) and return the saved state (RNG not yet applied)."""
    from safetensors.torch import load_file

    path = Path(path)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)

"""One training state and one checkpointer for both training loops (tokenizers/train.py, train/sft.py).

`TrainState` is what a run needs to continue exactly, beside its weights, optimizer and scheduler: the step,
the data position (one resumable sampler per data phase), two counters and every RNG. `Checkpointer` writes
`run/checkpoints/step_000200/` into a hidden temporary folder and renames it into place when complete, so a
save killed halfway is never the one `latest_checkpoint` returns; the newest `keep` are kept.

Format 2 (FORMAT), one folder per checkpoint:

    meta.json          {"format": 2, "kind", "step", "train_state", "config"}; human-readable, written last
    model.safetensors  kind "module" (the tokenizer loop): the weights
    optimizer.pt       kind "module": optimizer and scheduler state dicts, read back with weights_only=True
    latest, state/     kind "deepspeed" (the SFT loop): DeepSpeed's own checkpoint, tag "state" (weights,
                       optimizer, scheduler; one partition per rank under ZeRO)

Format 1, written before format 2, is upgraded in place by `upgrade_checkpoint` (`Checkpointer.load` calls
it): the tokenizer loop's `state.pt` (optimizer, scheduler, sampler, RNG, step, trained_seconds, config), and
the SFT loop's `client_state.json` marker beside DeepSpeed's checkpoint, whose client state "mmvid" held the
samplers, RNG, step, samples_seen and config.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("mmvid.checkpoint")

FORMAT = 2
META_FILE = "meta.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_TAG = "state"
_NAME = re.compile(r"^step_(\d{6,})$")


# ----------------------------------------------------------------------------------------------
# The training state
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """The step, the data position and the RNGs: with the weights and optimizer, all a resumed run needs."""

    # ResumableSampler per data phase ("train", "curriculum")
    samplers: dict[str, Any] = field(default_factory=dict)
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # training samples, all ranks together
    seconds: float = 0.0  # training time, evaluation left out (the tokenizer loop's max_minutes budget)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable, with this process's RNG states (rank 0's restore every rank)."""
        return {"step": self.step, "samples_seen": self.samples_seen, "seconds": self.seconds,
                "samplers": {name: sampler.state_dict() for name, sampler in self.samplers.items()},
                "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples_seen, self.seconds = state["step"], state["samples_seen"], state["seconds"]
        for name, sampler in self.samplers.items():
            if name in state["samplers"]:  # a phase the saved run did not have starts at its beginning
                sampler.load_state_dict(state["samplers"][name])
        set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches (torch's CPU generator, numpy's, Python's), as JSON: states in
    hex."""
    return _rng_json(torch.get_rng_state(), np.random.get_state(), random.getstate())


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray.fromhex(state["torch"]), dtype=torch.uint8))
    n, p = state["numpy"], state["python"]
    np.random.set_state(("MT19937", _words(n["keys"]), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((p["version"], tuple(int(w) for w in _words(p["state"])), p["gauss_next"]))


def _rng_json(torch_state: torch.Tensor, numpy_state: tuple, python_state: tuple) -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = numpy_state
    version, internal, gauss_next = python_state  # 624 Mersenne Twister words + the position: all uint32
    return {"torch": torch_state.numpy().tobytes().hex(),
            "numpy": {"keys": _hex(keys), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "python": {"version": version, "state": _hex(internal), "gauss_next": gauss_next}}


def _hex(words) -> str:
    return np.asarray(words, dtype=np.int64).astype("<u4").tobytes().hex()


def _words(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype="<u4").astype(np.uint32)


# ----------------------------------------------------------------------------------------------
# Weights that start a run
# ----------------------------------------------------------------------------------------------


def load_weights(model: torch.nn.Module, file: str | Path, partial: Sequence[str] = (),
                 device: str = "cpu", hint: str = "") -> None:
    """Load a safetensors file into `model`, strictly: every key of either side must be on the other, except
    the keys under the module names in `partial` (e.g. ["generation_head"], a head the saved model did not
    have: it keeps its fresh initialisation). A tied weight (an LM head sharing the embeddings) loads with
    its twin. `hint` ends the mismatch error (what the caller's user can do about it). On that error the
    model holds whatever did match: the caller drops it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: keys missing from the file or unexpected in it, listed, outside `partial`.
    """
    from safetensors.torch import load_file

    if not Path(file).is_file():
        raise FileNotFoundError(f"{file} does not exist (a save_pretrained folder holds it)")
    # The model's own load_state_dict decides what matched, after its pre-hooks (old key names renamed).
    result = model.load_state_dict(load_file(str(file), device=str(device)), strict=False)
    own = model.state_dict()
    not_loaded = set(result.missing_keys)
    loaded = {v.data_ptr() for k, v in own.items() if k not in not_loaded}

    def may_differ(key: str) -> bool:
        return any(key == name or key.startswith(name + ".") for name in partial)

    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded and not may_differ(k)]
    unexpected = [k for k in result.unexpected_keys if not may_differ(k)]
    if missing or unexpected:
        raise ValueError(f"{file} does not match the model: {len(missing)} keys missing {missing[:8]}, "
                         f"{len(unexpected)} unexpected {unexpected[:8]}{hint}")


# ----------------------------------------------------------------------------------------------
# Checkpoint folders
# ----------------------------------------------------------------------------------------------


def checkpoint_format(folder: str | Path) -> int | None:
    """2 (or later) from meta.json, 1 for a complete format-1 folder, None for anything else."""
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        return json.loads((folder / META_FILE).read_text())["format"]
    return 1 if (folder / "state.pt").is_file() or (folder / "client_state.json").is_file() else None


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root/checkpoints`, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if checkpoint_format(p) is not None]


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A format-2 checkpoint's meta.json; raises for a format this code does not read."""
    meta = json.loads((Path(folder) / META_FILE).read_text())
    if meta["format"] > FORMAT:
        raise ValueError(f"{folder} is checkpoint format {meta['format']}, newer than this mmvid reads "
                         f"({FORMAT})")
    return meta


def _write_meta(folder: Path, kind: str, train_state: dict, config: dict) -> None:
    meta = {"format": FORMAT, "kind": kind, "step": train_state["step"], "train_state": train_state,
            "config": config}
    tmp = folder / f".{META_FILE}.partial"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / META_FILE)


def upgrade_checkpoint(folder: str | Path) -> None:
    """Rewrite a format-1 checkpoint folder as format 2, in place. meta.json is written before the old file
    goes, so an upgrade killed halfway leaves a folder that reads as one format or the other."""
    folder = Path(folder)
    if (folder / "state.pt").is_file():  # the tokenizer loop
        old = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        torch.save({"optimizer": old["optimizer"], "scheduler": old["scheduler"]}, folder / OPTIMIZER_FILE)
        samplers, seconds = {"train": old["sampler"]}, old["trained_seconds"]
        legacy, kind = "state.pt", "module"
        # full batches only
        samples_seen = old["step"] * old["config"]["batch_size"] * old["sampler"]["world_size"]
    elif (folder / "client_state.json").is_file():  # the SFT loop: rank 0's DeepSpeed client state
        states = sorted((folder / DEEPSPEED_TAG).glob("*model_states.pt"))
        old = torch.load(states[0], map_location="cpu", weights_only=True)["mmvid"]
        samplers = old.get("samplers") or {"train": old["sampler"]}  # "sampler": saved before the curriculum
        # no time kept
        seconds, samples_seen, legacy, kind = 0.0, old["samples_seen"], "client_state.json", "deepspeed"
    else:
        raise FileNotFoundError(f"{folder} is not a format-1 checkpoint (no state.pt or client_state.json)")
    rng = old["rng"]
    train_state = {"step": old["step"], "samples_seen": samples_seen, "seconds": seconds,
                   "samplers": samplers,
                   "rng": _rng_json(rng["torch"], ("MT19937", rng["numpy"]["keys"].numpy(),
                                                   rng["numpy"]["pos"],
                                                   rng["numpy"]["has_gauss"], rng["numpy"]["gauss"]),
                                    rng["python"])}
    _write_meta(folder, kind, train_state, old["config"])
    (folder / legacy).unlink()


class Checkpointer:
    """Atomic, rotating checkpoints under `root/checkpoints`, of a plain module (rank 0 writes it) or of a
    DeepSpeed engine (each rank writes its part). Every rank calls `save` and `load`; with `world_size > 1`
    they wait for each other (a one-process run never touches torch.distributed)."""

    def __init__(self, root: str | Path, keep: int = 2, rank: int = 0, world_size: int = 1):
        self.root, self.keep, self.rank, self.world_size = Path(root), keep, rank, world_size

    def save(self, state: TrainState, config: dict, *, engine=None, model=None, optimizer=None,
             scheduler=None) -> Path:
        """Checkpoint `state.step`: the `engine`'s DeepSpeed checkpoint, or `model`, `optimizer` and
        `scheduler`."""
        from safetensors.torch import save_file

        final = self.root / "checkpoints" / f"step_{state.step:06d}"
        tmp = final.with_name(f".{final.name}.partial")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        if engine is not None:
            engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG)
        elif self.rank == 0:
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                      str(tmp / WEIGHTS_FILE))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       tmp / OPTIMIZER_FILE)
        self._barrier()
        if self.rank == 0:
            _write_meta(tmp, "deepspeed" if engine is not None else "module", state.state_dict(), config)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoint_dirs(self.root)[: -self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def load(self, state: TrainState, *, engine=None, model=None, optimizer=None,
             scheduler=None) -> Path | None:
        """Restore the newest complete checkpoint into `state` and the engine (or model, optimizer,
        scheduler), upgrading a format-1 folder first; None when there is none."""
        from safetensors.torch import load_file

        folder = latest_checkpoint(self.root)
        if folder is None:
            return None
        if self.rank == 0 and checkpoint_format(folder) == 1:
            upgrade_checkpoint(folder)
            log.info("upgraded %s from checkpoint format 1 to %d", folder, FORMAT)
        self._barrier()
        meta = read_meta(folder)
        kind = "deepspeed" if engine is not None else "module"
        if meta["kind"] != kind:
            raise ValueError(f"{folder} holds a {meta['kind']} checkpoint; this loop resumes a {kind} one")
        if engine is not None:
            engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG)
        else:
            model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
            saved = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        state.load_state_dict(meta["train_state"])
        return folder

    def _barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

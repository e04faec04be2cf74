"""mmvid.checkpoint: the training state, atomic rotating checkpoints (format 2), strict initial weights, and
format-1 folders written by the code before format 2 (tests/data/format1) upgraded and resumed exactly."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmvid.checkpoint import (
    FORMAT,
    Checkpointer,
    TrainState,
    checkpoint_dirs,
    checkpoint_format,
    latest_checkpoint,
    load_weights,
    read_meta,
    rng_state,
    set_rng_state,
    upgrade_checkpoint,
)
from mmvid.config import config_from_dict, load_config
from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.data.video_dataset import ResumableSampler

FORMAT_1 = Path(__file__).resolve().parent / "data" / "format1"  # see make_format1.py there


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The world the format-1 runs trained on (the same settings rebuild it exactly: write_video caps libx264
    at AVX2, whose encodes repeat; x264's AVX-512 code did not, and the resumed losses moved by ~1e-4 with
    it)."""
    out = tmp_path_factory.mktemp("format1") / "world"
    build_world(out, WorldSettings(train=8, val=4, test=2, fewshot=0, frames=8, size=32), progress=False)
    return out


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


# ---------------------------------------------------------------- the training state and the checkpointer


def test_rng_state_is_json_and_restores_every_generator():
    state = json.loads(json.dumps(rng_state()))
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_checkpoints_are_atomic_rotating_and_resume_the_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5)
    sampler = ResumableSampler(10, seed=3)
    state, checkpointer = TrainState(samplers={"train": sampler}), Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        sampler.advance(2)
        state.step, state.samples_seen, state.seconds = step, 2 * step, 0.5 * step
        checkpointer.save(state, {"lr": 0.1}, model=model, optimizer=optimizer, scheduler=scheduler)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000002", "step_000003"]
    meta = read_meta(latest_checkpoint(tmp_path))
    assert (meta["format"], meta["kind"], meta["step"], meta["config"]) == (FORMAT, "module", 3, {"lr": 0.1})
    assert meta["train_state"]["samplers"]["train"]["position"] == 6
    (tmp_path / "checkpoints" / ".step_000004.partial").mkdir()  # a save killed halfway
    (tmp_path / "checkpoints" / "step_000005").mkdir()  # not a checkpoint: nothing in it
    assert latest_checkpoint(tmp_path).name == "step_000003"

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda s: 0.5)
    resumed = TrainState(samplers={"train": ResumableSampler(10, seed=3)})
    checkpointer.load(resumed, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert (resumed.step, resumed.samples_seen, resumed.seconds, resumed.samplers["train"].position) == (
        3, 6, 1.5, 6)
    assert torch.equal(fresh.weight, model.weight) and fresh_scheduler.last_epoch == 3
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="holds a module checkpoint; this loop resumes a deepspeed one"):
        checkpointer.load(resumed, engine=object())
    meta["format"] = FORMAT + 1
    (latest_checkpoint(tmp_path) / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="newer than this mmvid reads"):
        checkpointer.load(resumed, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)


def test_load_weights_is_strict_unless_told_which_modules_may_differ(tmp_path):
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)})
    file = tmp_path / "model.safetensors"
    save_file({"body.weight": torch.ones(2, 2), "body.bias": torch.ones(2), "old.weight": torch.ones(1)},
              str(file))
    with pytest.raises(ValueError,
                       match=r"2 keys missing \['head.weight', 'head.bias'\], 1 unexpected \['old.weight'\]"):
        load_weights(model, file)
    load_weights(model, file, partial=["head", "old"])
    assert torch.equal(model["body"].weight, torch.ones(2, 2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(model, tmp_path / "missing.safetensors")
    tied = torch.nn.ModuleDict({"embed": torch.nn.Embedding(4, 2),
                                "lm_head": torch.nn.Linear(2, 4, bias=False)})
    tied["lm_head"].weight = tied["embed"].weight  # saved once (safetensors refuses shared storage)
    save_file({"embed.weight": torch.ones(4, 2)}, str(file))
    load_weights(tied, file)
    assert torch.equal(tied["lm_head"].weight, torch.ones(4, 2))


# ------------------------------------------------------------- format 1, as the code before format 2 wrote it


def test_a_format_1_tokenizer_checkpoint_is_upgraded_and_resumes_exactly(world, tmp_path):
    from mmvid.video_tokenizers.trainer import TokenizerTrainConfig, run

    saved = FORMAT_1 / "tokenizer"
    shutil.copytree(saved / "checkpoints", tmp_path / "run" / "checkpoints")
    folder = tmp_path / "run" / "checkpoints" / "step_000002"
    assert checkpoint_format(folder) == 1
    # The run's own saved config, with this machine's paths.
    cfg = load_config(TokenizerTrainConfig, saved / "config.yaml",
                      [f"data.source={world}", f"out={tmp_path / 'run'}"])
    run(cfg)
    assert checkpoint_format(folder) == 2 and not (folder / "state.pt").exists()
    meta = read_meta(folder)
    assert meta["kind"] == "module" and meta["train_state"]["samplers"]["train"]["position"] == 8
    assert meta["train_state"]["samples_seen"] == 2 * 4 and meta["config"]["model"] == "frames_tiny"
    before, after = _losses(saved), _losses(tmp_path / "run")
    assert sorted(after) == [3, 4]
    for step in (3, 4):
        assert after[step] == pytest.approx(before[step], abs=1e-5), (step, before[step], after[step])


def test_a_format_1_sft_checkpoint_is_upgraded_with_its_phases_and_old_config(tmp_path):
    from mmvid.sft.config import SFTConfig

    folder = tmp_path / "step_000002"
    shutil.copytree(FORMAT_1 / "sft" / "checkpoints" / "step_000002", folder)
    assert checkpoint_format(folder) == 1 and (folder / "client_state.json").is_file()
    upgrade_checkpoint(folder)
    assert checkpoint_format(folder) == 2 and not (folder / "client_state.json").exists()
    # DeepSpeed's checkpoint stays as it was
    assert (folder / "state" / "mp_rank_00_model_states.pt").is_file()
    meta = read_meta(folder)
    state = meta["train_state"]
    assert (meta["kind"], state["step"], state["samples_seen"]) == ("deepspeed", 2, 4)
    assert state["samplers"]["curriculum"]["position"] == 4 and state["samplers"]["train"]["position"] == 0
    with pytest.warns(FutureWarning, match="chat_prompt"):  # the saved config still has the removed key
        cfg = config_from_dict(SFTConfig, meta["config"])
    assert cfg.data.curriculum_steps == 3 and cfg.steps == 5


def test_a_format_1_sft_checkpoint_is_upgraded_and_resumes_exactly(world, tmp_path, one_rank, one_thread):
    from mmvid.sft.config import SFTConfig
    from mmvid.sft.trainer import run

    saved = FORMAT_1 / "sft"
    out = tmp_path / "run"
    shutil.copytree(saved / "checkpoints", out / "checkpoints")
    shutil.copytree(world, tmp_path / "world")  # the attribute curriculum file is written into the world
    train = tmp_path / "world" / "train"
    # the run's own saved config, with this machine's paths
    with pytest.warns(FutureWarning, match="chat_prompt"):
        cfg = load_config(SFTConfig, saved / "config.yaml", [
            f"out={out}", f"data.world={tmp_path / 'world'}", f"data.train=[{train / 'sft.jsonl'}]",
            f"data.curriculum=[{train / 'sft_attributes.jsonl'}]",
            f"model.text_tokenizer={tmp_path / 'text-tokenizer'}"])
    with one_rank():
        run(cfg)
    folder = out / "checkpoints" / "step_000002"
    assert checkpoint_format(folder) == 2 and read_meta(folder)["kind"] == "deepspeed"
    before, after = _losses(saved), _losses(out)
    assert sorted(after) == [3, 4, 5]
    for step in (3, 4, 5):
        assert after[step] == pytest.approx(before[step], abs=1e-5), (step, before[step], after[step])

"""`python tokenizers/train.py`: runs by path, checkpoints, resumes exactly, and runs under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmvid.checkpoint import checkpoint_dirs, latest_checkpoint, read_meta
from mmvid.config import load_config
from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.video_tokenizers import load_video_tokenizer
from mmvid.video_tokenizers.trainer import TokenizerTrainConfig, run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tokenizers" / "vtok" / "vtok_tiny.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "world"
    build_world(out, WorldSettings(train=8, val=4, test=2, fewshot=0, frames=8, size=32), progress=False)
    return out


def _config(world: Path, out: Path, *overrides: str) -> TokenizerTrainConfig:
    base = [f"data.source={world}", f"out={out}", "val_videos=4", "threads=1", "log_every=1"]
    return load_config(TokenizerTrainConfig, CONFIG, base + list(overrides))


def test_train_script_runs_by_path_and_saves_a_loadable_tokenizer(world, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "tokenizers/train.py", "--config", str(CONFIG), f"data.source={world}",
           f"out={out}",
           "steps=4", "val_every=2", "checkpoint_every=2", "val_videos=4", "threads=1", "log_every=1"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = load_video_tokenizer(out / "final")
    assert tokenizer.preset == "vtok_tiny"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_psnr" in m for m in metrics) and any("loss" in m for m in metrics)
    assert (out / "config.yaml").is_file()
    assert [p.name for p in checkpoint_dirs(out)] == ["step_000002", "step_000004"]


def test_bad_config_fails_before_training(tmp_path):
    cmd = [sys.executable, "tokenizers/train.py", "--config", str(CONFIG), "stpes=4"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "steps" in result.stderr


def test_resume_after_a_kill_matches_an_uninterrupted_run(world, tmp_path):
    straight = tmp_path / "straight"
    run(_config(world, straight, "steps=6", "checkpoint_every=3", "val_every=100"))
    resumed = tmp_path / "resumed"
    run(_config(world, resumed, "steps=3", "checkpoint_every=3", "val_every=100"))  # "killed" after step 3
    shutil.rmtree(resumed / "final")
    # A save killed halfway leaves a partial folder that must be ignored.
    (resumed / "checkpoints" / ".step_000005.partial-999").mkdir()
    assert latest_checkpoint(resumed).name == "step_000003"
    run(_config(world, resumed, "steps=6", "checkpoint_every=3", "val_every=100"))
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(
        resumed / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    losses = lambda p: [m["loss"] for m in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                        if "loss" in m]
    assert losses(straight)[3:] == pytest.approx(losses(resumed)[3:], abs=1e-5)


def test_time_budget_stops_training(world, tmp_path):
    out = tmp_path / "budget"
    run(_config(world, out, "steps=100000", "max_minutes=0.0001", "val_every=100"))
    summary = json.loads((out / "final" / "train_summary.json").read_text())
    assert summary["step"] < 5


def test_decoder_only_training_keeps_the_tokens_and_moves_the_decoder(world, tmp_path):
    first = tmp_path / "first"
    run(_config(world, first, "steps=2", "val_every=100"))
    tuned = tmp_path / "tuned"
    run(_config(world, tuned, "steps=3", "val_every=100", f"init_from={first / 'final'}", "train=decoder",
                "lr=0.01"))
    before, after = load_video_tokenizer(first / "final").eval(), load_video_tokenizer(tuned / "final").eval()
    decoder = set(before.decoder_parameter_names())
    assert decoder and decoder < {name for name, _ in before.named_parameters()}
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a if n not in decoder)  # the encoder did not move
    assert any(not torch.equal(a[n], b[n]) for n in decoder)
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(video), after.encode(video))
    with pytest.raises(ValueError, match="init_from"):
        _config(world, tmp_path / "x", "train=decoder")
    with pytest.raises(ValueError, match="'all' or 'decoder'"):
        _config(world, tmp_path / "x", "train=encoder")


@pytest.mark.parametrize("preset", ["frames_tiny", "sweettok_tiny", "coordtok_tiny"])
def test_every_tokenizer_declares_its_decoder(preset):
    from mmvid.video_tokenizers import build_video_tokenizer

    tokenizer = build_video_tokenizer(preset).train_only_decoder()
    trainable = {n for n, p in tokenizer.named_parameters() if p.requires_grad}
    assert trainable == set(tokenizer.decoder_parameter_names()) and trainable
    assert len(trainable) < len(list(tokenizer.parameters()))


@pytest.mark.timeout(600)
def test_two_processes_with_torchrun_on_cpu(world, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29531", "tokenizers/train.py",
           "--config", str(CONFIG),
           f"data.source={world}", f"out={out}", "steps=3", "batch_size=2", "val_every=3",
           "checkpoint_every=3", "val_videos=2", "threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sampler = read_meta(latest_checkpoint(out))["train_state"]["samplers"]["train"]
    # 8 videos over 2 ranks at batch 2: two steps per epoch, so step 3 is the first batch of epoch 1.
    assert sampler["world_size"] == 2
    assert (sampler["epoch"], sampler["position"]) == (1, 2)
    assert load_video_tokenizer(out / "final").preset == "vtok_tiny"

"""deepspeed train/sft.py: config, DeepSpeed JSON, 2 CPU processes under ZeRO-2/3, kill and resume, bad
data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmvid.checkpoint import checkpoint_dirs
from mmvid.config import load_config
from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.sft.config import SFTConfig, SFTData
from mmvid.sft.deepspeed_config import build_deepspeed_config, resolve_user_config
from mmvid.videollm import VideoLLM

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
TINY_LLM = ("{model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
            "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 1024, "
            "tie_word_embeddings: false}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny world and a config file for 32x32, 8-frame clips and a 2-layer LLM."""
    root = tmp_path_factory.mktemp("sft")
    build_world(root / "world", WorldSettings(train=24, val=8, test=8, fewshot=0, frames=8, size=32),
                progress=False)
    config = f"""
model:
  llm_config: {TINY_LLM}
  text_tokenizer: {root / "text-tokenizer"}
  video_tokenizer: vtok_tiny
  num_frames: 8
  max_length: 512
data:
  world: {root / "world"}
  train: [{root / "world" / "train" / "sft.jsonl"}]
  val_bench: {root / "world" / "val" / "tv_align.jsonl"}
  test_bench: null
  text_corpus_vocab: 400
  vision_tower: null  # the default's stand-ins are tested in test_default_recipe.py
  pretrained_llm: null
  curriculum_steps: 0  # the default's attribute curriculum is tested on its own below
batch_size: 2
log_every: 1
warmup_steps: 2
eval_limit: 8
"""
    (root / "tiny.yaml").write_text(config)
    return root


def _launch(tiny: Path, *overrides: str, gpus: int = 1, port: int = 29650, log: Path | None = None):
    """Run the launcher; with `log`, start it in the background writing to that file (a pipe nobody
    reads would fill up and block it)."""
    cmd = [DEEPSPEED, "--num_gpus", str(gpus), "--master_port", str(port), "train/sft.py", "--config",
           str(tiny / "tiny.yaml"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if log is not None:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _losses(out: Path) -> dict[int, float]:
    """Loss per step; a step logged twice (before a kill and again after resume) keeps the last."""
    out_losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out_losses[record["step"]] = record["loss"]
    return out_losses


# ---------------------------------------------------------------- config and DeepSpeed JSON


def test_deepspeed_json_is_generated_from_the_training_config():
    cfg = SFTConfig(batch_size=4, grad_accum=3, zero_stage=3, offload_optimizer=True, offload_params=True)
    ds = build_deepspeed_config(cfg, world_size=2, on_cuda=False)
    assert ds["train_batch_size"] == 4 * 3 * 2 and ds["gradient_accumulation_steps"] == 3
    assert (ds["zero_optimization"]["stage"] == 3
            and ds["zero_optimization"]["offload_param"]["device"] == "cpu")
    assert ds["bf16"]["enabled"] is False  # fp32 on CPU
    with pytest.raises(ValueError, match="needs CUDA"):
        build_deepspeed_config(SFTConfig(precision="bf16"), 1, on_cuda=False)
    with pytest.raises(ValueError, match="offload_params needs zero_stage=3"):
        SFTConfig(zero_stage=2, offload_params=True)


def test_a_users_deepspeed_json_gets_its_auto_values_resolved(tmp_path):
    user = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "zero_optimization": {"stage": "auto", "overlap_comm": True}, "bf16": {"enabled": "auto"},
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    cfg = SFTConfig(batch_size=3, grad_accum=2, zero_stage=2, lr=5e-4)
    ds = resolve_user_config(path, cfg, world_size=2, on_cuda=False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"],
            ds["train_batch_size"]) == (3, 2, 12)
    assert (ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
            and ds["optimizer"]["params"]["lr"] == 5e-4)
    path.write_text(json.dumps({**user, "train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(ValueError, match="contradicts the training config"):
        resolve_user_config(path, cfg, world_size=2, on_cuda=False)


def test_unknown_keys_and_wrong_types_fail_before_anything_starts(tiny):
    for bad, message in (("stpes=3", "did you mean 'steps'"), ("batch_size=two", "batch_size")):
        result = subprocess.run([sys.executable, "train/sft.py", "--config", str(tiny / "tiny.yaml"), bad],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-500:]
    cfg = load_config(SFTConfig, tiny / "tiny.yaml", ["zero_stage=2", "model.projector=mlp3x_gelu"])
    assert cfg.zero_stage == 2 and cfg.model.projector == "mlp3x_gelu" and cfg.model.num_frames == 8


def test_partial_checkpoints_are_never_picked(tmp_path):
    (tmp_path / "checkpoints" / "step_000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_000004" / "client_state.json").write_text("{}")
    (tmp_path / "checkpoints" / ".step_000006.partial").mkdir()
    (tmp_path / "checkpoints" / "step_000008").mkdir()  # killed before client_state.json was written
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000004"]


# ---------------------------------------------------------------- real runs


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage", [2, 3])
def test_two_cpu_processes_under_zero(tiny, stage):
    out = tiny / f"zero{stage}"
    extra = ["gradient_checkpointing=true"] if stage == 3 else []
    result = _launch(tiny, f"zero_stage={stage}", f"out={out}", "steps=8", "checkpoint_every=4", *extra,
                     gpus=2, port=29660 + stage)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = _losses(out)
    assert losses[8] < losses[1] - 0.2, losses
    assert json.loads((out / "deepspeed.json").read_text())["zero_optimization"]["stage"] == stage
    model = VideoLLM.from_pretrained(out / "final")  # the export is whole, even from ZeRO-3 partitions
    assert model.tokens_per_video == 23
    assert "validation tv_align accuracy per category" in result.stdout


@pytest.mark.timeout(900)
def test_a_killed_run_resumes_exactly(tiny):
    # 16 steps, a checkpoint every 2, none deleted: the kill after step 4's checkpoint lands well before the
    # end.
    settings = ["steps=16", "checkpoint_every=2", "keep_checkpoints=20"]
    straight = tiny / "straight"
    result = _launch(tiny, f"out={straight}", *settings, port=29671)
    assert result.returncode == 0, result.stdout[-3000:]
    killed = tiny / "killed"
    log = tiny / "killed.log"
    process = _launch(tiny, f"out={killed}", *settings, port=29672, log=log)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_000004").is_dir():
        assert process.poll() is None, \
            f"the run ended before its step-4 checkpoint:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no step-4 checkpoint after 300 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and every rank
    process.wait(timeout=60)
    resumed_from = max(int(p.name.split("_")[1]) for p in checkpoint_dirs(killed))
    assert resumed_from < 16 and not (killed / "final").exists()
    result = _launch(tiny, f"out={killed}", *settings, port=29673)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    a, b = _losses(straight), _losses(killed)
    for step in range(resumed_from + 1, 17):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    # init_from: the next stage starts from these weights with a fresh optimizer and step 0.
    stage2 = tiny / "stage2"
    result = _launch(tiny, f"out={stage2}", "steps=2", f"init_from={straight / 'final'}", port=29674)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "init_from" in result.stdout + result.stderr and "resumed" not in result.stdout + result.stderr
    assert _losses(stage2)[1] < a[1] - 0.2


def test_the_decoder_stage_tunes_only_the_decoder_and_the_final_model_carries_it(tiny, tmp_path):
    from safetensors.torch import load_file

    from mmvid.video_tokenizers import build_video_tokenizer

    tokenizer = build_video_tokenizer("vtok_tiny").save_pretrained(tmp_path / "vtok")
    out, decoder = tmp_path / "run", tmp_path / "decoder"
    result = _launch(tiny, f"out={out}", "steps=2", f"model.video_tokenizer={tokenizer}",
                     f"data.video_decoder={decoder}", "data.video_decoder_minutes=0.02",
                     "data.video_decoder_foreground_weight=5", port=29677)
    assert result.returncode == 0, result.stdout[-3000:]
    stages = [json.loads(line)["stage"] for line in (out / "stages.jsonl").read_text().splitlines()]
    assert "video_decoder" in stages
    before, tuned = load_file(tokenizer / "model.safetensors"), load_file(decoder / "model.safetensors")
    saved = load_file(out / "final" / "model.safetensors")
    final = {k.removeprefix("video_tokenizer."): v for k, v in saved.items()
             if k.startswith("video_tokenizer.")}
    prefixes = build_video_tokenizer("vtok_tiny").decoder_prefixes
    in_decoder = [k for k in before if k.split(".")[0] in prefixes]
    assert in_decoder and any(not (before[k] == tuned[k]).all() for k in in_decoder)
    for key, value in before.items():  # the encoder is the tokenizer's; the decoder is the stage's
        assert (final[key] == (tuned[key] if key in in_decoder else value)).all(), key


def test_the_decoder_stage_refuses_a_tokenizer_that_moves_during_sft():
    from dataclasses import replace

    from mmvid.sft.config import default_model

    with pytest.raises(ValueError, match="train_video_tokenizer"):
        SFTConfig(data=SFTData(video_decoder="x", video_decoder_minutes=1.0),
                  model=replace(default_model(), train_video_tokenizer=True))


def test_a_curriculum_runs_first_and_a_run_resumed_inside_it_replays_exactly(tiny):
    """data.curriculum_steps: the world's attribute file is written, its steps come first (metrics say which
    phase), then data.train; a run resumed from a checkpoint inside the curriculum gives the same losses."""
    import shutil

    attributes = tiny / "world" / "train" / "sft_attributes.jsonl"
    settings = ["steps=5", "checkpoint_every=2", "keep_checkpoints=20", f"data.curriculum=[{attributes}]",
                "data.curriculum_steps=3", "text_loss=span", "eval_every=0", "data.val_bench=null"]
    straight = tiny / "curriculum"
    result = _launch(tiny, f"out={straight}", *settings, port=29676)
    assert result.returncode == 0, result.stdout[-3000:]
    questions = [t["value"] for line in attributes.read_text().splitlines()
                 for t in json.loads(line)["conversations"][::2]]
    assert questions and all("What colour is" in q or "What shape is" in q for q in questions)
    phases = {r["step"]: r["phase"] for r in map(json.loads,
                                                 (straight / "metrics.jsonl").read_text().splitlines())}
    assert phases == {1: "curriculum", 2: "curriculum", 3: "curriculum", 4: "train", 5: "train"}
    resumed = tiny / "curriculum-resumed"
    shutil.copytree(straight / "checkpoints" / "step_000002", resumed / "checkpoints" / "step_000002")
    result = _launch(tiny, f"out={resumed}", *settings, port=29677)
    assert result.returncode == 0 and "resumed from" in result.stdout + result.stderr, result.stdout[-3000:]
    a, b = _losses(straight), _losses(resumed)
    assert sorted(b) == [3, 4, 5]
    for step in (3, 4, 5):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    with pytest.raises(ValueError, match="must be fewer than the run's steps"):
        load_config(SFTConfig, tiny / "tiny.yaml", ["steps=3", "data.curriculum_steps=3"])
    with pytest.raises(ValueError, match="text_loss must be one of"):
        load_config(SFTConfig, tiny / "tiny.yaml", ["text_loss=mean"])


@pytest.mark.timeout(900)
def test_bad_samples_are_skipped_with_a_count_and_too_many_stop_the_run(tiny):
    train = [json.loads(line) for line in (tiny / "world" / "train" / "sft.jsonl").read_text().splitlines()]
    mixed = tiny / "mixed.jsonl"
    broken = [dict(train[0], id="broken-1", video="videos/missing.mp4")]
    # 4 samples: each epoch sees all
    mixed.write_text("\n".join(json.dumps(s) for s in broken + train[:3]) + "\n")
    ok = _launch(tiny, f"out={tiny / 'mixed'}", "steps=3", f"data.train=[{mixed}]",
                 "data.max_bad_fraction=0.5", f"data.video_root={tiny / 'world' / 'train'}", port=29681)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert "skipping sample broken-1" in ok.stdout + ok.stderr
    many = tiny / "many.jsonl"
    many.write_text("\n".join(
        json.dumps(dict(s, id=f"bad-{i}", video="videos/missing.mp4")) for i, s in enumerate(train[:12]))
                    + "\n" + "\n".join(json.dumps(s) for s in train[:4]) + "\n")
    stopped = _launch(tiny, f"out={tiny / 'many'}", "steps=20", f"data.train=[{many}]",
                      f"data.video_root={tiny / 'world' / 'train'}", port=29682)
    assert stopped.returncode != 0
    assert "samples failed to load" in stopped.stdout + stopped.stderr


def test_per_module_learning_rates_and_schedule(tiny):
    from mmvid.sft.trainer import lr_lambda, parameter_groups
    from mmvid.testing import tiny_videollm

    model = tiny_videollm(tiny / "lr-model", train_video_tokenizer=True)
    cfg = SFTConfig(lr=1e-3, lr_projector=5e-4, lr_video_tokenizer=1e-4, warmup_steps=10, steps=100,
                    data=SFTData(curriculum_steps=0))
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    assert {k: g["lr"] for k, g in groups.items()} == {"llm": 1e-3, "projector": 5e-4,
                                                       "video_tokenizer": 1e-4}
    assert sum(p.numel() for p in groups["projector"]["params"]) == sum(
        p.numel() for p in model.projector.parameters())
    f = lr_lambda(cfg, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) < 0.01
    frozen = tiny_videollm(tiny / "lr-model", train_video_tokenizer=False)
    assert "video_tokenizer" not in {g["name"] for g in parameter_groups(frozen, cfg)}


# ---------------------------------------------------------------- split_turns


def test_split_rounds_gives_each_answer_its_own_sequence_with_the_video():
    from mmvid.sft.data import split_rounds

    conv = [{"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<video>\nWhat happens?"},
            {"from": "gpt", "value": "A red star bounces."},
            {"from": "human", "value": "What colour is the star?"}, {"from": "gpt", "value": "red"}]
    rounds = split_rounds(conv)
    assert [[t["value"] for t in r] for r in rounds] == [
        ["Be brief.", "<video>\nWhat happens?", "A red star bounces."],
        ["Be brief.", "<video>\nWhat colour is the star?", "red"]]
    with pytest.raises(ValueError, match="alternating"):
        split_rounds(conv[:2])


def test_split_turns_dataset_shares_one_video_per_sample(tiny):
    """A split sample: one sequence per round, one decoded video, every span pointing at it; the
    batch's loss equals the unshared batch with the video repeated."""
    import torch

    from mmvid.sft.data import SFTDataset, collate

    cfg = load_config(SFTConfig, tiny / "tiny.yaml")
    from mmvid.sft.trainer import prepare_default_data

    prepare_default_data(cfg)
    model = VideoLLM.build(cfg.model).eval()
    files = cfg.data.train
    split = SFTDataset(files, model.processor, split_turns=True)
    whole = SFTDataset(files, model.processor, split_turns=False)
    items = [split[0], split[1]]
    rounds = [len(split.items[i][0]["conversations"]) // 2 for i in (0, 1)]
    assert [len(item["encoded"]) for item in items] == rounds and all(
        len(item["videos"]) == 1 for item in items)
    batch = collate(model.processor, items)
    assert batch["video_index"].tolist() == [0] * rounds[0] + [1] * rounds[1]
    assert batch["videos"].shape[0] == 2 and batch["input_ids"].shape[0] == sum(rounds)
    # Every sequence but the first of a sample is shorter than the whole conversation was.
    assert max(len(e) for e in items[0]["encoded"]) < len(whole[0]["encoded"][0])
    repeated = model.processor.collate([e for item in items for e in item["encoded"]],
                             videos=[item["videos"][0] for item in items for _ in item["encoded"]])
    batch.pop("index")
    with torch.no_grad():
        assert abs(model(**batch).loss.item() - model(**repeated).loss.item()) < 1e-5


# ---------------------------------------------------------------- the loop's bookkeeping, in this process


@pytest.fixture(scope="module")
def accumulated(tiny, one_rank) -> tuple[list[dict], list[float]]:
    """Two optimizer steps of two micro-batches of 2 samples, each forward slowed by 1 s: (metrics, micro
    losses)."""
    import torch

    from mmvid.sft.trainer import run

    losses, forward = [], VideoLLM.forward

    def slow_forward(self, *args, **kwargs):
        time.sleep(1.0)
        output = forward(self, *args, **kwargs)
        losses.append(output.loss.item())
        return output

    out, threads = tiny / "accumulated", torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, one_rank():
        patch.setattr(VideoLLM, "forward", slow_forward)
        torch.set_num_threads(1)
        try:
            run(load_config(SFTConfig, tiny / "tiny.yaml", [f"out={out}", "steps=2", "grad_accum=2",
                                                            "eval_every=0", "data.val_bench=null",
                                                            "checkpoint_every=100"]))
        finally:
            torch.set_num_threads(threads)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], losses


def test_the_logged_loss_is_the_mean_of_the_steps_micro_batches(accumulated):
    records, losses = accumulated
    assert len(losses) == 4 and [r["step"] for r in records] == [1, 2]
    for record, micro in zip(records, (losses[:2], losses[2:])):
        assert record["loss"] == pytest.approx(sum(micro) / 2, abs=1e-6), (record, micro)


def test_samples_per_second_times_the_whole_optimizer_step(accumulated):
    records, _ = accumulated
    # 4 samples a step in two forwards of at least 1 s each: never more than 2 samples/s.
    assert all(r["samples_per_s"] <= 2.0 for r in records), records


def test_init_from_refuses_weights_that_do_not_match_unless_told_which_part_may_differ(
    tiny, one_rank, one_thread):
    import torch
    from safetensors.torch import load_file, save_file

    from mmvid.sft.trainer import prepare_default_data, run

    cfg = load_config(SFTConfig, tiny / "tiny.yaml")
    prepare_default_data(cfg)
    source = VideoLLM.build(cfg.model).save_pretrained(tiny / "init-source")
    weights = load_file(source / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("projector.")}
    save_file({**kept, "projector.old_layer.weight": torch.zeros(2)}, str(source / "model.safetensors"))
    settings = [f"init_from={source}", "steps=1", "eval_every=0", "data.val_bench=null"]
    with (pytest.raises(ValueError, match=r"missing.*projector\.mlp.*unexpected.*projector\.old_layer"),
          one_rank()):
        run(load_config(SFTConfig, tiny / "tiny.yaml", [f"out={tiny / 'init-strict'}", *settings]))
    assert not (tiny / "init-strict" / "final").exists()
    with one_rank():
        summary = run(load_config(SFTConfig, tiny / "tiny.yaml", [f"out={tiny / 'init-partial'}", *settings,
                                                                   "init_from_partial=[projector]"]))
    assert summary["steps"] == 1


def test_a_saved_config_with_the_removed_chat_prompt_still_loads(tiny, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text((tiny / "tiny.yaml").read_text() + "chat_prompt: Describe the video.\n")
    with pytest.warns(FutureWarning, match="chat_prompt"):
        cfg = load_config(SFTConfig, old)
    assert not hasattr(cfg, "chat_prompt") and cfg.batch_size == 2

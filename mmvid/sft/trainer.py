"""The SFT loop, through DeepSpeed (ZeRO 0-3; gloo on CPU, NCCL on CUDA).

    deepspeed train/sft.py                                     # the built-in default, end to end on CPU
    deepspeed --num_gpus 2 train/sft.py --config train/configs/default.yaml steps=100

Steps: prepare the default data and text tokenizer (rank 0, once) -> build the VideoLLM -> per-module
learning rates -> deepspeed.initialize -> loop (forward, backward, step; progress, metrics.jsonl,
periodic eval and checkpoints) -> export `out/final` with `VideoLLM.save_pretrained` -> tv_align on
the validation bench, printed per category. Re-running the same command resumes from the newest
complete checkpoint: weights, optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmvid.checkpoint import checkpoint_dirs, rng_state, set_rng_state
from mmvid.config import config_to_dict, save_config
from mmvid.data.video_dataset import ResumableSampler
from mmvid.sft.config import SFTConfig, module_learning_rates
from mmvid.sft.data import SFTDataset, collate
from mmvid.sft.deepspeed_config import build_deepspeed_config, resolve_user_config

log = logging.getLogger("mmvid.sft")


# ----------------------------------------------------------------------------------------------
# Preparation
# ----------------------------------------------------------------------------------------------


def prepare_default_data(cfg: SFTConfig) -> None:
    """Build the synthetic world, and train the text and video tokenizers, when they are missing (rank 0 only)."""
    import numpy as np

    if cfg.data.world and not (Path(cfg.data.world) / "world.json").is_file():
        from mmvid.data.shapes.build import WorldSettings, build_world

        log.info("building the synthetic world at %s", cfg.data.world)
        build_world(cfg.data.world, WorldSettings(), workers=min(4, os.cpu_count() or 1))
    folder = cfg.model.text_tokenizer
    if cfg.model.llm is None and folder and not (Path(folder) / "tokenizer.json").is_file():
        from mmvid.data.conversations import load_conversations
        from mmvid.sft.data import t2v_conversation
        from mmvid.text_tokenizer import train_text_tokenizer

        texts = []
        for file in cfg.data.train:
            for sample in load_conversations(file):
                texts += [turn["value"] for turn in t2v_conversation(sample)["conversations"]]
        for bench in (cfg.data.val_bench, cfg.data.test_bench):
            if bench and Path(bench).is_file():
                for line in Path(bench).read_text().splitlines()[:2000]:
                    q = json.loads(line)
                    texts += [q["question"], *q["options"]]
        rng = np.random.default_rng(cfg.seed)
        texts = [texts[i] for i in rng.permutation(len(texts))[:50000]]
        log.info("training a %d-piece sentencepiece tokenizer on %d texts", cfg.data.text_corpus_vocab, len(texts))
        train_text_tokenizer(texts, folder, vocab_size=cfg.data.text_corpus_vocab)
    prepare_video_tokenizer(cfg)


def prepare_video_tokenizer(cfg: SFTConfig) -> None:
    """Train the video tokenizer `model.video_tokenizer` names when it is a missing folder and
    `data.video_tokenizer_config` is set: `tokenizers/train.py`'s loop in this process (single-process,
    whatever the SFT launch), `data.video_tokenizer_minutes` of training, its final weights copied there."""
    from mmvid.video_tokenizers import VIDEO_TOKENIZERS

    target = Path(cfg.model.video_tokenizer)
    if cfg.model.video_tokenizer in VIDEO_TOKENIZERS or (target / "config.json").is_file():
        return
    if not cfg.data.video_tokenizer_config:
        raise FileNotFoundError(f"model.video_tokenizer={target} is neither a preset nor a saved tokenizer folder, and "
                                "data.video_tokenizer_config is not set to train one")
    from mmvid.config import load_config
    from mmvid.video_tokenizers.trainer import TokenizerTrainConfig
    from mmvid.video_tokenizers.trainer import run as train_tokenizer

    tcfg = load_config(TokenizerTrainConfig, cfg.data.video_tokenizer_config,
                       [f"out={target}-run", f"max_minutes={cfg.data.video_tokenizer_minutes}", "data.num_workers=1",
                        f"seed={cfg.seed}"])
    log.info("training the video tokenizer %s (%s, %.1f minutes) -> %s", tcfg.model, cfg.data.video_tokenizer_config,
             cfg.data.video_tokenizer_minutes, target)
    train_tokenizer(tcfg, distributed=False)
    shutil.copytree(Path(tcfg.out) / "final", target, dirs_exist_ok=True)


def parameter_groups(model, cfg: SFTConfig) -> list[dict]:
    rates = module_learning_rates(cfg)
    groups = []
    for name in ("llm", "projector", "video_tokenizer", "generation_head"):
        part = getattr(model, name)
        params = [p for p in part.parameters() if p.requires_grad] if part is not None else []
        if params:
            groups.append({"params": params, "lr": rates[name], "name": name, "weight_decay": cfg.weight_decay})
    return groups


def lr_lambda(cfg: SFTConfig, total: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# ----------------------------------------------------------------------------------------------
# Checkpoints: DeepSpeed's own format, made atomic by writing to a temporary folder first
# ----------------------------------------------------------------------------------------------


def _checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first: the shared scan, plus the marker written last."""
    return [p for p in checkpoint_dirs(out) if (p / "client_state.json").is_file()]


def save_checkpoint(engine, out: Path, step: int, client: dict, keep: int, rank: int) -> None:
    folder = out / "checkpoints"
    tmp = folder / f".step_{step:06d}.partial"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    engine.save_checkpoint(str(tmp), tag="state", client_state={"mmvid": client})
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        (tmp / "client_state.json").write_text(json.dumps({"step": step}))  # written last: marks it complete
        final = folder / f"step_{step:06d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def run(cfg: SFTConfig) -> dict:
    import deepspeed

    from mmvid.evaluation import evaluate
    from mmvid.videollm import VideoLLM

    on_cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if on_cuda else "gloo", verbose=False)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    main = rank == 0
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_cuda else torch.device("cpu")
    out = Path(cfg.out)
    if main:
        prepare_default_data(cfg)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()
    torch.manual_seed(cfg.seed)

    model = VideoLLM.build(cfg.model, device=device)
    if cfg.init_from:
        from safetensors.torch import load_file

        state = load_file(str(Path(cfg.init_from) / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if main:
            log.info("init_from %s (missing %d, unexpected %d keys)", cfg.init_from, len(missing), len(unexpected))
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable()
    dataset = SFTDataset(cfg.data.train, model, cfg.data.video_root, split_turns=cfg.data.split_turns,
                         prompt_dropout=cfg.data.prompt_dropout)
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=cfg.seed, rank=rank, world_size=world_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=lambda items: collate(model, items), drop_last=True)
    steps = cfg.steps
    if cfg.epochs is not None:
        steps = max(1, int(cfg.epochs * len(sampler) / (cfg.batch_size * cfg.grad_accum)))

    groups = parameter_groups(model, cfg)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    ds_config = (resolve_user_config(cfg.deepspeed, cfg, world_size, on_cuda) if cfg.deepspeed
                 else build_deepspeed_config(cfg, world_size, on_cuda))
    if main:
        (out / "deepspeed.json").write_text(json.dumps(ds_config, indent=1))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config)

    step, samples_seen = 0, 0
    existing = _checkpoint_dirs(out)
    if cfg.resume and existing:
        _, client = engine.load_checkpoint(str(existing[-1]), tag="state")
        client = client["mmvid"]
        sampler.load_state_dict(client["sampler"])
        set_rng_state(client["rng"])
        step, samples_seen = client["step"], client["samples_seen"]
        if main:
            log.info("resumed from %s (step %d)", existing[-1], step)

    metrics_path = out / "metrics.jsonl"
    board = _tensorboard(out) if main else None
    bar = tqdm(total=steps, initial=step, desc="sft", unit="step", disable=not main)
    start_time, done = time.perf_counter(), step >= steps
    micro = 0
    while not done:
        for batch in loader:
            t0 = time.perf_counter()
            index = batch.pop("index")
            batch = {k: v.to(device) for k, v in batch.items()}
            output = engine(**batch)
            loss = output.loss
            engine.backward(loss)
            engine.step()
            sampler.advance(len(index))
            samples_seen += len(index) * world_size
            micro += 1
            # Every rank stops together when too many samples were bad (no rank waits on another).
            stop = torch.tensor([float(dataset.bad_fraction() > cfg.data.max_bad_fraction and len(dataset.bad) > 1)])
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item():
                raise RuntimeError(f"rank {rank}: {len(dataset.bad)} of {dataset.seen} samples failed to load "
                                   f"(more than data.max_bad_fraction={cfg.data.max_bad_fraction}); first: "
                                   f"{list(dataset.bad.items())[:3]}")
            if micro % cfg.grad_accum:
                continue
            step += 1
            bar.update()
            if main and step % cfg.log_every == 0:
                rate = len(index) * world_size * cfg.grad_accum / (time.perf_counter() - t0)
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                parts = {k: float(output[k]) for k in ("lm_loss", "gen_loss") if output.get(k) is not None}
                with metrics_path.open("a") as f:
                    f.write(json.dumps({"step": step, "loss": loss.item(), **parts, "lr": lr, "samples_per_s": rate,
                                        "samples_seen": samples_seen, "bad_samples": len(dataset.bad),
                                        "seconds": time.perf_counter() - start_time}) + "\n")
                if board is not None:
                    for name, value in (("loss", loss.item()), ("lr", lr), ("samples_per_s", rate)):
                        board.add_scalar(f"train/{name}", value, step)
            done = step >= steps
            if step % cfg.checkpoint_every == 0 or done:
                save_checkpoint(engine, out, step, {"sampler": sampler.state_dict(), "rng": rng_state(), "step": step,
                                                    "samples_seen": samples_seen, "config": config_to_dict(cfg)},
                                cfg.keep_checkpoints, rank)
            if cfg.eval_every and step % cfg.eval_every == 0 and cfg.data.val_bench and not done:
                target = model if cfg.zero_stage < 3 else export(model, out / "export-eval", cfg, rank, reload=main)
                if main:
                    record = evaluate(target, ["tv_align"], output=out / f"eval-step_{step:06d}.json",
                                      data=cfg.data.val_bench, limit=cfg.eval_limit)
                    bar.write(f"step {step}: val tv_align acc {record['results']['tv_align']['metrics']['acc']['value']:.3f}")
                dist.barrier()
            if cfg.export_every and step % cfg.export_every == 0 and not done:
                export(model, out / f"export-step_{step:06d}", cfg, rank)
            if done:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    bar.close()
    final = export(model, out / "final", cfg, rank, reload=main and cfg.zero_stage == 3)
    summary = {"steps": step, "seconds": round(time.perf_counter() - start_time, 1), "samples_seen": samples_seen,
               "bad_samples": len(dataset.bad), "peak_rss_gib": _peak_rss_gib()}
    if main and cfg.data.val_bench:
        # Under ZeRO-3 the live parameters are partitioned across ranks, so rank 0 evaluates the export.
        record = evaluate(final if final is not None else model, ["tv_align"], output=out / "final" / "eval-val.json",
                          data=cfg.data.val_bench, limit=cfg.eval_limit)
        metrics = record["results"]["tv_align"]["metrics"]
        summary["val"] = {k: v["value"] for k, v in metrics.items()}
        print("validation tv_align accuracy per category:")
        for name, m in metrics.items():
            if name.endswith("acc") and "gen" not in name:
                print(f"  {name:<20} {m['value']:.3f} (n={m['n']})")
    if main:
        (out / "final" / "train_summary.json").write_text(json.dumps(summary, indent=1))
    dist.barrier()
    return summary


def _tensorboard(out: Path):
    """A TensorBoard writer when tensorboard is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _peak_rss_gib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # Linux reports KiB


def export(model, folder: Path, cfg: SFTConfig, rank: int, reload: bool = False):
    """VideoLLM.save_pretrained on rank 0, gathering ZeRO-3 partitions first. With `reload`, returns
    the export loaded back (a whole model for rank 0 to evaluate under ZeRO-3), else None."""
    from mmvid.videollm import VideoLLM

    if cfg.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if rank == 0:
                model.save_pretrained(folder)
    elif rank == 0:
        model.save_pretrained(folder)
    if dist.is_initialized():
        dist.barrier()
    return VideoLLM.from_pretrained(folder).eval() if reload else None

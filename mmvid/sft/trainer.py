r"""The SFT loop, through DeepSpeed (ZeRO 0-3; gloo on CPU, NCCL on CUDA).

    deepspeed train/sft.py                                     # the built-in default, end to end on CPU
    deepspeed --num_gpus 2 train/sft.py --config train/configs/default.yaml \
        steps=400 data.curriculum_steps=150

Steps: prepare the default data and text tokenizer (rank 0, once) -> build the VideoLLM -> per-module
learning rates -> deepspeed.initialize -> the loop (`run`: accumulate micro-batches, step, log to
metrics.jsonl, checkpoint; periodic evaluation and export are functions it calls) -> export `out/final`
with `VideoLLM.save_pretrained` -> tv_align on the validation bench, printed per category. Re-running the
same command resumes from the newest complete checkpoint (`mmvid.checkpoint`): weights, optimizer,
scheduler, RNG and data position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmvid.checkpoint import Checkpointer, TrainState, load_weights
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
    """Everything the run needs that is missing, in order (rank 0 only; each step is skipped when its
    output exists, so a killed run picks up at the step it was in): the synthetic world, its cloze
    conversations, the text tokenizer, the vision-tower stand-in, the video tokenizer on that tower, and
    the pretrained-LLM stand-in. Only the world's training split is ever read for training."""
    if cfg.data.world and not (Path(cfg.data.world) / "world.json").is_file():
        from mmvid.data.shapes.build import WorldSettings, build_world

        log.info("building the synthetic world at %s", cfg.data.world)
        build_world(cfg.data.world, WorldSettings(), workers=min(4, os.cpu_count() or 1))
    if cfg.data.world:
        write_world_cloze(cfg)
    prepare_text_tokenizer(cfg)
    prepare_vision_tower(cfg)
    prepare_video_tokenizer(cfg)
    prepare_video_decoder(cfg)
    prepare_llm(cfg)


def _stage_log(cfg: SFTConfig, name: str, seconds: float, **extra) -> None:
    """One line per finished preparation stage in out/stages.jsonl (wall time for the learning curve and
    README)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "stages.jsonl").open("a") as f:
        f.write(json.dumps({"stage": name, "seconds": round(seconds, 1), **extra}) + "\n")


def write_world_cloze(cfg: SFTConfig) -> None:
    """`{world}/train/sft_cloze.jsonl` when a training file names it, and `{world}/train/sft_attributes.jsonl`
    when a curriculum file names it, each when missing (both from the training split only)."""
    from mmvid.data.mixture import data_file_paths
    from mmvid.sft.world_data import attribute_conversations, cloze_conversations

    train = Path(cfg.data.world) / "train"
    named = [*cfg.data.train, *(cfg.data.curriculum if cfg.data.curriculum_steps else [])]
    wanted = {f.resolve() for f in data_file_paths(named)}  # a mixture YAML: the files it names
    for target, make in ((train / "sft_cloze.jsonl", cloze_conversations),
                         (train / "sft_attributes.jsonl", attribute_conversations)):
        if target.resolve() not in wanted or target.is_file():
            continue
        samples = make(cfg.data.world, "train", seed=cfg.seed)
        tmp = target.with_suffix(".partial")
        tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
        os.replace(tmp, target)
        log.info("wrote %d conversations to %s", len(samples), target)


def prepare_text_tokenizer(cfg: SFTConfig) -> None:
    """A sentencepiece tokenizer on the training files' text (and the world's training questions and
    options), never on validation or test text, when `model.text_tokenizer` is missing."""
    import numpy as np

    folder = cfg.model.text_tokenizer
    if cfg.model.llm is not None or not folder or (Path(folder) / "tokenizer.json").is_file():
        return  # a real LLM brings its own tokenizer
    from mmvid.data.mixture import read_training_data
    from mmvid.sft.data import t2v_conversation
    from mmvid.text_tokenizer import train_text_tokenizer

    start = time.perf_counter()
    texts = []
    for data in read_training_data(cfg.data.train, seed=cfg.seed, format=cfg.data.format):
        for sample, problems in zip(data.samples, data.problems):  # a row SFT cannot use has no text here
            texts += [] if problems else [turn["value"] for turn in t2v_conversation(sample)["conversations"]]
    if cfg.data.world:
        from mmvid.sft.world_data import world_texts

        texts += world_texts(cfg.data.world, "train")
    rng = np.random.default_rng(cfg.seed)
    texts = [texts[i] for i in rng.permutation(len(texts))[:50000]]
    log.info("training a %d-piece %s sentencepiece tokenizer on %d training texts",
             cfg.data.text_corpus_vocab, cfg.data.text_corpus_model_type, len(texts))
    train_text_tokenizer(texts, folder, vocab_size=cfg.data.text_corpus_vocab,
                         model_type=cfg.data.text_corpus_model_type)
    _stage_log(cfg, "text_tokenizer", time.perf_counter() - start)


def prepare_vision_tower(cfg: SFTConfig) -> None:
    """The vision-tower stand-in (`mmvid.vision_tower`) at `data.vision_tower`, when it is missing."""
    from mmvid.vision_tower import TowerConfig, train_tower

    folder = cfg.data.vision_tower
    if not folder or (Path(folder) / "tower.json").is_file():
        return
    if not cfg.data.world:
        raise FileNotFoundError(f"data.vision_tower={folder} does not exist and there is no data.world to "
                                "train it on")
    start = time.perf_counter()
    size = json.loads((Path(cfg.data.world) / "world.json").read_text())["settings"]["size"]
    train_tower(TowerConfig(world=cfg.data.world, out=folder, objective=cfg.data.vision_tower_objective,
                            minutes=cfg.data.vision_tower_minutes, max_steps=cfg.data.vision_tower_steps,
                            seed=cfg.seed, image_size=size, grid=size // 8))
    _stage_log(cfg, "vision_tower", time.perf_counter() - start, objective=cfg.data.vision_tower_objective)


def prepare_llm(cfg: SFTConfig) -> None:
    """The pretrained-LLM stand-in: the model.llm_config LLM pretrained on the world's training text into
    `data.pretrained_llm`, when model.llm is unset and that folder is missing (see `use_pretrained_llm`)."""
    from mmvid.sft.text_pretrain import TextPretrainConfig, is_pretrained, pretrain_llm

    target = cfg.data.pretrained_llm
    if cfg.model.llm is not None or not target or is_pretrained(target):
        return
    if not cfg.data.world:
        raise FileNotFoundError(f"data.pretrained_llm={target} does not exist and there is no data.world to "
                                "pretrain it on")
    from mmvid.sft.world_data import reading_comprehension

    start = time.perf_counter()
    conversations = reading_comprehension(cfg.data.world, "train", seed=cfg.seed)
    pretrain_llm(TextPretrainConfig(out=target, tokenizer=cfg.model.text_tokenizer,
                                    llm_config=dict(cfg.model.llm_config),
                                    minutes=cfg.data.llm_pretrain_minutes,
                                    max_steps=cfg.data.llm_pretrain_steps, seed=cfg.seed), conversations)
    _stage_log(cfg, "llm_pretrain", time.perf_counter() - start)


def use_pretrained_llm(cfg: SFTConfig) -> SFTConfig:
    """With `data.pretrained_llm` (and model.llm unset), the model loads its LLM from that folder, exactly
    as it would load a downloaded one (model.llm=FOLDER)."""
    from dataclasses import replace

    if cfg.model.llm is None and cfg.data.pretrained_llm:
        cfg.model = replace(cfg.model, llm=cfg.data.pretrained_llm)
    return cfg


def prepare_video_tokenizer(cfg: SFTConfig) -> None:
    """Train the video tokenizer `model.video_tokenizer` names when it is a missing folder and
    `data.video_tokenizer_config` is set: `tokenizers/train.py`'s loop in this process (single-process,
    whatever the SFT launch), `data.video_tokenizer_minutes` of training, its final weights copied there.
    With `data.vision_tower`, the tokenizer reads frames through that frozen tower (feature_extractor=hf)."""
    from mmvid.video_tokenizers import VIDEO_TOKENIZERS

    target = Path(cfg.model.video_tokenizer)
    if cfg.model.video_tokenizer in VIDEO_TOKENIZERS or (target / "config.json").is_file():
        return
    if not cfg.data.video_tokenizer_config:
        raise FileNotFoundError(f"model.video_tokenizer={target} is neither a preset nor a saved tokenizer "
                                "folder, and data.video_tokenizer_config is not set to train one")
    from mmvid.config import load_config
    from mmvid.video_tokenizers.trainer import TokenizerTrainConfig
    from mmvid.video_tokenizers.trainer import run as train_tokenizer

    start = time.perf_counter()
    tcfg = load_config(TokenizerTrainConfig, cfg.data.video_tokenizer_config,
                       [f"out={target}-run", f"max_minutes={cfg.data.video_tokenizer_minutes}",
                        "data.num_workers=1", f"seed={cfg.seed}", f"data.num_frames={cfg.model.num_frames}"])
    if cfg.data.vision_tower:
        tcfg.model_overrides = {**tcfg.model_overrides, "feature_extractor": "hf",
                                "hf_path": str(cfg.data.vision_tower)}
    log.info("training the video tokenizer %s (%s, %.1f minutes) -> %s", tcfg.model,
             cfg.data.video_tokenizer_config, cfg.data.video_tokenizer_minutes, target)
    train_tokenizer(tcfg, distributed=False)
    shutil.copytree(Path(tcfg.out) / "final", target, dirs_exist_ok=True)
    _stage_log(cfg, "video_tokenizer", time.perf_counter() - start)


def video_decoder_folder(cfg: SFTConfig) -> Path | None:
    """The decoder stage's folder when the stage is on (data.video_decoder, video_decoder_minutes > 0;
    "auto": beside a tokenizer folder, on a world)."""
    from mmvid.video_tokenizers import VIDEO_TOKENIZERS

    d = cfg.data
    if not d.video_decoder or d.video_decoder_minutes <= 0:
        return None
    if d.video_decoder != "auto":
        return Path(d.video_decoder)
    if (cfg.model.video_tokenizer in VIDEO_TOKENIZERS or not d.world or cfg.model.train_video_tokenizer
            or cfg.zero_stage == 3):
        return None
    return Path(f"{cfg.model.video_tokenizer}-decoder")


def prepare_video_decoder(cfg: SFTConfig) -> None:
    """Fine-tune the decoder of `model.video_tokenizer` alone (its encoder, and so its tokens, frozen) for
    `data.video_decoder_minutes` into `data.video_decoder`, when that folder is missing."""
    from dataclasses import asdict

    from mmvid.video_tokenizers import load_video_tokenizer
    from mmvid.video_tokenizers.trainer import DataConfig, TokenizerTrainConfig
    from mmvid.video_tokenizers.trainer import run as train_tokenizer

    target = video_decoder_folder(cfg)
    if target is None or (target / "config.json").is_file():
        return
    source = Path(cfg.model.video_tokenizer)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"data.video_decoder fine-tunes the decoder of a saved tokenizer folder; "
                                f"model.video_tokenizer={source} is not one")
    start = time.perf_counter()
    tokenizer = load_video_tokenizer(source)
    if tokenizer.preset is None:
        raise ValueError(f"{source} records no preset to rebuild it from; data.video_decoder needs one")
    d = cfg.data
    tcfg = TokenizerTrainConfig(
        model=tokenizer.preset, model_overrides=asdict(tokenizer.config), init_from=str(source),
        train="decoder", out=f"{target}-run", steps=1_000_000, max_minutes=d.video_decoder_minutes,
        foreground_weight=d.video_decoder_foreground_weight, seed=cfg.seed,
        data=DataConfig(source=d.world or "data/shapes", num_frames=cfg.model.num_frames,
                        size=tokenizer.image_size, num_workers=1))
    log.info("fine-tuning the decoder of %s alone (%.1f minutes, foreground_weight %g) -> %s", source,
             d.video_decoder_minutes, d.video_decoder_foreground_weight, target)
    train_tokenizer(tcfg, distributed=False)
    shutil.copytree(Path(tcfg.out) / "final", target, dirs_exist_ok=True)
    _stage_log(cfg, "video_decoder", time.perf_counter() - start)


def parameter_groups(model, cfg: SFTConfig) -> list[dict]:
    rates = module_learning_rates(cfg)
    groups = []
    for name in ("llm", "projector", "video_tokenizer", "generation_head"):
        part = getattr(model, name)
        params = [p for p in part.parameters() if p.requires_grad] if part is not None else []
        if params:
            groups.append({"params": params, "lr": rates[name], "name": name,
                           "weight_decay": cfg.weight_decay})
    return groups


def lr_lambda(cfg: SFTConfig, total: int, delay: int = 0):
    """Linear warm-up then cosine (or constant); with `delay`, 0 for the first `delay` steps and the
    schedule shifted after them (the LLM's group during `align_steps`: frozen while the projector aligns)."""
    def f(step: int) -> float:
        if step < delay:
            return 0.0
        step -= delay
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - delay - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# ----------------------------------------------------------------------------------------------
# Building the run: process group, model, data phases, DeepSpeed engine
# ----------------------------------------------------------------------------------------------


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) under the deepspeed launcher: gloo on CPU, NCCL on CUDA."""
    import deepspeed

    on_cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if on_cuda else "gloo", verbose=False)
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_cuda else torch.device("cpu")
    return rank, dist.get_world_size(), device


def build_model(cfg: SFTConfig, device: torch.device, rank: int):
    """The VideoLLM, with the weights of `init_from` (a previous stage's export) when set: all of them,
    strictly, but for the modules in `init_from_partial`."""
    from mmvid.videollm import WEIGHTS_FILE, VideoLLM

    model = VideoLLM.build(cfg.model, device=device)
    if cfg.init_from:
        load_weights(model, Path(cfg.init_from) / WEIGHTS_FILE, partial=cfg.init_from_partial,
                     hint="; name the modules that may differ in init_from_partial")
        if rank == 0:
            partial = (f"; {', '.join(cfg.init_from_partial)}: only what the folder has"
                       if cfg.init_from_partial else "")
            log.info("init_from %s: weights loaded%s", cfg.init_from, partial)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable()
    return model


@dataclass
class Phase:
    """One data phase: its data set, its resumable sampler (the data position), and its micro-batches."""

    dataset: SFTDataset
    sampler: ResumableSampler
    batches: Iterator[dict]  # the loader pass after pass, each pass the sampler's next epoch


def build_phases(cfg: SFTConfig, model, rank: int, world_size: int) -> dict[str, Phase]:
    """"train" (data.train), and with data.curriculum_steps > 0 "curriculum" (data.curriculum), which the
    first data.curriculum_steps optimizer steps draw from (`phase_at`)."""
    files = {"train": cfg.data.train,
             **({"curriculum": cfg.data.curriculum} if cfg.data.curriculum_steps else {})}
    if cfg.data.pack_questions:
        model.check_block_mask()  # packed rows need an attention that takes a block mask
    phases = {}
    for name, paths in files.items():
        dataset = SFTDataset(paths, model.processor, cfg.data.video_root, split_turns=cfg.data.split_turns,
                             prompt_dropout=cfg.data.prompt_dropout, pack_questions=cfg.data.pack_questions,
                             t2v_fraction=cfg.data.t2v_fraction, max_rounds=cfg.data.max_rounds,
                             data_format=cfg.data.format, seed=cfg.seed)
        sampler = ResumableSampler(len(dataset), shuffle=True, seed=cfg.seed, rank=rank,
                                   world_size=world_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.data.num_workers,
                            collate_fn=partial(collate, model.processor), drop_last=True)
        phases[name] = Phase(dataset, sampler, _passes(loader, sampler))
    return phases


def _passes(loader: DataLoader, sampler: ResumableSampler) -> Iterator[dict]:
    while True:
        yield from loader
        sampler.set_epoch(sampler.epoch + 1)


def phase_at(cfg: SFTConfig, step: int) -> str:
    return "curriculum" if step < cfg.data.curriculum_steps else "train"


def total_steps(cfg: SFTConfig, train: ResumableSampler) -> int:
    """`steps`, or with `epochs` the curriculum's steps + that many passes over data.train."""
    if cfg.epochs is None:
        return cfg.steps
    return cfg.data.curriculum_steps + max(1,
                                           int(cfg.epochs * len(train) / (cfg.batch_size * cfg.grad_accum)))


def build_engine(cfg: SFTConfig, model, steps: int, rank: int, world_size: int, out: Path):
    """(engine, scheduler): AdamW (DeepSpeedCPUAdam with offload_optimizer) over the per-module groups, their
    schedule, and DeepSpeed on the config generated from `cfg` (or the user's, "auto" filled), saved
    beside."""
    import deepspeed

    groups = parameter_groups(model, cfg)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.align_steps >= steps:
        raise ValueError(f"align_steps ({cfg.align_steps}) must be fewer than the run's steps ({steps})")
    # Align (LLaVA's stage 1) then SFT in one run: the LLM's group waits align_steps at lr 0.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lr_lambda(cfg, steps, cfg.align_steps if g["name"] == "llm" else 0) for g in groups])
    on_cuda = torch.cuda.is_available()
    ds_config = (resolve_user_config(cfg.deepspeed, cfg, world_size, on_cuda) if cfg.deepspeed
                 else build_deepspeed_config(cfg, world_size, on_cuda))
    if rank == 0:
        (out / "deepspeed.json").write_text(json.dumps(ds_config, indent=1))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config)
    return engine, scheduler


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def run(cfg: SFTConfig) -> dict:
    """Train (or resume from the newest checkpoint in `out`), export `out/final` and evaluate it; the
    summary."""
    rank, world_size, device = init_distributed()
    out = Path(cfg.out)
    if rank == 0:
        prepare_default_data(cfg)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()
    cfg = use_pretrained_llm(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, device, rank)
    phases = build_phases(cfg, model, rank, world_size)
    steps = total_steps(cfg, phases["train"].sampler)
    engine, scheduler = build_engine(cfg, model, steps, rank, world_size, out)
    state = TrainState(samplers={name: phase.sampler for name, phase in phases.items()})
    checkpointer = Checkpointer(out, cfg.keep_checkpoints, rank, world_size)
    if cfg.resume and (folder := checkpointer.load(state, engine=engine)) is not None and rank == 0:
        log.info("resumed from %s (step %d)", folder, state.step)
    if (decoder := video_decoder_folder(cfg)) is not None:  # after any resume: a finished run's final gets it
        model.load_video_decoder(decoder)

    finished_before = state.step >= steps  # started again after the end: re-export (e.g. a new decoder) only
    board = _tensorboard(out) if rank == 0 else None
    bar = tqdm(total=steps, initial=state.step, desc="sft", unit="step", disable=rank != 0)
    # periodic evaluations are left out of the curve's time
    start_time, eval_seconds = time.perf_counter(), 0.0
    while state.step < steps:
        name = phase_at(cfg, state.step)
        if name == "train" and "curriculum" in phases:  # its loader (and any workers) is not needed again
            phases.pop("curriculum").batches.close()
        phase = phases[name]
        losses, samples, seconds = [], 0, 0.0  # each micro-batch's; the step's samples and time (not loading)
        for batch in islice(phase.batches, cfg.grad_accum):  # accumulate grad_accum micro-batches
            start = time.perf_counter()
            index = batch.pop("index")
            output = engine(**{k: v.to(device) for k, v in batch.items()}, text_loss=cfg.text_loss)
            engine.backward(output.loss)
            engine.step()  # the optimizer steps, on grads clipped to grad_clip, at the last micro-batch only
            phase.sampler.advance(len(index))
            stop_on_bad_samples(phase.dataset, cfg, rank)
            losses.append(
                {k: output[k].detach() for k in ("loss", "lm_loss", "gen_loss") if output.get(k) is not None})
            samples, seconds = samples + len(index) * world_size, seconds + time.perf_counter() - start
        state.step, state.samples_seen, state.seconds = (state.step + 1, state.samples_seen + samples,
                                                         state.seconds + seconds)
        bar.update()
        if rank == 0 and state.step % cfg.log_every == 0:
            log_step(out, board, bar, {"step": state.step, "phase": name, **_mean(losses),
                                       "lr": scheduler.get_last_lr()[0], "samples_per_s": samples / seconds,
                                       "samples_seen": state.samples_seen,
                                       "bad_samples": len(phase.dataset.bad),
                                       "seconds": time.perf_counter() - start_time})
        if state.step % cfg.checkpoint_every == 0 or state.step == steps:
            checkpointer.save(state, config_to_dict(cfg), engine=engine)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and cfg.data.val_bench and state.step < steps:
            eval_seconds += evaluate_during_training(model, cfg, out, state.step, rank,
                                                     time.perf_counter() - start_time - eval_seconds)
        if cfg.export_every and state.step % cfg.export_every == 0 and state.step < steps:
            export(model, out / f"export-step_{state.step:06d}", cfg, rank)
    bar.close()
    return finish(model, cfg, out, state, rank, phases, start_time, eval_seconds, finished_before)


def stop_on_bad_samples(dataset: SFTDataset, cfg: SFTConfig, rank: int) -> None:
    """Every rank stops together when too many samples failed to load (no rank waits on another)."""
    stop = torch.tensor([float(dataset.bad_fraction() > cfg.data.max_bad_fraction and len(dataset.bad) > 1)])
    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    if stop.item():
        raise RuntimeError(f"rank {rank}: {len(dataset.bad)} of {dataset.seen} samples failed to load "
                           f"(more than data.max_bad_fraction={cfg.data.max_bad_fraction}); first: "
                           f"{list(dataset.bad.items())[:3]}")


def _mean(losses: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The step's loss, and its text and video-token parts (with a generation head): means over its
    micro-batches."""
    names = dict.fromkeys(name for micro in losses for name in micro)
    return {
        name: torch.stack([micro[name] for micro in losses if name in micro]).mean().item() for name in names}


def log_step(out: Path, board, bar: tqdm, record: dict) -> None:
    """A line of out/metrics.jsonl, the progress bar's numbers, and TensorBoard's scalars."""
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                    samples_s=f"{record['samples_per_s']:.1f}")
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    if board is not None:
        for name in ("loss", "lr", "samples_per_s"):
            board.add_scalar(f"train/{name}", record[name], record["step"])


# ----------------------------------------------------------------------------------------------
# Evaluation and export, called by the loop
# ----------------------------------------------------------------------------------------------


def evaluate_during_training(model, cfg: SFTConfig, out: Path, step: int, rank: int,
                             train_seconds: float) -> float:
    """tv_align on data.val_bench (eval_limit questions) to out/eval-step_N.json and a point of the learning
    curve; under ZeRO-3 rank 0 evaluates a whole export. Returns the seconds the evaluation took."""
    from mmvid.evaluation import evaluate

    target = model if cfg.zero_stage < 3 else export(model, out / "export-eval", cfg, rank, reload=rank == 0)
    start = time.perf_counter()
    if rank == 0:
        record = evaluate(target, ["tv_align"], output=out / f"eval-step_{step:06d}.json",
                          data=cfg.data.val_bench, limit=cfg.eval_limit)
        model.train()
        _curve_point(out, cfg, step, train_seconds, record)
        tqdm.write(f"step {step}: val tv_align acc "
                   f"{record['results']['tv_align']['metrics']['acc']['value']:.3f}")
    seconds = time.perf_counter() - start
    dist.barrier()
    return seconds


def finish(model, cfg: SFTConfig, out: Path, state: TrainState, rank: int, phases: dict[str, Phase],
           start_time: float, eval_seconds: float, finished_before: bool = False) -> dict:
    """Export out/final, evaluate it on the validation bench (printed per category), and write the summary.
    A run that was already finished (`finished_before`: started again, e.g. to take a new decoder) keeps
    its summary's training time and adds no point to the learning curve."""
    from mmvid.evaluation import evaluate

    previous = out / "final" / "train_summary.json"
    seconds = round(time.perf_counter() - start_time, 1)
    if finished_before and previous.is_file():
        seconds = json.loads(previous.read_text()).get("seconds", seconds)
    final = export(model, out / "final", cfg, rank, reload=rank == 0 and cfg.zero_stage == 3)
    summary = {"steps": state.step, "seconds": seconds,
               "samples_seen": state.samples_seen,
               "bad_samples": sum(len(p.dataset.bad) for p in phases.values()),
               "peak_rss_gib": _peak_rss_gib()}
    if rank == 0 and cfg.data.val_bench:
        # Under ZeRO-3 the live parameters are partitioned across ranks, so rank 0 evaluates the export.
        record = evaluate(final if final is not None else model, ["tv_align"],
                          output=out / "final" / "eval-val.json",
                          data=cfg.data.val_bench, limit=cfg.eval_limit)
        summary["val"] = {k: v["value"] for k, v in record["results"]["tv_align"]["metrics"].items()}
        if not finished_before:
            _curve_point(out, cfg, state.step, summary["seconds"] - eval_seconds, record)
        _print_per_category(record["results"]["tv_align"])
    if rank == 0:
        (out / "final" / "train_summary.json").write_text(json.dumps(summary, indent=1))
    dist.barrier()
    return summary


def _print_per_category(result: dict) -> None:
    settings, also = result["settings"], result["settings"].get("also_reported", {})
    print(f"validation tv_align accuracy per category ({settings['headline']}"
          + "".join(f"; {k} = {v}" for k, v in also.items()) + "):")
    for name, m in result["metrics"].items():
        if name.split("/")[-1] in ("acc", *also):
            print(f"  {name:<20} {m['value']:.3f} (n={m['n']})")


def _curve_point(out: Path, cfg: SFTConfig, step: int, train_seconds: float, record: dict) -> None:
    """One validation point of the learning curve in out/curve.jsonl (plotted by `python -m mmvid.plots`)."""
    result = record["results"]["tv_align"]
    metrics = {k: v["value"] for k, v in result["metrics"].items()}
    stage = ("align" if step <= cfg.align_steps else "curriculum" if step <= cfg.data.curriculum_steps
             else "sft")
    point = {"step": step, "stage": stage, "train_seconds": round(train_seconds, 1),
             "formulation": result["settings"]["option_format"], "metrics": metrics}
    with (out / "curve.jsonl").open("a") as f:
        f.write(json.dumps(point) + "\n")


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

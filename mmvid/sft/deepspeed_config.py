"""The DeepSpeed JSON, generated from the training config so batch sizes can never disagree.

`build_deepspeed_config(cfg, world_size, on_cuda)` writes ZeRO 0-3, optimizer/parameter offload,
bf16 on CUDA (fp32 on CPU), clipping and accumulation. A user's own JSON (`deepspeed=FILE`) is
read with `resolve_user_config`: every "auto" value is filled from the training config, and an
explicit batch size or accumulation that contradicts it is an error rather than a silent winner.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmvid.sft.config import SFTConfig


def use_bf16(cfg: SFTConfig, on_cuda: bool) -> bool:
    if cfg.precision == "fp32":
        return False
    if cfg.precision == "bf16":
        if not on_cuda:
            raise ValueError("precision=bf16 needs CUDA; on CPU mmvid trains in fp32 (precision=auto)")
        return True
    return on_cuda and torch.cuda.is_bf16_supported()


def build_deepspeed_config(cfg: SFTConfig, world_size: int, on_cuda: bool) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 2:
        zero.update(overlap_comm=on_cuda, contiguous_gradients=True)
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_cuda}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_cuda}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    bf16 = use_bf16(cfg, on_cuda)
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # mmvid logs itself
        "wall_clock_breakdown": False,
    }


def resolve_user_config(path: str | Path, cfg: SFTConfig, world_size: int, on_cuda: bool) -> dict:
    """A user's DeepSpeed JSON with "auto" filled in from `cfg`; contradictions raise ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    try:
        user = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    ours = build_deepspeed_config(cfg, world_size, on_cuda)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping"):
        value = user.get(key, "auto")
        if value == "auto":
            user[key] = ours[key]
        elif key != "gradient_clipping" and value != ours[key]:
            raise ValueError(f"{path}: {key}={value} contradicts the training config ({ours[key]}); set it "
                             f"to \"auto\" or change batch_size / grad_accum")
    zero = user.setdefault("zero_optimization", {})
    if zero.get("stage", "auto") == "auto":
        zero["stage"] = cfg.zero_stage
    for section in ("bf16", "fp16"):
        block = user.setdefault(section, {})
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = ours[section]["enabled"]
    for block in (user.get("optimizer", {}).get("params", {}), user.get("scheduler", {}).get("params", {})):
        for key, value in list(block.items()):
            if value == "auto":
                block[key] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                              "warmup_num_steps": cfg.warmup_steps,
                              "total_num_steps": cfg.steps, "warmup_max_lr": cfg.lr}.get(key, value)
                if block[key] == "auto":
                    raise ValueError(f"{path}: cannot resolve \"auto\" for {key}")
    return user

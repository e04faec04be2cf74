"""The pretrained-LLM stand-in: a small causal LM trained from scratch on a world's training text,
saved as an ordinary Hugging Face folder that `VideoLLM` then loads with `model.llm=FOLDER`, exactly
as it loads a downloaded Qwen or Llama.

    from mmvid.sft.text_pretrain import TextPretrainConfig, pretrain_llm
    pretrain_llm(TextPretrainConfig(out="runs/llm", tokenizer="runs/text-tokenizer"), conversations)

A real video LLM starts from an LLM that already reads. Trained from scratch inside SFT, the tiny
default must learn the language and the video at once; pretrained first on reading comprehension
(a caption in place of the video, a question, its answer text), it only has to learn to read the
video positions the way it reads a caption. Only assistant turns are supervised (the chat template
is the one SFT uses). The folder gets `config.json` + `model.safetensors` + the tokenizer files +
`pretrain.json` (steps, seconds, loss history); a folder that already has them is not trained again.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class TextPretrainConfig:
    out: str = "runs/llm"
    tokenizer: str = "runs/text-tokenizer"  # the text tokenizer folder (copied into `out`)
    llm_config: dict = field(default_factory=dict)  # model_type + fields (vocab_size: the tokenizer's)
    minutes: float = 1.5  # training-time budget
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    seed: int = 0

    def __post_init__(self):
        if "model_type" not in self.llm_config:
            raise ValueError("llm_config needs a model_type (e.g. llama)")
        if self.minutes <= 0 and not self.max_steps:
            raise ValueError("give a positive minutes budget or max_steps")


def is_pretrained(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "pretrain.json").is_file() and (folder / "config.json").is_file()


def pretrain_llm(cfg: TextPretrainConfig, conversations: list[list[dict]]) -> Path:
    """Train on LLaVA-style text conversations ({"from": "human"|"gpt", "value"}); save to cfg.out."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mmvid.prompting import IGNORE_INDEX, VideoTokenIds, encode_conversation
    from mmvid.text_tokenizer import (
        VIDEO_END,
        VIDEO_START,
        VIDEO_TOKEN,
        add_video_special_tokens,
        ensure_chat_template,
    )

    out = Path(cfg.out)
    if is_pretrained(out):
        log.info("pretrained LLM %s exists; skipping text pretraining", out)
        return out
    if not conversations:
        raise ValueError("no text to pretrain on")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    add_video_special_tokens(tokenizer)  # the ids VideoLLM will use, so the vocabulary needs no resize later
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = VideoTokenIds(*(tokenizer.convert_tokens_to_ids(t) for t in (VIDEO_TOKEN, VIDEO_START, VIDEO_END)))
    encoded: dict[int, object] = {}  # encoded on first use: a budgeted run reads a fraction of a large corpus

    def example(i: int):
        if i not in encoded:
            encoded[i] = encode_conversation(tokenizer, conversations[i], ids, 0)
        return encoded[i]

    data = dict(cfg.llm_config)
    data["vocab_size"] = len(tokenizer)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(data.pop("model_type"), **data))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    budget = cfg.minutes * 60
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    model.train()
    step, history, start = 0, [], time.perf_counter()
    bar = tqdm(desc="text pretraining", unit="step", total=cfg.max_steps)
    while time.perf_counter() - start < budget and (cfg.max_steps is None or step < cfg.max_steps):
        batch = [example(i) for i in rng.sample(range(len(conversations)),
                                                min(cfg.batch_size, len(conversations)))]
        width = max(len(e) for e in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), IGNORE_INDEX)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            input_ids[i, :len(e)] = torch.tensor(e.input_ids)
            labels[i, :len(e)] = torch.tensor(e.labels)
            mask[i, :len(e)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        bar.update()
        if step == 1 or step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            history.append({"step": step, "seconds": round(time.perf_counter() - start, 1),
                            "loss": round(loss.item(), 4)})
    bar.close()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"config": asdict(cfg), "steps": step, "seconds": round(seconds, 1),
              "examples": len(conversations), "examples_read": len(encoded),
              "final_loss": history[-1]["loss"] if history else None, "history": history}
    (out / "pretrain.json").write_text(json.dumps(record, indent=1))
    log.info("text pretraining: %d steps in %.0f s (loss %.3f) -> %s", step, seconds, loss.item(), out)
    return out

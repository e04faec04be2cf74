"""Token budget bench: exact tokens per video of every video tokenizer preset, and what they cost the LLM.

    python eval/run.py --bench tokens                                   # no checkpoint needed
    python eval/run.py --bench tokens --model runs/sft/final --frames 8,16,32 --max_prefill_tokens 8192

For every preset in `VIDEO_TOKENIZERS` (built under torch.device("meta"): no memory, no weights) and every
frame count of `--frames` (default 8,16,32,64,128), at the preset's own `image_size` (the presets
have a fixed resolution, recorded per row): `tokenizer.num_tokens(T, size, size)`, the count before any
projector. For each distinct count N up to `--max_prefill_tokens` (default 4096; larger ones are listed
in settings["skipped_prefill"]): the time of one LLM forward pass (prefill, use_cache, logits of the last
position only, as generate does) on N + 16 positions of inputs_embeds (16 stand for the text prompt),
the median of `--repeats` (default 3) runs after one warm-up.

The LLM is the VideoLLM's `.llm` when a model is given live or `--model` holds a checkpoint; otherwise a
tiny untrained Llama built from a config, whose timings only compare token counts with each other
(settings["llm"] says which). Metrics: "{preset}/T{frames}/tokens", "{preset}/T{frames}/prefill_ms";
settings["table"] is the same as a markdown table.
"""

from __future__ import annotations

import inspect
import statistics
import time
from pathlib import Path

import torch

from mmvid.evaluation.runner import BenchContext, BenchResult, Metric
from mmvid.video_tokenizers import VIDEO_TOKENIZERS, build_video_tokenizer

DEFAULT_FRAMES = "8,16,32,64,128"
PROMPT_TOKENS = 16  # text positions added to every video's tokens
TINY_LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


def run(ctx: BenchContext) -> BenchResult:
    """Token counts for every preset x frame count, and the LLM prefill time for each count."""
    frame_counts = [int(f) for f in (ctx.option("frames") or DEFAULT_FRAMES).split(",") if f.strip()]
    max_prefill = int(ctx.option("max_prefill_tokens") or 4096)
    repeats = int(ctx.option("repeats") or 3)
    if not frame_counts or min(frame_counts) < 1 or repeats < 1:
        raise ValueError(f"--frames needs positive ints and --repeats >= 1, "
                         f"got {ctx.option('frames')!r}, {repeats}")

    rows = []  # (preset, frames, size, tokens)
    for name in VIDEO_TOKENIZERS:
        with torch.device("meta"):
            tokenizer = build_video_tokenizer(name)
        size = tokenizer.image_size
        rows += [(name, T, size, tokenizer.num_tokens(T, size, size)) for T in frame_counts]

    llm, llm_source = _llm(ctx, max_prefill + PROMPT_TOKENS)
    counts = sorted({n for *_, n in rows})
    prefill_ms = {n: _prefill_ms(llm, n + PROMPT_TOKENS, repeats) for n in counts if n <= max_prefill}

    metrics, skipped = [], []
    for name, T, size, n in rows:
        metrics.append(Metric(f"{name}/T{T}/tokens", float(n)))
        if n in prefill_ms:
            metrics.append(Metric(f"{name}/T{T}/prefill_ms", prefill_ms[n], n=repeats))
        else:
            skipped.append(f"{name}/T{T}: {n} tokens > max_prefill_tokens {max_prefill}")
    table = ["| preset | frames | size | tokens | prefill ms |", "|---|---:|---:|---:|---:|"]
    for name, T, size, n in rows:
        ms = f"{prefill_ms[n]:.2f}" if n in prefill_ms else "skipped"
        table.append(f"| {name} | {T} | {size}x{size} | {n} | {ms} |")
    settings = {
        "frames": frame_counts,
        "sizes": {name: size for name, _, size, _ in rows},
        "prompt_tokens": PROMPT_TOKENS,
        "max_prefill_tokens": max_prefill,
        "repeats": repeats,
        "llm": llm_source,
        "device": str(_device(llm)),
        "skipped_prefill": skipped,
        "table": "\n".join(table),
    }
    return BenchResult("tokens", metrics, settings)


def _llm(ctx: BenchContext, max_positions: int) -> tuple[torch.nn.Module, str]:
    """The VideoLLM's LLM when one is live or checkpointed at ctx.model_path, else a tiny Llama."""
    if ctx.model is not None:
        return ctx.model.llm, f"videollm:{ctx.model_path or 'live model'}"
    if ctx.model_path and (Path(ctx.model_path) / "config.json").is_file():
        return ctx.load_model().llm, f"videollm:{ctx.model_path}"
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**TINY_LLAMA, max_position_embeddings=max(max_positions, 4096))
    torch.manual_seed(0)
    llm = LlamaForCausalLM(config).eval().to("cuda" if torch.cuda.is_available() else "cpu")
    layout = ", ".join(f"{k}={v}" for k, v in TINY_LLAMA.items())
    return llm, f"tiny untrained Llama ({layout}); no checkpoint at {ctx.model_path}"


@torch.no_grad()
def _prefill_ms(llm: torch.nn.Module, positions: int, repeats: int) -> float:
    """Median milliseconds of one forward pass over `positions` input embeddings (after one warm-up)."""
    embedding = llm.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, positions, embedding.embedding_dim, generator=generator).to(device, dtype)
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # peft hides the signature
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        llm(inputs_embeds=embeds, attention_mask=torch.ones(1, positions, dtype=torch.long, device=device),
            use_cache=True, **kwargs)
        _sync(device)
        if i:  # the first pass is the warm-up
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

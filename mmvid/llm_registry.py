"""Every decoder-only causal LM that transformers registers, as a tiny LLM that mmvid builds and checks.

    from mmvid.llm_registry import tiny_llm_config, skip_reasons
    llm_config = tiny_llm_config("gemma2", vocab_size=len(text_tokenizer))  # a dict with model_type
    model = VideoLLM.build(VideoLLMConfig(llm_config=llm_config, text_tokenizer=folder, ...))

    python -m mmvid.llm_registry --output runs/llm_registry.json   # the whole walk (~1 min, 2 cores)
    python -m mmvid.llm_registry llama gemma2                       # a few architectures

`tiny_llm_config` shrinks any registered architecture the way transformers' own model testers do
(`hidden_size=64, num_hidden_layers=2`, ...): it creates the default config to discover which size keys
it has (hidden size, feed-forward and MoE sizes, layers, heads, head and low-rank dims, experts, SSM
state sizes, positions, vocabulary; those of nested text configs too) and returns only the shrunk values,
so that `AutoConfig.for_model(model_type, **them)` recomputes everything derived from them (layer types,
head dims, ...). Where the generic rule is not enough, `OVERRIDES` says what else, with its reason.
Special ids (pad, bos, eos) are left alone: VideoLLM.build takes them from the text tokenizer.

`skip_reasons` classifies each entry of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`: None for a decoder-only text
LM (eligible), else why it is not one (an encoder, the decoder of an encoder-decoder, a multimodal wrapper
of a text model that is walked itself, ...). Rules first, then the explicit `SKIPPED` table.

`walk` runs `check_architecture` for each eligible one in a child process (a timeout and a memory cap
each): VideoLLM.build, a forward with labels and a backward (finite loss, gradients in the LLM and the
projector), `generate` with a video, and save -> load giving the same loss in eval mode.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------
# Tiny configs
# ----------------------------------------------------------------------------------------------

HIDDEN, FFN, MOE_FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, POSITIONS = 64, 128, 32, 2, 4, 2, 16, 1024
# config key -> its tiny value; a default below it is kept (min), a None default is left to the config.
TINY: dict[str, int] = {
    **dict.fromkeys(["hidden_size", "n_embd", "n_embed", "d_model", "emb_dim", "embedding_dim",
                     "word_embed_proj_dim", "hidden_size_global", "input_size", "backbone_hidden_size",
                     "lru_width"], HIDDEN),
    **dict.fromkeys(["intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner", "dff", "dim_ff", "d_inner",
                     "feed_forward_size", "decoder_ffn_dim", "encoder_ffn_dim", "intermediate_size_mlp",
                     "first_dense_intermediate_size", "dense_intermediate_size", "mlp_only_intermediate_size",
                     "shared_intermediate_size", "mamba_d_ssm"], FFN),
    **dict.fromkeys(["moe_intermediate_size", "shared_expert_intermediate_size",
                     "shared_experts_intermediate_size", "moe_shared_expert_intermediate_size",
                     "expert_ffn_hidden_size", "router_hidden_size"], MOE_FFN),
    **dict.fromkeys(["num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers",
                     "encoder_layers", "num_decoder_layers", "num_encoder_layers", "num_blocks"], LAYERS),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "attention_heads",
                     "decoder_attention_heads", "encoder_attention_heads", "swa_num_attention_heads",
                     "linear_num_heads", "linear_num_value_heads",
                     "heads_per_ngram"], HEADS),
    # Mamba-2 style layers: heads x head dim = expand (2) x hidden size
    **dict.fromkeys(["mamba_n_heads", "mamba_num_heads"], 2 * HIDDEN // HEAD_DIM),
    **dict.fromkeys(["num_key_value_heads", "num_kv_heads", "kv_n_heads", "swa_num_key_value_heads",
                     "linear_num_key_heads", "num_query_groups"], KV_HEADS),
    **dict.fromkeys(["head_dim", "d_head", "dim_head", "attention_head_size", "attention_head_dim",
                     "kv_channels", "swa_head_dim", "index_head_dim", "linear_head_dim",
                     "linear_key_head_dim", "linear_value_head_dim", "mamba_d_head", "mamba_head_dim",
                     "mamba_headdim", "qk_nope_head_dim", "v_head_dim", "hidden_size_per_layer_input",
                     "ple_embed_dim", "hc_lowrank", "d_rel"], HEAD_DIM),
    # multi-head latent attention (DeepSeek-V2/V3 style): the rope part and the low ranks
    "qk_rope_head_dim": 8, "qk_head_dim": HEAD_DIM + 8, "kv_lora_rank": 32, "q_lora_rank": 32,
    "o_lora_rank": 32, "laurel_rank": 8, "adapter_rank": 8, "loop_gate_rank": 8, "rotary_dim": 8,
    # sparse-attention indexers: at most the query heads of one key head
    **dict.fromkeys(["index_n_heads", "index_num_heads"], HEADS // KV_HEADS),
    # mixtures of experts: 4 experts, 2 per token, one shared, one group, dense layers first stay 1
    **dict.fromkeys(["num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts",
                     "num_centroids"], 4),
    **dict.fromkeys(["num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "moe_top_k",
                     "centroid_intermediate_top_k"], 2),
    **dict.fromkeys(["n_shared_experts", "num_shared_experts", "moe_num_shared_experts", "n_group",
                     "num_expert_group", "topk_group", "first_k_dense_replace", "num_dense_layers",
                     "moe_layer_start_index"], 1),
    # state-space and recurrent layers
    **dict.fromkeys(["state_size", "ssm_state_size", "mamba_d_state"], 16),
    **dict.fromkeys(["time_step_rank", "mamba_dt_rank"], 8),
    **dict.fromkeys(["n_groups", "mamba_n_groups", "mamba_ngroups"], 1),
    # positions: enough for a prompt with a video (VideoLLM max_length 1024)
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "context_length",
                     "max_target_positions"], POSITIONS),
    # the image and audio encoders of multimodal composites that are walked (Phi-4-multimodal, GOT-OCR2)
    **dict.fromkeys(["ext_pw_out_channel", "depthwise_separable_out_channel", "nemo_conv_channels"], HIDDEN),
    "output_channels": 32, "mlp_dim": FFN,
    # extra embedding tables
    **dict.fromkeys(["vocab_size_per_layer_input", "encoder_hash_byte_group_vocab",
                     "ngram_vocab_size_base"], 1024),
}
VOCAB_KEYS = ("vocab_size", "unpadded_vocab_size")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_blocks")
# keys whose None default the model does not derive itself: they get the tiny value
FILL_NONE = ("head_dim",)

# model_type -> what the generic rule cannot know, merged over its result (each with its reason)
OVERRIDES: dict[str, dict[str, Any]] = {
    # a Mamba layer and an attention layer (the default names no attention layer)
    "bamba": {"attn_layer_indices": [1]},
    # rope per layer type, which the default config leaves empty (checkpoints give it), with 3D rope
    # sections that add up to head_dim / 2
    "cohere_compass_text": {"rope_parameters": {"full_attention": {
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2]}}},
    # DbrxAttention reads attn_config.rope_theta, which DbrxAttentionConfig no longer declares, and clamps
    # with clip_qkv, which fails for its default None (DBRX's checkpoints clip at 8)
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0}},
    # the default config leaves num_experts_per_tok None, which the MoE layers cannot route with
    "deepseek_v2": {"num_experts_per_tok": 2},
    # its to_dict() writes each layer as an (attention, "mlp") pair with doubled counts: one input, one
    # recurrent and one output layer, as the config itself counts them
    "dory": {"num_hidden_layers": 3, "n_input_layers": 1, "n_recurrent_layers": 1, "n_output_layers": 1,
             "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
    # the default config leaves the experts None, which the model cannot build
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    # its sliding-window layer (the third kept one) must have head_dim = qk_nope_head_dim + qk_rope_head_dim
    "dots3_note_text": {"per_layer_config": {2: {"head_dim": HEAD_DIM + 8}}},
    # Falcon-H1's Mamba heads x head dim must be mamba_d_ssm (its default head dim, 8, is below the tiny one)
    "falcon_h1": {"mamba_d_head": HEAD_DIM},
    # the last 2 of its 4 tiny layers reuse the key/values of the first two (the default shares 15 of 35)
    "gemma3n_text": {"num_kv_shared_layers": 2},
    # GPT-Neo derives attention_layers from attention_types: one global and one local layer
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    # a Mamba layer and an attention layer (the default is all Mamba)
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    # an attention layer and a Mamba layer (the default has attention every 8th layer from the 5th)
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},
    # its default layer_types is None, which the model indexes: a convolution layer and an attention one
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    # Mamba-2's heads x head_dim must be expand x hidden size
    "mamba2": {"num_heads": 2 * HIDDEN // HEAD_DIM},
    # the model divides by num_key_value_heads, whose default is None
    "nemotron": {"num_key_value_heads": KV_HEADS},
    # its default layer_types has an indexed-attention layer but no indexer (QSA) settings, which that layer
    # needs; Qwen4-Exp's indexer has one key head
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": HEAD_DIM,
                       "indexer_budget": 64, "indexer_compress_ratio": 4},
    # a recurrent block and an attention block (the default pattern repeats recurrent, recurrent, attention)
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    # xLSTM's cache rounds qk_dim (hidden_size x qk_dim_factor 0.5) up to a multiple of 64 and its layers do
    # not: a hidden size of 128 makes both 64
    "xlstm": {"hidden_size": 2 * HIDDEN, "embedding_dim": 2 * HIDDEN},
    # two hybrid layers: their shared transformer is tied across hybrid layers, which needs a second one
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},
}


def tiny_llm_config(model_type: str, vocab_size: int = 512) -> dict[str, Any]:
    """A tiny config of a registered architecture, as the kwargs (with "model_type") that
    `AutoConfig.for_model` and `VideoLLMConfig(llm_config=...)` take. Give `vocab_size` the text tokenizer's
    length (after mmvid adds its video tokens), so that the embeddings need no resizing."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    return {"model_type": model_type, **_merge(_shrunk(default, vocab_size), OVERRIDES.get(model_type, {}))}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `override`; nested dicts (sub-configs) merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _shrunk(config, vocab_size: int) -> dict[str, Any]:
    """The tiny values of the size keys `config` has, nested configs (text_config, ...) as dicts."""
    values = config.to_dict()
    kwargs = _shrunk_values(values, vocab_size)
    layers = _kept_layers(values)
    if layers is not None:
        kwargs.update(_cut_to_layers(values, layers, vocab_size))
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            kwargs[key] = {"model_type": sub.model_type, **_shrunk(sub, vocab_size)} if sub.model_type \
                else _shrunk(sub, vocab_size)
    return kwargs


def _shrunk_values(values: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The tiny value of each size key among `values` (a config's, or one layer's overrides)."""
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in VOCAB_KEYS and isinstance(value, int):
            kwargs[key] = vocab_size
        elif key in TINY and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = min(value, TINY[key])
        elif key in FILL_NONE and value is None:
            kwargs[key] = TINY[key]
    # latent attention (DeepSeek's MLA): rope acts on qk_rope_head_dim, and every head has its key/value
    if "qk_rope_head_dim" in kwargs:
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
    if ("qk_rope_head_dim" in kwargs or "kv_lora_rank" in kwargs) and "num_attention_heads" in kwargs:
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    return kwargs


def _kept_layers(values: dict[str, Any]) -> list[int] | None:
    """Which layers of the default config the tiny one keeps, where layers differ (per-layer lists such
    as layer_types or mlp_layer_types, or per_layer_config): the first of each kind (a hybrid keeps an
    attention layer and a linear one; Gemma a sliding and a global one), then the first ones up to LAYERS.
    None where every layer is alike."""
    count = next((values[k] for k in LAYER_KEYS if isinstance(values.get(k), int)), None)
    patterns = _layer_patterns(values, count)
    if count is None or not (patterns or values.get("per_layer_config")):
        return None
    per_layer = {int(k): v for k, v in (values.get("per_layer_config") or {}).items()}
    kept, seen = [], set()
    for i in range(count):
        signature = (tuple(v[i] for v in patterns.values()), repr(per_layer.get(i)))
        if signature not in seen:
            seen.add(signature)
            kept.append(i)
    return sorted(kept + [i for i in range(count) if i not in kept][: max(0, LAYERS - len(kept))])


def _layer_patterns(values: dict[str, Any], count: int | None) -> dict[str, list]:
    """The per-layer lists of strings or floats (layer kinds, sparsity, ...). Lists of ints are left out:
    they are often layer indices. GPT-Neo's attention_layers is derived from attention_types."""
    return {k: v for k, v in values.items() if isinstance(v, list) and v and len(v) == count
            and all(isinstance(x, (str, float)) for x in v) and k != "attention_layers"}


def _cut_to_layers(values: dict[str, Any], layers: list[int], vocab_size: int) -> dict[str, Any]:
    """The per-layer entries of `values` for the kept `layers` only, with the layer count to match. A
    per-layer list of a size key gets the tiny value for every layer."""
    count = next(values[k] for k in LAYER_KEYS if isinstance(values.get(k), int))
    kwargs = {k: [v[i] for i in layers] for k, v in _layer_patterns(values, count).items()}
    kwargs.update({k: [min(x, TINY[k]) for x in v[: len(layers)]] for k, v in values.items() if k in TINY
                   and isinstance(v, list) and len(v) == count and all(isinstance(x, int) for x in v)})
    if values.get("per_layer_config"):
        per_layer = {int(k): v for k, v in values["per_layer_config"].items()}
        kwargs["per_layer_config"] = {new: _shrunk_values(per_layer[old], vocab_size)
                                      for new, old in enumerate(layers) if old in per_layer}
    kwargs.update({k: len(layers) for k in LAYER_KEYS if isinstance(values.get(k), int)})
    return kwargs


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------

# model_type -> why it is not walked, where no rule in `_skip_reason` says it
SKIPPED: dict[str, str] = {
    "bert-generation": "a BERT encoder used as the decoder of an EncoderDecoderModel "
                       "(BertGenerationDecoder), not a decoder-only LM",
    "trocr": "the text decoder of TrOCR, a VisionEncoderDecoderModel: it cross-attends to an image encoder",
    "git": "GIT, an image-to-text model: its LM loss drops the image's patch positions before the text, so "
           "it needs pixel_values",
    "gemma4_assistant": "a draft model for speculative decoding: its forward needs the target Gemma 4's "
                        "shared_kv_states",
    "gemma4_unified_assistant": "a draft model for speculative decoding: its forward needs the target "
                                "Gemma 4's shared_kv_states",
    "deepseek_v4": "its hash-routed MoE layers pick experts by token id (tid2eid[input_ids]) and the model "
                   "takes exactly one of input_ids / inputs_embeds, so it cannot take video embeddings",
    "blt": "a byte-level model whose entropy patching runs a patcher LM on input_ids (bytes); it takes "
           "exactly one of input_ids / inputs_embeds and needs input_ids",
}


def skip_reasons() -> dict[str, str | None]:
    """Every entry of MODEL_FOR_CAUSAL_LM_MAPPING_NAMES -> None (eligible) or why it is skipped."""
    from transformers.models.auto import modeling_auto as auto

    causal = auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return {name: _skip_reason(name, causal, auto) for name in causal}


def _skip_reason(name: str, causal: dict, auto) -> str | None:
    """The rules, in order: the SKIPPED table; encoder-decoders; encoders; multimodal wrappers of a text
    model that has its own entry; models whose forward takes no inputs_embeds."""
    import inspect

    from transformers import AutoConfig

    if name in SKIPPED:
        return SKIPPED[name]
    config = AutoConfig.for_model(name)
    seq2seq = {**auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
               **auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES}
    if getattr(config, "is_encoder_decoder", False) or name in seq2seq:
        return "the decoder of an encoder-decoder model (is_encoder_decoder, or a seq2seq mapping)"
    if name in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return ("a bidirectional encoder (registered for masked LM too): its causal-LM head is the decoder "
                "half for EncoderDecoderModel, not a decoder-only LM")
    if f"{name}_text" in causal:
        kinds = sorted(k for k in getattr(config, "sub_configs", {}) if k != "text_config")
        return f"the multimodal model ({', '.join(kinds)}) around {name}_text, which is walked itself"
    model_class = auto.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if "inputs_embeds" not in inspect.signature(model_class.forward).parameters:
        return "its forward takes no inputs_embeds (input_ids only); a VideoLLM feeds the LLM embeddings"
    return None


# ----------------------------------------------------------------------------------------------
# One architecture, in this process
# ----------------------------------------------------------------------------------------------

SAMPLE = [{"from": "human", "value": "<video>\nDescribe the video."},
          {"from": "gpt", "value": "A small red star bounces."}]


def check_architecture(model_type: str, tokenizer_dir: str | Path, workdir: str | Path) -> dict[str, Any]:
    """Build a VideoLLM on a tiny `model_type` LLM and run forward + backward, generate and save -> load.
    Returns {"model_type", "status": "pass" | "fail", "stage", "error", "params", "seconds", ...}."""
    import torch

    from mmvid.testing import world_clips
    from mmvid.videollm import VideoLLM, VideoLLMConfig

    result: dict[str, Any] = {"model_type": model_type, "status": "fail", "stage": "config", "error": None}
    start = time.perf_counter()
    try:
        llm_config = tiny_llm_config(model_type, _vocab_size(tokenizer_dir))
        result["stage"] = "build"
        torch.manual_seed(0)
        model = VideoLLM.build(VideoLLMConfig(llm_config=llm_config, text_tokenizer=str(tokenizer_dir),
                                              video_tokenizer="vtok_tiny", num_frames=8, max_length=1024))
        result["params"] = sum(p.numel() for p in model.llm.parameters())
        clip = world_clips(1, 8, 32)[0]
        batch = model.processor.collate([model.processor.encode_sample(SAMPLE)], videos=[clip])
        result["stage"] = "forward"
        loss = model.train()(**batch).loss
        _require(loss is not None and bool(torch.isfinite(loss)), f"the loss is {loss}")
        result["stage"] = "backward"
        loss.backward()
        _check_grads(model)
        result["stage"] = "generate"
        model.eval()
        result["generated"] = model.generate(video=clip, prompt="Describe the video.", max_new_tokens=4)
        result["stage"] = "save/load"
        with torch.no_grad():
            before = model(**batch).loss
            model.save_pretrained(Path(workdir) / model_type)
            loaded = VideoLLM.from_pretrained(Path(workdir) / model_type).eval()
            after = loaded(**batch).loss
        result["loss"], result["loss_reloaded"] = float(before), float(after)
        _require(torch.allclose(before, after), f"the reloaded model's loss {float(after)} differs from "
                                                f"{float(before)}")
        result.update(status="pass", stage=None)
    except Exception as error:  # the walk records every failure and goes on
        detail = str(error) or ("over the memory cap" if isinstance(error, MemoryError) else "")
        result["error"] = f"{type(error).__name__}: {detail}"[:600]
        result["traceback"] = traceback.format_exc(limit=-3)[-1500:]
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _vocab_size(tokenizer_dir: str | Path) -> int:
    """The text tokenizer's length once VideoLLM.build has added its video tokens."""
    from transformers import AutoTokenizer

    from mmvid.text_tokenizer import add_video_special_tokens

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    add_video_special_tokens(tokenizer)
    return len(tokenizer)


def _check_grads(model) -> None:
    """Every trainable projector weight has a gradient and some LLM weights do; finite, and not all zero."""
    llm = [p.grad for p in model.llm.parameters() if p.requires_grad]
    projector = [p.grad for p in model.projector.parameters() if p.requires_grad]
    _require(any(g is not None for g in llm), "no gradient reaches the LLM")
    _require(bool(projector) and all(g is not None for g in projector), "a projector weight has no gradient")
    for part, grads in (("LLM", llm), ("projector", projector)):
        present = [g for g in grads if g is not None]
        _require(all(bool(g.isfinite().all()) for g in present), f"non-finite gradients in the {part}")
        _require(any(bool(g.abs().sum() > 0) for g in present), f"all-zero gradients in the {part}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# ----------------------------------------------------------------------------------------------
# The walk: each architecture in a child process
# ----------------------------------------------------------------------------------------------


def _child(model_type: str, tokenizer_dir: str, workdir: str, memory_bytes: int, connection) -> None:
    import resource

    import torch

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    torch.set_num_threads(1)
    try:
        result = check_architecture(model_type, tokenizer_dir, workdir)
    except MemoryError:
        result = {"model_type": model_type, "status": "fail", "error": "MemoryError: over the memory cap"}
    connection.send(result)
    connection.close()


def walk(model_types: list[str], tokenizer_dir: str | Path, workdir: str | Path, jobs: int = 2,
         timeout: float = 120.0, memory_gb: float = 6.0, progress=None) -> list[dict[str, Any]]:
    """`check_architecture` for each of `model_types`, `jobs` child processes at a time, each killed after
    `timeout` seconds or failing past `memory_gb` of address space. Results in the order given;
    `progress(result)` is called as each one finishes."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    # the children fork from a server that has imported these once (transformers' shared modeling code comes
    # with any one model); a server started earlier by someone else keeps its own list
    context.set_forkserver_preload(["torch", "transformers", "transformers.models.llama.modeling_llama",
                                    "mmvid.videollm", "mmvid.generation", "mmvid.testing"])
    pending, running, results = list(model_types), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(name, str(tokenizer_dir), str(workdir),
                                                           int(memory_gb * 2**30), send), daemon=True)
            process.start()
            send.close()
            running[name] = (process, receive, time.monotonic())
        for name, (process, receive, started) in list(running.items()):
            result = _poll(name, process, receive, started, timeout)
            if result is not None:
                del running[name]
                receive.close()
                results[name] = result
                if progress is not None:
                    progress(result)
        time.sleep(0.05)
    return [results[name] for name in model_types]


def _poll(name: str, process, receive, started: float, timeout: float) -> dict[str, Any] | None:
    """The child's result once it is done (or dead, or over time), else None."""
    elapsed = time.monotonic() - started
    if receive.poll():
        try:
            result = receive.recv()
        except EOFError:
            result = None
        process.join(5)
        if result is not None:
            return result
    if process.is_alive() and elapsed < timeout:
        return None
    if process.is_alive():
        process.kill()
        process.join()
        return {"model_type": name, "status": "fail", "error": f"timeout after {timeout:g} s",
                "seconds": round(elapsed, 2)}
    return {"model_type": name, "status": "fail", "seconds": round(elapsed, 2),
            "error": f"the child process died (exit code {process.exitcode}; killed for memory?)"}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def summary(results: list[dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    """Counts, the pass rate over the eligible architectures, and the lists."""
    passed = sorted(r["model_type"] for r in results if r["status"] == "pass")
    failed = {r["model_type"]: f"[{r.get('stage')}] {r.get('error')}"
              for r in results if r["status"] != "pass"}
    eligible = len(passed) + len(failed)
    return {"registered": eligible + len(skipped), "eligible": eligible, "passed": len(passed),
            "failed": len(failed), "skipped": len(skipped),
            "pass_rate": len(passed) / eligible if eligible else math.nan,
            "pass": passed, "fail": dict(sorted(failed.items())), "skip": dict(sorted(skipped.items()))}


def format_table(report: dict[str, Any]) -> str:
    """The report as text: counts, then one line per architecture."""
    r = report
    lines = [f"transformers {r.get('transformers', '')} causal-LM registry: {r['registered']} registered, "
             f"{r['eligible']} eligible, {r['passed']} pass ({r['pass_rate']:.1%}), {r['failed']} fail, "
             f"{r['skipped']} skipped"]
    lines += [f"  pass  {name}" for name in report["pass"]]
    lines += [f"  FAIL  {name}: {error}" for name, error in report["fail"].items()]
    lines += [f"  skip  {name}: {reason}" for name, reason in report["skip"].items()]
    return "\n".join(lines)


def run(model_types: list[str] | None, workdir: str | Path, jobs: int = 2, timeout: float = 120.0,
        verbose: bool = True) -> dict[str, Any]:
    """Walk `model_types` (default: every eligible architecture) in `workdir`; the summary."""
    from mmvid.testing import world_text_tokenizer

    skipped = {}
    if model_types is None:  # the whole registry
        reasons = skip_reasons()
        model_types = [name for name, reason in reasons.items() if reason is None]
        skipped = {name: reason for name, reason in reasons.items() if reason is not None}
    workdir = Path(workdir)
    tokenizer_dir = world_text_tokenizer(workdir / "text-tokenizer")

    def progress(result):
        if verbose:
            print(f"{result['status']:4}  {result['model_type']:28} {result.get('seconds', 0):6.1f} s  "
                  f"{result.get('params', '')!s:>9}  {result.get('error') or ''}"[:300], flush=True)

    results = walk(model_types, tokenizer_dir, workdir / "checkpoints", jobs=jobs, timeout=timeout,
                   progress=progress)
    import transformers

    report = summary(results, skipped)
    report.update(transformers=transformers.__version__, results=results)
    return report


def main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_types", nargs="*", help="architectures to check (default: every eligible one)")
    parser.add_argument("--output", help="write the report as JSON here")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per architecture")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        report = run(args.model_types or None, workdir, args.jobs, args.timeout)
    print(format_table(report))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

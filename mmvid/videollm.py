"""VideoLLM: a video tokenizer + a projector + any Hugging Face decoder-only LLM.

    model = VideoLLM.build(VideoLLMConfig(llm="path/to/llm", video_tokenizer="vtok_base"))
    processor = model.processor  # frames, prompts and batches (mmvid.processor)
    batch = processor.collate([processor.encode_sample(turns) for turns in conversations], videos)
    loss = model(**batch).loss
    text = model.generate(video, "What moves?", max_new_tokens=32)
    model.save_pretrained("runs/x/final");  VideoLLM.from_pretrained("runs/x/final")

Each `<video>` in the text becomes `<|video_start|>` + N positions + `<|video_end|>`, where N is
the projector's output count for the tokenizer's tokens; the projected features are scattered into
those positions after a count check. The checkpoint carries a versioned manifest (special token
ids, the rule for N) that is validated when loading. The model's VideoProcessor is saved and loaded
with it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mmvid.generation_heads import GENERATION_HEADS as HEAD_KINDS
from mmvid.generation_heads import DiscreteVideoHead, build_generation_head
from mmvid.processor import PROCESSOR_FILE, VideoProcessor, VideoProcessorConfig
from mmvid.projectors import EmbeddingProjector, MLPProjector, ProjectorConfig, build_projector
from mmvid.prompting import IGNORE_INDEX, encode_conversation
from mmvid.text_tokenizer import (
    VIDEO_END,
    VIDEO_START,
    VIDEO_TOKEN,
    add_video_special_tokens,
    ensure_chat_template,
)
from mmvid.video_tokenizers import VideoTokenizer, video_tokenizer_from, video_tokenizer_from_record

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
GENERATION_HEADS = (None, "auto", *HEAD_KINDS)


@dataclass
class VideoLLMConfig:
    # local folder or hub id of an AutoModelForCausalLM (weights via from_pretrained); wins over llm_config
    llm: str | None = None
    llm_config: dict | None = None  # or a config dict with "model_type" (tiny models built from scratch)
    text_tokenizer: str | None = None  # folder of the LLM's tokenizer (default: `llm`)
    video_tokenizer: str = "vtok_tiny"  # a preset name, or a folder written by save_pretrained
    video_tokenizer_overrides: dict[str, Any] = field(default_factory=dict)
    projector: str = "mlp2x_gelu"  # a key of mmvid.projectors.PROJECTORS or mlp{N}x_gelu
    projector_kwargs: dict[str, Any] = field(default_factory=dict)  # other ProjectorConfig fields
    num_frames: int = 16  # frames fed to the video tokenizer (the default of the processor's num_frames)
    # longest sample in tokens (the processor's default); longer ones are rejected, never cut
    max_length: int = 2048
    # auto: flash_attention_2 on CUDA in half precision when installed, else sdpa, else eager
    attn_implementation: str = "auto"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    train_llm: bool = True
    train_projector: bool = True
    train_video_tokenizer: bool = False
    lora: bool = False  # LoRA adapters on the LLM (peft); the LLM's own weights then stay frozen
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    # Text-to-video: a head that predicts the video tokens of assistant-turn <video> spans
    # (mmvid.generation_heads). None: understanding only; auto: discrete for a discrete tokenizer, else flow;
    # or discrete | flow | regression.
    generation_head: str | None = None
    # e.g. width, depth, repeats, sample_steps
    generation_head_kwargs: dict[str, Any] = field(default_factory=dict)
    generation_loss_weight: float = 1.0  # loss = text loss + weight x video-token loss

    def __post_init__(self):
        if self.llm is not None:
            self.llm_config = None  # a real LLM replaces the default tiny one (so `model.llm=PATH` is enough)
        elif self.llm_config is None:
            raise ValueError("give llm (a path or hub id) or llm_config (a config dict with model_type)")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(f"unknown attn_implementation {self.attn_implementation!r}; known: "
                             f"{list(ATTENTION)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.num_frames < 1 or self.max_length < 8:
            raise ValueError("num_frames must be >= 1 and max_length >= 8")
        if self.generation_head not in GENERATION_HEADS:
            raise ValueError(f"unknown generation_head {self.generation_head!r}; known: "
                             f"{list(GENERATION_HEADS)}")


TEXT_LOSSES = ("token", "span")


def answer_span_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged per answer span, then over spans: each contiguous run of
    supervised labels (one answer) weighs the same, however many tokens it has.

    The token mean (Hugging Face's) lets long answers outvote short ones: in the default's packed rows
    a 25-token caption outweighs seven one-word answers ("red", "star", "three") together, and those
    words are the ones only the video can give. (logits (B, L, V), labels (B, L) with IGNORE_INDEX.)"""
    target = labels[:, 1:]
    supervised = target != IGNORE_INDEX
    if not bool(supervised.any()):
        return logits.sum() * 0.0  # no answer in the batch: a zero that keeps the graph
    token = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten().clamp(min=0),
                                        reduction="none").view_as(target)
    starts = supervised & ~nn.functional.pad(supervised, (1, 0))[:, :-1]  # the first token of each run
    span = torch.cumsum(starts.flatten().long(), 0).view_as(target) * supervised  # 1.. per run, 0 elsewhere
    lengths = torch.bincount(span.flatten(), minlength=int(span.max()) + 1).to(token.dtype)
    weights = supervised.to(token.dtype) / lengths[span].clamp(min=1)
    return (token * weights).sum() / starts.sum()


ATTENTION_PREFERENCE = ("flash_attention_2", "sdpa", "eager")


def llm_class_for(llm_config) -> type:
    """The Hugging Face causal-LM class transformers builds for a config (AutoModelForCausalLM's choice)."""
    from transformers import AutoModelForCausalLM

    mapping = AutoModelForCausalLM._model_mapping
    if type(llm_config) in mapping:
        return mapping[type(llm_config)]
    # the text config of a composite (emu3 -> emu3_text_model), as a saved LLM's config is: its class's own
    for model_class in mapping.values():
        if getattr(model_class, "config_class", None) is type(llm_config):
            return model_class
    raise ValueError(f"transformers has no causal-LM class for model_type "
                     f"{getattr(llm_config, 'model_type', None)!r}")


def supported_attention(model_class: type) -> list[str]:
    """The attention implementations a Hugging Face model class accepts, as transformers declares them
    (`_supports_flash_attn`, `_supports_sdpa`; eager always), in mmvid's order of preference."""
    flags = {"flash_attention_2": bool(getattr(model_class, "_supports_flash_attn", False)
                                       or getattr(model_class, "_supports_flash_attn_2", False)),
             "sdpa": bool(getattr(model_class, "_supports_sdpa", False)), "eager": True}
    return [name for name in ATTENTION_PREFERENCE if flags[name]]


def choose_attn_implementation(requested: str, device: torch.device | str, dtype: torch.dtype,
                               model_class: type | None = None) -> str:
    """`auto`: the first of flash_attention_2 (installed, on CUDA, in half precision), SDPA and eager that
    `model_class` supports (Gemma2, say, refuses SDPA: eager). An explicit choice the class does not support
    is a ValueError naming the ones it accepts."""
    device = torch.device(device)
    accepted = supported_attention(model_class) if model_class is not None else list(ATTENTION_PREFERENCE)
    name = getattr(model_class, "__name__", "the LLM")
    if requested != "auto":
        if requested not in accepted:
            raise ValueError(f"{name} does not support attn_implementation={requested!r}; it accepts "
                             f"{accepted} (or 'auto', the first of them that runs here)")
        if requested == "flash_attention_2" and not _flash_attn_available():
            raise ValueError("attn_implementation='flash_attention_2' needs the flash-attn package (pip "
                             "install mmvid[gpu]) and CUDA; use 'auto' to fall back to sdpa")
        return requested
    half = dtype in (torch.float16, torch.bfloat16)
    if device.type == "cuda" and half and "flash_attention_2" in accepted and _flash_attn_available():
        choice = "flash_attention_2"
    elif "sdpa" in accepted and hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        choice = "sdpa"
    else:
        choice = "eager"
    log.info("attention: %s for %s (accepts %s; device %s, dtype %s, flash-attn %s)", choice, name, accepted,
             device.type, dtype, "installed" if _flash_attn_available() else "not installed")
    return choice


SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def special_ids_from_tokenizer(llm_config: dict, text_tokenizer) -> dict:
    """`llm_config` with pad/bos/eos ids from the text tokenizer: a model built from a config must use its
    tokenizer's ids, not the architecture's defaults (Phi-3's pad 32000 and SmolLM3's 128004 lie outside a
    small vocabulary). A different id given in `llm_config` is replaced, with a warning."""
    out = dict(llm_config)
    for key in SPECIAL_IDS:
        ours = getattr(text_tokenizer, key)
        if key in llm_config and llm_config[key] is not None and llm_config[key] != ours:
            log.warning("llm_config sets %s=%s but the text tokenizer's is %s; using the tokenizer's", key,
                        llm_config[key], ours)
        out[key] = ours
    if isinstance(out.get("text_config"), dict):  # a composite (emu3, mllama): its text model reads these
        out["text_config"] = {**out["text_config"], **{key: out[key] for key in SPECIAL_IDS}}
        out["text_config"].setdefault("vocab_size", len(text_tokenizer))
    return out


def warn_special_id_mismatch(llm: nn.Module, text_tokenizer) -> list[str]:
    """Warn (and return the messages) where a pretrained LLM's config names other pad/bos/eos ids than its
    text tokenizer: generation would stop on, or pad with, a token the tokenizer does not mean."""
    messages = []
    for key in SPECIAL_IDS:
        theirs, ours = getattr(llm.config, key, None), getattr(text_tokenizer, key)
        agrees = theirs is None or ours is None or theirs == ours or (isinstance(theirs, (list, tuple))
                                                                      and ours in theirs)
        if not agrees:
            messages.append(f"the LLM's config has {key}={theirs} but its text tokenizer's is {ours}; mmvid "
                            "uses the tokenizer's")
    for message in messages:
        log.warning(message)
    return messages


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class VideoLLM(nn.Module):
    def __init__(self, config: VideoLLMConfig, llm: nn.Module, text_tokenizer,
                 video_tokenizer: VideoTokenizer,
                 projector: nn.Module, generation_head: nn.Module | None = None,
                 processor: VideoProcessor | None = None):
        super().__init__()
        self.config = config
        self.llm = llm
        self.text_tokenizer = text_tokenizer
        self.video_tokenizer = video_tokenizer
        self.projector = projector
        self.generation_head = generation_head
        size = video_tokenizer.image_size
        self.image_size = size
        self.tokens_per_video = projector.num_outputs(
            video_tokenizer.num_tokens(config.num_frames, size, size))
        self.layout = video_tokenizer.token_layout(config.num_frames, size, size)
        if processor is None:  # the default: the model's frames, tokens per video and max_length
            settings = VideoProcessorConfig.for_video_tokenizer(video_tokenizer, config.num_frames,
                                                                tokens_per_video=self.tokens_per_video,
                                                                max_length=config.max_length)
            processor = VideoProcessor(text_tokenizer, settings)
        self.processor = processor
        self.video_ids = processor.video_ids
        self._check_processor()

    def _check_processor(self) -> None:
        """The processor must hold this model's text tokenizer, read frames its video tokenizer takes, and
        expand <video> to as many positions as the projector gives for its frame count."""
        c, size = self.processor.config, self.image_size
        if self.processor.text_tokenizer is not self.text_tokenizer:
            raise ValueError("the processor must hold the model's text tokenizer")
        if c.image_size != size:
            raise ValueError(f"the processor reads {c.image_size}x{c.image_size} frames but the video "
                             f"tokenizer takes {size}x{size}; set the processor's image_size to {size}")
        expected = self.projector.num_outputs(self.video_tokenizer.num_tokens(c.num_frames, size, size))
        if c.tokens_per_video != expected:
            raise ValueError(f"the processor expands each <video> to {c.tokens_per_video} positions, but "
                             f"{c.num_frames} frames give {expected} features (projector "
                             f"{self.projector.config.type})")

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def build(cls, config: VideoLLMConfig, text_tokenizer=None,
              device: str | torch.device = "cpu") -> "VideoLLM":
        """Assemble a fresh model (pretrained LLM weights when `config.llm` is a path or hub id)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        dtype = getattr(torch, config.dtype)
        if text_tokenizer is None:
            source = config.text_tokenizer or config.llm
            if source is None:
                raise ValueError("a model built from llm_config needs text_tokenizer (a folder, or pass the "
                                 "tokenizer)")
            text_tokenizer = AutoTokenizer.from_pretrained(source)
        elif isinstance(text_tokenizer, (str, os.PathLike)):
            text_tokenizer = AutoTokenizer.from_pretrained(text_tokenizer)
        add_video_special_tokens(text_tokenizer)
        if ensure_chat_template(text_tokenizer):
            log.info("the text tokenizer has no chat template; using mmvid's default template")
        if text_tokenizer.pad_token is None:
            text_tokenizer.pad_token = text_tokenizer.eos_token
        if config.llm is not None:
            llm_class = llm_class_for(AutoConfig.from_pretrained(config.llm))
            attn = choose_attn_implementation(config.attn_implementation, device, dtype, llm_class)
            llm = AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype, attn_implementation=attn)
            warn_special_id_mismatch(llm, text_tokenizer)
        else:
            # a model from scratch: exactly the tokenizer's vocabulary and special ids
            data = special_ids_from_tokenizer(config.llm_config, text_tokenizer)
            data.setdefault("vocab_size", len(text_tokenizer))
            llm = _llm_from_config(data, config.attn_implementation, device, dtype)
        if len(text_tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(text_tokenizer))
        video_tokenizer = video_tokenizer_from(config.video_tokenizer, **config.video_tokenizer_overrides)
        projector = build_projector(_projector_config(config, video_tokenizer, llm))
        head = _build_generation_head(config, llm, video_tokenizer, projector)
        model = cls(config, llm, text_tokenizer, video_tokenizer, projector, head).to(device)
        model.projector.to(dtype)
        # start video at the text embeddings' scale
        if getattr(model.projector, "output_norm", None) is not None:
            with torch.no_grad():
                model.projector.output_norm.weight.fill_(float(llm.get_input_embeddings().weight.float().std()))
        model.apply_trainable()
        return model

    def apply_trainable(self) -> dict[str, int]:
        """Set requires_grad from the train_* flags (and LoRA) in one place; logs and returns counts."""
        c = self.config
        if c.lora and not _is_peft(self.llm):
            from peft import LoraConfig, get_peft_model

            self.llm = get_peft_model(self.llm, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha,
                                                           lora_dropout=c.lora_dropout,
                                                           target_modules=c.lora_target_modules,
                                                           task_type="CAUSAL_LM"))
        for name, part, flag in (("llm", self.llm, c.train_llm),
                                 ("projector", self.projector, c.train_projector),
                                 ("video_tokenizer", self.video_tokenizer, c.train_video_tokenizer)):
            if name == "llm" and c.lora:
                for pname, p in part.named_parameters():
                    p.requires_grad = flag and "lora_" in pname
            else:
                # a video tokenizer keeps its frozen parts frozen (VTok.requires_grad_)
                part.requires_grad_(flag)
        parts = [("llm", self.llm), ("projector", self.projector), ("video_tokenizer", self.video_tokenizer)]
        if self.generation_head is not None:
            self.generation_head.requires_grad_(True)
            parts.append(("generation_head", self.generation_head))
        counts = {name: sum(p.numel() for p in part.parameters() if p.requires_grad) for name, part in parts}
        total = sum(p.numel() for p in self.parameters())
        log.info("trainable parameters: %s of %d", ", ".join(f"{k} {v:,}" for k, v in counts.items()), total)
        return counts

    # -- attention masks -----------------------------------------------------------------------------

    def check_block_mask(self) -> None:
        """Packed samples need an attention that takes a 4D mask: raise if the LLM's does not."""
        attn = _attn_implementation(self.llm)
        if attn not in ("sdpa", "eager"):
            raise ValueError("packed samples (pack_questions) need attn_implementation 'sdpa' or 'eager', "
                             f"which take a 4D block mask; the LLM uses {attn!r}, which cannot express one")

    def _llm_attention_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A 2D mask unchanged; the processor's 4D bool block mask in the form the LLM's attention takes.

        transformers (create_causal_mask) passes a 4D mask through as it is, straight to the attention:
        SDPA takes it as bool (True: attend), as its own masks are; eager adds it to the scores, so it gets
        the additive form transformers builds for eager (0 where attended, the dtype's minimum elsewhere).
        """
        if mask is None or mask.ndim != 4 or mask.dtype != torch.bool:
            return mask
        self.check_block_mask()
        if _attn_implementation(self.llm) == "eager":
            dtype = self.llm.dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)
        return mask

    # -- video ----------------------------------------------------------------------------------------

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        """(V, C, T, H, W) float in [-1, 1] -> projected features (V, N, hidden). Encode once, reuse
        across turns by passing the result as `video_features`. T may differ from the configured
        `num_frames` (the token count follows the tokenizer's rule, e.g. S + T - 1 for VTok)."""
        if videos.ndim == 4:
            videos = videos[None]
        return self.project(self.video_tokens(videos), videos.shape[2])

    def video_tokens(self, videos: torch.Tensor) -> torch.Tensor:
        """(V, C, T, H, W) -> the tokenizer's tokens (V, N, D), or ids (V, N) for a discrete one."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_video_tokenizer):
            return self.video_tokenizer.encode(videos.to(self.device))

    def project(self, tokens: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Tokenizer tokens -> LLM embeddings (V, M, hidden), with the layout of `num_frames` frames."""
        T = num_frames or self.config.num_frames
        layout = self.layout if T == self.config.num_frames else self.video_tokenizer.token_layout(
            T, self.image_size, self.image_size)
        return self.projector(tokens, layout.to(tokens.device))

    def embed(self, input_ids: torch.Tensor, videos: torch.Tensor | None = None,
              video_features: torch.Tensor | None = None,
              video_index: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with the video features scattered into the video positions. `video_index`
        (long, one entry per <video> span in order) picks which video each span shows."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        positions = input_ids == self.video_ids.placeholder
        num_positions = int(positions.sum())
        if video_features is None and videos is not None:
            video_features = self.encode_video(videos)
        if video_features is not None and video_index is not None:
            video_features = video_features[video_index.to(video_features.device)]  # (spans, N, hidden)
        num_features = 0 if video_features is None else video_features.shape[0] * video_features.shape[1]
        if num_positions != num_features:
            raise ValueError(f"video tokens and features do not match: tokens: {num_positions}, features: "
                             f"{num_features}")
        if num_features:
            flat = video_features.reshape(-1, video_features.shape[-1]).to(embeds.dtype)
            embeds = embeds.masked_scatter(positions[..., None].expand_as(embeds), flat)
        return embeds

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                videos: torch.Tensor | None = None, video_features: torch.Tensor | None = None,
                video_index: torch.Tensor | None = None, video_targets: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, text_loss: str = "token", **kwargs):
        """The LLM's output. With `video_targets` (bool, one per <video> span; True for a span in an
        assistant turn) the generation head also learns those spans' tokens: `loss` is then the text
        loss + generation_loss_weight x the video-token loss, also returned as `lm_loss` and `gen_loss`.
        `attention_mask` may be the processor's 4D block mask of packed samples, with their `position_ids`.
        `text_loss` (see TEXT_LOSSES): "token", the mean over supervised tokens (Hugging Face's), or
        "span", the mean over answer spans of each span's mean (`answer_span_loss`)."""
        if text_loss not in TEXT_LOSSES:
            raise ValueError(f"unknown text_loss {text_loss!r}; known: {list(TEXT_LOSSES)}")
        attention_mask = self._llm_attention_mask(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        llm_labels = labels if text_loss == "token" else None
        if video_targets is None or not bool(video_targets.any()):
            embeds = self.embed(input_ids, videos, video_features, video_index)
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=llm_labels,
                           **self.token_inputs(input_ids), **kwargs)
            if labels is not None and text_loss == "span":
                out["loss"] = answer_span_loss(out.logits, labels)
            return out
        if self.generation_head is None:
            raise ValueError("the batch has text-to-video targets (video_targets: <video> in an assistant "
                             "turn) but the model has no generation head; build it with "
                             "generation_head='auto'")
        if videos is None:
            raise ValueError("text-to-video targets need `videos`: their tokens are what the head learns")
        tokens = self.video_tokens(videos)
        embeds = self.embed(input_ids, video_features=self.project(tokens, videos.shape[2]),
                            video_index=video_index)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=llm_labels,
                       output_hidden_states=True, **self.token_inputs(input_ids), **kwargs)
        span_tokens = tokens if video_index is None else tokens[video_index.to(tokens.device)]
        gen_loss = self.generation_loss(last_hidden(out), input_ids, span_tokens.detach(), video_targets)
        lm_loss = out.loss if text_loss == "token" else None if labels is None else answer_span_loss(
            out.logits, labels)
        out["gen_loss"] = gen_loss
        if lm_loss is not None:
            out["lm_loss"] = lm_loss
            out["loss"] = lm_loss + self.config.generation_loss_weight * gen_loss
        return out

    def generation_loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, span_tokens: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
        """The head's loss on the target spans: the hidden state before each video token predicts it
        (at <|video_start|> the first token, ...), in the tokenizer's token order."""
        starts = (input_ids == self.video_ids.start).nonzero()  # (spans, 2), in span order
        if len(starts) != len(targets) or len(span_tokens) != len(targets):
            raise ValueError(f"{len(starts)} <|video_start|> tokens, {len(span_tokens)} videos and "
                             f"{len(targets)} target flags: they must match one to one")
        n = span_tokens.shape[1]
        picked = starts[targets.to(starts.device)]  # (S, 2)
        rows = picked[:, :1].expand(-1, n).reshape(-1)
        cols = (picked[:, 1:] + torch.arange(n, device=picked.device)).reshape(-1)
        h = hidden[rows, cols].to(_head_dtype(self.generation_head))
        target = span_tokens[targets.to(span_tokens.device)]
        if isinstance(self.generation_head, DiscreteVideoHead):
            low, high = self._id_ranges(n, h.device)
            return self.generation_head.loss(h, target.reshape(-1), low.repeat(len(picked)),
                                             high.repeat(len(picked)))
        return self.generation_head.loss(h, target.reshape(-1, target.shape[-1]).to(h.dtype))

    def _id_ranges(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """[low, high) of the ids allowed at each of the n positions (SweetTok: each slot's part of
        speech)."""
        ranges = self.video_tokenizer.id_ranges(device)
        if ranges is not None:
            low, high = ranges
            if len(low) != n:
                raise ValueError(f"the tokenizer's id ranges cover {len(low)} positions but a video has {n} "
                                 "ids")
            return low, high
        size = self.video_tokenizer.codebook_size
        return torch.zeros(n, dtype=torch.long, device=device), torch.full((n,), size, dtype=torch.long,
                                                                           device=device)

    @torch.no_grad()
    def generate_video(self, prompt: str, *, guidance_scale: float = 1.0, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, steps: int | None = None, seed: int | None = None,
                       output: str | os.PathLike | None = None, fps: float = 8.0) -> torch.Tensor:
        """Text -> video: the LLM writes the video's tokens one by one in the tokenizer's order (VTok: key
        frame, then residuals; CoordTok: the planes; SweetTok: spatial, then temporal words) through the
        generation head; the tokenizer decodes them. Returns uint8 frames (T, H, W, 3); with `output`
        also writes them (.mp4 or .gif).

        guidance_scale: classifier-free guidance against the empty prompt (1 = none, exactly);
        temperature / top_k / top_p: discrete sampling (temperature 0: greedy), or the flow head's noise
        scale; steps: the flow sampler's Euler steps (default: the head's); seed: reproducible sampling.
        """
        from mmvid.data.video_io import tensor_to_frames, write_video

        if self.generation_head is None:
            raise ValueError("this model has no generation head; train one with model.generation_head=auto")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if guidance_scale < 0 or temperature < 0:
            raise ValueError("guidance_scale and temperature must be >= 0")
        device = self.device
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()  # non-deterministic, without touching the global RNG
        else:
            generator.manual_seed(int(seed))
        T = self.config.num_frames
        n = self.video_tokenizer.num_tokens(T, self.image_size, self.image_size)
        layout = self.layout.to(device)
        head = self.generation_head
        discrete = isinstance(head, DiscreteVideoHead)
        low, high = self._id_ranges(n, device) if discrete else (None, None)
        streams = [_Stream(self, self._t2v_prefix(prompt))]
        if guidance_scale != 1.0:
            # the empty prompt of training's prompt dropout
            streams.append(_Stream(self, self._t2v_prefix("")))
        tokens = []
        dtype = _head_dtype(head)
        for i in range(n):
            hidden = [s.hidden.to(dtype) for s in streams]
            uncond = hidden[1] if len(hidden) > 1 else None
            if discrete:
                token = head.sample(hidden[0], uncond, guidance_scale=guidance_scale, temperature=temperature,
                                    top_k=top_k, top_p=top_p, low=low[i:i + 1], high=high[i:i + 1],
                                    generator=generator)  # (1,)
                step_input = token[:, None]
            else:
                token = head.sample(hidden[0], uncond, guidance_scale=guidance_scale, steps=steps,
                                    temperature=temperature, generator=generator)  # (1, D)
                step_input = token[:, None, :]
            tokens.append(token)
            if i < n - 1:
                # (1, 1, hidden): per-token projector
                embedding = self.projector(step_input, _layout_slice(layout, i))
                for s in streams:
                    s.feed(embedding)
        tokens = torch.stack(tokens, dim=1)  # (1, n) ids or (1, n, D)
        video = self.video_tokenizer.decode(tokens, num_frames=T).clamp(-1, 1)
        frames = tensor_to_frames(video[0].float().cpu())
        if output is not None:
            write_video(output, frames, fps=fps)
        return frames

    def _t2v_prefix(self, prompt: str) -> list[int]:
        """Token ids of a text-to-video conversation through <|video_start|>, exactly as training renders
        it."""
        encoded = encode_conversation(self.text_tokenizer,
                                      [{"from": "human", "value": prompt},
                                       {"from": "gpt", "value": VIDEO_TOKEN}],
                                      self.video_ids, self.tokens_per_video)
        return encoded.input_ids[: encoded.input_ids.index(self.video_ids.start) + 1]

    @torch.no_grad()
    def generate(self, video: torch.Tensor | None = None, prompt: str | None = None,
                 messages: list[dict] | None = None,
                 video_features: torch.Tensor | None = None, max_new_tokens: int = 64,
                 do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 stop: tuple[str, ...] = (), streamer=None) -> str:
        """Answer a prompt (or continue `messages`) about a video with `mmvid.generation`; greedy unless
        `do_sample`. `streamer` takes Hugging Face's streamer calls (`put` ids, then `end`)."""
        from mmvid.generation import SamplingParams, stream

        if messages is None:
            if not prompt or not prompt.strip():
                raise ValueError("generate needs a non-empty prompt or messages")
            has_video = video is not None or video_features is not None
            messages = [{"role": "user", "content": (f"{VIDEO_TOKEN}\n" if has_video else "") + prompt}]
        if video is not None and video_features is None:
            video_features = self.encode_video(video if video.ndim == 5 else video[None])
        params = SamplingParams(temperature=temperature if do_sample else 0.0, top_p=top_p, top_k=top_k,
                                seed=seed, max_new_tokens=max_new_tokens, stop=stop)
        if streamer is not None:
            # as HF's: the prompt first (no ids for embeddings)
            streamer.put(torch.empty((1, 0), dtype=torch.long))
        text = ""
        for delta in stream(self, self.prompt_ids(messages, video_features), params,
                            video_features=video_features):
            text += delta.text
            if streamer is not None and delta.token_ids:
                streamer.put(torch.tensor(delta.token_ids))
        if streamer is not None:
            streamer.end()
        return text.strip()

    def prompt_ids(self, messages: list[dict], video_features: torch.Tensor | None = None) -> list[int]:
        """Token ids of chat `messages` ending in the generation prompt, each <video> expanded to a span
        of `video_features` (V, N, hidden) positions (the processor's encode_prompt)."""
        count = 0 if video_features is None else video_features.shape[0]
        per_video = 0 if video_features is None else video_features.shape[1]
        return self.processor.encode_prompt(messages, [per_video] * count)

    @torch.no_grad()
    def next_token_logits(self, input_ids: torch.Tensor, video_features: torch.Tensor | None = None,
                          cache=None) -> tuple[torch.Tensor, Any]:
        """Run `input_ids` (1, L) after the tokens held by `cache` (the LLM's KV cache; None starts one):
        the logits of the next token (1, V) and the cache, now holding them too. `video_features` fill
        the ids' video positions; without them ids embed as text, as HF's generate embeds sampled ids."""
        if video_features is None:
            embeds = self.llm.get_input_embeddings()(input_ids)
        else:
            embeds = self.embed(input_ids, video_features=video_features)
        out, cache = self.run_cached(input_ids, embeds, cache)
        return out.logits[:, -1], cache

    def run_cached(self, input_ids: torch.Tensor, embeds: torch.Tensor, cache=None,
                   **kwargs) -> tuple[Any, Any]:
        """Run `embeds` (those of `input_ids`, (1, L)) after the tokens held by `cache` (None starts one): the
        LLM's output and the cache, now holding them too. An LLM that returns no KV cache (openai-gpt, rwkv,
        xlnet, recurrent_gemma) gets a RecomputeCache: the whole sequence runs again at each call."""
        if isinstance(cache, RecomputeCache):
            cache = cache.extended(input_ids, embeds)
            out = self.llm(inputs_embeds=cache.embeds, use_cache=False, **self.token_inputs(cache.ids),
                           **kwargs)
            return out, cache
        out = self.llm(inputs_embeds=embeds, use_cache=True, **llm_cache_kwargs(self.llm, cache),
                       **self.token_inputs(input_ids), **kwargs)
        kv = output_cache(out)
        if kv is not None and hasattr(kv, "get_seq_length"):
            return out, kv
        if cache is not None:
            raise ValueError(f"{type(self.llm).__name__} returned no KV cache to continue from")
        return out, RecomputeCache(input_ids, embeds)

    def token_inputs(self, input_ids: torch.Tensor) -> dict:
        """Inputs some LLMs take from the token ids besides their embeddings: Gemma 3n's and Gemma 4's
        per-layer embeddings (`get_per_layer_inputs`), looked up with video positions as the pad token, as
        their own multimodal models do. Empty for every other LLM."""
        llm = self.llm.get_base_model() if _is_peft(self.llm) else self.llm
        lookup = getattr(getattr(llm, "model", None), "get_per_layer_inputs", None)
        if lookup is None:
            return {}
        video = torch.isin(input_ids, torch.tensor([self.video_ids.placeholder, self.video_ids.start,
                                                    self.video_ids.end], device=input_ids.device))
        pad = self.text_tokenizer.pad_token_id or 0
        return {"per_layer_inputs": lookup(input_ids.masked_fill(video, pad))}

    @property
    def device(self) -> torch.device:
        """Where the LLM's weights are, and so where inputs go."""
        return next(self.llm.parameters()).device

    # -- checkpoints -------------------------------------------------------------------------------------

    def manifest(self) -> dict:
        """What a checkpoint promises about its tokens; checked again on load."""
        return {
            "format_version": FORMAT_VERSION,
            "video_token": VIDEO_TOKEN, "video_token_id": self.video_ids.placeholder,
            "video_start": VIDEO_START, "video_start_id": self.video_ids.start,
            "video_end": VIDEO_END, "video_end_id": self.video_ids.end,
            "pad_token_id": self.text_tokenizer.pad_token_id,
            "eos_token_id": self.text_tokenizer.eos_token_id, "vocab_size": len(self.text_tokenizer),
            "num_frames": self.config.num_frames, "image_size": self.image_size,
            "video_tokenizer_tokens": self.video_tokenizer.num_tokens(self.config.num_frames, self.image_size,
                                                                      self.image_size),
            "tokens_per_video": self.tokens_per_video,
            "rule": "each <video> -> <|video_start|> + tokens_per_video x <video> + <|video_end|>; "
                    "tokens_per_video = projector.num_outputs(video_tokenizer.num_tokens(num_frames, "
                    "image_size, image_size))",
            "token_layout": self.layout.to_dict(),
            "generation": self._generation_manifest(),
        }

    def _generation_manifest(self) -> dict | None:
        """How video tokens are generated: the head, and for a discrete head where the codebook ids sit in
        the extended output vocabulary (text ids, then codebook id k at id_offset + k)."""
        head = self.generation_head
        if head is None:
            return None
        record = {"head": head.kind, "order": "the tokenizer's token order (token_layout)",
                  "tokens": self.video_tokenizer.num_tokens(self.config.num_frames, self.image_size,
                                                            self.image_size)}
        if isinstance(head, DiscreteVideoHead):
            n = record["tokens"]
            low, high = self._id_ranges(n, "cpu")
            record.update(id_offset=len(self.text_tokenizer),
                          codebook_size=self.video_tokenizer.codebook_size,
                          extended_vocab_size=len(self.text_tokenizer) + self.video_tokenizer.codebook_size,
                          id_ranges=[list(r) for r in sorted({(int(a), int(b)) for a, b in zip(low, high)})])
        else:
            record.update(token_dim=self.video_tokenizer.token_dim)
        return record

    def load_video_decoder(self, path: str | os.PathLike) -> VideoLLM:
        """Take the decoder of another save of the same video tokenizer (`tokenizers/train.py
        train=decoder init_from=...`): the decoder draws better, the tokens stay the ones the LLM learned.
        Refuses a tokenizer whose encoder (anything outside its `decoder_prefixes`) differs from this
        model's in any weight, since its tokens would not be the ones the LLM and its head were trained on.
        A decoder of another shape (its config differs only in the tokenizer's `decoder_config_fields`, e.g.
        VTok's decoder_head=conv) replaces the model's tokenizer whole; save_pretrained then records it."""
        from mmvid.video_tokenizers import load_video_tokenizer

        other = load_video_tokenizer(path)
        mine = self.video_tokenizer
        decoder_only = set(mine.decoder_config_fields)
        differ = {k for k, v in asdict(other.config).items() if asdict(mine.config).get(k, v) != v}
        if other.architecture != mine.architecture or set(asdict(other.config)) != set(asdict(mine.config)) \
                or differ - decoder_only:
            raise ValueError(f"{path} is a different video tokenizer ({other.architecture} {other.preset}) "
                             f"from the model's ({mine.architecture} {mine.preset}, or another config: "
                             f"{sorted(differ - decoder_only) or 'architecture'})")
        theirs = other.state_dict()
        for name, value in mine.state_dict().items():
            if name.split(".")[0] in mine.decoder_prefixes or torch.equal(value.cpu(), theirs[name].cpu()):
                continue
            raise ValueError(f"{path}: its encoder weight {name!r} differs from the model's, so its tokens "
                             f"are not the ones the LLM was trained on; only a decoder fine-tuned with "
                             f"train=decoder from this model's tokenizer can be swapped in")
        if differ:  # another decoder shape: the whole tokenizer, as the model held its own
            parameter = next(mine.parameters())
            grads = {n: p.requires_grad for n, p in mine.named_parameters()}
            other = other.to(parameter.device, parameter.dtype).train(mine.training)
            for n, p in other.named_parameters():
                p.requires_grad_(grads.get(n, False))
            self.video_tokenizer = other
            return self
        decoder = set(mine.decoder_parameter_names())
        with torch.no_grad():
            for name, param in mine.named_parameters():
                if name in decoder:
                    param.copy_(theirs[name].to(param.device, param.dtype))
        return self

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """safetensors weights + config.json (LLM config, video tokenizer, projector, manifest) + the
        processor (processor_config.json and the text tokenizer's files)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        llm = self.llm.get_base_model() if _is_peft(self.llm) else self.llm
        config = asdict(self.config)
        config["llm"], config["llm_config"] = None, llm.config.to_dict()
        record = {
            "format_version": FORMAT_VERSION,
            "videollm": config,
            "video_tokenizer": {"architecture": self.video_tokenizer.architecture,
                                "preset": self.video_tokenizer.preset,
                                "config": asdict(self.video_tokenizer.config)},
            "projector": asdict(self.projector.config),
            "manifest": self.manifest(),
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(_untie(state), str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        (path / CONFIG_FILE).write_text(json.dumps(record, indent=1, default=str))
        self.processor.save_pretrained(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "VideoLLM":
        """Load a folder written by `save_pretrained`, offline; validates the manifest. A folder without
        processor_config.json (saved before the processor existed) gets the model's default processor."""
        from transformers import AutoTokenizer

        from mmvid.checkpoint import load_weights

        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a VideoLLM checkpoint (needs {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE})")
        record = json.loads((path / CONFIG_FILE).read_text())
        if "videollm" not in record or "manifest" not in record:
            raise ValueError(f"{path}/{CONFIG_FILE} is not a VideoLLM config (no 'videollm'/'manifest' "
                             "sections)")
        if record["format_version"] > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer mmvid (format {record['format_version']} > "
                             f"{FORMAT_VERSION})")
        config = VideoLLMConfig(**record["videollm"])
        dtype = getattr(torch, config.dtype)
        llm = _llm_from_config(dict(config.llm_config), config.attn_implementation, device, dtype)
        text_tokenizer = AutoTokenizer.from_pretrained(path)
        processor = (VideoProcessor.from_pretrained(path, text_tokenizer) if (path / PROCESSOR_FILE).is_file()
                     else None)
        # its weights are in the checkpoint's
        video_tokenizer = video_tokenizer_from_record(record["video_tokenizer"])
        projector = build_projector(ProjectorConfig(**record["projector"]))
        head = _build_generation_head(config, llm, video_tokenizer, projector)
        model = cls(config, llm, text_tokenizer, video_tokenizer, projector, head, processor)
        if config.lora:
            model.apply_trainable()  # wraps the LLM with the same adapters before the weights load
        _check_manifest(record["manifest"], model.manifest(), path)
        load_weights(model, path / WEIGHTS_FILE)  # strict: a tied LM head loads with the embeddings
        model.to(device)
        model.apply_trainable()
        return model


def _llm_from_config(data: dict, attn_implementation: str, device, dtype: torch.dtype) -> nn.Module:
    """A fresh LLM from a config dict with "model_type", with the attention its class supports."""
    from transformers import AutoConfig, AutoModelForCausalLM

    data = dict(data)
    llm_config = AutoConfig.for_model(data.pop("model_type"), **data)
    llm_class = llm_class_for(llm_config)
    attn = choose_attn_implementation(attn_implementation, device, dtype, llm_class)
    if type(llm_config) in AutoModelForCausalLM._model_mapping:  # (it takes a composite's text config itself)
        return AutoModelForCausalLM.from_config(llm_config, dtype=dtype, attn_implementation=attn)
    return llm_class._from_config(llm_config, dtype=dtype, attn_implementation=attn)  # a saved text config


def _attn_implementation(llm: nn.Module) -> str | None:
    return getattr(llm.config, "_attn_implementation", None)


def _projector_config(config: VideoLLMConfig, video_tokenizer: VideoTokenizer,
                      llm: nn.Module) -> ProjectorConfig:
    kwargs = dict(config.projector_kwargs)
    kwargs.setdefault("in_dim", video_tokenizer.token_dim)
    kwargs.setdefault("out_dim", llm.get_input_embeddings().embedding_dim)
    if video_tokenizer.discrete:
        kwargs.setdefault("codebook_size", video_tokenizer.codebook_size)
    return ProjectorConfig(type=config.projector, **kwargs)


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config")


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied input/output embeddings): store each tensor once."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        if ptr in seen and v.numel() and state[seen[ptr]].shape == v.shape:
            continue  # a tied copy; the model re-ties it on load
        seen[ptr] = k
        out[k] = v
    return out


def _check_manifest(saved: dict, rebuilt: dict, path: Path) -> None:
    keys = ("video_token_id", "video_start_id", "video_end_id", "pad_token_id", "eos_token_id", "vocab_size",
            "num_frames", "image_size", "video_tokenizer_tokens", "tokens_per_video", "generation")
    diff = {k: (saved.get(k), rebuilt.get(k)) for k in keys if saved.get(k) != rebuilt.get(k)}
    if saved.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: manifest format {saved['format_version']} is newer than this mmvid "
                         f"({FORMAT_VERSION})")
    if diff:
        text = ", ".join(f"{k}: checkpoint {a!r} vs rebuilt {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path}: the token layout manifest does not match the rebuilt model ({text}); "
                         f"the tokenizer files or video tokenizer config were changed after saving")


_CACHE_KWARG: dict[type, str] = {}


def llm_cache_kwargs(llm: nn.Module, cache) -> dict:
    """The KV cache as the LLM's forward takes it: `cache=` (transformers 5), else `past_key_values=`."""
    base = llm.get_base_model() if _is_peft(llm) else llm
    if type(base) not in _CACHE_KWARG:
        names = inspect.signature(base.forward).parameters
        _CACHE_KWARG[type(base)] = "cache" if "cache" in names else "past_key_values"
    return {_CACHE_KWARG[type(base)]: cache}


def output_cache(out):
    """The KV cache an LLM returned (`cache` in transformers 5, `past_key_values` before), or None."""
    return out.get("cache", out.get("past_key_values"))


def last_hidden(out) -> torch.Tensor:
    """The LLM's last hidden states (B, L, hidden), which a generation head reads."""
    hidden = out.hidden_states[-1]
    if hidden.ndim != 3:
        raise ValueError(f"the LLM's last hidden states have shape {tuple(hidden.shape)}, not (batch, "
                         "length, hidden) (Gemma 3n keeps several AltUp streams), so a generation head "
                         "cannot read them; use another LLM for text-to-video")
    return hidden


class RecomputeCache:
    """What stands in for the KV cache of an LLM that returns none (openai-gpt, rwkv, xlnet, recurrent_gemma
    through transformers' generic path): the ids and embeddings so far, all run again at every step. It
    answers `get_seq_length` and `crop` like a transformers cache, so a PromptCache can reuse its prefix."""

    def __init__(self, ids: torch.Tensor, embeds: torch.Tensor):
        self.ids, self.embeds = ids, embeds

    def extended(self, ids: torch.Tensor, embeds: torch.Tensor) -> "RecomputeCache":
        return RecomputeCache(torch.cat([self.ids, ids], 1), torch.cat([self.embeds, embeds], 1))

    def get_seq_length(self) -> int:
        return self.ids.shape[1]

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` positions (negative: drop that many from the end), as DynamicCache."""
        keep = max_length if max_length >= 0 else self.get_seq_length() + max_length
        self.ids, self.embeds = self.ids[:, :keep], self.embeds[:, :keep]


class _Stream:
    """One prompt's LLM state while a video is generated: its cache (`VideoLLM.run_cached`) and last hidden
    state."""

    def __init__(self, model: VideoLLM, ids: list[int]):
        self.model = model
        input_ids = torch.tensor([ids], device=model.device)
        self.length = len(ids)
        mask = torch.ones_like(input_ids)
        out, self.cache = model.run_cached(input_ids, model.embed(input_ids), None, attention_mask=mask,
                                           output_hidden_states=True)
        self.hidden = last_hidden(out)[:, -1]
        # a generated video token has no id of its own: its token inputs are a video position's
        self.video_id = input_ids.new_full((1, 1), model.video_ids.placeholder)

    def feed(self, embedding: torch.Tensor) -> None:
        self.length += 1
        mask = torch.ones((1, self.length), dtype=torch.long, device=embedding.device)
        out, self.cache = self.model.run_cached(self.video_id, embedding.to(self.model.llm.dtype), self.cache,
                                                attention_mask=mask, output_hidden_states=True)
        self.hidden = last_hidden(out)[:, -1]


def _layout_slice(layout, i: int):
    from dataclasses import replace

    return replace(layout, group=layout.group[i:i + 1], time=layout.time[i:i + 1],
                   position=layout.position[i:i + 1])


def _head_dtype(head: nn.Module) -> torch.dtype:
    return next(head.parameters()).dtype


def _build_generation_head(config: VideoLLMConfig, llm: nn.Module, video_tokenizer: VideoTokenizer,
                           projector: nn.Module) -> nn.Module | None:
    """The text-to-video head the config asks for, after checking the tokenizer and projector can carry it."""
    kind = config.generation_head
    if kind is None:
        return None
    discrete = bool(video_tokenizer.discrete)
    kwargs = dict(config.generation_head_kwargs)
    if kind == "auto":
        kind = "discrete" if discrete else "flow"
        if discrete and kwargs:  # they configure the flow head that "auto" picks for continuous tokens
            log.warning("generation_head='auto' picked the discrete head for %s ids; it takes no "
                        "generation_head_kwargs, so %s (the flow head's) are not used",
                        video_tokenizer.architecture, sorted(kwargs))
            kwargs = {}
    if kind == "discrete" and kwargs:
        raise ValueError("the discrete generation head takes no generation_head_kwargs (got "
                         f"{sorted(kwargs)}; they configure the flow/regression head)")
    if kind == "discrete" and not discrete:
        raise ValueError("generation_head='discrete' needs a discrete video tokenizer (ids); "
                         f"{video_tokenizer.architecture} "
                         "here gives vectors (SweetTok: video_tokenizer_overrides={'output': 'ids'}), or "
                         "use 'flow'")
    if kind != "discrete" and discrete:
        raise ValueError(f"generation_head={kind!r} predicts continuous tokens, but the tokenizer gives "
                         "ids; use 'discrete'")
    if not isinstance(projector, (MLPProjector, EmbeddingProjector)):
        raise ValueError("text-to-video needs a token-by-token projector (linear, mlpNx_gelu, embedding): "
                         "the LLM reads each generated token before writing the next; got "
                         f"{projector.config.type!r}")
    hidden = llm.get_input_embeddings().embedding_dim
    head = build_generation_head(kind, hidden, token_dim=None if discrete else video_tokenizer.token_dim,
                                 codebook_size=video_tokenizer.codebook_size if discrete else None, **kwargs)
    head.kind = kind
    return head.to(getattr(torch, config.dtype))

"""SFT configuration: dataclass defaults <- YAML (`--config`) <- `key=value` overrides.

The defaults are the built-in CPU pipeline, a miniature of the real recipe: the synthetic world; a
sentencepiece tokenizer trained on its training text; stand-ins for the pretrained models a user
downloads (a vision tower trained with a semantic objective, a tiny Llama pretrained on reading
comprehension), each saved as a Hugging Face folder and loaded exactly like a downloaded one; VTok
on that frozen tower; then SFT in the cloze formulation, its first `data.curriculum_steps` on colour and shape
questions only (`align_steps` adds LLaVA's projector-only stage 1; off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mmvid.videollm import VideoLLMConfig

TINY_LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                  tie_word_embeddings=False)


def default_model() -> VideoLLMConfig:
    return VideoLLMConfig(llm_config=dict(TINY_LLAMA), text_tokenizer="runs/sft-default/text-tokenizer",
                          video_tokenizer="runs/sft-default/video-tokenizer", projector="mlp2x_gelu",
                          projector_kwargs={"output_norm": True}, num_frames=8, max_length=1024,
                          train_video_tokenizer=False, generation_head="auto",
                          generation_head_kwargs={"width": 128, "depth": 2, "repeats": 2})


@dataclass
class SFTData:
    world: str | None = "data/shapes"  # built with default settings when missing (None: no world)
    # Data files (JSON/JSONL: mmvid/LLaVA, LLaVA-Video-178K's <image>-for-video, LLaMA-Factory/ms-swift
    # ShareGPT; see mmvid.data.conversations) and LLaVA-NeXT mixture YAMLs (`datasets:` of {json_path,
    # sampling_strategy}; mmvid.data.mixture, `random:` drawn with `seed`); world t2v.jsonl files (prompt ->
    # video) train the generation head.
    # A world's train/sft_cloze.jsonl (every benchmark question of each training video, answered with the
    # option text, after one caption round) is written when missing (mmvid.sft.world_data); sft.jsonl
    # holds the same videos' letter-answered conversations.
    train: list[str] = field(default_factory=lambda: ["data/shapes/train/sft_cloze.jsonl",
                                                      "data/shapes/train/t2v.jsonl"])
    video_root: str | None = None  # default: each data file's folder
    # how rows are read: auto (per row, from its keys) | mmvid (<image> is text) | llava | sharegpt
    format: str = "auto"
    # A curriculum: the first `curriculum_steps` optimizer steps draw from these files instead of `train`
    # (same format). A world's train/sft_attributes.jsonl (only the colour and shape questions of each
    # training video, about every object; no caption) is written when missing. Measured (issue 17): on the
    # full mixture the LLM ignores colour and shape (val 0.21 / 0.26, chance 0.25) while it learns count and
    # action; the attribute questions alone cross from chance within ~250 steps, and that ability survives the
    # switch to the mixture.
    curriculum: list[str] = field(default_factory=lambda: ["data/shapes/train/sft_attributes.jsonl"])
    curriculum_steps: int = 300  # 0: no curriculum (a run of fewer steps must set it lower or to 0)
    # tv_align file evaluated at the end (and every eval_every)
    val_bench: str | None = "data/shapes/val/tv_align.jsonl"
    test_bench: str | None = "data/shapes/test/tv_align.jsonl"
    # model.text_tokenizer, trained on the training text when missing. BPE (the default): every world word is
    # one piece with its leading space (600 of the 791 pieces the default world's text supports). "unigram" at
    # 400, the earlier default, leaves 130 learned pieces and splits words ("colour" -> " c", "o", "l",
    # "our"): 36 % more tokens for the same text.
    text_corpus_vocab: int = 600
    text_corpus_model_type: str = "bpe"  # "bpe" or "unigram"
    # The pretrained-LLM stand-in: with model.llm unset, the model.llm_config LLM is first pretrained on the
    # world's training text (reading comprehension: caption + question -> answer; mmvid.sft.text_pretrain)
    # into this folder when it is missing, and then loaded from it as model.llm. None: the LLM starts from
    # scratch in SFT.
    pretrained_llm: str | None = "runs/sft-default/llm"
    llm_pretrain_minutes: float = 3.0
    llm_pretrain_steps: int | None = None  # also stop after this many steps (tests)
    # The pretrained-vision-tower stand-in (mmvid.vision_tower), trained when missing and given to the video
    # tokenizer config as its frozen feature extractor (feature_extractor=hf, hf_path=this folder). None: no
    # tower.
    vision_tower: str | None = "runs/sft-default/vision-tower"
    # dense (ground-truth attribute maps) | contrastive (captions, SigLIP-style)
    vision_tower_objective: str = "dense"
    vision_tower_minutes: float = 1.0  # saturated: per-cell val colour/shape 0.97/0.97 after 60 s
    vision_tower_steps: int | None = None  # also stop after this many steps (tests)
    # each question/answer round its own sequence, sharing one video encoding (see mmvid.sft.data)
    split_turns: bool = True
    # the split rounds of one video as one row (block mask): its positions computed once (sdpa/eager)
    pack_questions: bool = True
    # text-to-video samples: the prompt emptied this often (for classifier-free guidance)
    prompt_dropout: float = 0.1
    # split_turns: the first round + a random draw of the others, at most this many per read
    max_rounds: int | None = 8
    # share of the videos whose text-to-video sequence is trained (merged into their item)
    t2v_fraction: float = 0.25
    # When model.video_tokenizer is a folder that does not exist yet, train it first with this tokenizer
    # config (tokenizers/train.py's), for this many minutes of training, then use it: frozen, it can decode
    # what the LLM generates. The default's: vtok_base with the middle frame as key frame (every world object
    # is on screen then; the paper's first-frame key is tokenizers/vtok/vtok_base.yaml).
    video_tokenizer_config: str | None = "tokenizers/vtok/vtok_base_midkey.yaml"
    video_tokenizer_minutes: float = 1.0
    # A decoder fine-tuned alone after the video tokenizer (tokenizers/train.py train=decoder, init_from
    # model.video_tokenizer) on the world's training videos for video_decoder_minutes, written to this folder
    # when it is missing. Its tokens are exactly the tokenizer's, so SFT reads the same videos, while
    # generations and reconstructions are drawn by the better decoder: it is swapped into the model before
    # out/final is exported (also into a finished run's final when the run is started again). "auto":
    # `{model.video_tokenizer}-decoder` when model.video_tokenizer is a folder, there is a data.world, the
    # tokenizer stays frozen and zero_stage <= 2; else off. A path: that folder (and an error where auto is
    # off). None or 0 minutes: off.
    video_decoder: str | None = "auto"
    video_decoder_minutes: float = 3.0
    video_decoder_foreground_weight: float = 10.0  # tokenizers/train.py's foreground_weight for that stage
    max_bad_fraction: float = 0.01  # stop when more of the samples seen so far fail to load
    num_workers: int = 0


@dataclass
class SFTConfig:
    model: VideoLLMConfig = field(default_factory=default_model)
    data: SFTData = field(default_factory=SFTData)
    out: str = "runs/sft-default"  # run folder: config.yaml, metrics.jsonl, checkpoints/, final/
    # optimizer steps, data.curriculum_steps included (the CPU default: see README for the measured time)
    steps: int = 800
    epochs: float | None = None  # alternatively: passes over the data (overrides steps)
    batch_size: int = 8  # samples per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-3  # default learning rate (LLM)
    lr_projector: float | None = None  # per-module learning rates; None = lr
    lr_video_tokenizer: float | None = 3e-4
    lr_generation_head: float | None = None
    warmup_steps: int = 50
    # LLaVA's stage 1 first: this many steps with the LLM frozen (lr 0), projector (and heads) only
    align_steps: int = 0
    # The answer tokens' loss (VideoLLM.forward, TEXT_LOSSES): "token" averages over supervised tokens
    # (Hugging Face's default), so a long caption outweighs the one-word answers of a packed row; "span"
    # averages each answer first.
    text_loss: str = "span"
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    offload_optimizer: bool = False  # ZeRO optimizer state on CPU (DeepSpeedCPUAdam)
    offload_params: bool = False  # ZeRO-3 parameters on CPU
    precision: str = "auto"  # auto (bf16 on CUDA when supported, fp32 on CPU) | bf16 | fp32
    deepspeed: str | None = None  # a DeepSpeed JSON of your own; "auto" values are filled from this config
    gradient_checkpointing: bool = False
    init_from: str | None = None  # weights of a VideoLLM folder (a previous stage); fresh optimizer
    # init_from loads strictly: a weight missing from the folder, or one there the model lacks, is an error
    # listing them, except under the modules named here, which keep what the model has: e.g. [generation_head]
    # when this stage adds a text-to-video head the previous one did not have (it starts from its fresh
    # initialisation).
    init_from_partial: list[str] = field(default_factory=list)
    resume: bool = True  # continue from the newest checkpoint in `out` when there is one
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    export_every: int = 0  # also write out/export-step_N/ every N steps (0: only final)
    eval_every: int = 200  # tv_align on the val bench every N steps (0: only at the end): the learning curve
    eval_limit: int | None = 200  # questions per evaluation
    log_every: int = 10
    seed: int = 0
    REMOVED_KEYS: ClassVar[dict[str, str]] = {"chat_prompt": "nothing ever read it (removed in issue 18)"}

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if not self.data.train:
            raise ValueError("data.train needs at least one data file")
        from mmvid.data.conversations import FORMATS

        if self.data.format not in FORMATS:
            raise ValueError(f"data.format must be one of {list(FORMATS)}, got {self.data.format!r}")
        from mmvid.videollm import TEXT_LOSSES

        if self.text_loss not in TEXT_LOSSES:
            raise ValueError(f"text_loss must be one of {list(TEXT_LOSSES)}, got {self.text_loss!r}")
        if self.data.curriculum_steps < 0:
            raise ValueError(f"data.curriculum_steps must be >= 0, got {self.data.curriculum_steps}")
        if self.epochs is None and self.data.curriculum_steps >= self.steps:
            raise ValueError(f"data.curriculum_steps ({self.data.curriculum_steps}) must be fewer than the "
                             f"run's steps ({self.steps}); set data.curriculum_steps=0 for no curriculum")
        if self.data.curriculum_steps and not self.data.curriculum:
            raise ValueError("data.curriculum_steps > 0 needs data.curriculum files")
        if self.data.video_decoder not in (None, "auto") and self.data.video_decoder_minutes > 0:
            if self.model.train_video_tokenizer:
                raise ValueError("data.video_decoder fine-tunes a decoder for a frozen tokenizer; with "
                                 "model.train_video_tokenizer=true the encoder moves during SFT and the "
                                 "decoder would no longer match it")
            if self.zero_stage == 3:
                raise ValueError("data.video_decoder swaps decoder weights into the live model, which ZeRO-3 "
                                 "partitions; use zero_stage <= 2")
        from mmvid.text_tokenizer import MODEL_TYPES

        if self.data.text_corpus_model_type not in MODEL_TYPES:
            raise ValueError(f"data.text_corpus_model_type must be one of {list(MODEL_TYPES)}, "
                             f"got {self.data.text_corpus_model_type!r}")


def module_learning_rates(cfg: SFTConfig) -> dict[str, float]:
    return {
        "llm": cfg.lr,
        "projector": cfg.lr if cfg.lr_projector is None else cfg.lr_projector,
        "video_tokenizer": cfg.lr if cfg.lr_video_tokenizer is None else cfg.lr_video_tokenizer,
        "generation_head": cfg.lr if cfg.lr_generation_head is None else cfg.lr_generation_head,
    }


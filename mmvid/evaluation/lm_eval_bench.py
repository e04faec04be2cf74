"""The `lm_eval` bench: lm-evaluation-harness on the language side of a VideoLLM (text only, no video).

    python eval/run.py --bench lm_eval                                    # mmvid_shapes_captions, 0-shot
    python eval/run.py --bench lm_eval --tasks mmvid_shapes_captions,mmvid_shapes_captions_ppl --num_fewshot 2
    lm_eval --model mmvid --model_args pretrained=runs/x/final --include_path eval/tasks --tasks ...
        (the lm_eval CLI sees the "mmvid" model only once this module is imported, e.g. via a wrapper)

`MMVidLM` is an lm-eval model (registered as "mmvid" when this module is imported) over
`videollm.llm` and `videollm.text_tokenizer`. Build it from a live model, `MMVidLM(model=videollm)`,
or from a checkpoint, `MMVidLM(pretrained="runs/x/final")` (so `--model_args pretrained=...` works).
Every sequence starts with the bos token when the tokenizer has one (mmvid's chat template starts
with bos, so that is what the model saw in training; `add_bos_token=False` turns it off); an empty
context is the bos token alone (eos without bos). No chat template unless lm-eval asks for one
(`apply_chat_template`), which then comes from the text tokenizer.

    loglikelihood          sum of log p(continuation | context) and whether greedy decoding gives it;
                           context + continuation encoded together, keeping the last max_length tokens.
    loglikelihood_rolling  perplexity over windows of max_length tokens (each token predicted once).
    generate_until         greedy unless do_sample; stops at `until` strings, eos or max_gen_toks
                           (mmvid.generation, one request at a time).

Requests are sorted by length and run in batches of `batch_size`, left-padded with explicit position
ids (`mmvid.evaluation.scoring.score_sequences`), so scores do not depend on the batch (only the
continuation's logits are computed).

Local tasks (`eval/tasks/mmvid_shapes/`), built on the spot from the synthetic world, so no
download is ever needed: the default world's test scenes (`WorldSettings()`, seeds as in
`python -m mmvid.data.shapes`), captions from the same text seeds, so numbers never depend on `--data`.
    mmvid_shapes_captions      multiple choice (acc, acc_norm). Each test scene gives one item from its
                               caption with a colon: the context is the caption up to and including
                               the colon ("There are two objects:", "The video shows a small red star
                               and a large blue square:"), the true choice what follows, and 3
                               distractors are what follows in the same kind of caption of scenes with
                               another number of objects, so the text alone decides the answer. Scenes
                               without such a caption (~7%) are skipped. Few-shot examples come from the
                               train scenes.
    mmvid_shapes_captions_ppl  loglikelihood_rolling over each test scene's three captions
                               (word_perplexity, byte_perplexity, bits_per_byte).
Any other lm-eval task name also works where its data is reachable; offline machines only have the
local tasks (lm-eval's own tasks download their data sets from the Hub).

Bench options (`ctx.options`): tasks (comma list, default mmvid_shapes_captions), num_fewshot (default
0), model_args (`k=v,...`; with `pretrained=PATH` that checkpoint is evaluated, otherwise the runner's
model with these MMVidLM arguments), apply_chat_template (false | true | a template name),
include_path (more task folders, comma list). `ctx.limit` is lm-eval's limit per task, `ctx.seed` all
its seeds, `ctx.batch_size` the batch size. Metrics are named "{task}/{metric}" (with ",{filter}" for
filters other than "none"), with lm-eval's stderr.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
from pathlib import Path

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from mmvid.evaluation.runner import BenchContext, BenchResult, Metric
from mmvid.evaluation.scoring import score_sequences

log = logging.getLogger(__name__)

MODEL_NAME = "mmvid"  # the lm-eval registry name
CAPTION_TASK, CAPTION_PPL_TASK = "mmvid_shapes_captions", "mmvid_shapes_captions_ppl"
DEFAULT_TASKS = CAPTION_TASK
TASKS_DIR = Path(__file__).resolve().parents[2] / "eval" / "tasks"  # the local task YAML files
DISTRACTOR_SEED = 7  # the choice of distractors and of the answer position, per item
NUM_CHOICES = 4

# ----------------------------------------------------------------------------------------------
# The local tasks' documents
# ----------------------------------------------------------------------------------------------


def _scene_captions(split: str, num_scenes: int):
    """(index, scene, its three captions) of the default world, exactly as `build.write_text_files` writes
    them."""
    from mmvid.data.shapes import build, text

    settings = build.WorldSettings()
    for i in range(num_scenes):
        scene = build.scene_for(settings, split, i)
        # the text seed of the world build
        rng = np.random.default_rng([settings.seed, build.SPLIT_IDS[split], i, 1])
        yield i, scene, text.captions(scene, rng)


def caption_choice_docs(split: str = "test", num_scenes: int = 500) -> list[dict]:
    """Items of mmvid_shapes_captions: {id, context, choices, label, caption, num_objects}.

    Only captions with a colon ("counted" and "shows" templates) make items: their context fixes the
    number of objects (and, for "shows", which ones), so distractors from scenes with another number
    of objects are wrong on the text alone.
    """
    from mmvid.data.shapes import build

    found = []
    for i, scene, captions in _scene_captions(split, num_scenes):
        caption = next((c for c in captions if ":" in c), None)
        if caption is None:
            continue
        head, tail = caption.split(":", 1)
        found.append({"id": f"{split}-{i:06d}", "index": i, "context": head + ":",
                      "continuation": tail.strip(),
                      "kind": head.split()[0], "num_objects": len(scene.objects), "caption": caption})
    docs = []
    for item in found:
        pool = list(dict.fromkeys(o["continuation"] for o in found
                                  if o["kind"] == item["kind"] and o["num_objects"] != item["num_objects"]
                                  and o["continuation"] != item["continuation"]))
        if len(pool) < NUM_CHOICES - 1:
            raise ValueError(f"too few scenes for distractors ({len(found)} items); use more scenes")
        rng = np.random.default_rng([DISTRACTOR_SEED, build.SPLIT_IDS[split], item["index"]])
        choices = [pool[k] for k in rng.choice(len(pool), size=NUM_CHOICES - 1, replace=False)]
        label = int(rng.integers(NUM_CHOICES))
        choices.insert(label, item["continuation"])
        docs.append({"id": item["id"], "context": item["context"], "choices": choices, "label": label,
                     "caption": item["caption"], "num_objects": item["num_objects"]})
    return docs


def caption_text_docs(split: str = "test", num_scenes: int = 500) -> list[dict]:
    """Documents of mmvid_shapes_captions_ppl: {id, text}, a scene's three captions joined by spaces."""
    return [{"id": f"{split}-{i:06d}", "text": " ".join(captions)}
            for i, _, captions in _scene_captions(split, num_scenes)]


# ----------------------------------------------------------------------------------------------
# The lm-eval model
# ----------------------------------------------------------------------------------------------


class MMVidLM(TemplateLM):
    """lm-eval's view of a VideoLLM's language model (text only).

    Args:
        model: a live VideoLLM (not copied; its train/eval mode is restored after each call).
        pretrained: or a VideoLLM checkpoint folder (`VideoLLM.save_pretrained`).
        batch_size: requests per forward pass.
        max_length: longest sequence in tokens (default: the VideoLLM's max_length, capped by the LLM's
            max_position_embeddings).
        max_gen_toks: default generation length when a task does not set one.
        add_bos_token: start every sequence with bos (default: when the tokenizer has a bos token).
        device: where to load `pretrained` (default: cuda when available); a live model stays where it is.
    """

    def __init__(self, model=None, pretrained: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, max_gen_toks: int = 256,
                 add_bos_token: bool | str | None = None, device: str | None = None,
                 # max_batch_size: sent by lm-eval, unused (no auto batch size)
                 max_batch_size: int | None = None):
        super().__init__()
        if (model is None) == (pretrained is None):
            raise ValueError("give exactly one of model (a VideoLLM) and pretrained (a checkpoint folder)")
        if model is None:
            from mmvid.videollm import VideoLLM

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = VideoLLM.from_pretrained(pretrained, device=device).eval()
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size 'auto' is not supported by the mmvid model; give a number")
        self.videollm = model
        self.llm = model.llm
        self.tokenizer = model.text_tokenizer
        self.pretrained = None if pretrained is None else str(pretrained)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        positions = getattr(self.llm.config, "max_position_embeddings", None) or model.config.max_length
        self._max_length = int(max_length) if max_length is not None else min(model.config.max_length,
                                                                              positions)
        if isinstance(add_bos_token, str):
            add_bos_token = add_bos_token.lower() in ("1", "true", "yes")
        has_bos = self.tokenizer.bos_token_id is not None
        self.add_bos_token = has_bos if add_bos_token is None else bool(add_bos_token) and has_bos
        self._device = next(self.llm.parameters()).device
        self._keeps_logits = "logits_to_keep" in _forward_parameters(self.llm)

    # -- what lm-eval asks of a model --------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The lone token before a continuation with an empty context (and before rolling windows)."""
        return self.tokenizer.bos_token_id if self.add_bos_token else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "mmvid")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of `string`, after bos when `add_special_tokens` (default: add_bos_token) and the
        string does not already start with it (a chat-templated prompt does)."""
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens and self.add_bos_token
        if add and not string.startswith(self.tokenizer.bos_token):
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # -- scoring -----------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per (cache key, context ids, continuation ids)."""
        for _, _, continuation in requests:
            if not 1 <= len(continuation) <= self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored "
                                 f"with max_length {self.max_length}")
        # longest first
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with self._eval_mode(), tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                # the last tokens
                sequences = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):] for i in chunk]
                scores = score_sequences(self._logits, sequences, [len(requests[i][2]) for i in chunk],
                                         self._pad_id, self._device)
                for i, score in zip(chunk, scores):
                    results[i] = score
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                bar.update(len(chunk))
        return results

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                keep: int) -> torch.Tensor:
        extra = {"logits_to_keep": keep} if self._keeps_logits else {}
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False, **extra).logits

    @property
    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string after the prefix token, in disjoint windows of max_length."""
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(string, add_special_tokens=False)
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owners, scores):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation --------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context with mmvid.generation, one request at a time."""
        from mmvid.generation import generate

        results, params = [], {}
        with self._eval_mode():
            for req in tqdm(requests, desc="generate_until", disable=disable_tqdm):
                key = json.dumps(req.args[1], sort_keys=True, default=str)
                sampling = params[key] = params.get(key) or self._sampling_params(req.args[1])
                context = self.tok_encode(req.args[0])[-(self.max_length - sampling.max_new_tokens):]
                results.append(generate(self.videollm, context, sampling).text)
                self.cache_hook.add_partial("generate_until", req.args, results[-1])
        return results

    def _sampling_params(self, gen_kwargs: dict):
        """lm-eval's generation kwargs as mmvid.generation's SamplingParams."""
        from mmvid.generation import SamplingParams

        kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=None)
        max_gen_toks, do_sample = kwargs.pop("max_gen_toks"), kwargs.pop("do_sample")
        temperature = kwargs.pop("temperature", 0.0) if do_sample else 0.0
        kwargs.pop("max_length", None)  # prompt + generation in HF's sense; max_gen_toks decides
        if max_gen_toks >= self.max_length:
            raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context "
                             f"in max_length {self.max_length}")
        sampling = {k: kwargs.pop(k) for k in ("top_p", "top_k", "seed") if k in kwargs}
        if kwargs:
            log.warning("generation kwargs %s are not supported by the mmvid model; ignored", sorted(kwargs))
        return SamplingParams(temperature=temperature, max_new_tokens=max_gen_toks, stop=tuple(until),
                              **sampling)

    @contextlib.contextmanager
    def _eval_mode(self):
        """Evaluate without dropout, and give a live model back in the mode it came in."""
        was_training = self.llm.training
        self.llm.eval()
        try:
            yield
        finally:
            self.llm.train(was_training)


def _forward_parameters(llm) -> set[str]:
    import inspect

    return set(inspect.signature(llm.forward).parameters)


def _register() -> None:
    """Register MMVidLM as lm-eval's "mmvid" model; a second import (or reload) is a no-op."""
    import lm_eval.models  # noqa: F401  (lm-eval loads its own models only while its registry is empty)
    from lm_eval.api.registry import model_registry, register_model

    current = model_registry.get(MODEL_NAME, None)
    if current is None:
        register_model(MODEL_NAME)(MMVidLM)
    elif getattr(current, "__qualname__", None) != MMVidLM.__qualname__:
        raise ValueError(f"lm-eval model name {MODEL_NAME!r} is taken by {current!r}")


_register()

# ----------------------------------------------------------------------------------------------
# The bench
# ----------------------------------------------------------------------------------------------

SAMPLE_DROP = ("resps", "doc_hash", "prompt_hash", "target_hash")  # duplicates of filtered_resps, and hashes


def _task_manager(tasks: list[str], include_path: list[str]):
    """A TaskManager over the local tasks, with lm-eval's ~15k tasks (slow to index) only when asked for."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *include_path]
    if not TASKS_DIR.is_dir():
        log.warning("no local lm-eval tasks at %s (an installed mmvid has no eval/ folder)", TASKS_DIR)
        paths = include_path
    manager = TaskManager(include_path=paths or None, include_defaults=False)
    if all(name in manager.all_tasks for name in tasks):
        return manager
    return TaskManager(include_path=paths or None)


def _build_model(ctx: BenchContext, model_args: str) -> MMVidLM:
    args = simple_parse_args_string(model_args) if model_args else {}
    args.setdefault("batch_size", ctx.batch_size)
    if "pretrained" in args:
        return MMVidLM(**args)
    return MMVidLM(model=ctx.load_model(), **args)


def _metrics(results: dict) -> list[Metric]:
    """lm-eval's {task: {"acc,none": v, "acc_stderr,none": s, "alias": ...}} -> Metric "task/acc"."""
    metrics = []
    counts = results.get("n-samples", {})
    for task, values in results["results"].items():
        n = counts.get(task, {}).get("effective")
        for key, value in values.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(
                value, bool):
                continue  # alias, sample counts, stderrs (attached below)
            metric, filter_name = key.split(",", 1)
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            name = f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric},{filter_name}"
            metrics.append(Metric(name, float(value),
                                  float(stderr) if isinstance(stderr, (int, float)) else None, n))
    return metrics


def _samples(results: dict) -> list[dict]:
    records = []
    for task, samples in results.get("samples", {}).items():
        for sample in samples:
            record = {"task": task, **{k: v for k, v in sample.items() if k not in SAMPLE_DROP}}
            records.append(json.loads(json.dumps(record, default=str)))
    return records


def run(ctx: BenchContext) -> BenchResult:
    import lm_eval

    tasks = [t.strip() for t in ctx.option("tasks", DEFAULT_TASKS).split(",") if t.strip()]
    num_fewshot = int(ctx.option("num_fewshot", "0"))
    model_args = ctx.option("model_args", "") or ""
    include_path = [p.strip() for p in (ctx.option("include_path", "") or "").split(",") if p.strip()]
    chat = (ctx.option("apply_chat_template", "false") or "false").strip()
    flags = {"false": False, "0": False, "no": False, "true": True, "1": True, "yes": True}
    apply_chat_template = flags.get(chat.lower(), chat)  # or the name of one of the tokenizer's templates
    lm = _build_model(ctx, model_args)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=ctx.limit,
        task_manager=_task_manager(tasks, include_path),
        log_samples=ctx.log_samples, apply_chat_template=apply_chat_template, random_seed=ctx.seed,
        numpy_random_seed=ctx.seed, torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed)
    settings = {
        "tasks": tasks, "num_fewshot": num_fewshot, "limit": ctx.limit, "model_args": model_args,
        "apply_chat_template": apply_chat_template, "add_bos_token": lm.add_bos_token,
        "max_length": lm.max_length,
        "task_versions": results.get("versions", {}),
        "lm_eval_version": importlib.metadata.version("lm_eval"),
    }
    return BenchResult("lm_eval", _metrics(results), settings, _samples(results) if ctx.log_samples else None)

r"""lmms-eval model plugin: `python -m lmms_eval --model mmvid` drives an mmvid VideoLLM.

    pip install -e ".[lmms]"        # lmms-eval, and the entry point that registers "mmvid"
    python -m lmms_eval --model mmvid --model_args pretrained=runs/sft-default/final \
        --tasks mmvid_shapes_tv_align,mmvid_shapes_tv_align_letter,mmvid_shapes_tv_align_generate \
        --include_path eval/tasks --limit 200 --output_path runs/sft-default/lmms

Registration: lmms-eval (0.7.3) reads the entry-point group "lmms_eval.models" when `lmms_eval.models` is
imported; mmvid's `manifest()` there (pyproject.toml) names two classes under the one id "mmvid":
    MMVidChat    the default (a chat model, `is_simple = False`): generation requests carry the task's
                 `doc_to_messages`, whose video parts become `<video>` placeholders where they stand.
    MMVidSimple  with `--force_simple`: generation requests carry `doc_to_visual` and a text context.
Both take lmms-eval's loglikelihood requests `(context, continuation, doc_to_visual, doc_id, task, split)`.
lmms-eval 0.7.3 builds every task of a chat model as a ConfigurableMessagesTask, which makes generation
requests only; the shipped multiple-choice tasks are python-class tasks (eval/tasks/mmvid_shapes_video/)
so that they reach the default model too.

model_args: pretrained (a VideoLLM checkpoint folder), device (default: cuda when available), batch_size
(questions per forward pass of loglikelihood; generation runs one request at a time), max_new_tokens
(when a task sets none; default 256), end_of_answer (`turn`, the default, or `none`).

    loglikelihood   the user turn is the context after one `<video>` line per visual (unless the context
                    places its `<video>` placeholders itself); the continuation is the assistant's answer,
                    so the delimiter lmms-eval puts before it (a space by default) is dropped. With
                    `end_of_answer=turn` the answer is scored followed by the end-of-turn token, as the
                    whole answer (mmvid.evaluation.scoring). Returns (summed log-prob, is_greedy), the
                    API's contract.
    generate_until  greedy unless the task's temperature is > 0 (and do_sample is not false); stops at
                    eos, at the `until` strings, or after max_new_tokens.

lmms-eval 0.7.3's own multiple_choice scoring cannot be used with any model: its evaluator turns each
loglikelihood result into a string (`api/instance.py: unwrap_generation_output` returns `str(output)` for a
(float, bool) tuple), and its `process_results` then takes the argmin, for the losses its LLaVA models
return (lmms-eval issue #370). The shipped tasks score with their own `process_results`
(`choice_metrics`), which reads the result back from either form and takes the argmax.

A video that cannot be read raises a ValueError naming the file (lmms-eval has no "unscorable" result;
`eval/run.py --bench tv_align` counts such questions apart instead).
"""

from __future__ import annotations

import ast
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch
from lmms_eval.api.model import lmms
from tqdm import tqdm

from mmvid.data.shapes.text import multiple_choice_prompt
from mmvid.evaluation.scoring import letters_for, parse_choice, pick, score_requests
from mmvid.evaluation.tv_align import answer_index as question_answer_index
from mmvid.text_tokenizer import VIDEO_TOKEN

log = logging.getLogger(__name__)

MODEL_NAME = "mmvid"  # the lmms-eval model id
END_OF_ANSWER = ("turn", "none")
VIDEO_CACHE = 8  # encoded videos kept: a video's questions are adjacent in a task
GENERATION_KEYS = {"until", "max_new_tokens", "max_gen_toks", "temperature", "do_sample", "top_p", "top_k",
                   "seed"}


def manifest():
    """The `lmms_eval.models` entry point (pyproject.toml): the "mmvid" model id and its two classes."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, chat_class_path="mmvid.evaluation.lmms_plugin.MMVidChat",
                         simple_class_path="mmvid.evaluation.lmms_plugin.MMVidSimple")


# ----------------------------------------------------------------------------------------------
# The lmms-eval models
# ----------------------------------------------------------------------------------------------


class MMVidChat(lmms):
    """lmms-eval's view of a VideoLLM, as a chat model (the default class of `--model mmvid`).

    Args:
        pretrained: a VideoLLM checkpoint folder (`VideoLLM.save_pretrained`).
        model: or a live VideoLLM (tests, a training loop); it is put in eval mode.
        device: where to load `pretrained` (default: cuda when available).
        batch_size: questions per forward pass of loglikelihood (all choices of a question share a pass).
        max_new_tokens: generation length when a task sets none.
        end_of_answer: "turn" scores each continuation followed by the end-of-turn token; "none" alone.
        max_batch_size: sent by lmms-eval; unused.
    """

    is_simple = False

    def __init__(self, pretrained: str | None = None, model=None, device: str | None = None,
                 batch_size: int | str = 1, max_new_tokens: int = 256, end_of_answer: str = "turn",
                 max_batch_size: int | None = None, **unknown):
        super().__init__()
        if unknown:
            raise TypeError(f"unknown mmvid model_args {sorted(unknown)}; known: pretrained, device, "
                            "batch_size, max_new_tokens, end_of_answer")
        if (model is None) == (pretrained is None):
            raise ValueError("give exactly one of pretrained=PATH (a VideoLLM checkpoint folder) and model")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size 'auto' is not supported by the mmvid model; give a number")
        if int(batch_size) < 1 or int(max_new_tokens) < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and "
                             f"{max_new_tokens}")
        if end_of_answer not in END_OF_ANSWER:
            raise ValueError(f"end_of_answer must be one of {list(END_OF_ANSWER)}, got {end_of_answer!r}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("the mmvid lmms-eval model runs in one process; launch it without "
                             "accelerate or torchrun")
        if model is None:
            from mmvid.videollm import VideoLLM

            path = Path(pretrained)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"no VideoLLM checkpoint at {path} (model_args pretrained=PATH)")
            model = VideoLLM.from_pretrained(path, device=device or ("cuda" if torch.cuda.is_available()
                                                                     else "cpu"))
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.end_of_answer = end_of_answer == "turn"
        self._videos: OrderedDict[str, torch.Tensor] = OrderedDict()  # path -> features (1, N, D)

    # -- inputs ------------------------------------------------------------------------------------

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _video_features(self, visuals: list) -> torch.Tensor | None:
        """(V, N, D) features of the videos, in order; None without any."""
        if not visuals:
            return None
        return torch.cat([self._encode(_video_path(v)) for v in visuals])

    @torch.no_grad()
    def _encode(self, path: str) -> torch.Tensor:
        if path in self._videos:
            self._videos.move_to_end(path)
            return self._videos[path]
        try:
            frames = self.model.processor.load_video(path)
        except (OSError, ValueError, RuntimeError) as e:  # missing, undecodable, too short
            raise ValueError(f"cannot read video {path}: {type(e).__name__}: {e}") from e
        self._videos[path] = self.model.encode_video(frames[None])
        if len(self._videos) > VIDEO_CACHE:
            self._videos.popitem(last=False)
        return self._videos[path]

    # -- loglikelihood -----------------------------------------------------------------------------

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per request; the choices of one question share a
        forward pass, `batch_size` questions at a time."""
        questions: dict[tuple, list[int]] = {}  # (context, visual key) -> its requests, in order
        for i, req in enumerate(requests):
            questions.setdefault(self._question_key(req.args), []).append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups = list(questions.values())
        with tqdm(total=len(requests), desc="mmvid loglikelihood", disable=self.rank != 0) as bar:
            for start in range(0, len(groups), self.batch_size):
                chunk = groups[start:start + self.batch_size]
                batch = []  # (messages, continuations, video features): tv_align's scorer, one forward pass
                for group in chunk:
                    messages, features = self._scoring_prompt(requests[group[0]].args)
                    batch.append((messages, [_answer(requests[i].args[1]) for i in group], features))
                scored = score_requests(self.model, batch, self.end_of_answer)
                for group, scores in zip(chunk, scored):
                    for i, score in zip(group, scores):
                        results[i] = score
                    bar.update(len(group))
        return results

    @staticmethod
    def _question_key(args: tuple) -> tuple:
        # (context, continuation) alone: lmms-eval's unconditional requests (acc_mutual_info)
        return (args[0],) if len(args) == 2 else (args[0], *args[3:6])

    def _scoring_prompt(self, args: tuple) -> tuple[list[dict], torch.Tensor | None]:
        """The chat messages and video features of a loglikelihood request."""
        context = args[0]
        if len(args) == 2:
            return [{"role": "user", "content": context}], None
        _, _, doc_to_visual, doc_id, task, split = args
        visuals = _flatten(doc_to_visual(self._doc(task, split, doc_id)))
        return [{"role": "user", "content": _user_turn(context, len(visuals))}], self._video_features(visuals)

    # -- generation --------------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        """Each request's answer, one request at a time (mmvid.generation)."""
        answers = []
        for req in tqdm(requests, desc="mmvid generate_until", disable=self.rank != 0):
            messages, visuals, gen_kwargs = self._generation_prompt(req.args)
            answers.append(self._generate(messages, self._video_features(visuals), gen_kwargs))
        return answers

    def _generation_prompt(self, args: tuple) -> tuple[list[dict], list, dict]:
        """A chat request (context, doc_to_messages, gen_kwargs, doc_id, task, split) -> (messages, video
        paths in order, gen_kwargs)."""
        _, doc_to_messages, gen_kwargs, doc_id, task, split = args
        messages, visuals = [], []
        for message in doc_to_messages(self._doc(task, split, doc_id)):
            parts = message["content"]
            if isinstance(parts, str):
                messages.append({"role": message["role"], "content": parts})
                continue
            text = []
            for part in parts:
                if part["type"] == "text":
                    text.append(part["text"])
                elif part["type"] == "video":
                    if part.get("start_time") is not None or part.get("end_time") is not None:
                        raise ValueError(f"video windows (start_time/end_time) are not supported: {part}")
                    visuals.append(part["url"])
                    text.append(VIDEO_TOKEN)
                else:
                    raise ValueError(f"the mmvid model reads text and videos, not {part['type']!r} inputs")
            messages.append({"role": message["role"], "content": "\n".join(text)})
        return messages, visuals, gen_kwargs

    @torch.no_grad()
    def _generate(self, messages: list[dict], video_features: torch.Tensor | None, gen_kwargs: dict) -> str:
        kwargs = dict(gen_kwargs or {})
        unknown = sorted(set(kwargs) - GENERATION_KEYS - {"num_beams"})
        if unknown or int(kwargs.get("num_beams") or 1) > 1:
            log.warning("generation kwargs %s are not supported by the mmvid model; ignored",
                        unknown + (["num_beams"] if int(kwargs.get("num_beams") or 1) > 1 else []))
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.get("temperature") or 0.0)
        sample = temperature > 0 and kwargs.get("do_sample") is not False
        length = int(kwargs.get("max_new_tokens") or kwargs.get("max_gen_toks") or self.max_new_tokens)
        return self.model.generate(messages=messages, video_features=video_features, max_new_tokens=length,
                                   do_sample=sample, temperature=temperature if sample else 1.0,
                                   top_p=float(kwargs.get("top_p") or 1.0),
                                   top_k=int(kwargs.get("top_k") or 0), seed=kwargs.get("seed"),
                                   stop=tuple(until))

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the mmvid model does not support multi-round generation")


class MMVidSimple(MMVidChat):
    """`--model mmvid --force_simple`: lmms-eval's simple model, for tasks read through `doc_to_visual`;
    generation requests are (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""

    is_simple = True

    def _generation_prompt(self, args: tuple) -> tuple[list[dict], list, dict]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        visuals = _flatten(doc_to_visual(self._doc(task, split, doc_id)))
        return [{"role": "user", "content": _user_turn(context, len(visuals))}], visuals, gen_kwargs


def _flatten(visuals) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [v for item in visuals for v in _flatten(item)]


def _video_path(visual) -> str:
    if isinstance(visual, dict):
        visual = visual.get("path") or visual.get("url") or visual.get("video")
    if not isinstance(visual, (str, os.PathLike)):
        raise ValueError(f"the mmvid model reads videos from files; got {type(visual).__name__}")
    return str(visual)


def _user_turn(context: str, num_videos: int) -> str:
    """The context after one `<video>` line per video, unless it places its placeholders itself."""
    placed = context.count(VIDEO_TOKEN)
    if placed == num_videos:
        return context
    if placed:
        raise ValueError(f"the context has {placed} {VIDEO_TOKEN} placeholders for {num_videos} videos")
    return "\n".join([VIDEO_TOKEN] * num_videos + [context])


def _answer(continuation: str) -> str:
    answer = continuation.lstrip()
    if not answer:
        raise ValueError(f"an empty continuation cannot be scored as an answer: {continuation!r}")
    return answer


# ----------------------------------------------------------------------------------------------
# The shipped tasks (eval/tasks/mmvid_shapes_video/): a world's tv_align.jsonl, read by lmms-eval
# ----------------------------------------------------------------------------------------------


def doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[str]:
    """The question's video, under the task's `video_root` (its JSONL's folder)."""
    root = Path((lmms_eval_specific_kwargs or {}).get("video_root") or ".")
    return [str((root / doc["video"]).resolve())]


def letter_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return multiple_choice_prompt(doc["question"], doc["options"])


def choice_metrics(doc: dict, results: list, choices: list[str]) -> dict[str, float]:
    """acc (highest summed log-prob) and acc_norm (per byte), as tv_align's `pick`. A result is a
    (log-prob, is_greedy) pair, or its str as lmms-eval 0.7.3's evaluator passes it on (a float's repr
    reads back exactly)."""
    scores = [float((ast.literal_eval(r) if isinstance(r, str) else r)[0]) for r in results]
    raw, norm = pick(scores, choices)
    answer = answer_index(doc)
    return {"acc": float(raw == answer), "acc_norm": float(norm == answer)}


def generation_metrics(doc: dict, results: list[str]) -> dict[str, float]:
    """gen_acc (the answer parsed as a letter or an option's text) and gen_unparsed, as tv_align's."""
    choice = parse_choice(results[0], doc["options"], letters_of(doc))
    return {"gen_acc": float(choice == answer_index(doc)), "gen_unparsed": float(choice is None)}


def letters_of(doc: dict) -> list[str]:
    """A task doc's option letters (the letter task's `doc_to_choice`)."""
    return letters_for(doc["options"])


def answer_index(doc: dict) -> int:
    """A task doc's answer index (`tv_align.answer_index`; `doc_to_target`), the error naming the question."""
    try:
        return question_answer_index(doc)
    except ValueError as e:
        raise ValueError(f"question {doc.get('id')!r}: {e}") from None

"""The lm_eval bench: MMVidLM against a manual computation with the HF model, batching, stop strings,
loading from a checkpoint, and the offline mmvid_shapes_captions task end to end."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; set before lm-eval imports datasets
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from mmvid.evaluation.lm_eval_bench import CAPTION_TASK, MMVidLM, caption_choice_docs, run
from mmvid.evaluation.runner import BenchContext
from mmvid.testing import tiny_videollm

CONTEXT = "There are two objects:"
PAIRS = [(CONTEXT, " a small red star that bounces quickly and a large blue square that moves left slowly."),
         ("The video shows a large purple cross:", " it moves up quickly."),
         ("", "A small cyan triangle shrinks quickly.")]


@pytest.fixture(scope="module")
def videollm(tmp_path_factory):
    return tiny_videollm(tmp_path_factory.mktemp("lm-eval"))


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@torch.no_grad()
def manual_loglikelihood(videollm, context: str, continuation: str) -> tuple[float, bool]:
    """bos + tokens of context + continuation; sum of the log-softmax at the continuation's tokens."""
    tok = videollm.text_tokenizer
    ids = [tok.bos_token_id] + tok.encode(context + continuation, add_special_tokens=False)
    start = 1 + len(tok.encode(context, add_special_tokens=False)) if context else 1
    logprobs = videollm.llm(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    picked = [logprobs[i - 1] for i in range(start, len(ids))]
    total = sum(p[ids[i]].item() for p, i in zip(picked, range(start, len(ids))))
    greedy = all(int(p.argmax()) == ids[i] for p, i in zip(picked, range(start, len(ids))))
    return total, greedy


def test_registered_in_lm_eval():
    assert get_model("mmvid") is MMVidLM


def test_loglikelihood_matches_manual_and_batching(videollm):
    one = MMVidLM(model=videollm, batch_size=1).loglikelihood(requests("loglikelihood", PAIRS),
                                                              disable_tqdm=True)
    three = MMVidLM(model=videollm, batch_size=3).loglikelihood(requests("loglikelihood", PAIRS),
                                                                disable_tqdm=True)
    for (context, continuation), (ll1, greedy1), (ll3, greedy3) in zip(PAIRS, one, three):
        expected, greedy = manual_loglikelihood(videollm, context, continuation)
        assert ll1 == pytest.approx(expected, abs=1e-4)
        assert ll3 == pytest.approx(expected, abs=1e-4)
        assert greedy1 == greedy3 == greedy


def test_loglikelihood_rolling(videollm):
    text = PAIRS[0][1].strip()
    lm = MMVidLM(model=videollm)
    full, = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert full == pytest.approx(manual_loglikelihood(videollm, "", text)[0], abs=1e-4)
    windowed = MMVidLM(model=videollm, max_length=8, batch_size=2)  # many windows, each token scored once
    short, = windowed.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert short < 0 and short != pytest.approx(full, abs=1e-3)


def test_generate_until_stops_and_batches(videollm):
    prompts = ["There are two objects:", "The video shows", "A small red star"]
    greedy = requests("generate_until", [(p, {"until": [], "max_gen_toks": 12}) for p in prompts])
    free = [MMVidLM(model=videollm, batch_size=n).generate_until(greedy, disable_tqdm=True) for n in (1, 3)]
    assert free[0] == free[1]  # one request at a time: batch_size changes nothing
    lm, tok = MMVidLM(model=videollm), videollm.text_tokenizer
    for p, g in zip(prompts, free[0]):  # the reference: Hugging Face's greedy generate on the bare LLM
        ids = torch.tensor([lm.tok_encode(p)])
        out = videollm.llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
        assert g == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert all(len(g) >= 2 for g in free[0]), free[0]
    stops = [g[len(g) // 2] for g in free[0]]  # a character each generation contains
    stopped = requests("generate_until",
                       [(p, {"until": [s], "max_gen_toks": 12}) for p, s in zip(prompts, stops)])
    cut = MMVidLM(model=videollm).generate_until(stopped, disable_tqdm=True)
    for g, s, c in zip(free[0], stops, cut):
        assert c == g.split(s)[0] and s not in c


def test_bench_run_offline(videollm):
    result = run(BenchContext(model=videollm, limit=8, options={"tasks": CAPTION_TASK}))
    metrics = {m.name: m for m in result.metrics}
    acc = metrics[f"{CAPTION_TASK}/acc"]
    assert 0.0 <= acc.value <= 1.0 and acc.stderr is not None and acc.n == 8
    assert f"{CAPTION_TASK}/acc_norm" in metrics
    assert result.settings["tasks"] == [CAPTION_TASK] and result.settings["limit"] == 8


def test_caption_docs_deterministic():
    docs = caption_choice_docs("test", 40)
    assert docs == caption_choice_docs("test", 40)
    for doc in docs:
        assert (len(set(doc["choices"])) == 4
                and doc["caption"] == f"{doc['context']} {doc['choices'][doc['label']]}")


def test_from_pretrained_arg_string(videollm, tmp_path):
    videollm.save_pretrained(tmp_path / "final")
    lm = get_model("mmvid").create_from_arg_string(f"pretrained={tmp_path / 'final'}",
                                                   {"batch_size": 2, "max_batch_size": None, "device": "cpu"})
    assert isinstance(lm, MMVidLM) and lm.batch_size == 2
    (ll, _), = lm.loglikelihood(requests("loglikelihood", PAIRS[:1]), disable_tqdm=True)
    assert ll == pytest.approx(manual_loglikelihood(videollm, *PAIRS[0])[0], abs=1e-4)

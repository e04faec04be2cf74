"""The lmms-eval plugin (mmvid.evaluation.lmms_plugin): found through its entry point, run end to end by
lmms-eval's CLI on the shipped offline tasks (eval/tasks/mmvid_shapes_video/) pointed at a tiny world, and
agreeing with eval/run.py's tv_align on the same model and questions; its requests one by one; bad input."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lmms_eval", reason="lmms-eval is the lmms extra (`make setup` installs it for tests)")

from lmms_eval.api.instance import Instance  # noqa: E402

from mmvid.data.shapes.build import WorldSettings, build_world  # noqa: E402
from mmvid.data.shapes.text import multiple_choice_prompt  # noqa: E402
from mmvid.evaluation import BenchContext, run_benches  # noqa: E402
from mmvid.evaluation.lmms_plugin import (  # noqa: E402
    MMVidChat,
    MMVidSimple,
    answer_index,
    choice_metrics,
)
from mmvid.evaluation.scoring import continuation_logprobs  # noqa: E402
from mmvid.testing import tiny_videollm  # noqa: E402
from mmvid.text_tokenizer import VIDEO_TOKEN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "eval" / "tasks" / "mmvid_shapes_video"
TASKS = ("mmvid_shapes_tv_align", "mmvid_shapes_tv_align_letter", "mmvid_shapes_tv_align_generate")
LIMIT = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms") / "world"
    build_world(out, WorldSettings(train=0, val=0, test=3, fewshot=3, frames=8, size=32), progress=False)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_videollm(tmp_path_factory.mktemp("lmms-model"))


@pytest.fixture(scope="module")
def questions(world) -> list[dict]:
    return [json.loads(line) for line in (world / "test" / "tv_align.jsonl").read_text().splitlines()]


def tiny_tasks(folder: Path, world: Path) -> Path:
    """The shipped tasks pointed at `world`: a YAML per task that includes the shipped one (renamed
    tiny_*) and overrides the data file and the video root, as the template's comment says."""
    folder.mkdir()
    for name in TASKS:
        (folder / f"tiny_{name}.yaml").write_text(
            f"include: {SHIPPED / name}.yaml\ntask: tiny_{name}\n"
            f"dataset_kwargs:\n  data_files:\n    test: {world / 'test' / 'tv_align.jsonl'}\n"
            f"lmms_eval_specific_kwargs:\n  default:\n    video_root: {world / 'test'}\n")
    return folder


def lmms_eval_cli(model_path: Path, tasks: Path, out: Path, cwd: Path) -> tuple[dict, dict[str, list[dict]]]:
    """`python -m lmms_eval --model mmvid ...` offline: its results and its samples by task, in doc order."""
    env = {**os.environ, "HF_HOME": str(cwd / "hf"), "HF_DATASETS_CACHE": str(cwd / "hf" / "datasets")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "mmvid", "--model_args", f"pretrained={model_path}",
           "--tasks", ",".join(f"tiny_{t}" for t in TASKS), "--include_path", str(tasks),
           "--limit", str(LIMIT), "--output_path", str(out), "--log_samples"]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (results_file,) = out.glob("*/*_results.json")
    samples = {}
    for task in TASKS:
        (path,) = out.glob(f"*/*_samples_tiny_{task}.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return json.loads(results_file.read_text())["results"], samples


def test_found_through_the_entry_point():
    from lmms_eval.models import get_model

    assert get_model("mmvid") is MMVidChat, "reinstall mmvid (pip install -e .) to register its entry point"
    assert get_model("mmvid", force_simple=True) is MMVidSimple


def test_lmms_eval_cli_agrees_with_eval_run(model, world, tmp_path):
    saved = model.save_pretrained(tmp_path / "model")
    results, samples = lmms_eval_cli(saved, tiny_tasks(tmp_path / "tasks", world), tmp_path / "out", tmp_path)
    ctx = BenchContext(model=model, data=str(world), limit=LIMIT, log_samples=True, options={"mode": "both"})
    record = run_benches(["tv_align"], ctx)
    ours = {k: v["value"] for k, v in record["results"]["tv_align"]["metrics"].items()}
    theirs = {(task, key.split(",")[0]): value for task, values in results.items()
              for key, value in values.items() if key.endswith(",none")}
    pairs = {("mmvid_shapes_tv_align", "acc"): "acc", ("mmvid_shapes_tv_align", "acc_norm"): "acc_norm",
             ("mmvid_shapes_tv_align_letter", "acc"): "acc_letter",
             ("mmvid_shapes_tv_align_letter", "acc_norm"): "acc_norm_letter",
             ("mmvid_shapes_tv_align_generate", "gen_acc"): "gen_acc",
             ("mmvid_shapes_tv_align_generate", "gen_unparsed"): "gen_unparsed"}
    for (task, metric), name in pairs.items():
        assert theirs[(f"tiny_{task}", metric)] == pytest.approx(ours[name]), (task, metric)
    # and question by question: the same log-likelihoods and the same generated answers
    reference = record["samples"]["tv_align"]
    assert [len(samples[t]) for t in TASKS] == [LIMIT] * 3 == [len(reference)] * 3
    for task, key in (("mmvid_shapes_tv_align", "loglikelihoods"),
                      ("mmvid_shapes_tv_align_letter", "loglikelihoods_letter")):
        for row, expected in zip(samples[task], reference):
            got = [ast.literal_eval(r)[0] if isinstance(r, str) else r[0] for r in row["filtered_resps"]]
            assert got == pytest.approx(expected[key], abs=1e-4), (task, row["doc_id"])
    for row, expected in zip(samples["mmvid_shapes_tv_align_generate"], reference):
        answer = row["filtered_resps"]  # the text (lmms-eval 0.7.3 logs a generation task's as a str)
        assert (answer if isinstance(answer, str) else answer[0]) == expected["generated"]


# ----------------------------------------------------------------------------------------------
# Requests, in process
# ----------------------------------------------------------------------------------------------


def plugin(cls, model, questions, world, **kwargs):
    lm = cls(model=model, **kwargs)
    lm.task_dict = {"t": {"test": [dict(q, path=str(world / "test" / q["video"])) for q in questions]}}
    return lm


def video_of(doc):
    return [doc["path"]]


def request(kind: str, args: tuple, idx: int = 0) -> Instance:
    return Instance(kind, args, idx=idx, metadata={"task": "t", "doc_id": args[-3], "repeats": 1})


def loglikelihood_requests(questions, doc_ids):
    return [request("loglikelihood", (q["question"], f" {option}", video_of, i, "t", "test"), k)
            for i in doc_ids for q in [questions[i]] for k, option in enumerate(q["options"])]


def test_loglikelihood_is_tv_aligns_score_at_any_batch_size(model, questions, world):
    doc_ids = [0, 1, 2, 5]
    requests = loglikelihood_requests(questions, doc_ids)
    one = plugin(MMVidChat, model, questions, world).loglikelihood(requests)
    three = plugin(MMVidChat, model, questions, world, batch_size=3).loglikelihood(requests)
    expected = []
    for i in doc_ids:
        q = questions[i]
        features = model.encode_video(model.processor.load_video(world / "test" / q["video"])[None])
        messages = [{"role": "user", "content": f"{VIDEO_TOKEN}\n{q['question']}"}]
        expected += continuation_logprobs(model, messages, q["options"], features, end_of_answer=True)
    assert [s for s, _ in one] == expected  # one question per pass: tv_align's numbers to the bit
    assert [s for s, _ in three] == pytest.approx(expected, abs=1e-4)
    assert [g for _, g in one] == [g for _, g in three]


def test_generation_chat_and_simple_agree_and_honour_until(model, questions, world):
    doc = questions[0]
    prompt = multiple_choice_prompt(doc["question"], doc["options"])

    def messages_of(d):
        return [{"role": "user", "content": [{"type": "video", "url": d["path"]},
                                             {"type": "text", "text": prompt}]}]

    def ask(until):
        kwargs = {"max_new_tokens": 6, "temperature": 0, "until": until}
        chat = plugin(MMVidChat, model, questions, world).generate_until(
            [request("generate_until", (prompt, messages_of, kwargs, 0, "t", "test"))])
        simple = plugin(MMVidSimple, model, questions, world).generate_until(
            [request("generate_until", (prompt, kwargs, video_of, 0, "t", "test"))])
        assert chat == simple
        return chat[0]

    full = ask([])
    features = model.encode_video(model.processor.load_video(world / "test" / doc["video"])[None])
    assert full == model.generate(messages=[{"role": "user", "content": f"{VIDEO_TOKEN}\n{prompt}"}],
                                  video_features=features, max_new_tokens=6)
    cut = next(i for i in range(1, len(full)) if full[i].isalnum())  # a whole character, past the first
    assert ask([full[cut:cut + 2]]) == full[:cut].strip()


def test_choice_metrics_read_lmms_evals_string_results(questions):
    doc = dict(questions[0], options=["a", "bb", "c", "dddddddd"], answer="B")
    results = [(-3.0, False), (-2.0, True), (-2.5, False), (-4.0, False)]
    assert choice_metrics(doc, results, doc["options"]) == {"acc": 1.0, "acc_norm": 0.0}
    assert choice_metrics(doc, [str(r) for r in results], doc["options"]) == {"acc": 1.0, "acc_norm": 0.0}
    assert answer_index(dict(doc, answer="c")) == 2


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_is_clear(model, questions, world, tmp_path):
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        MMVidChat()
    with pytest.raises(FileNotFoundError, match="no VideoLLM checkpoint"):
        MMVidChat(pretrained=str(tmp_path / "none"))
    with pytest.raises(TypeError, match=r"unknown mmvid model_args \['temprature'\]"):
        MMVidChat(model=model, temprature=0)
    with pytest.raises(ValueError, match="end_of_answer"):
        MMVidChat(model=model, end_of_answer="eos")
    with pytest.raises(ValueError, match="'auto' is not supported"):
        MMVidChat(model=model, batch_size="auto")
    with pytest.raises(ValueError, match="neither a letter"):
        answer_index(dict(questions[0], answer="E"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    lm = plugin(MMVidChat, model, [dict(questions[0], video=str(broken))], world)
    with pytest.raises(ValueError, match=f"cannot read video {broken}"):
        lm.loglikelihood(loglikelihood_requests(lm.task_dict["t"]["test"], [0]))

    def image_messages(doc):
        return [{"role": "user", "content": [{"type": "image", "url": "x.png"},
                                             {"type": "text", "text": "?"}]}]

    with pytest.raises(ValueError, match="not 'image' inputs"):
        lm.generate_until([request("generate_until", ("?", image_messages, {}, 0, "t", "test"))])

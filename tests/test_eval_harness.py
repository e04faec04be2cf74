"""eval/run.py: the runner, tv_align (both scoring modes), fewshot, the JSON record, live evaluation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.evaluation import BenchContext, evaluate, run_benches
from mmvid.evaluation.fewshot import episodes, load_fewshot, prototype_choice
from mmvid.evaluation.scoring import parse_choice
from mmvid.evaluation.tv_align import BenchmarkFormatError, load_questions
from mmvid.testing import tiny_videollm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "world"
    build_world(out, WorldSettings(train=0, val=0, test=6, fewshot=3, frames=8, size=32), progress=False)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_videollm(tmp_path_factory.mktemp("eval-model"))


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "final")


def _metrics(record, bench):
    return {k: v["value"] for k, v in record["results"][bench]["metrics"].items()}


def test_tv_align_loglikelihood_reports_categories_with_stderr(model, world):
    record = run_benches(["tv_align"], BenchContext(model=model, data=str(world), limit=12))
    metrics = record["results"]["tv_align"]["metrics"]
    assert (metrics["acc"]["n"] == 12 and 0 <= metrics["acc"]["value"] <= 1
            and metrics["acc"]["stderr"] is not None)
    assert "acc_norm" in metrics and any(k.endswith("/acc") for k in metrics)
    categories = {k.split("/")[0] for k in metrics if "/" in k}
    assert (categories <= {"colour", "shape", "count", "action", "spatial", "temporal"}
            and len(categories) >= 3)


def test_scoring_modes_agree_on_a_model_that_always_prefers_one_option(model, world):
    b = model.text_tokenizer.convert_tokens_to_ids(model.text_tokenizer.tokenize("B"))[0]

    def prefer_b(module, inputs, output):
        output[..., b] += 1e4
        return output

    handle = model.llm.get_output_embeddings().register_forward_hook(prefer_b)
    try:
        ctx = BenchContext(model=model, data=str(world), limit=12,
                           options={"mode": "both", "max_new_tokens": "1", "option_format": "letter"},
                           log_samples=True)
        record = run_benches(["tv_align"], ctx)
    finally:
        handle.remove()
    questions = load_questions(world / "test" / "tv_align.jsonl")[:12]
    truth = sum(q["answer"] == "B" for q in questions) / 12
    metrics = _metrics(record, "tv_align")
    assert metrics["acc"] == metrics["gen_acc"] == pytest.approx(truth)
    assert metrics["gen_unparsed"] == 0
    assert all(s["choice"] == s["parsed"] == "B" for s in record["samples"]["tv_align"])


def test_user_benchmark_file_with_text_answers(model, world, tmp_path):
    line = {"id": "q1", "video": str(world / "test" / "videos" / "000000.mp4"), "question": "Is it there?",
            "options": ["yes", "no", "maybe"], "answer": "no", "category": "mine"}
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(line) + "\n")
    record = run_benches(["tv_align"],
                         BenchContext(model=model, data=str(path), options={"option_format": "text"}))
    assert "mine/acc" in record["results"]["tv_align"]["metrics"]
    assert record["results"]["tv_align"]["settings"]["chance"] == pytest.approx(1 / 3)


def test_malformed_benchmark_lines_name_their_line(tmp_path):
    good = {"id": "a", "video": "v.mp4", "question": "q?", "options": ["x", "y"], "answer": "A",
            "category": "c"}
    cases = {"{not json": "invalid JSON", json.dumps({**good, "answer": "Z"}): "neither a letter",
             json.dumps({k: v for k, v in good.items() if k != "options"}): "missing ['options']",
             json.dumps({**good, "options": ["only"]}): "2-26"}
    for bad, message in cases.items():
        path = tmp_path / "b.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + bad + "\n")
        with pytest.raises(BenchmarkFormatError, match=rf"b\.jsonl:3: .*{re.escape(message)}"):
            load_questions(path)


def test_parse_choice():
    options = ["red", "blue", "green", "white"]
    assert parse_choice("B", options, list("ABCD")) == 1
    assert parse_choice(" (C) green", options, list("ABCD")) == 2
    assert parse_choice("it is white", options, list("ABCD")) == 3
    assert parse_choice("no idea", options, list("ABCD")) is None


def test_fewshot_episodes_are_fixed_by_the_seed_and_balanced(world):
    _, items = load_fewshot(BenchContext(data=str(world)))
    a = episodes(items, ways=3, shots=1, count=6, seed=0)
    b = episodes(items, ways=3, shots=1, count=6, seed=0)
    assert [(q["id"], labels) for _, q, labels in a] == [(q["id"], labels) for _, q, labels in b]
    for support, query, labels in a:
        assert len(support) == 3 and query["label"] in labels and query not in support
        assert sorted(s["label"] for s in support) == sorted(labels)
    with pytest.raises(ValueError, match="5-way 3-shot"):
        episodes(items, ways=5, shots=3, count=1, seed=0)


def test_fewshot_bench_runs(model, world):
    ctx = BenchContext(model=model, data=str(world), limit=3, options={"ways": "2", "shots": "1"})
    metrics = _metrics(run_benches(["fewshot"], ctx), "fewshot")
    assert set(metrics) == {"2way_1shot/acc", "2way_1shot/acc_norm"} and 0 <= metrics["2way_1shot/acc"] <= 1


def test_fewshot_oracle_control_uses_one_code_per_class(model, world):
    from mmvid.evaluation.fewshot import class_codes

    _, items = load_fewshot(BenchContext(data=str(world)))
    codes = class_codes(items, seed=0)
    assert set(codes) == {i["label"] for i in items} and codes == class_codes(items, seed=0)
    assert all(len(code.split()) == 3 for code in codes.values())
    objects = [o for item in items for o in item["objects"]]
    many = [{"label": f"class{k}", "objects": objects} for k in range(20)]
    sets = [frozenset(code.split()) for code in class_codes(many, seed=0).values()]
    assert len(set(sets)) == len(sets)  # never the same words in another order
    ctx = BenchContext(model=model, data=str(world), limit=2, options={"ways": "2", "shots": "1",
                                                                      "video_as": "oracle"})
    result = run_benches(["fewshot"], ctx)["results"]["fewshot"]
    assert result["settings"]["codes"] == codes and "2way_1shot/acc" in result["metrics"]
    with pytest.raises(ValueError, match="control for the LLM scorer"):
        run_benches(["fewshot"], BenchContext(model=model, data=str(world), limit=2,
                                              options={"video_as": "oracle", "scorer": "prototype"}))


def test_fewshot_names_labels_the_text_tokenizer_never_learned(model):
    from mmvid.evaluation.fewshot import unlearned_pieces

    tok = model.text_tokenizer
    known = next(w for w in ("red", "star", "circle", "moves") if not unlearned_pieces(tok, [w]))
    found = unlearned_pieces(tok, [known, "\u00e9\u00e9"])  # accented letters: byte fallback
    assert set(found) == {"\u00e9\u00e9"} and all(p.startswith("<0x") for p in found["\u00e9\u00e9"])


def test_prototype_choice_is_the_nearest_class_mean_by_cosine():
    torch.manual_seed(0)
    support = [torch.randn(6, dtype=torch.float64) for _ in range(6)]
    labels = ["a", "b", "c"]
    support_labels = ["a", "b", "c", "a", "b", "c"]
    query = torch.randn(6, dtype=torch.float64)
    choice, sims = prototype_choice(support, support_labels, query, labels)
    unit = lambda v: v / v.norm()  # noqa: E731
    expected = [float(unit(unit(support[i]) + unit(support[i + 3])) @ unit(query)) for i in range(3)]
    assert sims == pytest.approx(expected, abs=1e-9) and choice == max(range(3), key=expected.__getitem__)
    # a query equal to one class's only support vector picks that class
    assert prototype_choice(support[:3], labels, support[1] * 3, labels)[0] == 1
    with pytest.raises(ValueError, match="no support"):
        prototype_choice(support[:2], ["a", "b"], query, labels)


def test_fewshot_prototype_scorer_needs_no_llm(world):
    options = {"ways": "2", "shots": "1,2", "scorer": "prototype", "tokenizer": "vtok_tiny", "frames": "8"}
    record = run_benches(["fewshot"],
                         BenchContext(model_path="/nonexistent", data=str(world), limit=4, options=options))
    result = record["results"]["fewshot"]
    assert result["settings"]["scorer"] == "prototype" and result["settings"]["tokenizer"] == "vtok_tiny"
    metrics = {k: v["value"] for k, v in result["metrics"].items()}
    assert set(metrics) == {"2way_1shot/acc", "2way_2shot/acc"} and all(0 <= v <= 1 for v in metrics.values())
    words = dict(options, video_as="words", tokenizer="sweettok_tiny")
    record = run_benches(["fewshot"],
                         BenchContext(model_path="/nonexistent", data=str(world), limit=2, options=words))
    assert record["results"]["fewshot"]["settings"]["video_as"] == "words"
    with pytest.raises(ValueError, match="word ids"):
        run_benches(["fewshot"], BenchContext(model_path="/nonexistent", data=str(world), limit=1,
                                              options=dict(options, video_as="words")))
    with pytest.raises(ValueError, match="scorer"):
        run_benches(["fewshot"], BenchContext(data=str(world), limit=1, options={"scorer": "knn"}))


def test_cli_writes_a_reproducible_record(saved_model, world, tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "eval/run.py", "--bench", "tv_align", "--model", str(saved_model), "--data",
           str(world), "--limit", "6", "--output", str(out), "--log-samples"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| tv_align" in result.stdout
    record = json.loads(out.read_text())
    assert record["schema_version"] == 1 and record["git_commit"]
    settings = record["settings"]
    for key in ("model", "frames", "sampling", "fps", "prompt_template", "decode_backend", "seed", "data",
                "limit"):
        assert key in settings, key
    assert settings["frames"] == 8 and settings["prompt_template"]
    assert record["results"]["tv_align"]["metrics"]["acc"]["n"] == 6
    assert len(record["samples"]["tv_align"]) == 6


def test_cli_errors_are_clear(tmp_path, world):
    run = lambda *a: subprocess.run([sys.executable, "eval/run.py", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    missing = run("--bench", "tv_align", "--model", str(tmp_path / "none"), "--data", str(world))
    assert missing.returncode == 2 and "no VideoLLM checkpoint" in missing.stderr
    no_data = run("--bench", "tv_align", "--model", str(tmp_path / "none"), "--data",
                  str(tmp_path / "no-world"))
    assert no_data.returncode == 2 and "benchmark file not found" in no_data.stderr
    default = run("--bench", "tv_align", "--model", "runs/sft-default/final-missing", "--data", str(world))
    assert default.returncode == 2
    unknown = run("--bench", "mmlu_pro_video")
    assert unknown.returncode == 2 and "unknown bench" in unknown.stderr and "tv_align" in unknown.stderr


def test_evaluate_on_a_live_model_writes_the_same_json(model, world, tmp_path):
    model.train()
    record = evaluate(model, ["tv_align"], output=tmp_path / "live.json", data=str(world), limit=4)
    assert model.training  # restored
    assert json.loads((tmp_path / "live.json").read_text())["results"] == json.loads(
        json.dumps(record["results"]))
    assert torch.is_grad_enabled()


def test_end_of_answer_scores_each_option_as_the_whole_answer(model):
    """end_of_answer=True adds log p(end-of-turn | context + option) to each option's score, so an option that
    extends another ("moves down and to the left" beside "moves down") can win; without it, it never can."""
    from mmvid.evaluation.scoring import continuation_logprobs
    from mmvid.prompting import encode_prompt

    messages = [{"role": "user", "content": "What does it do?"}]
    options = ["moves down", "moves down and to the left"]
    plain = continuation_logprobs(model, messages, options)
    whole = continuation_logprobs(model, messages, options, end_of_answer=True)
    assert plain[1] < plain[0]  # the extension's probability is the prefix's times factors below 1
    tok = model.text_tokenizer
    for option, p, w in zip(options, plain, whole):
        ids = (encode_prompt(tok, messages, model.video_ids, [])
               + tok(option, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        end = float(torch.log_softmax(logits, -1)[tok.eos_token_id])
        assert w == pytest.approx(p + end, abs=1e-4)


def test_continuation_scores_do_not_depend_on_the_batch_size(model):
    """One scorer for every bench, left-padded with position ids: 1 and 8 continuations per forward pass
    give the same scores, with a video in the context and without."""
    from mmvid.evaluation.scoring import continuation_logprobs
    from mmvid.testing import world_clips
    from mmvid.text_tokenizer import VIDEO_TOKEN

    options = ["moves down", "moves down and to the left", "rotates", "a small red star that bounces quickly",
               "shrinks", "grows slowly", "moves up quickly", "a large blue square", "bounces"]
    with torch.no_grad():
        features = model.encode_video(world_clips(1, model.config.num_frames, model.image_size))
    for messages, video in (([{"role": "user", "content": f"{VIDEO_TOKEN}\nWhat does the object do?"}],
                             features),
                            ([{"role": "user", "content": "What does it do?"}], None)):
        one, eight = (continuation_logprobs(model, messages, options, video, end_of_answer=True, batch_size=n)
                      for n in (1, 8))
        torch.testing.assert_close(torch.tensor(eight), torch.tensor(one))


def test_a_broken_video_is_unscorable_and_the_run_goes_on(model, world, tmp_path, saved_model):
    """One undecodable video among good ones: its questions are reported and counted as unscorable, never as
    right or wrong; the other questions are scored; --strict stops at it (exit 2)."""
    import shutil

    videos = tmp_path / "videos"
    shutil.copytree(world / "test" / "videos", videos)
    questions = [json.loads(x) for x in (world / "test" / "tv_align.jsonl").read_text().splitlines()][:12]
    broken = questions[0]["video"]
    good = (videos / Path(broken).name).read_bytes()
    (videos / Path(broken).name).write_bytes(good[: len(good) // 3])  # truncated: no frame decodes
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({**q, "video": "videos/" + Path(q["video"]).name}) + "\n"
                             for q in questions))
    n_broken = sum(q["video"] == broken for q in questions)
    record = run_benches(["tv_align"], BenchContext(model=model, data=str(bench), log_samples=True))
    result = record["results"]["tv_align"]
    assert result["metrics"]["unscorable"]["value"] == n_broken and result["metrics"]["unscorable"]["n"] == 12
    assert result["metrics"]["acc"]["n"] == 12 - n_broken
    assert result["settings"]["unscorable_questions"] == n_broken
    (path, reason), = result["settings"]["unreadable_videos"].items()
    assert path.endswith(Path(broken).name) and reason
    assert sum("unscorable" in s for s in record["samples"]["tv_align"]) == n_broken
    cmd = [sys.executable, "eval/run.py", "--bench", "tv_align", "--model", str(saved_model), "--data",
           str(bench), "--strict", "--output", str(tmp_path / "strict.json")]
    strict = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 2 and Path(broken).name in strict.stderr

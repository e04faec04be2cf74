"""The public video benchmarks (mvbench, videomme, nextqa_mc, egoschema, perceptiontest_mc): each read from a
fixture in its published layout (the world's videos and questions, written by
`mmvid.evaluation.world_benchmarks`, plus one malformed row), scored both ways, per task and category."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.evaluation import BenchContext, run_benches
from mmvid.evaluation.cli import main as cli_main
from mmvid.evaluation.video_mc import BenchmarkFormatError, extract_choice
from mmvid.evaluation.world_benchmarks import write_world_benchmarks
from mmvid.testing import indexed_frames, tiny_videollm

BENCHES = ("mvbench", "videomme", "nextqa_mc", "egoschema", "perceptiontest_mc")
# The published fields (lmms-eval 0.7.3's task files and the releases), which the fixtures must have exactly.
SCHEMAS = {
    "mvbench": {"video", "question", "candidates", "answer"},
    "videomme": {"video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id",
                 "task_type", "question", "options", "answer"},
    "nextqa_mc": {"video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1",
                  "a2", "a3", "a4"},
    "egoschema": {"question_idx", "question", "video_idx", "option", "answer"},
    "perceptiontest_mc": {"video_name", "question", "question_id", "options", "answer_id", "area",
                          "reasoning", "tag"},
}
# One malformed row per benchmark, in its own layout.
BAD_ROWS = {
    "mvbench": {"video": "000000.mp4", "question": "Which?", "candidates": ["a", "b"], "answer": "c"},
    "videomme": {"video_id": "x", "duration": "short", "domain": "d", "sub_category": "s", "url": "",
                 "videoID": "w000000", "question_id": "bad", "task_type": "t", "question": "Which?",
                 "options": ["A. a", "B. b"], "answer": "Z"},
    "nextqa_mc": {"video": 0, "frame_count": 0, "width": 0, "height": 0, "question": "Which?", "answer": 7,
                  "qid": 99, "type": "DO", "a0": "a", "a1": "b", "a2": "c", "a3": "d", "a4": "e"},
    "egoschema": {"question_idx": "99", "question": "Which?", "video_idx": "ego-000000",
                  "option": ["A. a", "B. b", "C. c", "D. d"], "answer": "0"},
    "perceptiontest_mc": {"video_name": "video_000000", "question": "Which?", "question_id": 99,
                          "options": ["a", "b", "c"], "answer_id": 5, "area": "semantics", "reasoning": "x",
                          "tag": []},
}


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    return json.loads(path.read_text())


def _append(path: Path, row: dict) -> int:
    """Append a row to a question file in its own format; returns its 1-based row number."""
    rows = _rows(path) + [row]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(json.dumps(rows))
    return len(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "world"
    build_world(out, WorldSettings(train=0, val=0, test=3, fewshot=0, frames=8, size=32), progress=False)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_videollm(tmp_path_factory.mktemp("bench-model"))


@pytest.fixture(scope="module")
def fixtures(world, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """bench -> (--data, where its malformed row is)."""
    data = write_world_benchmarks(world, tmp_path_factory.mktemp("layouts"), limit=10)
    out = {}
    for bench, path in data.items():
        target = sorted((path / "json").glob("*.json"))[0] if bench == "mvbench" else path
        row = _append(target, BAD_ROWS[bench])
        out[bench] = (path, f"{target} row {row}")
    return out


def _run(model, data, bench, **options) -> dict:
    batch_size = int(options.pop("batch_size", 8))
    ctx = BenchContext(model=model, data=str(data), log_samples=True, batch_size=batch_size,
                       options={k: str(v) for k, v in options.items()})
    record = run_benches([bench], ctx)
    return {**record["results"][bench], "samples": record["samples"][bench]}


@pytest.mark.parametrize("bench", BENCHES)
def test_a_benchmark_in_its_published_layout_is_scored_both_ways_per_group(model, fixtures, bench):
    data, malformed_where = fixtures[bench]
    files = sorted((data / "json").glob("*.json")) if bench == "mvbench" else [data]
    for path in files:
        assert all(set(row) == SCHEMAS[bench] for row in _rows(path))  # the published fields, no others
    result = _run(model, data, bench, mode="both")
    m, settings, samples = result["metrics"], result["settings"], result["samples"]
    assert m["malformed_rows"]["value"] == 1  # reported with its file and row, then skipped
    assert settings["malformed"][0]["where"] == malformed_where and settings["malformed"][0]["error"]
    n = settings["questions"]
    assert n == len(samples) > 0 and m["unscorable"]["value"] == 0
    assert m["acc"]["n"] == m["gen_acc"]["n"] == m["gen_unparsed"]["n"] == n and 0 <= m["acc"]["value"] <= 1
    hits = [s["choice"] == s["answer"] for s in samples]
    assert m["acc"]["value"] == pytest.approx(np.mean(hits))
    parsed = [s["parsed"] for s in samples]
    assert m["gen_unparsed"]["value"] == pytest.approx(np.mean([p is None for p in parsed]))
    right = [p == s["answer"] for p, s in zip(parsed, samples)]
    assert m["gen_acc"]["value"] == pytest.approx(np.mean(right))
    per_group = [k for k in m if "/" in k and k.endswith("/acc")]
    assert per_group and all(m[k]["n"] <= n for k in per_group)
    if bench in ("videomme", "nextqa_mc", "perceptiontest_mc"):
        assert any("=" in k for k in per_group)  # category fields (duration=..., type=..., area=...)
    assert all(len(s["frame_indices"]) == model.processor.config.num_frames for s in samples)


def test_scores_do_not_depend_on_the_batch_size(model, fixtures):
    data, _ = fixtures["videomme"]
    one = _run(model, data, "videomme", mode="both", batch_size=1)
    eight = _run(model, data, "videomme", mode="both", batch_size=8)
    values = [{k: v["value"] for k, v in r["metrics"].items()} for r in (one, eight)]
    assert values[0] == values[1]
    assert (one["settings"]["batch_size"], eight["settings"]["batch_size"]) == (1, 8)
    for a, b in zip(one["samples"], eight["samples"]):
        assert a["id"] == b["id"] and a["choice"] == b["choice"] and a["generated"] == b["generated"]
        np.testing.assert_allclose(a["loglikelihoods"], b["loglikelihoods"], rtol=0, atol=1e-4)


def test_mvbench_windows_and_frame_folders(model, tmp_path, make_video):
    """A windowed item samples only its [start, end) seconds; a TVQA-style frame folder under the task's
    source folder reads as a 3 fps video; a plain task's video is found in its source folder."""
    from PIL import Image

    root = tmp_path / "MVBench"
    frames_dir = root / "video" / "tvqa" / "frames_fps3_hq" / "clip1"
    frames_dir.mkdir(parents=True)
    for t, frame in enumerate(indexed_frames(30)):
        Image.fromarray(frame).save(frames_dir / f"{t + 1:05d}.png")
    src = make_video("a.mp4", num_frames=24)
    (root / "video" / "perception" / "videos").mkdir(parents=True)
    (root / "video" / "perception" / "videos" / "a.mp4").write_bytes(src.read_bytes())
    (root / "json").mkdir()
    item = {"question": "What happens?", "candidates": ["a cat", "a dog"], "answer": "a dog"}
    windowed = [{**item, "video": "clip1", "start": 2.0, "end": 6.0}]
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(windowed))
    (root / "json" / "action_count.json").write_text(json.dumps([{**item, "video": "a.mp4"}]))
    samples = {s["task"]: s for s in _run(model, root, "mvbench", mode="loglikelihood")["samples"]}
    windowed = samples["episodic_reasoning"]
    assert windowed["window"] == [2.0, 6.0] and windowed["video"].endswith("tvqa/frames_fps3_hq/clip1")
    assert 6 <= min(windowed["frame_indices"]) and max(windowed["frame_indices"]) < 18  # 2-6 s at 3 fps
    assert samples["action_count"]["video"].endswith("perception/videos/a.mp4")
    assert "unscorable" not in samples["action_count"]


def test_an_unreadable_video_is_unscorable_and_strict_stops(model, fixtures, tmp_path):
    data, _ = fixtures["perceptiontest_mc"]
    rows = _rows(data)[:4]
    rows[1] = {**rows[1], "video_name": "missing"}
    broken = tmp_path / "mc_question_val.json"
    broken.write_text(json.dumps(rows))
    result = _run(model, broken, "perceptiontest_mc", mode="loglikelihood", video_root=data.parent / "videos")
    assert result["metrics"]["unscorable"]["value"] == 1 and result["metrics"]["acc"]["n"] == 3
    assert list(result["settings"]["unreadable_videos"]) == [str(data.parent / "videos" / "missing.mp4")]
    with pytest.raises(FileNotFoundError):
        _run(model, broken, "perceptiontest_mc", mode="loglikelihood", video_root=data.parent / "videos",
             strict=1)
    malformed, _ = fixtures["egoschema"]
    with pytest.raises(BenchmarkFormatError, match=r"egoschema\.json row \d+: 'option' must have 5 options"):
        _run(model, malformed, "egoschema", mode="loglikelihood", strict=1)


def test_the_releases_own_layouts(model, fixtures, tmp_path):
    """EgoSchema's questions.json + subset_answers.json (a question without an answer is predicted, not
    scored), PerceptionTest's per-video JSON, NExT-QA's map_vid_vidorID.json."""
    ego = [r for r in _rows(fixtures["egoschema"][0]) if len(r["option"]) == 5][:3]
    questions = [{"q_uid": r["video_idx"] + f"-{i}", "google_drive_id": "", "question": r["question"],
                  **{f"option {k}": o[3:] for k, o in enumerate(r["option"])}} for i, r in enumerate(ego)]
    videos = fixtures["egoschema"][0].parent / "videos"
    for q, r in zip(questions, ego):
        (videos / f"{q['q_uid']}.mp4").symlink_to((videos / f"{r['video_idx']}.mp4").resolve())
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    (tmp_path / "subset_answers.json").write_text(json.dumps({questions[0]["q_uid"]: int(ego[0]["answer"]),
                                                              questions[1]["q_uid"]: int(ego[1]["answer"])}))
    result = _run(model, tmp_path / "questions.json", "egoschema", mode="generate", video_root=videos,
                  answers=tmp_path / "subset_answers.json")
    assert result["metrics"]["no_answer_key"]["value"] == 1 and result["metrics"]["gen_acc"]["n"] == 2
    assert result["samples"][2]["answer"] is None and "generated" in result["samples"][2]

    flat = [r for r in _rows(fixtures["perceptiontest_mc"][0]) if r["answer_id"] < 3][:3]
    nested = {}
    for r in flat:
        nested.setdefault(r["video_name"], {"metadata": {}, "mc_question": []})["mc_question"].append(
            {"id": r["question_id"], "question": r["question"], "options": r["options"],
             "answer_id": r["answer_id"], "area": r["area"], "reasoning": r["reasoning"], "tag": r["tag"]})
    (tmp_path / "all_valid.json").write_text(json.dumps(nested))
    pt = _run(model, tmp_path / "all_valid.json", "perceptiontest_mc", mode="loglikelihood",
              video_root=fixtures["perceptiontest_mc"][0].parent / "videos")
    assert pt["metrics"]["acc"]["n"] == 3 and pt["metrics"]["malformed_rows"]["value"] == 0

    nq_root = tmp_path / "NExTVideo"
    (nq_root / "1001").mkdir(parents=True)
    source = fixtures["nextqa_mc"][0].parent / "NExTVideo" / "0.mp4"
    (nq_root / "1001" / "4242.mp4").symlink_to(source.resolve())
    (nq_root / "map_vid_vidorID.json").write_text(json.dumps({"77": "1001/4242"}))
    row = {**_rows(fixtures["nextqa_mc"][0])[0], "video": "77"}
    with (tmp_path / "val.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    nq = _run(model, tmp_path / "val.csv", "nextqa_mc", mode="loglikelihood", video_root=nq_root)
    assert nq["samples"][0]["video"] == str(nq_root / "1001" / "4242.mp4") and "choice" in nq["samples"][0]


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("(C)", 2), ("C.", 2), ("The answer is D.", 3), ("Best option:(B) blue", 1), ("B. blue", 1),
    ("moves down and to the left", 3), ("It moves down", 2), ("A small red square", 0), ("D", 3),
    ("", None), ("I cannot tell", None), ("E", None), ("A small green square", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, ["red", "blue", "moves down", "moves down and to the left"]) == expected


def test_the_cli_writes_per_sample_jsonl_with_frame_indices(model, fixtures, tmp_path):
    saved = model.save_pretrained(tmp_path / "final")
    data, _ = fixtures["nextqa_mc"]
    output = tmp_path / "nq.json"
    assert cli_main(["--bench", "nextqa_mc", "--model", str(saved), "--data", str(data), "--limit", "3",
                     "--mode", "loglikelihood", "--log-samples", "--output", str(output)]) == 0
    lines = (tmp_path / "nq_samples_nextqa_mc.jsonl").read_text().splitlines()
    frames = model.processor.config.num_frames
    assert len(lines) == 3 and all(len(json.loads(x)["frame_indices"]) == frames for x in lines)
    record = json.loads(output.read_text())
    assert record["results"]["nextqa_mc"]["settings"]["questions_per_second"] > 0
    assert cli_main(["--bench", "videomme", "--model", str(saved), "--output", str(tmp_path / "x.json")]) == 2

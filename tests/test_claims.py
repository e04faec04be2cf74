"""eval/claims.py's bookkeeping (issue 19): what a claim skips when its pieces exist, and how the arms are
summarised. The training itself is the project's own jobs, tested where they live."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mmvid.evaluation import claims

CATEGORIES = claims.CATEGORIES


def test_mean_and_stderr_takes_the_larger_of_seed_spread_and_sampling_error():
    assert claims.mean_and_stderr([0.5], [0.01]) == (0.5, 0.01)
    m, se = claims.mean_and_stderr([0.4, 0.6], [0.01, 0.01])
    assert m == pytest.approx(0.5) and se == pytest.approx(0.1)  # std 0.1414 / sqrt(2)
    m, se = claims.mean_and_stderr([0.5, 0.5], [0.02, 0.02])
    assert se == pytest.approx(math.sqrt(2 * 0.02**2) / 2)


def _fake_vtok_run(folder: Path, overall: float, tokens: int) -> None:
    (folder / "final").mkdir(parents=True)
    metrics = {"acc": {"value": overall, "stderr": 0.01, "n": 1000},
               "acc_letter": {"value": 0.25, "stderr": 0.01, "n": 1000},
               **{f"{c}/acc": {"value": overall, "stderr": 0.03, "n": 160} for c in CATEGORIES}}
    (folder / "eval-test.json").write_text(json.dumps(
        {"settings": {"tokens_per_video": tokens}, "results": {"tv_align": {"metrics": metrics}}}))
    (folder / "final" / "train_summary.json").write_text(json.dumps({"steps": 800, "seconds": 600.0}))
    (folder / "stages.jsonl").write_text(json.dumps({"stage": "video_tokenizer", "seconds": 60.0}) + "\n")
    logs = [{"phase": "curriculum", "samples_per_s": 16.0}] * 2
    logs += [{"phase": "train", "samples_per_s": 8.0}] * 2
    logs.append({"phase": "train", "samples_per_s": 0.5})  # slowed by another job: the median ignores it
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))


def test_vtok_claim_reuses_finished_runs_and_states_the_gap(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "_job", lambda *a, **k: pytest.fail(f"ran a job: {a}"))
    for seed, (v, f, p) in enumerate([(0.50, 0.46, 0.40), (0.48, 0.44, 0.42)]):
        _fake_vtok_run(tmp_path / f"vtok-s{seed}", v, 71)
        _fake_vtok_run(tmp_path / f"frames-s{seed}", f, 512)
        _fake_vtok_run(tmp_path / f"frames_pooled-s{seed}", p, 72)
    record = claims.run_vtok([0, 1], list(claims.VTOK_ARMS), "cfg.yaml", "test.jsonl", tmp_path, [], 1000)
    gap = record["gap_vtok_minus_frames"]
    assert gap["value"] == pytest.approx(0.04)
    assert gap["stderr"] == pytest.approx(math.hypot(0.01, 0.01))  # seed spread 0.01 each
    assert gap["token_ratio"] == pytest.approx(71 / 512)
    vtok = record["arms"]["vtok"]
    assert vtok["sft_minutes"] == 10.0 and vtok["tokenizer_minutes"] == 1.0
    # median compute per step and phase x steps (batch 8): 320 curriculum steps at 0.5 s, 480 at 1 s
    assert vtok["sft_compute_minutes"] == pytest.approx((320 * 0.5 + 480 * 1.0) / 60, abs=0.01)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["settings"]["test_limit"] == 1000 and "git_commit" in saved
    assert (tmp_path / "claim_vtok.png").stat().st_size > 0
    # --no-train summarises what is finished: a missing run is left out, not trained
    (tmp_path / "frames_pooled-s1" / "eval-test.json").unlink()
    partial = claims.run_vtok([0, 1], list(claims.VTOK_ARMS), "c", "t", tmp_path, [], 1000, train=False)
    assert partial["settings"]["seeds_per_arm"]["frames_pooled"] == [0]
    assert partial["arms"]["frames_pooled"]["seeds"] == 1
    table = claims.vtok_table(record)
    assert "| VTok (key frame + residuals) | 71 |" in table and "+0.040 ± 0.014" in table


def test_unknown_arms_are_refused(tmp_path):
    with pytest.raises(KeyError, match="known"):
        claims.run_vtok([0], ["vtok", "pooled"], "c", "t", tmp_path, [])
    with pytest.raises(KeyError, match="known"):
        claims.run_sweettok([0], ["lfq"], "c", 1.0, "d", 4, tmp_path, parallel=False)
    with pytest.raises(KeyError, match="known"):
        claims.run_coordtok(["larp"], 16, 1.0, "d", 2, tmp_path, parallel=False)


def test_sweettok_claim_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "_job", lambda *a, **k: pytest.fail(f"ran a job: {a}"))
    for name, psnr in (("dqae_mlc", 19.0), ("flattened_mlc", 18.0), ("dqae_plain", 18.5)):
        folder = tmp_path / f"{name}-s0"
        (folder / "final").mkdir(parents=True)
        (folder / "final" / "config.json").write_text("{}")
        metrics = {"psnr": {"value": psnr, "stderr": 0.1}, "ssim": {"value": 0.6, "stderr": 0.01},
                   "frechet_proxy": {"value": 0.2}, "tokens_per_video": {"value": 80.0}}
        (folder / "recon-test.json").write_text(json.dumps({"results": {"recon": {"metrics": metrics}}}))
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 500, "loss": 0.1, "seconds": 360.0}) + "\n")
    arms = claims.DEFAULT_SWEETTOK_ARMS
    record = claims.run_sweettok([0], arms, "c", 6.0, "d", 200, tmp_path, parallel=True)
    assert record["dqae_minus_flattened"]["psnr"] == pytest.approx(1.0)
    assert record["mlc_minus_plain"]["psnr"] == pytest.approx(0.5)
    run = record["runs"]["dqae_mlc"][0]
    assert run["steps"] == 500 and run["train_minutes"] == 6.0
    assert (tmp_path / "claim_sweettok.png").is_file()


def test_a_failed_job_names_its_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fail.py").write_text("import sys; print('boom'); sys.exit(3)\n")
    with pytest.raises(RuntimeError, match="exit 3.*log.txt"):
        claims._job(["fail.py"], tmp_path / "log.txt")
    assert "boom" in (tmp_path / "log.txt").read_text()

"""The repository layout keeps Hugging Face's `tokenizers` importable everywhere (STYLE.md)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
JOB_FOLDERS = ("tokenizers", "train", "eval")
PROBE = (
    "import tokenizers, transformers\n"
    "from transformers import AutoTokenizer\n"
    "assert hasattr(tokenizers, 'Tokenizer'), tokenizers\n"
    "print(tokenizers.__file__)\n"
    "print(AutoTokenizer.__module__)\n"
)


def _is_hf_tokenizers(path: str) -> bool:
    resolved = Path(path).resolve()
    return (ROOT / "tokenizers") not in resolved.parents and "site-packages" in resolved.parts


def test_tokenizers_is_hugging_faces_in_this_process():
    from transformers import AutoTokenizer  # noqa: F401

    import tokenizers

    assert _is_hf_tokenizers(tokenizers.__file__), tokenizers.__file__
    assert hasattr(tokenizers, "Tokenizer")  # Hugging Face's API, not a namespace package


def test_tokenizers_is_hugging_faces_from_the_repo_root():
    # `python -c` puts the current directory first on sys.path: the shadowing hazard.
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path, module = out.stdout.split()[-2:]
    assert _is_hf_tokenizers(path), path
    assert module.startswith("transformers.")


@pytest.mark.parametrize("folder", JOB_FOLDERS)
def test_tokenizers_is_hugging_faces_from_a_script_run_by_path(folder):
    # A script run by path gets its own folder first on sys.path, as `python tokenizers/train.py` does.
    script = ROOT / folder / f"_probe_{uuid.uuid4().hex}.py"
    script.write_text(PROBE)
    try:
        out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    finally:
        script.unlink()
    assert out.returncode == 0, out.stderr
    assert _is_hf_tokenizers(out.stdout.split()[-2]), out.stdout


def test_job_folders_and_tests_are_not_packages():
    for folder in (*JOB_FOLDERS, "tests"):
        assert (ROOT / folder).is_dir(), folder
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py must not exist"
    assert not (ROOT / "conftest.py").exists(), "a root conftest.py puts the repo root on sys.path"


def test_no_file_is_named_after_a_dependency():
    shadows = {"transformers", "tokenizers", "datasets", "deepspeed", "torch", "decord", "av", "lm_eval",
               "sentencepiece", "einops", "safetensors", "numpy", "yaml", "tqdm", "evaluate", "accelerate"}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files = tracked or [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    for name in files:
        parts = Path(name).parts
        if parts[0] == "mmvid":  # inside the package, names are qualified (mmvid.x)
            continue
        stems = {Path(p).stem for p in parts[1:]}  # a top-level job folder may be named tokenizers/
        assert not stems & shadows, f"{name} would shadow a dependency"


def test_pyproject_packages_only_mmvid_and_keeps_flash_attn_optional():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["mmvid*"]
    deps = config["project"]["dependencies"]
    assert not any(d.startswith("flash-attn") for d in deps)
    assert any(d.startswith("flash-attn") for d in config["project"]["optional-dependencies"]["gpu"])
    for name in ("torch", "transformers", "deepspeed", "sentencepiece", "decord", "av", "lm-eval", "einops",
                 "safetensors"):
        assert any(d.split(">")[0].split("=")[0] == name for d in deps), name
    # Every dependency line carries a comment naming its user.
    text = (ROOT / "pyproject.toml").read_text()
    for line in text.splitlines():
        if line.strip().startswith('"') and line.strip().rstrip(",").endswith('"') and (">=" in line):
            pytest.fail(f"dependency without a comment: {line.strip()}")
    assert config["tool"]["pytest"]["ini_options"]["addopts"].startswith("--import-mode=importlib")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme.split("##")[0], "the README opens with the test command"
    assert "make test" in ci

"""Shared fixtures: videos the tests write themselves (nothing is downloaded)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from mmvid.data import write_video
from mmvid.testing import indexed_frames


@pytest.fixture
def make_video(tmp_path: Path):
    """Factory: write an indexed clip (see mmvid.testing) and return its path."""

    def make(name: str = "clip.mp4", num_frames: int = 24, fps: float = 8.0, height: int = 32,
             width: int = 32) -> Path:
        return write_video(tmp_path / name, indexed_frames(num_frames, height, width), fps=fps)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other work on a small CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def one_rank():
    """`with one_rank(): run(cfg)` runs a training loop in the test's own process, as on one rank of a launch
    (gloo). The process group it starts stays to the end: DeepSpeed keeps its groups for the process's
    life."""

    @contextlib.contextmanager
    def context():
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29695"}.items():
                patch.setenv(key, value)
            yield

    return context

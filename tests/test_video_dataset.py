from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmvid.data.shapes.build import WorldSettings, build_world
from mmvid.data.video_dataset import ResumableSampler, VideoClipDataset, list_videos
from mmvid.data.video_io import tensor_to_frames
from mmvid.testing import frame_index_of


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    build_world(out, WorldSettings(train=6, val=2, test=2, fewshot=0, frames=8, size=32), progress=False)
    return out


def corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


# ---------------------------------------------------------------- list_videos


def test_list_videos_world_splits(world):
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        videos = list_videos(world, split)
        assert videos == sorted(videos) and len(videos) == n
        assert all(v.parent == world / split / "videos" and v.suffix == ".mp4" for v in videos)
    with pytest.raises(ValueError, match="available splits.*train"):
        list_videos(world)
    with pytest.raises(ValueError, match="'nope'.*val"):
        list_videos(world, "nope")
    with pytest.raises(ValueError, match="no videos found"):  # fewshot=0: the folder is empty
        list_videos(world, "fewshot")


def test_list_videos_plain_folder(tmp_path):
    for name in ("b.mp4", "a/z.MKV", "a/b/c.gif", "a/b/d.webm", "c/e.avi", "c/f.mov",
                 "notes.txt", "a/meta.json", "a/b/c.jpg", ".hidden/g.mp4", "a/.h.partial.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_videos(tmp_path)]
    assert found == ["a/b/c.gif", "a/b/d.webm", "a/z.MKV", "b.mp4", "c/e.avi", "c/f.mov"]
    assert list_videos(tmp_path) == list_videos(tmp_path)
    assert [p.name for p in list_videos(tmp_path, "c")] == ["e.avi", "f.mov"]
    with pytest.raises(ValueError, match="no subfolder 'zzz'"):
        list_videos(tmp_path, "zzz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos found.*empty"):
        list_videos(tmp_path / "empty")


def test_list_videos_txt(tmp_path):
    elsewhere = tmp_path / "elsewhere.mp4"
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "train.txt"
    listing.write_text(f"# my videos\n\nclips/b.mp4\n  clips/a.mp4  \n{elsewhere}\n# done\n")
    assert list_videos(listing) == [tmp_path / "lists/clips/b.mp4", tmp_path / "lists/clips/a.mp4", elsewhere]
    with pytest.raises(ValueError, match="split"):
        list_videos(listing, "train")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        list_videos(tmp_path / "empty.txt")


def test_list_videos_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        list_videos(tmp_path / "does-not-exist")


# ---------------------------------------------------------------- VideoClipDataset


def test_dataset_items(world):
    dataset = VideoClipDataset(list_videos(world, "train"), num_frames=4, size=16)
    assert len(dataset) == 6
    item = dataset[2]
    assert item["video"].shape == (3, 4, 16, 16) and item["video"].dtype == torch.float32
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    assert item["video"].std() > 0  # not a blank clip
    assert item["index"] == 2 and item["path"] == str(list_videos(world, "train")[2])
    full = VideoClipDataset(list_videos(world, "val"), num_frames=8, size=None)[0]["video"]
    assert full.shape == (3, 8, 32, 32)
    assert not dataset.bad


def test_dataset_validates_arguments(world):
    videos = list_videos(world, "val")
    for kwargs, match in (
        (dict(videos=[], num_frames=4), "no videos"),
        (dict(videos=videos, num_frames=0), "num_frames"),
        (dict(videos=videos, num_frames=4, sampling="fps"), "sampling"),
        (dict(videos=videos, num_frames=4, backend="ffmpeg"), "backend"),
        (dict(videos=videos, num_frames=4, size=(16, 0)), "size"),
        (dict(videos=videos, num_frames=4, max_bad_fraction=2.0), "max_bad_fraction"),
        (dict(videos=str(videos[0]), num_frames=4), "sequence"),
    ):
        kwargs.setdefault("size", 16)
        with pytest.raises(ValueError, match=match):
            VideoClipDataset(**kwargs)


def test_clip_sampling_is_deterministic_per_index(make_video):
    path = make_video("long.mp4", num_frames=30)
    videos = [path] * 8  # the same video under 8 indices: starts differ by index only

    def starts(seed):
        dataset = VideoClipDataset(videos, num_frames=4, size=None, sampling="clip", seed=seed)
        out = []
        for i in range(len(dataset)):
            frames = frame_index_of(tensor_to_frames(dataset[i]["video"]))
            assert frames == list(range(frames[0], frames[0] + 4))  # consecutive
            out.append(frames[0])
        return out

    first = starts(seed=0)
    assert starts(seed=0) == first  # a resumed run (a new dataset) sees the same clips
    assert len(set(first)) > 1
    assert starts(seed=1) != first


def test_corrupt_video_is_skipped_with_one_warning(world, tmp_path):
    good = list_videos(world, "train")[:3]
    bad = corrupt(tmp_path / "x.mp4")
    dataset = VideoClipDataset([good[0], bad, good[1], good[2]], num_frames=4, size=16, max_bad_fraction=0.5)
    with pytest.warns(RuntimeWarning, match="x.mp4"):
        item = dataset[1]
    assert item["path"] == str(good[1]) and item["index"] == 2  # replaced by the next index
    assert set(dataset.bad) == {str(bad)} and "VideoDecodeError" in dataset.bad[str(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file: a second visit is silent
        assert dataset[1]["index"] == 2
    missing = VideoClipDataset([good[0], tmp_path / "gone.mp4"], num_frames=4, size=16, max_bad_fraction=1.0)
    with pytest.warns(RuntimeWarning, match="gone.mp4"):
        assert missing[1]["index"] == 0  # wraps around
    assert "FileNotFoundError" in missing.bad[str(tmp_path / "gone.mp4")]


def test_too_many_bad_videos_raise_quickly(world, tmp_path):
    bad = [corrupt(tmp_path / f"bad{i}.mp4") for i in range(5)]
    dataset = VideoClipDataset(bad + list_videos(world, "train")[:1], num_frames=4, size=16)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match=r"2 of 6 videos failed.*bad0.mp4"):
        for i in range(len(dataset)):
            dataset[i]
    assert time.perf_counter() - start < 5
    all_bad = VideoClipDataset(bad, num_frames=4, size=16, max_bad_fraction=1.0)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="none of the 5 videos"):
        all_bad[0]


def test_dataloader_with_sampler(world):
    dataset = VideoClipDataset(list_videos(world, "train"), num_frames=4, size=16)
    sampler = ResumableSampler(len(dataset), seed=3)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=0)
    seen = []
    for batch in loader:
        assert batch["video"].shape == (2, 3, 4, 16, 16)
        seen += batch["index"].tolist()
        sampler.advance(len(batch["index"]))
    assert seen == list(ResumableSampler(len(dataset), seed=3)) and sorted(seen) == list(range(6))
    assert sampler.position == len(sampler) == 6
    assert list(loader) == []  # an exhausted epoch stays exhausted until set_epoch
    sampler.set_epoch(1)
    assert len(list(loader)) == 3


# ---------------------------------------------------------------- ResumableSampler


def test_sampler_order_is_seeded_and_changes_per_epoch():
    a, b = ResumableSampler(50, seed=7), ResumableSampler(50, seed=7)
    assert list(a) == list(b) and sorted(a) == list(range(50)) and list(a) != list(range(50))
    assert list(ResumableSampler(50, seed=8)) != list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("num_items,world_size", [(10, 3), (12, 4), (7, 7), (5, 2)])
def test_sampler_ranks_are_disjoint_and_cover(num_items, world_size):
    dropped = [
        list(ResumableSampler(num_items, seed=1, rank=r, world_size=world_size)) for r in range(world_size)]
    assert all(len(s) == num_items // world_size for s in dropped)
    union = [i for s in dropped for i in s]
    assert len(set(union)) == len(union) == (num_items // world_size) * world_size
    padded = [ResumableSampler(num_items, seed=1, rank=r, world_size=world_size, drop_last=False)
              for r in range(world_size)]
    assert len({len(s) for s in padded}) == 1 and len(list(padded[0])) == len(padded[0])
    assert set(i for s in padded for i in s) == set(range(num_items))
    assert len(ResumableSampler(3, rank=4, world_size=5, drop_last=False)) == 1


def test_sampler_resumes_exactly_where_it_stopped():
    for rank in range(2):
        sampler = ResumableSampler(21, seed=5, rank=rank, world_size=2)
        sampler.set_epoch(3)
        full = list(sampler)
        consumed = []
        for index in sampler:
            consumed.append(index)
            if len(consumed) == 4:
                break
        sampler.advance(len(consumed))
        state = sampler.state_dict()
        assert state == {"epoch": 3, "position": 4, "seed": 5, "num_items": 21, "world_size": 2}
        resumed = ResumableSampler(21, seed=5, rank=rank, world_size=2)
        resumed.load_state_dict(state)
        assert consumed + list(resumed) == full
        assert len(resumed) == len(full) == 10  # remaining indices are not subtracted
        resumed.set_epoch(4)
        assert resumed.position == 0 and len(list(resumed)) == 10


def test_sampler_rejects_mismatched_state_and_bad_arguments():
    state = ResumableSampler(20, seed=1, world_size=2).state_dict()
    for kwargs in (dict(num_items=21, seed=1, world_size=2), dict(num_items=20, seed=2, world_size=2),
                   dict(num_items=20, seed=1, world_size=4)):
        with pytest.raises(ValueError, match="saved with"):
            ResumableSampler(**kwargs).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        ResumableSampler(20).load_state_dict({"epoch": 0})
    sampler = ResumableSampler(4)
    with pytest.raises(ValueError, match="end of the epoch"):
        sampler.advance(5)
    for kwargs in (dict(num_items=0), dict(num_items=4, rank=2, world_size=2),
                   dict(num_items=2, world_size=3)):
        with pytest.raises(ValueError):
            ResumableSampler(**kwargs)

"""Training data in the formats people have (issue 22): LLaMA-Factory / ms-swift ShareGPT, LLaVA-Video-178K's
`<image>`-for-video files and LLaVA-NeXT mixture YAMLs are read into mmvid's one internal form, checked by
`python -m mmvid.data.validate` and trained on by train/sft.py. Every fixture is written here in its published
schema; the videos are generated."""

from __future__ import annotations

import json
import logging

import pytest

from mmvid.data.conversations import (
    DataFormatError,
    check_sample,
    detect_format,
    load_conversations,
    read_data_file,
)
from mmvid.data.mixture import MixtureEntry, load_mixture, read_training_data
from mmvid.data.validate import main as validate_main
from mmvid.data.validate import validate_file
from mmvid.sft.data import SFTDataset


def _turns(*pairs, system=None) -> list[dict]:
    turns = [{"from": "system", "value": system}] if system else []
    for question, answer in pairs:
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


# mmvid's own form: the reference every other format must read into
MMVID = [
    {"id": "v1", "video": "a.mp4",
     "conversations": _turns(("<video>\nWhat moves?", "A red circle."), ("What colour is it?", "red"),
                             system="Answer briefly.")},
    {"id": "v2", "video": ["a.mp4", "b.mp4"],
     "conversations": _turns(("<video>\n<video>\nIs the same object in both?", "No."))},
    {"id": "t1", "conversations": _turns(("Name a shape.", "A star."))},
]
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
MIXED = {"id": "LV-mixed", "video": "a.mp4", "conversations": _turns(("<image>\n<video>\nSame?", "Yes."))}


def _swift(sample: dict) -> dict:
    """ms-swift's standard format / LLaMA-Factory's OpenAI-style ShareGPT (its mllm_video_demo.json)."""
    row = {"id": sample["id"],
           "messages": [{"role": ROLES[t["from"]], "content": t["value"]} for t in sample["conversations"]]}
    if "video" in sample:
        row["videos"] = [sample["video"]] if isinstance(sample["video"], str) else sample["video"]
    return row


def _factory(sample: dict) -> dict:
    """LLaMA-Factory's default ShareGPT tags: "conversations" of from/value, a "system" column, "videos"."""
    turns = [t for t in sample["conversations"] if t["from"] != "system"]
    row = {"conversations": turns, "videos": _swift(sample).get("videos", []), "id": sample["id"]}
    system = [t["value"] for t in sample["conversations"] if t["from"] == "system"]
    return {**row, "system": system[0]} if system else row


def _llava_video(sample: dict) -> dict:
    """LLaVA-Video-178K's *_processed.json rows: `<image>` for the video, a data_source."""
    turns = [dict(t, value=t["value"].replace("<video>", "<image>")) for t in sample["conversations"]]
    return {**sample, "conversations": turns, "data_source": "0_30_s_academic_v0_1"}


def _write(path, rows, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" if jsonl else json.dumps(rows, indent=2))
    return path


# ---------------------------------------------------------------- formats -> one internal form


def test_sharegpt_and_llava_video_178k_files_read_as_the_mmvid_file(tmp_path):
    files = {"mmvid": _write(tmp_path / "mmvid.json", MMVID),
             "swift": _write(tmp_path / "swift.jsonl", [_swift(s) for s in MMVID], jsonl=True),
             "factory": _write(tmp_path / "factory.json", [_factory(s) for s in MMVID]),
             "llava_video": _write(tmp_path / "llava_video.json", [_llava_video(s) for s in MMVID])}
    loaded = {name: load_conversations(path) for name, path in files.items()}
    assert loaded["mmvid"] == MMVID
    assert loaded["swift"] == MMVID and loaded["factory"] == MMVID
    assert [{k: v for k, v in s.items() if k != "data_source"} for s in loaded["llava_video"]] == MMVID
    assert read_data_file(files["swift"]).formats == ["sharegpt"] * 3
    assert all(check_sample(s) == [] for s in loaded["swift"])
    # What training reads: the same samples, whatever the file's format.
    items = {name: SFTDataset([path], processor=None).items for name, path in files.items()}
    strip = lambda rows: [({k: v for k, v in s.items() if k != "data_source"}, root) for s, root in rows]  # noqa: E731
    assert strip(items["llava_video"]) == items["swift"] == items["factory"] == items["mmvid"]


def test_the_format_is_read_from_the_keys_and_can_be_forced(tmp_path):
    assert detect_format({"messages": []}) == "sharegpt"
    assert detect_format({"conversations": [], "videos": []}) == "sharegpt"
    assert detect_format({"conversations": [], "video": "a.mp4"}) == "llava"
    assert detect_format({"video": "a.mp4", "prompt": "a red star"}) == "t2v"
    assert detect_format({"instruction": "x"}) is None and detect_format([1]) is None
    # `<image>` is the video only with a "video" and no "image" key; format=mmvid keeps it as text.
    image = {"id": "img", "image": "x.jpg", "conversations": _turns(("<image>\nWhat is this?", "A cat."))}
    text = {"id": "txt", "conversations": _turns(("Is <image> a tag?", "Yes."))}
    llava = _write(tmp_path / "llava.json", [_llava_video(MMVID[0]), image, text])
    data = read_data_file(llava)
    assert data.samples[0]["conversations"][1]["value"] == "<video>\nWhat moves?" and data.problems[0] == []
    assert [p.kind for p in data.problems[1]] == ["unsupported"]
    assert data.samples[2]["conversations"][0]["value"] == "Is <image> a tag?" and data.problems[2] == []
    strict = read_data_file(llava, format="mmvid")
    assert strict.samples[0]["conversations"][1]["value"] == "<image>\nWhat moves?"
    assert [p.kind for p in check_sample(strict.samples[0])] == ["placeholder"]  # 0 <video> for 1 video
    # A row read as the wrong format is a problem naming what to do, not a silent misreading.
    assert "sharegpt" in read_data_file(_write(tmp_path / "s.json", [_swift(MMVID[0])]),
                                        format="llava").problems[0][0].message
    assert "'video' key is LLaVA's" in read_data_file(llava, format="sharegpt").problems[0][0].message
    # An unknown format is an error naming the file and what its rows hold; so is an unknown format name.
    alpaca = _write(tmp_path / "alpaca.json", [{"instruction": "Say hi", "input": "", "output": "hi"}])
    with pytest.raises(DataFormatError, match=r"alpaca\.json: unknown data format.*'instruction'"):
        load_conversations(alpaca)
    with pytest.raises(ValueError, match="unknown data format 'openai'"):
        read_data_file(llava, format="openai")
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        load_conversations(_write(tmp_path / "one.json", MMVID[0]))


def test_sharegpt_rows_mmvid_cannot_train_on_are_reported():
    from mmvid.data.conversations import normalise_sample

    def kinds(row):
        return [p.kind for p in normalise_sample(row)[2]]

    base = _swift(MMVID[0])
    tool = dict(base, messages=[*base["messages"], {"role": "tool", "content": "{}"}])
    parts = dict(base, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert kinds(base) == []
    assert kinds(tool) == ["unsupported"] and kinds(parts) == ["unsupported"]
    assert kinds(dict(base, images=["x.jpg"])) == ["unsupported"]
    assert kinds(dict(base, videos=[3])) == ["malformed"] and kinds(dict(base, messages=[])) == ["malformed"]
    assert kinds({"conversations": [], "image": "x.jpg"}) == ["unsupported"]
    assert kinds(MIXED) == ["placeholder"]


# ---------------------------------------------------------------- validation


def test_validate_names_count_mismatches_by_id_or_by_file_and_index(make_video, tmp_path, capsys):
    make_video("a.mp4")
    make_video("b.mp4")
    swift = [_swift(MMVID[0]), _swift(MMVID[1]), _swift(MMVID[2])]
    for row in swift:
        row.pop("id")  # ShareGPT rows carry no id
    swift[1]["videos"] = ["a.mp4"]  # two <video>, one video
    _write(tmp_path / "swift.jsonl", swift, jsonl=True)
    count = _llava_video(MMVID[0]) | {"id": "LV-count", "video": ["a.mp4", "b.mp4"]}  # 1 <image>, 2 videos
    mixed = MIXED
    image = {"id": "LV-image", "image": "x.jpg", "conversations": _turns(("<image>\nWhat?", "A cat."))}
    _write(tmp_path / "llava_video.json", [_llava_video(MMVID[0]), count, mixed, image])

    report = validate_file(tmp_path / "swift.jsonl", progress=False)
    assert report.formats == {"sharegpt": 3} and "missing_id" not in report.warnings
    assert report.errors == {"placeholder": [
        "sample #1 of swift.jsonl: 2 <video> placeholder(s) in the human turns but 1 video(s)"]}
    report = validate_file(tmp_path / "llava_video.json", progress=False)
    assert report.formats == {"llava": 4} and report.videos == 2
    assert {k: len(v) for k, v in report.errors.items()} == {"placeholder": 2, "unsupported": 1}
    assert any(m.startswith("sample 'LV-count' (#1): 1 <video>") for m in report.errors["placeholder"])
    assert any(m.startswith("sample 'LV-mixed' (#2): mixes <image> and <video>")
               for m in report.errors["placeholder"])
    assert validate_main([str(tmp_path / "swift.jsonl"), str(tmp_path / "llava_video.json")]) == 1
    out = capsys.readouterr().out
    assert "swift.jsonl: 3 samples (3 sharegpt), 1 unique videos" in out and "sample #1 of swift.jsonl" in out
    assert "'LV-image' (#3): an image sample" in out
    assert validate_main([str(tmp_path / "llava_video.json"), "--format", "mmvid", "--no-decode"]) == 1
    assert "0 <video> placeholder(s) in the human turns but 1 video(s)" in capsys.readouterr().out
    # a synthetic world's t2v.jsonl lines are checked as what they are (prompt -> video)
    _write(tmp_path / "t2v.jsonl", [{"id": "g1", "video": "a.mp4", "prompt": "a red circle moves left"},
                                    {"id": "g2", "video": "b.mp4", "prompt": " "}], jsonl=True)
    report = validate_file(tmp_path / "t2v.jsonl", progress=False)
    assert report.formats == {"t2v": 2} and report.errors == {
        "empty_question": ["sample 'g2' (#1): the text-to-video prompt is empty"]}


# ---------------------------------------------------------------- mixtures


def _mixture(path, *entries: tuple[str, str | None]):
    lines = ["datasets:"]
    for json_path, strategy in entries:
        lines.append(f"  - json_path: {json_path}")
        if strategy is not None:
            lines.append(f'    sampling_strategy: "{strategy}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mixture_strategies_pick_the_rows_llava_next_does_and_random_is_seeded(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "mix").mkdir()
    rows = [{"id": f"r{i}", "conversations": _turns((f"Question {i}?", f"Answer {i}."))} for i in range(10)]
    _write(tmp_path / "data" / "rows.jsonl", rows, jsonl=True)
    strategies = ["all", None, "first:30%", "end:20%", "first:4", "end:1", "first:15%", "first:20",
                  "random:50%", "random:3"]
    mix = _mixture(tmp_path / "mix" / "mix.yaml", *[("../data/rows.jsonl", s) for s in strategies])

    def ids(seed=0, path=mix):
        return [[s["id"] for s in data.samples] for data in read_training_data([path], seed=seed)]

    picked = ids()
    every = [f"r{i}" for i in range(10)]
    assert picked[:8] == [every, every, every[:3], every[8:], every[:4], every[9:], every[:2], every]
    assert len(picked[8]) == 5 and len(picked[9]) == 3 and set(picked[8]) <= set(every)
    assert picked[8] == sorted(picked[8], key=every.index)  # file order
    assert ids() == picked  # the same rows every time
    assert ids(seed=1)[8] != picked[8]  # another seed, other rows
    alone = _mixture(tmp_path / "mix" / "alone.yaml", ("../data/rows.jsonl", "random:50%"))
    assert ids(path=alone) == [picked[8]]  # an entry's rows do not depend on the other entries
    assert MixtureEntry(tmp_path, "x.json", "random:100%").select(4) == [0, 1, 2, 3]
    assert MixtureEntry(tmp_path, "x.json", "first:12.5%").select(10) == [0, 1]  # ceil(1.25)
    # validate reads a mixture as the rows it selects
    assert validate_main([str(alone), "--no-decode"]) == 0
    assert "rows.jsonl [random:50%: 5 of 10 rows, alone.yaml]: 5 samples" in capsys.readouterr().out


@pytest.mark.parametrize("strategy, message", [
    ("first", "expected first:N"), ("first:", "expected first:N"), ("first:abc", "expected first:N"),
    ("middle:10%", "unknown sampling_strategy 'middle:10%'"), ("first:0", "selects no rows"),
    ("end:0%", "selects no rows"), ("first:-5", "expected first:N"), ("first:150%", "more than 100%"),
    ("all:10", "'all' takes no number"), ("random:2.5", "whole number")])
def test_a_bad_sampling_strategy_names_the_yaml_and_the_entry(tmp_path, strategy, message):
    _write(tmp_path / "rows.json", MMVID)
    mix = _mixture(tmp_path / "mix.yaml", ("rows.json", "all"), ("rows.json", strategy))
    with pytest.raises(DataFormatError, match=rf"mix\.yaml: datasets entry 1 \(rows\.json\): .*{message}"):
        load_mixture(mix)


def test_a_bad_mixture_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path / "rows.json", MMVID)
    cases = {
        "datasets:\n  - json_path: rows.json\n    images_folder: i\n": r"key\(s\) \['images_folder'\]",
        "datasets:\n  - sampling_strategy: all\n": "needs a 'json_path'",
        "datasets: []\n": "non-empty 'datasets:' list",
        "- json_path: rows.json\n": "a YAML mapping",
        "datasets:\n  - json_path: rows.json\nseed: 3\n": r"unknown top-level keys \['seed'\]",
        "datasets:\n  - json_path: other.yaml\n": "is a mixture",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"bad{i}.yaml").write_text(text)
        with pytest.raises(DataFormatError, match=message):
            load_mixture(tmp_path / f"bad{i}.yaml")
    (tmp_path / "missing.yaml").write_text("datasets:\n  - json_path: nowhere.json\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: datasets entry 0: data file not found"):
        load_mixture(tmp_path / "missing.yaml")
    assert validate_main([str(tmp_path / "bad0.yaml")]) == 2
    assert "images_folder" in capsys.readouterr().err


# ---------------------------------------------------------------- training


def test_sft_skips_the_rows_it_cannot_use_naming_them(tmp_path, caplog):
    rows = [_llava_video(MMVID[0]), MIXED]
    swift = [{k: v for k, v in _swift(MMVID[2]).items() if k != "id"}]
    _write(tmp_path / "lv.json", rows)
    _write(tmp_path / "swift.json", swift)
    mix = _mixture(tmp_path / "mix.yaml", ("lv.json", "all"), ("swift.json", "first:100%"))
    dataset = SFTDataset([mix], processor=None)
    assert [s["id"] for s, _ in dataset.items] == ["v1", "LV-mixed", "swift.json#0"]  # no id: file#row
    assert list(dataset.problems) == [1]
    with pytest.raises(ValueError, match="mixes <image> and <video>"):
        dataset.load(1)
    with caplog.at_level(logging.INFO, logger="mmvid.sft.data"):
        SFTDataset([mix], processor=None)
    assert "first:100%: 1 of 1 rows, mix.yaml" in caplog.text


TINY_LLM = ("{model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
            "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 1024, "
            "tie_word_embeddings: false}")


@pytest.mark.timeout(300)
def test_train_sft_takes_a_mixture_yaml_as_data_train(make_video, tmp_path, one_rank, one_thread,
                                                      monkeypatch):
    """Two steps of train/sft.py's loop, in this process, on a mixture of a ShareGPT file (its first half)
    and a LLaVA-Video-178K file: the data set is exactly the rows the mixture selects."""
    import mmvid.sft.trainer as trainer
    from mmvid.config import load_config
    from mmvid.sft.config import SFTConfig
    from mmvid.testing import world_text_tokenizer

    clips = [make_video(f"c{i}.mp4").name for i in range(4)]
    questions = [("<video>\nWhat moves?", "A red circle moves left."), ("What colour is it?", "red")]
    samples = [{"id": f"s{i}", "video": c, "conversations": _turns(*questions)} for i, c in enumerate(clips)]
    _write(tmp_path / "swift.jsonl", [_swift(s) for s in samples], jsonl=True)
    _write(tmp_path / "llava_video.json", [_llava_video(s | {"id": f"lv{i}"}) for i, s in enumerate(samples)])
    _mixture(tmp_path / "mix.yaml", ("swift.jsonl", "first:50%"), ("llava_video.json", "end:3"))
    (tmp_path / "sft.yaml").write_text(f"""
model:
  llm_config: {TINY_LLM}
  text_tokenizer: {world_text_tokenizer(tmp_path / "text-tokenizer", scenes=100)}
  video_tokenizer: vtok_tiny
  num_frames: 8
  max_length: 512
data:
  world: null
  val_bench: null
  test_bench: null
  vision_tower: null
  pretrained_llm: null
  video_decoder: null
  curriculum_steps: 0
batch_size: 2
warmup_steps: 1
eval_every: 0
checkpoint_every: 100
log_every: 1
""")
    built = []
    monkeypatch.setattr(trainer, "SFTDataset", lambda *a, **k: built.append(SFTDataset(*a, **k)) or built[-1])
    cfg = load_config(SFTConfig, tmp_path / "sft.yaml",
                      [f"data.train={tmp_path / 'mix.yaml'}", f"out={tmp_path / 'run'}", "steps=2"])
    assert cfg.data.train == [str(tmp_path / "mix.yaml")]
    with one_rank():
        summary = trainer.run(cfg)
    assert summary["steps"] == 2 and summary["bad_samples"] == 0
    assert [s["id"] for s, _ in built[0].items] == ["s0", "s1", "lv1", "lv2", "lv3"]
    first, third = built[0].items[0][0], built[0].items[2][0]
    assert first["conversations"] == third["conversations"] == _turns(*questions)

"""The synthetic world's questions written in each public benchmark's published layout, so the readers of
`mmvid.evaluation.benchmarks` can be run (and timed) end to end with no download:

    python -m mmvid.evaluation.world_benchmarks --world data/shapes --split test --out runs/world-benchmarks
    python eval/run.py --bench nextqa_mc --data runs/world-benchmarks/nextqa/test.csv
    (it prints the command of each bench)

Layouts written (videos are symbolic links to the world's files; `--copy` copies them):
    mvbench/json/<category>.json, mvbench/video/<name>.mp4         {video, question, candidates, answer}
    videomme/videomme/test-00000-of-00001.parquet, videomme/data/<videoID>.mp4   "A. ..." options, a letter
    nextqa/test.csv, nextqa/NExTVideo/<video>.mp4                  a0..a4, answer index
    egoschema/egoschema.json, egoschema/videos/<video_idx>.mp4     option ["A. ..." x 5], answer
    perceptiontest/mc_question_val.parquet, perceptiontest/videos/<name>.mp4     3 options, answer_id
Benchmarks with 5 options get a fifth from the same category's other options (or any other);
PerceptionTest's 3 keep the answer and the first two distractors. The world's category names the task
and the category fields.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import string
from collections import defaultdict
from pathlib import Path

from mmvid.evaluation.tv_align import load_questions

NEXTQA_TYPES = {"count": "DC", "spatial": "DL", "temporal": "TP", "action": "TC", "colour": "DO",
                "shape": "DO"}
VIDEOMME_FILE = "videomme/videomme/test-00000-of-00001.parquet"


def _link(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def _options(q: dict, count: int, pool: dict[str, list[str]]) -> tuple[list[str], int]:
    """The question's options resized to `count`, answer kept: (options, answer index)."""
    options, answer = list(q["options"]), q["answer_index"]
    if count < len(options):
        keep = [answer] + [i for i in range(len(options)) if i != answer][: count - 1]
        kept = sorted(keep)
        return [options[i] for i in kept], kept.index(answer)
    extra = [o for o in pool[q["category"]] + pool[""] if o not in options]  # the category's, then any
    return options + extra[: count - len(options)], answer


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_world_benchmarks(world: str | Path, out: str | Path, split: str = "test", copy: bool = False,
                           limit: int | None = None) -> dict[str, Path]:
    """Write the split's tv_align questions in the five layouts; returns bench -> the --data to pass."""
    world, out = Path(world), Path(out)
    questions = load_questions(world / split / "tv_align.jsonl")[:limit]
    pool: dict[str, list[str]] = defaultdict(list)
    for q in questions:
        for key in (q["category"], ""):
            pool[key] += [o for o in q["options"] if o not in pool[key]]
    by_category: dict[str, list[dict]] = defaultdict(list)
    videomme, nextqa, ego, perception = [], [], [], []
    for k, q in enumerate(questions):
        src = world / split / q["video"]
        name = Path(q["video"]).stem
        letters = string.ascii_uppercase
        _link(src, out / "mvbench" / "video" / f"{name}.mp4", copy)
        answer = q["options"][q["answer_index"]]
        by_category[q["category"]].append({"video": f"{name}.mp4", "question": q["question"],
                                           "candidates": q["options"], "answer": answer})
        _link(src, out / "videomme" / "data" / f"w{name}.mp4", copy)
        videomme.append({"video_id": name, "duration": "short", "domain": "Synthetic",
                         "sub_category": q["category"], "url": "", "videoID": f"w{name}",
                         "question_id": f"{name}-{k}", "task_type": q["category"], "question": q["question"],
                         "options": [f"{letters[i]}. {o}" for i, o in enumerate(q["options"])],
                         "answer": letters[q["answer_index"]]})
        five, answer5 = _options(q, 5, pool)
        _link(src, out / "nextqa" / "NExTVideo" / f"{int(name)}.mp4", copy)
        nextqa.append({"video": int(name), "frame_count": 0, "width": 0, "height": 0,
                       "question": q["question"], "answer": answer5, "qid": k,
                       "type": NEXTQA_TYPES.get(q["category"], "DO"),
                       **{f"a{i}": o for i, o in enumerate(five)}})
        _link(src, out / "egoschema" / "videos" / f"ego-{name}.mp4", copy)
        ego.append({"question_idx": str(k), "question": q["question"], "video_idx": f"ego-{name}",
                    "option": [f"{letters[i]}. {o}" for i, o in enumerate(five)], "answer": str(answer5)})
        three, answer3 = _options(q, 3, pool)
        _link(src, out / "perceptiontest" / "videos" / f"video_{name}.mp4", copy)
        perception.append({"video_name": f"video_{name}", "question": q["question"], "question_id": k,
                           "options": three, "answer_id": answer3, "area": "semantics",
                           "reasoning": q["category"], "tag": [q["category"]]})
    for category, items in by_category.items():
        path = out / "mvbench" / "json" / f"{category}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(items, indent=1))
    _write_parquet(videomme, out / VIDEOMME_FILE)
    with (out / "nextqa" / "test.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(nextqa[0]))
        writer.writeheader()
        writer.writerows(nextqa)
    (out / "egoschema" / "egoschema.json").write_text(json.dumps(ego, indent=1))
    _write_parquet(perception, out / "perceptiontest" / "mc_question_val.parquet")
    return {"mvbench": out / "mvbench", "videomme": out / VIDEOMME_FILE,
            "nextqa_mc": out / "nextqa" / "test.csv", "egoschema": out / "egoschema" / "egoschema.json",
            "perceptiontest_mc": out / "perceptiontest" / "mc_question_val.parquet"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmvid.evaluation.world_benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="data/shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="runs/world-benchmarks")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--copy", action="store_true", help="copy the videos instead of linking them")
    args = parser.parse_args(argv)
    written = write_world_benchmarks(args.world, args.out, args.split, args.copy, args.limit)
    for bench, data in written.items():
        print(f"python eval/run.py --bench {bench} --data {data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

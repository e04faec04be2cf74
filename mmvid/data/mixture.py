"""Data mixtures in LLaVA-NeXT / LLaVA-OneVision's YAML: the data files to train on, how many rows of each.

    datasets:
      - json_path: llava_video_178k/0_30_s_academic_v0_1/0_30_s_academic_v0_1_cap_processed.json
        sampling_strategy: all          # every row (also when the key is left out)
      - json_path: sharegpt/clips.jsonl
        sampling_strategy: "first:10%"  # the first ceil(10% of its rows)
      - json_path: more.json
        sampling_strategy: "end:1000"   # the last 1000 rows
      - json_path: even_more.json
        sampling_strategy: "random:25%" # a quarter of the rows, drawn at random (seeded: the same every run)

Give the YAML wherever a list of data files goes: `data.train` / `data.curriculum` of train/sft.py (next to
plain files, too), or `python -m mmvid.data.validate mix.yaml`. Each file is read in any format of
mmvid.data.conversations (mmvid, LLaVA / LLaVA-Video-178K, ShareGPT), and its videos are relative to its own
folder (or data.video_root).

The strategies are LLaVA-NeXT's (llava/train/train.py, LazySupervisedDataset): `all`, or `first`, `end`,
`random` with `:N%` (ceil(N x rows / 100) rows) or `:N` (N rows). Where mmvid differs:
- `random` is seeded: numpy, from (the training seed, json_path as written), so a run, its resume and every
  rank read the same rows, an entry's rows do not change when other entries are added, and another seed draws
  others. LLaVA-NeXT shuffles with Python's unseeded `random`. The chosen rows keep their order in the file
  (the training sampler shuffles anyway).
- `json_path` is relative to the YAML's folder (LLaVA-NeXT opens it relative to the working directory); an
  absolute path is used as it is.
- What LLaVA-NeXT lets through quietly is an error naming the YAML and the entry: an unknown key or strategy,
  a number after `all`, N = 0, N% over 100. A count larger than the file takes the whole file, as
  LLaVA-NeXT's slicing does; a percentage may have a fraction (`12.5%`; LLaVA-NeXT's int() refuses it).
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from mmvid.data.conversations import DataFile, DataFormatError, read_data_file

STRATEGIES = ("all", "first", "end", "random")
ENTRY_KEYS = ("json_path", "sampling_strategy")
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


@dataclass(frozen=True)
class MixtureEntry:
    """One `datasets:` entry of a mixture YAML."""

    path: Path  # the data file (resolved against the YAML's folder)
    json_path: str  # as written in the YAML (it seeds `random`)
    sampling_strategy: str = "all"  # as written: all | first:N | first:N% | end:... | random:...

    def select(self, num_rows: int, seed: int = 0) -> list[int]:
        """The indices of the rows this entry takes from a file of `num_rows` rows, in file order."""
        strategy, count, percent = parse_sampling_strategy(self.sampling_strategy)
        if strategy == "all":
            return list(range(num_rows))
        n = min(num_rows, count if percent is None else math.ceil(percent * num_rows / 100))
        if strategy == "first":
            return list(range(n))
        if strategy == "end":
            return list(range(num_rows - n, num_rows))
        rng = np.random.default_rng([seed, zlib.crc32(self.json_path.encode("utf-8"))])
        return sorted(rng.choice(num_rows, size=n, replace=False).tolist())


def parse_sampling_strategy(text: str) -> tuple[str, int | None, Fraction | None]:
    """(strategy, count, percent) of `all`, `first:N`, `first:N%`, `end:...`, `random:...`; exactly one of
    count and percent is set except for `all`. Raises ValueError with what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"sampling_strategy must be a string like 'first:10%', got {text!r}")
    strategy, _, number = text.strip().partition(":")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling_strategy {text!r}; known: all, first:N, first:N%, end:N, end:N%, "
                         "random:N, random:N%")
    if strategy == "all":
        if number:
            raise ValueError(f"sampling_strategy {text!r}: 'all' takes no number")
        return "all", None, None
    match = _NUMBER.match(number.strip())
    if match is None:
        raise ValueError(f"sampling_strategy {text!r}: expected {strategy}:N (rows) or {strategy}:N% "
                         "(a share)")
    value, is_percent = Fraction(match.group(1)), bool(match.group(2))
    if value <= 0:
        raise ValueError(f"sampling_strategy {text!r} selects no rows")
    if is_percent:
        if value > 100:
            raise ValueError(f"sampling_strategy {text!r}: more than 100%")
        return strategy, None, value
    if value.denominator != 1:
        raise ValueError(f"sampling_strategy {text!r}: a row count must be a whole number")
    return strategy, int(value), None


def is_mixture(path: str | os.PathLike) -> bool:
    """Whether a data path names a mixture YAML (by its suffix: .yaml or .yml)."""
    return Path(path).suffix.lower() in (".yaml", ".yml")


def load_mixture(path: str | os.PathLike, check_files: bool = True) -> list[MixtureEntry]:
    """The entries of a mixture YAML, each checked (keys, strategy, and with `check_files` that the data file
    exists).

    Raises:
        FileNotFoundError: the YAML, or a data file it names, does not exist.
        DataFormatError: not a `datasets:` list of {json_path, sampling_strategy}, naming the entry.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data mixture not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataFormatError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise DataFormatError(f"{path}: a data mixture is a YAML mapping with a non-empty 'datasets:' list "
                              "of {json_path, sampling_strategy}")
    if set(data) != {"datasets"}:
        raise DataFormatError(f"{path}: unknown top-level keys {sorted(set(data) - {'datasets'})}; a mixture "
                              "has only 'datasets:'")
    return [_entry(path, i, item, check_files) for i, item in enumerate(data["datasets"])]


def _entry(mixture: Path, index: int, item, check_files: bool) -> MixtureEntry:
    where = f"{mixture}: datasets entry {index}"
    if not isinstance(item, dict) or not isinstance(item.get("json_path"), str) or not item["json_path"]:
        raise DataFormatError(f"{where}: needs a 'json_path' (the data file), got {item!r}")
    unknown = sorted(set(item) - set(ENTRY_KEYS))
    if unknown:
        raise DataFormatError(f"{where} ({item['json_path']}): unknown key(s) {unknown}; known: "
                              f"{list(ENTRY_KEYS)}")
    strategy = item.get("sampling_strategy", "all")
    try:
        parse_sampling_strategy(strategy)
    except ValueError as e:
        raise DataFormatError(f"{where} ({item['json_path']}): {e}") from None
    file = Path(item["json_path"]).expanduser()
    file = file if file.is_absolute() else mixture.parent / file
    if is_mixture(file):
        raise DataFormatError(f"{where}: {item['json_path']} is a mixture; a mixture names data files")
    if check_files and not file.is_file():
        raise FileNotFoundError(f"{where}: data file not found: {file} (json_path {item['json_path']!r}, "
                                "relative to the YAML's folder)")
    return MixtureEntry(file, item["json_path"], strategy.strip())


def read_training_data(paths: list[str] | list[Path], seed: int = 0, format: str = "auto") -> list[DataFile]:
    """Every data file that `paths` name, read into the internal form (mmvid.data.conversations): a plain file
    whole, a mixture YAML's files each cut to its sampling_strategy (`random` seeded with `seed`)."""
    files = []
    for path in paths:
        if not is_mixture(path):
            files.append(read_data_file(path, format))
            continue
        for entry in load_mixture(path):
            data = read_data_file(entry.path, format)
            rows = entry.select(len(data.samples), seed)
            how = f"{entry.sampling_strategy}: {len(rows)} of {len(data.samples)} rows, {Path(path).name}"
            files.append(data.select(rows, how))
    return files


def data_file_paths(paths: list[str] | list[Path]) -> list[Path]:
    """The data files that `paths` name: plain files as they are, a mixture by its entries' files (which need
    not exist yet)."""
    files = []
    for path in paths:
        files += [e.path for e in load_mixture(path, check_files=False)] if is_mixture(path) else [Path(path)]
    return files

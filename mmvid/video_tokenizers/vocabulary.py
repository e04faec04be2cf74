"""SweetTok's word vocabulary: caption words split by part of speech, their co-occurrence graph,
the frozen word vectors the language codebook starts from, and the words <-> ids API (`WordIds`).

    vocab = build_vocabulary(captions, parts_of_speech)    # captions: list[str]; word -> part of speech
    vocab.words                                            # id -> word, in the one id layout below
    vocab.offsets                       # {"noun": 0, "adjective": 9, "verb": 19, "adverb": 36}
    vocab.save("vocab.json");  load_vocabulary("vocab.json")

The id layout (the same everywhere: codebook rows, `SweetTok.encode_ids`, `TokenLayout.words`):

    ids = [ nouns... | adjectives... | verbs... | adverbs... ]     each class sorted alphabetically

Spatial (appearance) tokens read nouns and adjectives, temporal (motion) tokens verbs and adverbs
(`SPATIAL`, `TEMPORAL`). A word has one part of speech. A tokenizer's ids come in triples, one per
token: spatial tokens (adjective, adjective, noun), temporal ones (adverb, adverb, verb), nearest
attribute first; a video is every spatial token's triple, then every temporal token's
(`WordIds.slot_parts`).

Where the words come from:
- Captions: any list of sentences; words are the lower-cased runs of letters (`caption_words`).
- Part of speech: a mapping word -> "noun" | "adjective" | "verb" | "adverb" (anything else is
  ignored). The synthetic world's grammar knows every word it writes (`mmvid.data.shapes.text.LEXICON`);
  for your own captions, give a word list file (`read_parts_of_speech`): one `word<TAB>pos` a line
  (`#` comments; pos in noun/adjective/verb/adverb, UPOS tags NOUN/PROPN/ADJ/VERB/ADV also work),
  or a JSON object word -> pos (the world's `lexicon.json` works as is). Tag your captions once with
  any tagger you like (spaCy, NLTK) to write that file; nothing is tagged or downloaded at run time.
- Edges: an (adjective, noun) or (adverb, verb) pair is an edge when both words occur in the same
  caption (within `window` words of each other when window > 0), as the paper's graph.
- `default_captions()`: the synthetic world's captions of 120 fixed scenes using every action
  (held-out ones included: a vocabulary is words, not videos), generated in memory, no file read.

Word vectors (frozen): `random_word_vectors` (the default: a fixed random vector per word, seeded by
the word itself, so a word keeps its vector whatever the rest of the vocabulary), or `embed_words`
with any embedding table + tokenizer, e.g. an LLM's input embeddings (`load_embedding_table`),
averaging a word's sub-word pieces. The paper uses CLIP text (or Qwen) embeddings; no pretrained text
encoder ships with mmvid, hence the random default (a documented deviation).
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

PARTS = ("noun", "adjective", "verb", "adverb")  # the id layout's order
SPATIAL = ("adjective", "noun")  # (attribute, entity) of a spatial token: "adj adj noun"
TEMPORAL = ("adverb", "verb")  # (attribute, entity) of a temporal token: "adv adv verb"
SPATIAL_SLOTS = ("adjective", "adjective", "noun")  # the parts of speech of a spatial token's 3 ids
TEMPORAL_SLOTS = ("adverb", "adverb", "verb")  # ... and of a temporal token's
POS_ALIASES = {"noun": "noun", "propn": "noun", "adjective": "adjective", "adj": "adjective", "verb": "verb",
               "adverb": "adverb", "adv": "adverb"}
FORMAT = "mmvid-sweettok-vocabulary"
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters (any script)


def caption_words(text: str) -> list[str]:
    """Lower-case words of a caption: runs of letters ("Moves left, quickly." -> moves, left, quickly)."""
    return _WORD.findall(text.lower())


# ----------------------------------------------------------------------------------------------
# The vocabulary
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """Words by part of speech and the two co-occurrence graphs, as word pairs."""

    noun: tuple[str, ...]
    adjective: tuple[str, ...]
    verb: tuple[str, ...]
    adverb: tuple[str, ...]
    spatial_edges: tuple[tuple[str, str], ...]  # (adjective, noun)
    temporal_edges: tuple[tuple[str, str], ...]  # (adverb, verb)

    def __post_init__(self):
        seen: dict[str, str] = {}
        for part in PARTS:
            for word in getattr(self, part):
                if not isinstance(word, str) or _WORD.fullmatch(word) is None or word != word.lower():
                    raise ValueError(f"vocabulary {part} {word!r} is not one lower-case word (letters only)")
                if word in seen:
                    raise ValueError(f"word {word!r} is both a {seen[word]} and a {part}; "
                                     f"a word needs one part of speech")
                seen[word] = part
        # 2 attributes: each token reads the top 2
        minimum = {"noun": 1, "adjective": 2, "verb": 1, "adverb": 2}
        short = {p: len(getattr(self, p)) for p in PARTS if len(getattr(self, p)) < minimum[p]}
        if short:
            raise ValueError(f"a SweetTok vocabulary needs at least {minimum} words per part of speech, got "
                             f"{short} (add captions, or give a word list that tags more of their words)")
        for name, (attribute, entity) in (("spatial_edges", SPATIAL), ("temporal_edges", TEMPORAL)):
            for pair in getattr(self, name):
                if len(pair) != 2 or seen.get(pair[0]) != attribute or seen.get(pair[1]) != entity:
                    raise ValueError(f"{name} must hold ({attribute}, {entity}) pairs of vocabulary words, "
                                     f"got {pair!r}")

    @property
    def words(self) -> list[str]:
        """id -> word: nouns, adjectives, verbs, adverbs."""
        return [w for part in PARTS for w in getattr(self, part)]

    @property
    def offsets(self) -> dict[str, int]:
        """First id of each part of speech."""
        out, start = {}, 0
        for part in PARTS:
            out[part] = start
            start += len(getattr(self, part))
        return out

    def ranges(self) -> dict[str, tuple[int, int]]:
        """[start, stop) ids of each part of speech."""
        return {p: (o, o + len(getattr(self, p))) for p, o in self.offsets.items()}

    def __len__(self) -> int:
        return sum(len(getattr(self, p)) for p in PARTS)

    def local_edges(self, branch: str) -> torch.Tensor:
        """long (2, 2E): the branch's graph over its local node order [entities..., attributes...]
        (nouns then adjectives, or verbs then adverbs), both directions, no self loops."""
        attribute, entity = SPATIAL if branch == "spatial" else TEMPORAL
        entities, attributes = getattr(self, entity), getattr(self, attribute)
        index = {w: i for i, w in enumerate(entities)} | {
            w: len(entities) + i for i, w in enumerate(attributes)}
        edges = self.spatial_edges if branch == "spatial" else self.temporal_edges
        pairs = [(index[a], index[e]) for a, e in edges]
        if not pairs:
            return torch.zeros(2, 0, dtype=torch.long)
        src, dst = zip(*pairs)
        return torch.tensor([src + dst, dst + src], dtype=torch.long)

    def to_dict(self) -> dict:
        """JSON-ready (lists), the form SweetTokConfig.vocabulary stores."""
        return {"format": FORMAT, "version": 1, **{p: list(getattr(self, p)) for p in PARTS},
                "spatial_edges": [list(e) for e in self.spatial_edges],
                "temporal_edges": [list(e) for e in self.temporal_edges]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Vocabulary":
        missing = [k for k in (*PARTS, "spatial_edges", "temporal_edges") if k not in data]
        if missing:
            raise ValueError(f"a vocabulary needs keys {missing} (write one with Vocabulary.save)")
        return cls(*(tuple(data[p]) for p in PARTS), tuple(tuple(e) for e in data["spatial_edges"]),
                   tuple(tuple(e) for e in data["temporal_edges"]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def load_vocabulary(path: str | Path) -> Vocabulary:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a vocabulary JSON ({e.msg})") from e
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a SweetTok vocabulary (format {data.get('format')!r}, expected "
                         f"{FORMAT!r})")
    return Vocabulary.from_dict(data)


def build_vocabulary(captions: Iterable[str], parts_of_speech: Mapping[str, str], min_count: int = 1,
                     window: int = 0) -> Vocabulary:
    """The vocabulary of a caption set.

    Args:
        captions: sentences.
        parts_of_speech: word -> part of speech; words it lacks, or tags as anything but noun,
            adjective, verb or adverb (aliases in POS_ALIASES), are left out.
        min_count: keep words that occur at least this often (the released code keeps > 10).
        window: 0 links words anywhere in the same caption; k > 0 only those at most k words apart.
    Raises:
        ValueError: fewer than 2 adjectives or adverbs, or no noun or verb, survive.
    """
    if min_count < 1 or window < 0:
        raise ValueError(f"min_count must be >= 1 and window >= 0, got {min_count}, {window}")
    tags = {w.lower(): POS_ALIASES.get(str(p).lower()) for w, p in parts_of_speech.items()}
    tokenized = [[(w, tags.get(w)) for w in caption_words(c)] for c in captions]
    counts = Counter(w for words in tokenized for w, pos in words if pos)
    kept = {w for w, n in counts.items() if n >= min_count}
    by_part = {p: tuple(sorted(w for w in kept if tags[w] == p)) for p in PARTS}
    edges: dict[str, set[tuple[str, str]]] = {"spatial": set(), "temporal": set()}
    for words in tokenized:
        for i, (a, pa) in enumerate(words):
            if a not in kept:
                continue
            for j, (b, pb) in enumerate(words):
                if b not in kept or (window and abs(i - j) > window):
                    continue
                for branch, (attribute, entity) in (("spatial", SPATIAL), ("temporal", TEMPORAL)):
                    if pa == attribute and pb == entity:
                        edges[branch].add((a, b))
    return Vocabulary(**by_part, spatial_edges=tuple(sorted(edges["spatial"])),
                      temporal_edges=tuple(sorted(edges["temporal"])))


def read_parts_of_speech(path: str | Path) -> dict[str, str]:
    """word -> part of speech from a `word<TAB>pos` file (or a JSON object word -> pos, or the world's
    lexicon.json with its "parts_of_speech" key). Raises ValueError naming the line of a bad entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word list not found: {path}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data = data.get("parts_of_speech", data)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object word -> part of speech")
        return {str(w).lower(): str(p) for w, p in data.items()}
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected `word<TAB>part of speech`, got {line!r}")
        word, pos = fields[0].strip().lower(), fields[1].strip()
        if _WORD.fullmatch(word) is None:
            raise ValueError(f"{path}:{lineno}: {word!r} is not one word (letters only)")
        if out.get(word, pos) != pos:
            raise ValueError(f"{path}:{lineno}: {word!r} is tagged both {out[word]!r} and {pos!r}")
        out[word] = pos
    return out


def read_captions(path: str | Path) -> list[str]:
    """Captions from a text file, one a line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@functools.lru_cache(maxsize=4)
def default_captions(num_scenes: int = 120) -> tuple[str, ...]:
    """The synthetic world's captions of scenes 0 .. num_scenes - 1 (every action allowed), 3 each."""
    import numpy as np

    from mmvid.data.shapes import text, world

    captions: list[str] = []
    for seed in range(num_scenes):
        scene = world.sample_scene(seed, actions=world.ACTIONS)
        if scene.objects:
            captions += text.captions(scene, np.random.default_rng(seed), n=3)
    return tuple(captions)


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The synthetic world's vocabulary: `default_captions()` tagged by its own grammar (LEXICON)."""
    from mmvid.data.shapes.text import LEXICON

    return build_vocabulary(default_captions(), LEXICON)


def resolve_vocabulary(config) -> Vocabulary:
    """A SweetTokConfig's vocabulary (stored, a file, built from captions, or the world's default);
    stores the result in `config.vocabulary` so a checkpoint carries it."""
    c = config
    if c.vocabulary is not None:
        vocab = Vocabulary.from_dict(c.vocabulary)
    elif c.vocabulary_path:
        vocab = load_vocabulary(c.vocabulary_path)
    elif c.captions_path:
        if c.parts_of_speech_path:
            tags = read_parts_of_speech(c.parts_of_speech_path)
        else:
            from mmvid.data.shapes.text import LEXICON as tags
        vocab = build_vocabulary(read_captions(c.captions_path), tags, c.min_word_count,
                                 c.cooccurrence_window)
    elif (c.min_word_count, c.cooccurrence_window) == (1, 0):
        vocab = default_vocabulary()
    else:
        from mmvid.data.shapes.text import LEXICON

        vocab = build_vocabulary(default_captions(), LEXICON, c.min_word_count, c.cooccurrence_window)
    c.vocabulary = vocab.to_dict()
    return vocab


# ----------------------------------------------------------------------------------------------
# Word vectors
# ----------------------------------------------------------------------------------------------


def random_word_vectors(words: Iterable[str], dim: int, seed: int = 0) -> torch.Tensor:
    """float (N, dim), a fixed N(0, 1/dim) vector per word (unit norm on average), seeded by
    (seed, word) so it does not depend on the rest of the vocabulary. Always on the CPU."""
    rows = []
    for word in words:
        generator = torch.Generator(device="cpu").manual_seed(zlib.crc32(f"{seed}:{word}".encode()))
        rows.append(torch.randn(dim, generator=generator, device="cpu") / dim ** 0.5)
    return torch.stack(rows) if rows else torch.zeros(0, dim, device="cpu")


def embed_words(words: Iterable[str], table: torch.Tensor,
                tokenize: Callable[[str], list[int]]) -> torch.Tensor:
    """float (N, E): the mean of the table rows of each word's pieces (`tokenize(word)` -> ids)."""
    rows = []
    for word in words:
        ids = list(tokenize(word))
        if not ids:
            raise ValueError(f"the tokenizer gives no pieces for {word!r}")
        if min(ids) < 0 or max(ids) >= table.shape[0]:
            raise ValueError(f"piece ids of {word!r} ({ids}) fall outside the embedding table "
                             f"({table.shape[0]} rows)")
        rows.append(table[ids].float().mean(0))
    return torch.stack(rows).cpu()


EMBEDDING_KEYS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight",
                  "embeddings.weight")


def load_embedding_table(folder: str | Path) -> tuple[torch.Tensor, Callable[[str], list[int]]]:
    """An LLM's input embedding table and its tokenizer from a local Hugging Face folder (safetensors
    weights + tokenizer files), without building the model: (table (V, E), tokenize). A word is
    tokenized as it appears inside a sentence, with a leading space."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder} "
                                f"(hf_path must be a local Hugging Face model folder)")
    table = None
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys = [k for k in f.keys() if k.endswith(EMBEDDING_KEYS)]
            if keys:
                table = f.get_tensor(sorted(keys, key=len)[0])
                break
    if table is None or table.ndim != 2:
        raise ValueError(f"no input embedding table in {folder} (looked for keys ending in "
                         f"{list(EMBEDDING_KEYS)})")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def tokenize(word: str) -> list[int]:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():  # a lone space piece says nothing
            ids = ids[1:]
        return ids

    return table, tokenize


def branch_word_vectors(vocab: Vocabulary, dim: int, seed: int = 0,
                        hf_path: str | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The frozen vectors of the spatial words [nouns, adjectives] and of the temporal words [verbs,
    adverbs], L2-normalized rows on the CPU, and their width: random ones of `dim` (`seed`), or from
    the input embedding table of the HF model folder `hf_path` (its width)."""
    spatial, temporal = [*vocab.noun, *vocab.adjective], [*vocab.verb, *vocab.adverb]
    if hf_path:
        table, tokenize = load_embedding_table(hf_path)
        dim = table.shape[1]
        vectors = embed_words(spatial, table, tokenize), embed_words(temporal, table, tokenize)
    else:
        vectors = random_word_vectors(spatial, dim, seed), random_word_vectors(temporal, dim, seed)
    return F.normalize(vectors[0], dim=-1), F.normalize(vectors[1], dim=-1), dim


# ----------------------------------------------------------------------------------------------
# Words <-> ids
# ----------------------------------------------------------------------------------------------


class WordIds:
    """The words API of a tokenizer whose ids are words (SweetTok), as a mixin: the id layout's slots
    and ranges, checks, ids <-> words, video <-> text.

    The host is an nn.Module with `vocabulary` (a Vocabulary), `config.num_spatial_queries` and
    `config.num_temporal_queries` (S, G), `encode_ids(video)` -> long (B, 3 (S + G)) and
    `decode_ids(ids, num_frames)` -> video.
    """

    vocabulary: Vocabulary

    @property
    def codebook_size(self) -> int:
        """Word ids: the vocabulary size (ids index `words`)."""
        return len(self.vocabulary)

    @property
    def words(self) -> list[str]:
        return self.vocabulary.words

    def slot_parts(self) -> list[str]:
        """The part of speech of each of the 3 (S + G) id positions."""
        c = self.config
        return [*SPATIAL_SLOTS] * c.num_spatial_queries + [*TEMPORAL_SLOTS] * c.num_temporal_queries

    def id_ranges(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """[low, high) allowed ids at each id position, for a discrete generation head (constrained
        sampling)."""
        ranges = self.vocabulary.ranges()
        bounds = torch.tensor([ranges[part] for part in self.slot_parts()], device=device)
        return bounds[:, 0], bounds[:, 1]

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise ValueError unless ids are long (B, 3N) with each slot's id in its part of speech."""
        n = 3 * (self.config.num_spatial_queries + self.config.num_temporal_queries)
        integer = isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dtype != torch.bool
        if not integer or ids.ndim != 2 or ids.shape[1] != n:
            shape = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"expected word ids long (B, {n}) = 3 x (S + G), got {shape}")
        low, high = self.id_ranges(ids.device)
        bad = (ids < low) | (ids >= high)
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            part, first, last = self.slot_parts()[i], int(low[i]), int(high[i]) - 1
            raise ValueError(f"id {int(ids[b, i])} at position {i} of video {b} is outside its slot's "
                             f"part of speech ({part}: ids {first}..{last}; layout: "
                             f"{self.vocabulary.ranges()})")

    def ids_to_words(self, ids: torch.Tensor | Iterable[int]) -> list[str]:
        """One sequence of word ids (1-D) -> words."""
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(list(ids), dtype=torch.long)
        if ids.ndim != 1 or ids.is_floating_point():
            raise ValueError(f"ids_to_words takes one sequence of integer ids (1-D), got {ids.dtype} "
                             f"{tuple(ids.shape)}; for a batch use [tok.ids_to_words(row) for row in ids]")
        words = self.vocabulary.words
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(words)):
            raise ValueError(f"word ids must be in [0, {len(words)}), "
                             f"got ids in [{int(ids.min())}, {int(ids.max())}]")
        return [words[i] for i in ids.tolist()]

    def words_to_ids(self, words: str | Iterable[str]) -> torch.Tensor:
        """Words (a list, or one string split on whitespace) -> long (n,) ids."""
        words = words.split() if isinstance(words, str) else list(words)
        index = {w: i for i, w in enumerate(self.vocabulary.words)}
        unknown = sorted({w for w in words if w not in index})
        if unknown:
            more = " ..." if len(unknown) > 10 else ""
            raise ValueError(f"words not in the vocabulary: {unknown[:10]}{more}")
        return torch.tensor([index[w] for w in words], dtype=torch.long)

    @torch.no_grad()
    def video_to_text(self, video: torch.Tensor) -> str:
        """One video (1, 3, T, H, W) or (3, T, H, W) -> its 3N words, space-separated: every spatial
        token as "adj adj noun", then every temporal token as "adv adv verb"."""
        if isinstance(video, torch.Tensor) and video.ndim == 4:
            video = video[None]
        if isinstance(video, torch.Tensor) and video.ndim == 5 and video.shape[0] != 1:
            raise ValueError(f"video_to_text takes one video, got a batch of {video.shape[0]}; "
                             f"use [tok.ids_to_words(row) for row in tok.encode_ids(videos)]")
        return " ".join(self.ids_to_words(self.encode_ids(video)[0]))

    @torch.no_grad()
    def text_to_video(self, text: str, num_frames: int | None = None) -> torch.Tensor:
        """The inverse: 3N words (as video_to_text writes them) -> video (1, 3, T, H, W)."""
        device = next(self.parameters()).device
        return self.decode_ids(self.words_to_ids(text)[None].to(device), num_frames)

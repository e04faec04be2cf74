r"""`fewshot`: N-way K-shot episodic action recognition on the held-out action classes.

    python eval/run.py --bench fewshot [--data data/shapes] [--ways 5] [--shots 1,5] [--episodes 20]

Each episode (fixed by the seed) draws N held-out classes, K support videos of each and one query.
The context is a conversation: for each support video (shuffled) the user shows it and asks what
the object does, and the assistant answers with the class label; then the query. Every class label
is scored as the answer's continuation (`acc`, and per-byte `acc_norm`). Chance is 1/N.

Words mode (`--video-as words`, or `--option video_as=words`; `text` is the same): every support and
query video enters the LLM as text, `video_to_text(video) -> str` of a tokenizer with words
(SweetTok: "adj adj noun ..." for its spatial tokens, then "adv adv verb ..." for its temporal ones),
in place of `<video>`, as SPAE / V2L-style in-context recognition with a frozen LLM. The tokenizer is
the model's video tokenizer when it has words, else `--option words_tokenizer=PATH` (a
`save_pretrained` SweetTok folder, or a preset name, untrained, for plumbing checks); videos are then
read at that tokenizer's `clip_frames` and `image_size`. `--option words_top=K` keeps each clip's K
most frequent words (most frequent first) to fit long word lists in the context; 0 (default) keeps all.

    python eval/run.py --bench fewshot --video-as words \
        --option words_tokenizer=runs/tokenizer-sweettok_base/final

Text-alone control (`--option video_as=oracle`): every video is replaced by a fixed code of its class
(3 world words drawn once per class with the seed), the same for the support and the query. This is the
LLM's in-context ceiling: how well it copies a label from the support when the words carry the class
perfectly. Near 1/N, the LLM cannot do the episode whatever the tokenizer's words say.

Prototype scorer (`--option scorer=prototype`): no LLM; each class's support videos are averaged
into a prototype and the query goes to the nearest one by cosine similarity, a probe of what the
representation itself separates. With `video_as=video` a video is its continuous tokens (flattened);
with words, its bag of words (counts over the vocabulary). The tokenizer is `--option tokenizer=PATH`
(a saved folder or preset; for words, `words_tokenizer=` also works), else the model's. This is what
compares SweetTok's words with its own continuous vectors without a pretrained LLM:

    python eval/run.py --bench fewshot --option scorer=prototype --option tokenizer=runs/tok/final
    python eval/run.py --bench fewshot --option scorer=prototype --video-as words \
        --option tokenizer=runs/tok/final
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from mmvid.evaluation.runner import DEFAULT_DATA, BenchContext, BenchResult, Metric, mean_stderr
from mmvid.evaluation.scoring import continuation_logprobs, pick
from mmvid.processor import VideoProcessor, VideoProcessorConfig
from mmvid.text_tokenizer import VIDEO_TOKEN
from mmvid.video_tokenizers import video_tokenizer_from

log = logging.getLogger(__name__)

QUESTION = "What does the object do?"
VIDEO_AS = ("video", "words", "oracle")  # "text" is an alias of "words"
SCORERS = ("llm", "prototype")


def load_fewshot(ctx: BenchContext) -> tuple[Path, list[dict]]:
    data = Path(ctx.data or DEFAULT_DATA)
    path = data if data.suffix == ".jsonl" else data / "fewshot" / "fewshot.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"few-shot file not found: {path} (build the world with `python -m "
                                "mmvid.data.shapes`)")
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        if not all(k in item for k in ("video", "label")):
            raise ValueError(f"{path}:{lineno}: each line needs 'video' and 'label'")
        items.append(item)
    return path, items


def episodes(items: list[dict], ways: int, shots: int, count: int,
             seed: int) -> list[tuple[list[dict], dict, list[str]]]:
    """Fixed episodes: (support items, query item, the N class labels in a fixed order)."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_label[item["label"]].append(item)
    usable = sorted(label for label, group in by_label.items() if len(group) >= shots + 1)
    if len(usable) < ways:
        raise ValueError(f"{ways}-way {shots}-shot needs {ways} classes with {shots + 1}+ videos; "
                         f"the data has {len(usable)} such classes")
    rng = random.Random(seed * 1000 + ways * 100 + shots)
    out = []
    for e in range(count):
        labels = sorted(rng.sample(usable, ways))
        query_label = labels[e % ways]  # queries cycle through the classes, so chance stays 1/N
        support, query = [], None
        for label in labels:
            chosen = rng.sample(by_label[label], shots + (label == query_label))
            if label == query_label:
                query = chosen.pop()
            support += chosen
        rng.shuffle(support)
        out.append((support, query, labels))
    return out


def words_tokenizer(ctx: BenchContext, model) -> tuple[torch.nn.Module, VideoProcessor, str]:
    """The words mode's tokenizer: (tokenizer, the processor that reads its videos, name) — the model's
    when it has words (`has_words`), else `words_tokenizer=` (a saved folder or a preset) at its
    clip_frames."""
    spec = ctx.option("words_tokenizer")
    if spec is None:
        tokenizer = model.video_tokenizer
        if not tokenizer.has_words:
            raise ValueError("--video-as words needs a video tokenizer with video_to_text() (SweetTok); "
                             "the model's "
                             f"{tokenizer.preset!r} has none: pass --option words_tokenizer=PATH (a saved "
                             "SweetTok folder)")
        return tokenizer, model.processor, str(tokenizer.preset)
    # a preset is untrained: its words say nothing, but the plumbing runs
    tokenizer = video_tokenizer_from(spec)
    if not tokenizer.has_words:
        raise ValueError(f"words_tokenizer={spec!r} is a {tokenizer.architecture} tokenizer without "
                         f"video_to_text() (use a SweetTok)")
    tokenizer.eval().to(model.device)
    frames = tokenizer.clip_frames or model.processor.config.num_frames
    return tokenizer, VideoProcessor(None, VideoProcessorConfig.for_video_tokenizer(tokenizer, frames)), spec


def class_codes(items: list[dict], seed: int) -> dict[str, str]:
    """The oracle control's code per class label: 3 distinct words of the items' objects (shape, colour,
    size), drawn once with `seed`."""
    rng = random.Random(seed)
    vocab = sorted({o[k] for item in items for o in item.get("objects", [])
                    for k in ("shape", "colour", "size")})
    if len(vocab) < 3:
        raise ValueError("video_as=oracle needs items with 'objects' (shape, colour, size) to draw codes "
                         "from")
    labels = sorted({i["label"] for i in items})
    codes: dict[str, str] = {}
    used: set[frozenset] = set()
    for label in labels:  # distinct word sets: two codes are never the same words in another order
        for _ in range(1000):
            words = rng.sample(vocab, 3)
            if frozenset(words) not in used:
                break
        else:
            raise ValueError(f"cannot draw {len(labels)} distinct 3-word codes from {len(vocab)} words")
        used.add(frozenset(words))
        codes[label] = " ".join(words)
    return codes


def unlearned_pieces(tokenizer, labels: list[str]) -> dict[str, list[str]]:
    """Labels that the text tokenizer writes with byte-fallback (`<0x7A>`) or unknown pieces: {label: those
    pieces}. An LLM trained on that tokenizer's text has never produced them, so such a label is all but
    unscorable (a from-scratch LLM gives it a log-prob of tens of nats whatever the context says)."""
    out = {}
    for label in labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        bad = [p for i, p in zip(ids, pieces, strict=True)
               if i == tokenizer.unk_token_id or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", str(p))]
        if bad:
            out[label] = bad
    return out


def prototype_choice(support: list[torch.Tensor], support_labels: list[str], query: torch.Tensor,
                     labels: list[str]) -> tuple[int, list[float]]:
    """Nearest class prototype by cosine similarity: (chosen index into labels, the similarities).
    Each vector is L2-normalised, each class's support vectors averaged."""
    vectors = torch.nn.functional.normalize(torch.stack(support).double(), dim=-1)
    q = torch.nn.functional.normalize(query.double(), dim=-1)
    sims = []
    for label in labels:
        members = [i for i, lab in enumerate(support_labels) if lab == label]
        if not members:
            raise ValueError(f"class {label!r} has no support video")
        sims.append(float(torch.nn.functional.normalize(vectors[members].mean(0), dim=-1) @ q))
    return max(range(len(labels)), key=sims.__getitem__), sims


def run_prototype(ctx: BenchContext, path: Path, items: list[dict], ways: int, shot_list: list[int],
                  count: int, video_as: str) -> BenchResult:
    spec = ctx.option("tokenizer") or ctx.option("words_tokenizer")
    if spec is None:
        model = ctx.load_model()
        tokenizer, processor, name = model.video_tokenizer, model.processor, str(model.video_tokenizer.preset)
    else:
        tokenizer, name = video_tokenizer_from(spec).eval(), spec
        frames = tokenizer.clip_frames or int(ctx.option("frames", "16"))
        # videos only
        processor = VideoProcessor(None, VideoProcessorConfig.for_video_tokenizer(tokenizer, frames))
    if video_as == "words" and not tokenizer.has_words:
        raise ValueError(f"the prototype scorer's words mode needs a tokenizer with word ids (SweetTok); "
                         f"{name!r} is a {tokenizer.architecture} tokenizer")
    device = next(tokenizer.parameters()).device
    vectors: dict[str, torch.Tensor] = {}

    def vector(item) -> torch.Tensor:
        key = str(path.parent / item["video"])
        if key not in vectors:
            video = processor.load_video(key)[None].to(device)
            with torch.no_grad():
                if video_as == "words":
                    ids = tokenizer.encode_ids(video)[0]
                    vectors[key] = torch.bincount(ids, minlength=tokenizer.codebook_size).float().cpu()
                else:
                    tokens = tokenizer.encode(video)[0]
                    if not tokens.is_floating_point():
                        tokens = tokenizer.ids_to_vectors(tokens[None])[0]
                    vectors[key] = tokens.flatten().float().cpu()
        return vectors[key]

    metrics, samples = [], []
    for shots in shot_list:
        hits = []
        for support, query, labels in tqdm(episodes(items, ways, shots, count, ctx.seed),
                                           desc=f"fewshot prototype {ways}-way {shots}-shot"):
            choice, sims = prototype_choice([vector(i) for i in support], [i["label"] for i in support],
                                            vector(query), labels)
            hits.append(float(labels[choice] == query["label"]))
            samples.append({"shots": shots, "query": query["video"], "label": query["label"],
                            "labels": labels, "similarities": sims, "choice": labels[choice]})
        value, stderr = mean_stderr(hits)
        metrics.append(Metric(f"{ways}way_{shots}shot/acc", value, stderr, len(hits)))
    settings = {"file": str(path), "ways": ways, "shots": shot_list, "episodes": count, "video_as": video_as,
                "scorer": "prototype", "chance": 1 / ways, "tokenizer": name,
                "frames": processor.config.num_frames, "size": processor.config.image_size}
    return BenchResult("fewshot", metrics, settings, samples)


def most_frequent_words(text: str, k: int) -> str:
    """The k most frequent words of `text`, most frequent first (ties: first seen first); all for k = 0."""
    words = text.split()
    if k <= 0:
        return text
    counts = Counter(words)
    first = {w: i for i, w in reversed(list(enumerate(words)))}
    return " ".join(sorted(counts, key=lambda w: (-counts[w], first[w]))[:k])


def warn_unlearned(tokenizer, items: list[dict]) -> dict[str, list[str]]:
    """`unlearned_pieces` of the items' labels, with a warning when there are any."""
    unlearned = unlearned_pieces(tokenizer, sorted({i["label"] for i in items}))
    if unlearned:
        log.warning("fewshot: the text tokenizer writes %d of the labels with byte-fallback or unknown "
                    "pieces its LLM never trained on (%s); those labels score far below the others whatever "
                    "the context, so accuracy stays near chance. Train the text tokenizer on text that has "
                    "these words, or use an LLM whose tokenizer knows them.", len(unlearned),
                    ", ".join(f"{k!r}: {v}" for k, v in unlearned.items()))
    return unlearned


def run(ctx: BenchContext) -> BenchResult:
    ways = int(ctx.option("ways", "5"))
    shot_list = [int(s) for s in str(ctx.option("shots", "1,5")).split(",") if s]
    count = int(ctx.option("episodes", "20") if ctx.limit is None else ctx.limit)
    video_as = ctx.option("video_as", "video")
    video_as = "words" if video_as == "text" else video_as
    if video_as not in VIDEO_AS:
        raise ValueError(f"video_as must be one of {list(VIDEO_AS)} (or text, an alias of words), got "
                         f"{video_as!r}")
    scorer = ctx.option("scorer", "llm")
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {list(SCORERS)}, got {scorer!r}")
    top = int(ctx.option("words_top", "0"))
    path, items = load_fewshot(ctx)
    if scorer == "prototype" and video_as == "oracle":
        raise ValueError("video_as=oracle is a control for the LLM scorer; the prototype scorer would be 1.0")
    if scorer == "prototype":
        return run_prototype(ctx, path, items, ways, shot_list, count, video_as)
    model = ctx.load_model()
    processor, tokenizer_name = model.processor, None
    if video_as == "words":
        to_words, processor, tokenizer_name = words_tokenizer(ctx, model)
    codes = class_codes(items, ctx.seed) if video_as == "oracle" else {}
    unlearned = warn_unlearned(model.text_tokenizer, items)
    cache: dict[str, torch.Tensor] = {}
    texts: dict[str, str] = {}

    def video(item) -> torch.Tensor:
        key = str(path.parent / item["video"])
        if key not in cache:
            cache[key] = processor.load_video(key)
        return cache[key]

    def words(item) -> str:
        key = str(path.parent / item["video"])
        if key not in texts:
            text = to_words.video_to_text(video(item)[None].to(model.device))
            texts[key] = most_frequent_words(text, top)
            cache.pop(key)  # the words are all that is needed again
        return texts[key]

    metrics, samples = [], []
    for shots in shot_list:
        hits: dict[str, list[float]] = {"acc": [], "acc_norm": []}
        for support, query, labels in tqdm(episodes(items, ways, shots, count, ctx.seed),
                                           desc=f"fewshot {ways}-way {shots}-shot"):
            messages, videos = [], []
            for item in support + [query]:
                if video_as == "words":
                    content = f"{words(item)}\n{QUESTION}"
                elif video_as == "oracle":
                    content = f"{codes[item['label']]}\n{QUESTION}"
                else:
                    content = f"{VIDEO_TOKEN}\n{QUESTION}"
                    videos.append(video(item))
                messages.append({"role": "user", "content": content})
                if item is not query:
                    messages.append({"role": "assistant", "content": item["label"]})
            features = model.encode_video(torch.stack(videos)) if videos else None
            scores = continuation_logprobs(model, messages, labels, features)
            raw, norm = pick(scores, labels)
            answer = labels.index(query["label"])
            hits["acc"].append(float(raw == answer))
            hits["acc_norm"].append(float(norm == answer))
            samples.append({"shots": shots, "query": query["video"], "label": query["label"],
                            "labels": labels, "loglikelihoods": scores, "choice": labels[raw]})
        for name, values in hits.items():
            value, stderr = mean_stderr(values)
            metrics.append(Metric(f"{ways}way_{shots}shot/{name}", value, stderr, len(values)))
    settings = {"file": str(path), "ways": ways, "shots": shot_list, "episodes": count, "video_as": video_as,
                "chance": 1 / ways, "question": QUESTION, "labels_with_unlearned_pieces": unlearned}
    if video_as == "oracle":
        settings.update(codes=codes)
    if video_as == "words":
        settings.update(words_tokenizer=tokenizer_name, words_frames=processor.config.num_frames,
                        words_size=processor.config.image_size, words_top=top,
                        words_per_video=sum(len(t.split()) for t in texts.values()) / max(1, len(texts)))
    return BenchResult("fewshot", metrics, settings, samples)

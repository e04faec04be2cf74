"""SweetTok: token counts, the MLC quantizer and its graph, words <-> ids, training, few-shot through words
(CPU, tiny preset, no downloads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmvid.data.shapes.text import LEXICON
from mmvid.testing import world_clips
from mmvid.video_tokenizers import (
    ARCHITECTURES,
    VIDEO_TOKENIZERS,
    build_video_tokenizer,
    load_video_tokenizer,
)
from mmvid.video_tokenizers.objectives import OBJECTIVES, Objective, set_proxy_targets, training_loss
from mmvid.video_tokenizers.sweettok import MLCQuantizer, SweetTok
from mmvid.video_tokenizers.vocabulary import (
    PARTS,
    build_vocabulary,
    default_vocabulary,
    load_vocabulary,
    read_parts_of_speech,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tokenizers" / "sweettok" / "sweettok_tiny.yaml"
# parameters of sweettok_compact (the third-party count for the released model: 128M)
COMPACT_MILLIONS = 130.26


pytestmark = pytest.mark.usefixtures("one_thread")


def _video(batch=2, frames=5, size=32, seed=0) -> torch.Tensor:
    return world_clips(batch, frames, size, seed)


def _tiny(**overrides) -> SweetTok:
    torch.manual_seed(0)
    return build_video_tokenizer("sweettok_tiny", **overrides).eval()


# A hand-made vocabulary: two graph components, {cat, big} and {dog, red}, {fish, small, tiny}.
TOY = dict(noun=["cat", "dog", "fish"], adjective=["big", "red", "small", "tiny"], verb=["runs", "swims"],
           adverb=["fast", "slowly"],
           spatial_edges=[["big", "cat"], ["red", "dog"], ["small", "fish"], ["tiny", "fish"]],
           temporal_edges=[["fast", "runs"], ["slowly", "swims"]])


# ---------------------------------------------------------------- counts and layouts


def test_exact_token_counts_tiny_and_compact_on_meta():
    assert {n for n in VIDEO_TOKENIZERS if n.startswith("sweettok")} == {"sweettok_tiny", "sweettok_base",
                                                                         "sweettok_compact"}
    assert ARCHITECTURES["sweettok"] is SweetTok
    tok = _tiny()
    for T in (1, 2, 5, 8, 17, 128):  # 4 spatial + 16 temporal (one per 8x8 location of 32x32) for any T
        assert tok.num_tokens(T, 32, 32) == 20 == tok.token_layout(T, 32, 32).num_tokens
        assert tok.id_layout(T, 32, 32).num_tokens == 60
    video = _video()
    assert tok.encode(video).shape == (2, 20, 16) and tok.encode_ids(video).shape == (2, 60)
    assert build_video_tokenizer("sweettok_base").num_tokens(16, 64, 64) == 16 + 64
    with torch.device("meta"):
        compact = build_video_tokenizer("sweettok_compact")
    c = compact.config
    assert (c.num_spatial_queries, c.num_temporal_queries, compact.token_dim) == (256, 1024, 512)
    assert compact.num_tokens(17, 256, 256) == 1280 == compact.token_layout(17, 256, 256).num_tokens
    assert compact.id_layout(17, 256, 256).num_tokens == 3840  # the released generator's sequence
    assert sum(p.numel() for p in compact.parameters()) / 1e6 == pytest.approx(COMPACT_MILLIONS, rel=0.005)
    assert compact.latent_frames(17) == 4  # the 5 x 32 x 32 grid: first frame + 4 tubes


def test_layouts_describe_tokens_and_ids():
    tok = _tiny()
    layout = tok.token_layout(5, 32, 32)
    assert layout.groups == ("spatial", "temporal") and not layout.discrete and layout.words is None
    assert layout.group.tolist() == [0] * 4 + [1] * 16
    assert layout.time.tolist() == [0] * 4 + [-1] * 16  # paper reading: spatial tokens are the first frame's
    assert layout.position[4].tolist() == [-1.0, 0.125, 0.125] and layout.position[5].tolist() == [
        -1.0, 0.125, 0.375]
    assert _tiny(reading="released").token_layout(5, 32, 32).time[:4].tolist() == [-1] * 4
    ids = tok.id_layout(5, 32, 32)
    vocab = tok.vocabulary
    assert ids.discrete and ids.codebook_size == len(vocab) == tok.codebook_size and ids.words == vocab.words
    assert ids.groups == PARTS == ("noun", "adjective", "verb", "adverb")
    assert [ids.groups[g] for g in ids.group[:6].tolist()] == ["adjective", "adjective", "noun"] * 2
    assert [ids.groups[g] for g in ids.group[-3:].tolist()] == ["adverb", "adverb", "verb"]
    torch.testing.assert_close(ids.position[12:15], layout.position[4:5].expand(3, 3))
    out = _tiny(output="ids")  # discrete mode: encode gives the ids and the layout is the id layout
    assert out.discrete and out.num_tokens(5, 32, 32) == 60 and out.token_layout(5, 32, 32).discrete


# ---------------------------------------------------------------- vocabulary


def test_default_vocabulary_is_the_worlds_caption_words():
    vocab = default_vocabulary()
    assert vocab.words[: len(vocab.noun)] == list(vocab.noun) and vocab.offsets["noun"] == 0
    assert list(vocab.offsets) == list(PARTS)
    for part in PARTS:
        start, stop = vocab.ranges()[part]
        assert all(LEXICON[w] == part for w in vocab.words[start:stop])
        assert list(getattr(vocab, part)) == sorted(getattr(vocab, part))
    assert {"star", "red", "large", "bounces", "zigzags", "quickly"} <= set(vocab.words)  # held-out verbs too
    assert ("the" not in vocab.words and ("red", "star") in vocab.spatial_edges
            and ("quickly", "moves") in vocab.temporal_edges)
    assert _tiny().config.vocabulary == vocab.to_dict()  # stored in the config, so checkpoints carry it


def test_vocabulary_from_user_captions_and_word_list(tmp_path):
    (tmp_path / "captions.txt").write_text("A big cat runs fast.\nA tiny red fish swims slowly.\n\n"
                                           "The small dog runs.\n")
    (tmp_path / "words.tsv").write_text("# word list\n"
                                        "cat\tNOUN\nfish\tnoun\ndog\tNOUN\nbig\tADJ\ntiny\tadjective\n"
                                        "red\tADJ\nsmall\tADJ\nruns\tVERB\nswims\tverb\nfast\tADV\nslowly\tadverb\na\tDET\n")
    tok = _tiny(captions_path=str(tmp_path / "captions.txt"),
                parts_of_speech_path=str(tmp_path / "words.tsv"))
    vocab = tok.vocabulary
    assert vocab.noun == ("cat", "dog", "fish") and vocab.adjective == ("big", "red", "small", "tiny")
    assert vocab.offsets == {"noun": 0, "adjective": 3, "verb": 7, "adverb": 9}
    assert ("big", "cat") in vocab.spatial_edges and ("big", "fish") not in vocab.spatial_edges
    # "the small dog runs": no adverb
    assert set(vocab.temporal_edges) == {("fast", "runs"), ("slowly", "swims")}
    near = build_vocabulary(["tiny red fish and a big cat", "it runs fast and swims slowly"],
                            read_parts_of_speech(tmp_path / "words.tsv"), window=2)
    assert ("tiny", "fish") in near.spatial_edges and ("tiny", "cat") not in near.spatial_edges
    # A saved vocabulary builds the same tokenizer.
    vocab.save(tmp_path / "vocab.json")
    assert load_vocabulary(tmp_path / "vocab.json") == vocab
    assert _tiny(vocabulary_path=str(tmp_path / "vocab.json")).vocabulary.words == vocab.words
    (tmp_path / "bad.tsv").write_text("cat\tNOUN\ncat\tVERB\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: 'cat' is tagged both"):
        read_parts_of_speech(tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="at least"):
        # 1 adjective
        build_vocabulary(["a big cat runs fast slowly"], read_parts_of_speech(tmp_path / "words.tsv"))


# ---------------------------------------------------------------- the quantizer and its graph


def test_quantizer_picks_nearest_codewords():
    tok = _tiny()
    for quantizer in (tok.spatial_quantizer, tok.temporal_quantizer):
        C, E = quantizer.codeword_dim, quantizer.num_entities
        z = F.normalize(torch.randn(2, 7, 2 * C, generator=torch.Generator().manual_seed(1)), dim=-1)
        out, ids, codebook_loss, commitment, _ = quantizer(z)
        codebook = quantizer.codebook().detach()
        # (2, 7, attributes), brute force
        attribute_d = ((z[..., None, :C] - codebook[None, None, E:]) ** 2).sum(-1)
        entity_d = ((z[..., None, C:] - codebook[None, None, :E]) ** 2).sum(-1)
        order = attribute_d.argsort(-1)
        assert torch.equal(ids[..., 0], order[..., 0] + E) and torch.equal(ids[..., 1], order[..., 1] + E)
        assert torch.equal(ids[..., 2], entity_d.argmin(-1))
        expected = torch.cat([(codebook[ids[..., 0]] + codebook[ids[..., 1]]) / 2, codebook[ids[..., 2]]],
                             dim=-1)
        # forward value: the codewords (straight-through for gradients)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(codebook_loss, F.mse_loss(expected, z))
        torch.testing.assert_close(commitment, codebook_loss)


def test_straight_through_gradients_reach_the_encoder_and_the_gcn():
    tok = _tiny().train()
    loss, _ = training_loss(tok, _video())
    loss.backward()
    for name in ("spatial_queries", "temporal_queries", "first_frame_embed.1.weight", "tube_embed.1.weight",
                 "spatial_quantizer.gcn.weight1.weight", "temporal_quantizer.gcn.weight2.weight"):
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert not tok.spatial_quantizer.word_vectors.requires_grad  # frozen word vectors


def test_gcn_uses_the_graph():
    a = _tiny(vocabulary=TOY)
    b = _tiny(vocabulary={**TOY, "spatial_edges": TOY["spatial_edges"][1:]})  # drop (big, cat)
    b.load_state_dict(a.state_dict())  # same weights and word vectors, one edge fewer
    ca, cb = a.spatial_quantizer.codebook(), b.spatial_quantizer.codebook()
    local = ["cat", "dog", "fish", "big", "red", "small", "tiny"]  # [nouns..., adjectives...]
    changed = {w for i, w in enumerate(local) if not torch.allclose(ca[i], cb[i])}
    assert changed == {"cat", "big"}  # the edge's ends; the other components do not see it
    torch.testing.assert_close(a.temporal_quantizer.codebook(), b.temporal_quantizer.codebook())


# ---------------------------------------------------------------- words and ids


def test_ids_words_ids_round_trip_and_decoding_from_ids():
    tok = _tiny()
    video = _video()
    ids = tok.encode_ids(video)
    words = tok.ids_to_words(ids[0])
    assert len(words) == 60 and torch.equal(tok.words_to_ids(words), ids[0])
    vocab = tok.vocabulary
    assert all(w in vocab.adjective for w in words[0:12:3] + words[1:12:3]) and all(
        w in vocab.noun for w in words[2:12:3])
    assert all(w in vocab.adverb for w in words[12::3] + words[13::3]) and all(
        w in vocab.verb for w in words[14::3])
    text = tok.video_to_text(video[:1])
    assert text == " ".join(words) and torch.equal(tok.words_to_ids(text), ids[0])
    with torch.no_grad():
        from_vectors = tok.decode(tok.encode(video), num_frames=5)
        torch.testing.assert_close(tok.decode_ids(ids, num_frames=5), from_vectors)
        torch.testing.assert_close(tok.decode(ids, num_frames=5), from_vectors)
        torch.testing.assert_close(tok.text_to_video(text, num_frames=5), from_vectors[:1])
    discrete = _tiny(output="ids")
    assert torch.equal(discrete.encode(video), ids)


@pytest.mark.parametrize("call, match", [
    (lambda t: t.encode(torch.zeros(1, 3, 5, 48, 48)), "expects 32x32"),
    (lambda t: t.encode(torch.zeros(3, 5, 32, 32)), "rank 5"),
    (lambda t: t.decode(torch.zeros(1, 19, 16)), r"\(B, 20, 16\)"),
    (lambda t: t.decode_ids(torch.zeros(1, 59, dtype=torch.long)), r"long \(B, 60\)"),
    (lambda t: t.decode_ids(torch.zeros(1, 60, dtype=torch.long)),
     r"id 0 at position 0 of video 0 .* \(adjective: ids 9"),
    (lambda t: t.decode_ids(torch.full((1, 60), 10_000)), "outside its slot"),
    (lambda t: t.words_to_ids("red star flies"), r"not in the vocabulary: \['flies'\]"),
    (lambda t: t.ids_to_words(torch.zeros(2, 3, dtype=torch.long)), "1-D"),
    (lambda t: t.ids_to_words([0, 999]), r"\[0, 46\)"),
    (lambda t: t.video_to_text(torch.zeros(2, 3, 5, 32, 32)), "one video"),
    (lambda t: set_proxy_targets(t, lambda v: v), "proxy_codebook_size"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(_tiny())


@pytest.mark.parametrize("overrides, match", [
    ({"reading": "both"}, "unknown reading"), ({"output": "logits"}, "unknown output"),
    ({"patch_size": 7}, "multiple of patch_size"),
    ({"vocabulary_path": "a.json", "captions_path": "b.txt"}, "not both"),
    ({"parts_of_speech_path": "w.tsv"}, "captions_path"),
    ({"vocabulary": {**TOY, "adjective": ["big"]}}, "at least"),
    ({"vocabulary": {**TOY, "spatial_edges": [["cat", "big"]]}}, r"\(adjective, noun\) pairs"),
    ({"vocabulary": {**TOY, "verb": ["runs", "cat"]}}, "both a noun and a verb"),
])
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**overrides)


# ---------------------------------------------------------------- readings, checkpoints, word vectors


def test_both_readings_run_and_differ_where_they_should():
    video = _video()
    later = video.clone()
    later[:, :, 1:] = torch.rand_like(later[:, :, 1:]) * 2 - 1  # change every frame but the first
    with torch.no_grad():
        for reading, spatial_sees_later_frames in (("paper", False), ("released", True)):
            tok = _tiny(reading=reading)
            (zs, zt), (zs2, zt2) = tok.encode_latents(video), tok.encode_latents(later)
            assert torch.allclose(zs, zs2) != spatial_sees_later_frames, reading
            assert not torch.allclose(zt, zt2)
            assert tok(video).shape == video.shape


def test_save_then_load_is_exact(tmp_path):
    tok = _tiny(reading="released")
    video = _video()
    tok.save_pretrained(tmp_path)
    again = load_video_tokenizer(tmp_path).eval()
    assert again.preset == "sweettok_tiny" and again.config == tok.config and again.words == tok.words
    assert json.loads((tmp_path / "config.json").read_text())["config"]["vocabulary"]["noun"][0] == "circle"
    with torch.no_grad():
        assert torch.equal(again.encode_ids(video), tok.encode_ids(video))
        torch.testing.assert_close(again(video), tok(video), rtol=0, atol=0)


def test_a_saved_tokenizer_loads_with_overrides_as_a_videollm_ids_tokenizer(tmp_path):
    """A trained folder read with output="ids" (what the discrete T2V head and the embedding
    projector need): `load_video_tokenizer(path, output="ids")` and VideoLLMConfig's
    video_tokenizer_overrides on a folder both apply it; fields that do not exist raise."""
    from mmvid.testing import tiny_videollm

    tok = _tiny()
    tok.save_pretrained(tmp_path / "tok")
    video = _video()
    ids = load_video_tokenizer(tmp_path / "tok", output="ids").eval()
    with torch.no_grad():
        assert torch.equal(ids.encode(video), tok.encode_ids(video))
    with pytest.raises(ValueError, match="unknown sweettok config fields"):
        load_video_tokenizer(tmp_path / "tok", outputs="ids")
    model = tiny_videollm(tmp_path, video_tokenizer=str(tmp_path / "tok"), num_frames=5,
                          video_tokenizer_overrides={"output": "ids"}, projector="embedding")
    assert model.video_tokenizer.discrete and model.projector.config.codebook_size == tok.codebook_size


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory) -> Path:
    from mmvid.testing import world_text_tokenizer

    return world_text_tokenizer(tmp_path_factory.mktemp("sweettok-text") / "text-tokenizer")


def test_word_vectors_from_an_llm_embedding_table(text_tokenizer, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hf_tokenizer = AutoTokenizer.from_pretrained(text_tokenizer)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(hf_tokenizer), hidden_size=24, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2))
    folder = tmp_path / "llm"
    llm.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    tok = _tiny(hf_path=str(folder))
    assert tok.config.word_dim == 24
    star = tok.vocabulary.words.index("star")
    pieces = hf_tokenizer(" star", add_special_tokens=False)["input_ids"]
    if len(pieces) > 1 and not hf_tokenizer.decode(pieces[:1]).strip():
        pieces = pieces[1:]
    expected = F.normalize(llm.get_input_embeddings().weight[pieces].mean(0), dim=0)
    torch.testing.assert_close(tok.spatial_quantizer.word_vectors[star], expected.detach())
    tok.save_pretrained(tmp_path / "tok")  # the checkpoint carries the vectors: loading never reads the LLM
    again = load_video_tokenizer(tmp_path / "tok")
    assert again.config.hf_path is None
    torch.testing.assert_close(again.spatial_quantizer.word_vectors, tok.spatial_quantizer.word_vectors,
                               rtol=0, atol=0)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("overrides, steps, ratio", [
    ({}, 100, 0.3),
    ({"queries": "flattened"}, 60, 0.5), ({"codebook": "plain"}, 60, 0.5),  # the claims' ablations (issue 19)
])
def test_one_batch_overfits(overrides, steps, ratio):
    tok = _tiny(**overrides).train()
    video = _video()
    optimizer = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss, parts = training_loss(tok, video)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts["mse"])
    assert losses[-1] < ratio * losses[0], (losses[0], losses[-1])


def test_proxy_targets_hook():
    tok = _tiny(proxy_codebook_size=8, pixel_weight=0.0).train()
    video = _video()
    set_proxy_targets(tok, lambda v: torch.randint(0, 8, (v.shape[0], 1 + tok.latent_frames(v.shape[2]), 16)))
    loss, parts = training_loss(tok, video)
    assert "proxy_ce" in parts and loss.item() == pytest.approx(parts["proxy_ce"] + parts["vq"], rel=1e-5)
    loss.backward()
    assert tok.proxy_head.weight.grad.abs().sum() > 0
    assert not any("proxy_targets" in k for k in tok.state_dict())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from mmvid.data.shapes.build import WorldSettings, build_world

    out = tmp_path_factory.mktemp("sweettok") / "world"
    build_world(out, WorldSettings(train=4, val=2, test=0, fewshot=3, frames=8, size=32), progress=False)
    return out


def test_trainer_uses_the_training_loss_hook(world, tmp_path, monkeypatch):
    from mmvid.config import load_config
    from mmvid.video_tokenizers.trainer import TokenizerTrainConfig, run

    calls = []
    hook = OBJECTIVES["sweettok"]
    spy = Objective(hook.settings, lambda *a, **k: calls.append(1) or hook.loss(*a, **k))
    monkeypatch.setitem(OBJECTIVES, "sweettok", spy)
    cfg = load_config(TokenizerTrainConfig, TINY_CONFIG, [
        f"data.source={world}", f"out={tmp_path / 'run'}", "steps=2", "val_every=2", "checkpoint_every=2",
        "val_videos=2", "threads=1", "log_every=1", "batch_size=2"])
    val = run(cfg)
    assert len(calls) == 2 and math.isfinite(val["psnr"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "vq" in m] == [1, 2]
    assert load_video_tokenizer(tmp_path / "run" / "final").preset == "sweettok_tiny"


# ---------------------------------------------------------------- few-shot through words


def test_fewshot_words_mode(world, text_tokenizer, tmp_path):
    from mmvid.evaluation import BenchContext, run_benches
    from mmvid.testing import tiny_videollm

    workdir = text_tokenizer.parent  # reuse the trained text tokenizer
    model = tiny_videollm(workdir, video_tokenizer="sweettok_tiny")
    options = {"ways": "2", "shots": "1", "video_as": "words"}
    record = run_benches(["fewshot"], BenchContext(model=model, data=str(world), limit=2, options=options))
    result = record["results"]["fewshot"]
    assert set(result["metrics"]) == {"2way_1shot/acc", "2way_1shot/acc_norm"}
    assert (result["settings"]["words_tokenizer"] == "sweettok_tiny"
            and result["settings"]["words_per_video"] == 60)
    # The same LLM over videos (SweetTok's quantized vectors through the projector) still runs.
    video_mode = run_benches(["fewshot"], BenchContext(model=model, data=str(world), limit=1,
                                                       options={"ways": "2", "shots": "1"}))
    assert "2way_1shot/acc" in video_mode["results"]["fewshot"]["metrics"]
    # A model without words takes a saved SweetTok; words_top keeps the most frequent words.
    plain = tiny_videollm(workdir, video_tokenizer="vtok_tiny")
    folder = _tiny().save_pretrained(tmp_path / "sweettok")
    options = {"ways": "2", "shots": "1", "video_as": "text", "words_tokenizer": str(folder),
               "words_top": "5"}
    record = run_benches(["fewshot"], BenchContext(model=plain, data=str(world), limit=2, options=options))
    settings = record["results"]["fewshot"]["settings"]
    assert (settings["video_as"] == "words" and settings["words_frames"] == 5
            and settings["words_per_video"] <= 5)
    with pytest.raises(ValueError, match="words_tokenizer=PATH"):
        run_benches(["fewshot"],
                    BenchContext(model=plain, data=str(world), limit=1, options={"video_as": "words"}))


# ---------------------------------------------------------- the codebook-usage regulariser (not in the paper)


USAGE_CONFIG = ROOT / "tokenizers" / "sweettok" / "sweettok_base_usage.yaml"


def test_usage_off_by_default_and_ids_do_not_depend_on_it():
    video = _video()
    off = _tiny()
    on = _tiny(usage_weight=0.5)
    on.load_state_dict(off.state_dict())
    assert off.objective.usage_weight == 0.0 and off.objective.usage_temperature == 1.0
    # grad enabled: the usage path keeps its graph
    a, b = off.quantize(video), on.quantize(video, on.objective.usage_temperature)
    assert a["usage_loss"].item() == 0.0 and b["usage_loss"].item() != 0.0
    assert torch.equal(a["ids"], b["ids"])  # the hard assignment is bit-identical
    assert torch.equal(a["vectors"], b["vectors"]) and torch.equal(a["codebook_loss"], b["codebook_loss"])
    loss_off, parts_off = training_loss(off, video)
    loss_on, parts_on = training_loss(on, video)
    assert "usage" not in parts_off and parts_on["usage"] == pytest.approx(b["usage_loss"].item())
    assert loss_on.item() == pytest.approx(loss_off.item() + 0.5 * parts_on["usage"], rel=1e-6)


def test_usage_loss_reaches_the_encoder_and_the_gcn():
    tok = _tiny(usage_weight=1.0).train()
    tok.quantize(_video(), tok.objective.usage_temperature)["usage_loss"].backward()
    grads = {name: p.grad for name, p in tok.named_parameters()}
    for name in ("spatial_queries", "temporal_queries", "first_frame_embed.1.weight", "tube_embed.1.weight",
                 "spatial_quantizer.gcn.weight1.weight", "temporal_quantizer.gcn.weight2.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert grads["spatial_in.weight"] is None  # the decoder is not part of it


def test_usage_loss_is_lower_when_a_batch_spreads_over_many_words():
    # The formula on hand-made distances: confident tokens on K different words -> -log K; all on one -> 0.
    K = 6
    spread = 100.0 * (1 - torch.eye(K))  # (M = K, K): token m sits on word m
    collapsed = spread[:1].expand(K, K)  # every token on word 0
    assert MLCQuantizer.usage_loss(spread, 1.0).item() == pytest.approx(-math.log(K), abs=1e-4)
    assert MLCQuantizer.usage_loss(collapsed, 1.0).item() == pytest.approx(0.0, abs=1e-4)
    # Through the quantizer: tokens placed at chosen codewords.
    quantizer = _tiny().spatial_quantizer
    codebook = quantizer.codebook().detach()
    E, A = quantizer.num_entities, quantizer.num_attributes
    # At init the GCN's codewords of a group lie within ~1e-5..1e-3 (squared) of each other: a temperature
    # well below the smallest gap makes each token's soft assignment its own word.
    gaps = [torch.pdist(group).pow(2).min() for group in (codebook[:E], codebook[E:])]
    temperature = 0.05 * float(min(gaps))
    picks = torch.arange(2 * E)

    def usage(entities, attributes):
        z = torch.cat([codebook[E + attributes], codebook[entities]], dim=-1)[None]  # (1, M, 2C)
        _, ids, *_, loss = quantizer(z, usage_temperature=temperature)
        assert torch.equal(ids[0, :, 2], entities) and torch.equal(ids[0, :, 0], E + attributes)
        return loss

    many, one = usage(picks % E, picks % A), usage(torch.zeros_like(picks), torch.zeros_like(picks))
    # every word of both groups, evenly
    assert many.item() == pytest.approx(-math.log(E) - math.log(A), abs=0.05)
    assert one.item() == pytest.approx(0.0, abs=0.05)


def test_usage_term_increases_the_entity_words_in_use():
    video = _video()

    def entities_in_use(weight: float) -> int:
        torch.manual_seed(0)
        tok = build_video_tokenizer("sweettok_tiny", usage_weight=weight, usage_temperature=0.01).train()
        optimizer = torch.optim.Adam(tok.parameters(), lr=3e-3)
        for _ in range(60):
            loss, _ = training_loss(tok, video)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = tok.quantize(video)
        return out["spatial_ids"][..., 2].unique().numel() + out["temporal_ids"][..., 2].unique().numel()

    without, with_usage = entities_in_use(0.0), entities_in_use(1.0)
    assert with_usage > without, (without, with_usage)  # seen: 2 -> 7 (nouns + verbs)


def test_usage_config_round_trips_and_validates(tmp_path):
    tok = _tiny(usage_weight=0.25, usage_temperature=0.05)
    tok.save_pretrained(tmp_path / "tok")
    again = load_video_tokenizer(tmp_path / "tok")
    assert (again.objective.usage_weight, again.objective.usage_temperature) == (0.25, 0.05)
    assert again.config == tok.config and again.objective == tok.objective
    # A config.json from before the option (and before issue 18: objective fields inside the config) loads
    # with it off.
    _tiny().save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    meta["config"].update(meta.pop("objective"))
    del meta["config"]["usage_weight"], meta["config"]["usage_temperature"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    old = load_video_tokenizer(tmp_path / "old")
    assert (old.objective.usage_weight, old.objective.usage_temperature) == (0.0, 1.0)
    with pytest.raises(ValueError, match="usage_weight must be >= 0"):
        _tiny(usage_weight=-0.1)
    with pytest.raises(ValueError, match="usage_temperature must be > 0"):
        _tiny(usage_temperature=0.0)


def test_usage_yaml_is_the_base_config_plus_the_term():
    from mmvid.config import load_config
    from mmvid.video_tokenizers.trainer import TokenizerTrainConfig

    base = load_config(TokenizerTrainConfig, ROOT / "tokenizers" / "sweettok" / "sweettok_base.yaml")
    usage = load_config(TokenizerTrainConfig, USAGE_CONFIG)
    assert (usage.model_overrides == {"usage_weight": 0.1, "usage_temperature": 0.01}
            and usage.out == "runs/tokenizer-sweettok_base_usage")
    base.model_overrides, base.out = usage.model_overrides, usage.out
    assert usage == base


# ---------------------------------------------------------------- the claims' ablations (issue 19)


@pytest.mark.parametrize("overrides, match", [({"queries": "joint"}, "unknown queries"),
                                              ({"codebook": "vq"}, "unknown codebook")])
def test_ablation_options_are_checked(overrides, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**overrides)


def test_flattened_queries_keep_the_token_count_and_read_every_frame():
    video = _video()
    later = video.clone()
    later[:, :, 1:] = torch.rand_like(later[:, :, 1:]) * 2 - 1
    decoupled, flattened = _tiny(), _tiny(queries="flattened")
    assert not hasattr(flattened, "temporal_blocks") and not hasattr(decoupled, "joint_blocks")
    with torch.no_grad():
        assert flattened.encode(video).shape == decoupled.encode(video).shape
        (zs, _), (zs2, _) = flattened.encode_latents(video), flattened.encode_latents(later)
        assert not torch.allclose(zs, zs2)  # one set of queries over all frames: no first-frame-only branch
        assert flattened.decode_ids(flattened.encode_ids(video)).shape == video.shape
    # as many encoder layers as the two branches together, so the parameter counts stay close
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(flattened) - count(decoupled)) < 0.05 * count(decoupled)


def test_plain_codebook_is_free_codewords_in_the_same_layout(tmp_path):
    plain = _tiny(codebook="plain")
    for quantizer in (plain.spatial_quantizer, plain.temporal_quantizer):
        assert quantizer.plain and not hasattr(quantizer, "gcn")
        assert quantizer.codebook() is quantizer.codes and quantizer.codes.requires_grad
    video = _video()
    with torch.no_grad():
        ids = plain.encode_ids(video)
    plain.check_ids(ids)  # the same id layout (3 per token, each slot its part of speech's range)
    plain.save_pretrained(tmp_path)
    again = load_video_tokenizer(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again.encode_ids(video), ids)

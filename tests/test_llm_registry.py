"""Any decoder-only causal LM that transformers registers trains, generates and reloads inside a VideoLLM
(issue 23). The default run checks a few representative architectures; the whole registry walk is slow
(`make test-registry`, run by CI) and writes its table to runs/llm_registry.json."""

import json
from pathlib import Path

import pytest
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mmvid.llm_registry import (
    OVERRIDES,
    SKIPPED,
    check_architecture,
    format_table,
    run,
    skip_reasons,
    tiny_llm_config,
)
from mmvid.testing import world_text_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# dense GQA (llama, mistral), tied embeddings (qwen2), parallel residual (gpt_neox), sliding + global layers
# and eager-only attention (gemma2), pad/bos/eos defaults outside a small vocabulary (phi3, smollm3), latent
# attention + MoE (deepseek_v3), a hybrid of linear and full attention (qwen3_next), no KV cache to continue
# from (openai-gpt: generation runs the sequence again), per-layer token embeddings (gemma3n_text)
REPRESENTATIVE = ["llama", "mistral", "qwen2", "gpt_neox", "gemma2", "phi3", "smollm3", "deepseek_v3",
                  "qwen3_next", "openai-gpt", "gemma3n_text"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return world_text_tokenizer(tmp_path_factory.mktemp("text-tokenizer") / "tok")


def test_every_registered_causal_lm_is_classified():
    """A transformers upgrade that adds an architecture gets classified by the rules (or is eligible, and
    then walked); one that removes an architecture must take it out of the tables here."""
    reasons = skip_reasons()
    assert set(reasons) == set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert all(reason is None or len(reason) > 20 for reason in reasons.values())
    assert set(SKIPPED) <= set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), "SKIPPED names unregistered architectures"
    stale = {name for name in OVERRIDES if reasons.get(name, "unregistered") is not None}
    assert not stale, f"OVERRIDES for architectures that are not walked: {sorted(stale)}"
    eligible = [name for name, reason in reasons.items() if reason is None]
    assert set(REPRESENTATIVE) <= set(eligible) and len(eligible) > 100
    # the rules, one example each
    assert "encoder-decoder" in reasons["bart"] and "encoder" in reasons["bert"]
    assert "gemma3_text" in reasons["gemma3"] and "inputs_embeds" in reasons["cpmant"]


def test_tiny_configs_keep_one_layer_of_each_kind():
    """The builder shrinks sizes and keeps the kinds of layers a hybrid or a Gemma mixes."""
    gemma = tiny_llm_config("gemma3_text", vocab_size=300)
    assert gemma["vocab_size"] == 300 and gemma["hidden_size"] == 64
    assert gemma["layer_types"] == ["sliding_attention", "full_attention"] and gemma["num_hidden_layers"] == 2
    assert set(tiny_llm_config("qwen3_next")["layer_types"]) == {"linear_attention", "full_attention"}
    latent = tiny_llm_config("deepseek_v3")  # rope on qk_rope_head_dim; every head has its own key/value
    assert latent["head_dim"] == latent["qk_rope_head_dim"]
    assert latent["num_key_value_heads"] == latent["num_attention_heads"]
    assert all(key not in gemma for key in ("pad_token_id", "bos_token_id", "eos_token_id"))
    data = dict(gemma)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    assert config.layer_types == ["sliding_attention", "full_attention"]


@pytest.mark.parametrize("model_type", REPRESENTATIVE)
def test_a_representative_llm_trains_generates_and_reloads(tokenizer_dir, tmp_path, one_thread, model_type):
    result = check_architecture(model_type, tokenizer_dir, tmp_path)
    assert result["status"] == "pass", f"{model_type} failed at {result['stage']}: {result['error']}\n" \
                                       f"{result.get('traceback', '')}"
    assert result["params"] < 2_000_000
    assert result["loss"] == pytest.approx(result["loss_reloaded"])


@pytest.mark.slow
def test_the_whole_registry_walk(tmp_path, capsys):
    """Every eligible architecture (in child processes, 2 at a time): at least 90 % pass, every skip has its
    reason. The table is printed and written to runs/llm_registry.json."""
    report = run(None, tmp_path, jobs=2, timeout=180, verbose=False)
    output = ROOT / "runs" / "llm_registry.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    with capsys.disabled():
        print("\n" + format_table(report) + f"\n(written to {output})")
    assert report["registered"] == len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert all(isinstance(reason, str) and reason for reason in report["skip"].values())
    assert report["pass_rate"] >= 0.9, format_table(report)

"""The shrunk model keeps the architecture class, vocabulary, special ids and chat template of the
original config; only its dimensions are small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from finetune.smoke.shrink import shrink
from tests._fake_hub import QWEN25_TEMPLATE, write_model

# Published config.json values of the real models (dimensions, rope, attention), vocab from the tiny tokenizer.
CONFIGS = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
              "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 16,
              "num_key_value_heads": 8, "head_dim": 64, "rope_theta": 500000.0, "tie_word_embeddings": True,
              "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "max_position_embeddings": 131072, "hidden_act": "silu"},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
              "intermediate_size": 3072, "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
              "head_dim": 128, "rope_theta": 1000000, "max_position_embeddings": 40960, "tie_word_embeddings": True},
    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 2304,
               "intermediate_size": 9216, "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
               "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"},
    "phi3": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072,
             "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
             "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
             "sliding_window": 2047},
    "qwen2_moe": {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
                  "intermediate_size": 5632, "num_attention_heads": 16, "num_hidden_layers": 24,
                  "num_key_value_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1},
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_shrunk_model_keeps_architecture_vocabulary_and_template(arch: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_model(tmp_path / "hf", f"org/{arch}", CONFIGS[arch], "<|im_end|>")
    shrunk = shrink(f"org/{arch}", tmp_path / "out")
    original = json.loads(next((tmp_path / "hf").rglob("config.json")).read_text())
    saved = json.loads((shrunk.path / "config.json").read_text())
    assert shrunk.architecture == saved["architectures"][0] == CONFIGS[arch]["architectures"][0]
    assert saved["vocab_size"] == original["vocab_size"] == shrunk.vocab_size
    assert saved["eos_token_id"] == original["eos_token_id"]
    assert saved["num_hidden_layers"] == 2 and saved["hidden_size"] == 64
    for kept in ("rope_theta", "rope_scaling", "sliding_window", "attn_logit_softcapping", "hidden_act"):
        if kept in CONFIGS[arch] and kept in saved:
            assert saved[kept] == CONFIGS[arch][kept], kept
    assert saved.get("num_experts", 4) <= 4
    assert AutoTokenizer.from_pretrained(shrunk.path).chat_template == QWEN25_TEMPLATE
    print(f"{arch}: {shrunk.architecture}, {shrunk.parameters:,} parameters")
    assert shrunk.parameters < 5_000_000

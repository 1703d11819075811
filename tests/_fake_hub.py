"""A Hugging Face cache (HF_HOME layout) holding only the config and tokenizer files of the models the
shipped recipes name, built offline. The config.json values are the real models' (Qwen2.5-0.5B and
-Instruct, as published), except `vocab_size` and the special token ids: the tokenizer is a tiny
byte-level BPE with Qwen's special tokens and Qwen2.5's chat template, because the real 151k-token
tokenizer cannot be built without the network. Used by the smoke tests and benchmarks/smoke_times.py."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.tiny import build_tokenizer

REVISION = "0123456789abcdef0123456789abcdef01234567"

# Qwen2.5's template (system default, no tools branch), as shipped in its tokenizer_config.json.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
}
# name -> (config overrides, eos token)
MODELS = {
    "Qwen/Qwen2.5-0.5B-Instruct": ({"max_window_layers": 21}, "<|im_end|>"),
    "Qwen/Qwen2.5-0.5B": ({}, "<|endoftext|>"),
}
CORPUS = ["What is ft? ft fine-tunes language models from one recipe.", "2 + 2 = 4", "Hello, how are you?",
          "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "The quick brown fox."] * 4


def write_model(root: Path, name: str, config: dict, eos: str) -> Path:
    """One models--ORG--NAME entry: snapshots/REV/{config,tokenizer files} and refs/main."""
    entry = root / "hub" / f"models--{name.replace('/', '--')}"
    snapshot = entry / "snapshots" / REVISION
    tokenizer = build_tokenizer(CORPUS, vocab_size=400, chat_template=QWEN25_TEMPLATE,
                                special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                bos_token=None, eos_token=eos, pad_token="<|endoftext|>", unk_token="<unk>")
    tokenizer.save_pretrained(snapshot)
    ids = {"bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
           "eos_token_id": tokenizer.convert_tokens_to_ids(eos), "pad_token_id": tokenizer.pad_token_id,
           "vocab_size": len(tokenizer)}
    (snapshot / "config.json").write_text(json.dumps({**config, **ids}, indent=2))
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(REVISION)
    return snapshot


# google-bert/bert-base-uncased's config.json values (the mlm recipe's encoder).
_BERT_BASE = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "position_embedding_type": "absolute", "type_vocab_size": 2, "use_cache": True,
}
# Qwen/Qwen1.5-MoE-A2.7B-Chat's config.json values (the moe_lora recipe), as in tests/data/plan.
_QWEN15_MOE = json.loads((Path(__file__).parent / "data" / "plan" / "qwen1.5-moe-a2.7b" / "config.json").read_text())


def write_encoder(root: Path, name: str, config: dict) -> Path:
    """A BERT-style entry: a WordPiece tokenizer with [MASK] (the real 30k vocabulary is not needed)."""
    from finetune.tiny import build_wordpiece_tokenizer

    snapshot = root / "hub" / f"models--{name.replace('/', '--')}" / "snapshots" / REVISION
    tokenizer = build_wordpiece_tokenizer(CORPUS)
    tokenizer.save_pretrained(snapshot)
    ids = {"pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}
    (snapshot / "config.json").write_text(json.dumps({**config, **ids}, indent=2))
    (snapshot.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text(REVISION)
    return snapshot


# google/flan-t5-small's config.json values (the seq2seq_lora recipe's encoder-decoder), as published
# (its task_specific_params, generation-time prompt presets, left out).
_FLAN_T5_SMALL = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 1024, "d_kv": 64, "d_model": 512,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
    "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512, "num_decoder_layers": 8, "num_heads": 6,
    "num_layers": 8, "output_past": True, "pad_token_id": 0, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
    "vocab_size": 32128,
}


def write_seq2seq(root: Path, name: str, config: dict) -> Path:
    """A T5-style entry: a tiny tokenizer with T5's <pad> </s> <unk> at ids 0-2 and `text </s>` encoding."""
    from finetune.tiny_seq2seq import build_seq2seq_tokenizer

    snapshot = root / "hub" / f"models--{name.replace('/', '--')}" / "snapshots" / REVISION
    tokenizer = build_seq2seq_tokenizer(CORPUS, "t5")
    tokenizer.save_pretrained(snapshot)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "decoder_start_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}
    (snapshot / "config.json").write_text(json.dumps({**config, **ids}, indent=2))
    (snapshot.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text(REVISION)
    return snapshot


# Qwen/Qwen2-VL-2B-Instruct's config.json values, as published (token ids and vocab_size from the tiny
# tokenizer, which has the real special tokens and chat template: finetune.tiny_vlm).
_QWEN2_VL_2B = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0, "hidden_act": "silu",
    "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2_vl", "num_attention_heads": 12, "num_hidden_layers": 28,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}


def write_vlm(root: Path, name: str, config: dict) -> Path:
    """A Qwen2-VL entry: config, the published preprocessor_config.json, a tiny tokenizer with the real
    special tokens and chat template."""
    from finetune.tiny_vlm import (
        QWEN2_VL_PREPROCESSOR,
        build_vlm_tokenizer,
        special_ids,
    )

    snapshot = root / "hub" / f"models--{name.replace('/', '--')}" / "snapshots" / REVISION
    tokenizer = build_vlm_tokenizer(CORPUS)
    tokenizer.save_pretrained(snapshot)
    (snapshot / "config.json").write_text(json.dumps({**config, **special_ids(tokenizer)}, indent=2))
    (snapshot / "preprocessor_config.json").write_text(json.dumps(QWEN2_VL_PREPROCESSOR, indent=2))
    (snapshot.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text(REVISION)
    return snapshot


def write_fake_hub(root: Path) -> Path:
    """HF_HOME with every Hub model of the shipped recipes; returns root."""
    for name, (overrides, eos) in MODELS.items():
        write_model(root, name, {**_QWEN25_05B, **overrides}, eos)
    write_model(root, "Qwen/Qwen1.5-MoE-A2.7B-Chat", _QWEN15_MOE, "<|im_end|>")
    write_encoder(root, "google-bert/bert-base-uncased", _BERT_BASE)
    write_seq2seq(root, "google/flan-t5-small", _FLAN_T5_SMALL)
    write_vlm(root, "Qwen/Qwen2-VL-2B-Instruct", _QWEN2_VL_2B)
    return root

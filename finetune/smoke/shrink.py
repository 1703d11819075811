"""Shrink a recipe's model: the same architecture, vocabulary, special tokens, rope and attention
type, built from the model's own config.json with small dimensions and random weights, next to
the model's real tokenizer and chat template. Only config and tokenizer files are ever read, from a
local directory or the Hugging Face cache; `prefetch` is the one place that downloads them."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FtError

# The small files a smoke run needs: never weights.
CONFIG_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json", "*.tiktoken", "preprocessor_config.json"]

# Dimension -> small value. Only attributes the config has are set; everything else (vocabulary,
# special ids, rope, attention type, activation) is the original's.
SMALL_DIMS: dict[str, int] = {
    "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "head_dim": 16, "num_local_experts": 4, "num_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "max_window_layers": 2,
    "first_k_dense_replace": 0,
    # Encoder-decoders: T5 (d_model, d_ff, d_kv, num_layers, num_decoder_layers, num_heads) and BART
    # (d_model, encoder_/decoder_layers, _ffn_dim, _attention_heads).
    "d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
    "encoder_layers": 2, "decoder_layers": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4,
}


# A vision tower's dimensions -> small value (Qwen2-VL: depth, embed_dim, num_heads; Qwen2.5-VL: also its
# width `hidden_size` and `intermediate_size`). What it hands the language model is set to the text width.
SMALL_VISION: dict[str, int] = {"depth": 2, "embed_dim": 32, "num_heads": 2, "intermediate_size": 64}


class SmokeSourceError(FtError):
    """The model's config or tokenizer is neither a local directory nor in the Hugging Face cache."""


@dataclass(frozen=True)
class ShrunkModel:
    source: str  # the recipe's model.name_or_path
    path: Path  # the saved shrunk model + tokenizer
    architecture: str
    parameters: int
    vocab_size: int


def hub_cache() -> str | None:
    """The Hub cache as the environment says now (huggingface_hub reads HF_HOME once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def source_dir(name_or_path: str, revision: str | None = None) -> Path:
    """The directory holding the model's config.json and tokenizer: a local one, or the Hub cache's
    snapshot (HF_HOME), read without the network."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import snapshot_download

    try:
        found = Path(snapshot_download(name_or_path, revision=revision, allow_patterns=CONFIG_PATTERNS,
                                       local_files_only=True, cache_dir=hub_cache()))
    except Exception as err:  # noqa: BLE001 - any miss (not cached, bad id) means the same thing here
        raise SmokeSourceError(_not_cached(name_or_path, err)) from None
    if not (found / "config.json").is_file():
        raise SmokeSourceError(_not_cached(name_or_path, FileNotFoundError("config.json")))
    return found


def _not_cached(name: str, err: Exception) -> str:
    return (f"model.name_or_path: {name!r} is not a local directory and its config/tokenizer are not in the "
            f"Hugging Face cache (HF_HOME). ft smoke needs only these small files, never the weights: "
            f"{', '.join(p for p in CONFIG_PATTERNS[:4])} (+ chat template/vocab files if the model has them).\n"
            f"Cache them once where there is a network (a CI cache keeps HF_HOME):  ft smoke --prefetch RECIPE\n"
            f"  cause: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def prefetch(name_or_path: str, revision: str | None = None) -> Path:
    """Download the model's config and tokenizer files (never weights) into the Hub cache."""
    if Path(name_or_path).expanduser().is_dir():
        return Path(name_or_path).expanduser().resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, revision=revision, allow_patterns=CONFIG_PATTERNS,
                                      cache_dir=hub_cache()))
    except Exception as err:  # noqa: BLE001 - offline, gated or unknown: the user must act either way
        raise SmokeSourceError(f"could not download the config/tokenizer of {name_or_path!r} (offline, gated, or "
                               f"not a Hub id): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                               ) from None


def small_config(src: Path) -> Any:
    """The model's config with small dimensions; vocabulary, special ids, rope and attention kept."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(src)
    text = getattr(config, "text_config", None) or config
    for name, value in SMALL_DIMS.items():
        if getattr(text, name, None) is not None:
            setattr(text, name, value)
    kv = getattr(text, "num_key_value_heads", None)
    if kv is not None:
        text.num_key_value_heads = 1 if kv == 1 else 2  # keep MQA as MQA, GQA as GQA
    if getattr(text, "layer_types", None):
        text.layer_types = list(text.layer_types)[: text.num_hidden_layers]
    if getattr(text, "mlp_only_layers", None):
        text.mlp_only_layers = []
    _shrink_mrope(text)
    if getattr(config, "vision_config", None) is not None:
        _shrink_vision(config.vision_config, text.hidden_size)
    return config


def _shrink_mrope(text: Any) -> None:
    """Multimodal rotary sections (Qwen2-VL: t, h, w) split half a head; scaled to the small head."""
    rope = getattr(text, "rope_parameters", None) or {}
    sections = rope.get("mrope_section") if isinstance(rope, dict) else None
    if not sections:
        return
    half = (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads) // 2
    scaled = [max(1, round(s * half / sum(sections))) for s in sections]
    scaled[0] += half - sum(scaled)
    rope["mrope_section"] = scaled


def _shrink_vision(vision: Any, text_width: int) -> None:
    for name, value in SMALL_VISION.items():
        if getattr(vision, name, None) is not None:
            setattr(vision, name, value)
    if getattr(vision, "out_hidden_size", None) is not None:  # Qwen2.5-VL: own width, projected to the text's
        vision.hidden_size, vision.out_hidden_size = 32, text_width
        if getattr(vision, "fullatt_block_indexes", None):
            vision.fullatt_block_indexes = [vision.depth - 1]
    elif getattr(vision, "embed_dim", None) is not None:  # Qwen2-VL: hidden_size is the merger's output
        vision.hidden_size = text_width


def shrink(name_or_path: str, out: Path, *, revision: str | None = None, head: str | None = None,
           seed: int = 0) -> ShrunkModel:
    """Save a randomly initialised small copy of `name_or_path` (its `head`; default: the generating
    kind its config is, a causal LM or an encoder-decoder) with its real tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from finetune.model_kinds import kind_of_config, model_kind

    src = source_dir(name_or_path, revision)
    config = small_config(src)
    head = head or kind_of_config(config.to_dict()).name
    if head == "sequence_classification":
        config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_kind(head).auto().from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src)
    text_config = model.config.get_text_config()  # a vision-language model's pad id lives there
    if getattr(text_config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        text_config.pad_token_id = tokenizer.pad_token_id
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if (src / "preprocessor_config.json").is_file():  # a vision-language model's image processor, as published
        shutil.copyfile(src / "preprocessor_config.json", out / "preprocessor_config.json")
    return ShrunkModel(source=name_or_path, path=out, architecture=type(model).__name__,
                       parameters=sum(p.numel() for p in model.parameters()),
                       vocab_size=model.get_input_embeddings().weight.shape[0])

"""Per-architecture facts for writing a transformers model as GGUF, declared as data.

What each entry says mirrors what llama.cpp's own converter (convert_hf_to_gguf.py) does for that
model family, so llama.cpp and transformers' GGUF loader read the file back as the same model:
Llama/Mistral store q/k with the rotary halves interleaved (the `permute` below), Gemma 2 stores
its RMSNorm weights with the +1 that its forward pass adds, Phi-3 keeps qkv and gate/up fused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.errors import FtError


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers `model_type` is written."""

    gguf_arch: str  # name of the gguf.MODEL_ARCH member
    permute_qk: bool = False  # llama.cpp's rotary layout for q_proj/k_proj (Llama family)
    norm_plus_one: bool = False  # Gemma: the stored norm weight is 1 + the HF parameter
    extra: Callable[[Any, dict[str, Any]], None] | None = None  # architecture-only metadata


def _gemma2_extra(writer: Any, cfg: dict[str, Any]) -> None:
    if cfg.get("attn_logit_softcapping") is not None:
        writer.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
    if cfg.get("final_logit_softcapping") is not None:
        writer.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    if cfg.get("sliding_window") is not None:
        writer.add_sliding_window(int(cfg["sliding_window"]))


def _phi3_extra(writer: Any, cfg: dict[str, Any]) -> None:
    if cfg.get("sliding_window") is not None:
        writer.add_sliding_window(int(cfg["sliding_window"]))


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("LLAMA", permute_qk=True),
    # llama.cpp converts Mistral (v0.1-v0.3 layout) as a Llama: same graph, same file.
    "mistral": ArchSpec("LLAMA", permute_qk=True),
    "qwen2": ArchSpec("QWEN2"),
    "qwen3": ArchSpec("QWEN3"),
    "gemma2": ArchSpec("GEMMA2", norm_plus_one=True, extra=_gemma2_extra),
    "phi3": ArchSpec("PHI3", extra=_phi3_extra),
}


def arch_spec(cfg: dict[str, Any]) -> ArchSpec:
    """The spec for a config.json, or FtError naming what ft converts."""
    model_type = cfg.get("model_type")
    spec = ARCHITECTURES.get(str(model_type))
    if spec is None:
        raise FtError(
            f"GGUF export does not support model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return spec


def head_dim(cfg: dict[str, Any]) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in `rope_parameters`; older configs in rope_theta/rope_scaling."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _add_rope_scaling(writer: Any, rope: dict[str, Any]) -> None:
    import gguf

    kind = rope["rope_type"]
    if kind in ("default", "llama3"):  # llama3 is carried by the rope_freqs tensor (extra_tensors)
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    else:
        raise FtError(f"GGUF export supports rope types default, linear and yarn; this model uses {kind!r}")


def check_hparams(cfg: dict[str, Any], spec: ArchSpec) -> None:
    """Refuse up front what the metadata cannot express (before any file is opened)."""
    kind = _rope(cfg)["rope_type"]
    if kind not in ("default", "linear", "yarn") and not (kind == "llama3" and spec.gguf_arch == "LLAMA"):
        raise FtError(f"GGUF export supports rope types default, linear and yarn (and llama3 for Llama); "
                      f"this model uses {kind!r}")
    # llama.cpp scales Gemma 2's queries by 1/sqrt(head_dim) and has no key for query_pre_attn_scalar.
    scalar = cfg.get("query_pre_attn_scalar")
    if cfg.get("model_type") == "gemma2" and scalar is not None and scalar != head_dim(cfg):
        raise FtError(f"Gemma 2 with query_pre_attn_scalar={scalar} != head_dim={head_dim(cfg)} cannot be "
                      "described in GGUF metadata; ft does not convert it")
    if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0 and cfg.get("model_type") != "phi3":
        raise FtError("GGUF export of a partial-rotary model other than Phi-3 is not supported")


def write_hparams(writer: Any, cfg: dict[str, Any], spec: ArchSpec) -> None:
    """The model-shape metadata every supported architecture shares, then its own."""
    rope = _rope(cfg)
    dim = head_dim(cfg)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(int(cfg["num_attention_heads"]))
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    writer.add_key_length(dim)
    writer.add_value_length(dim)
    writer.add_rope_dimension_count(int(dim * float(cfg.get("partial_rotary_factor", 1.0))))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    _add_rope_scaling(writer, rope)
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    if spec.extra is not None:
        spec.extra(writer, cfg)


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows to llama.cpp's interleaved pairs (per head: [a0 b0 a1 b1 ...])."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def transform(hf_name: str, data: np.ndarray, cfg: dict[str, Any], spec: ArchSpec) -> np.ndarray:
    """The tensor as llama.cpp expects it under its GGUF name."""
    if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(data, int(cfg["num_attention_heads"]))
    if spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(data, int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    if spec.norm_plus_one and hf_name.endswith("norm.weight"):
        return data + 1.0
    return data


def extra_tensors(cfg: dict[str, Any], spec: ArchSpec) -> dict[str, np.ndarray]:
    """Tensors llama.cpp needs that the checkpoint does not hold: Llama 3.1's rope factors.

    Llama 3.1+ ("llama3" rope) stretches the long-wavelength rotary frequencies; llama.cpp reads the
    per-frequency divisor from a `rope_freqs` tensor, computed here from the config as Meta defines it.
    """
    rope = _rope(cfg)
    if rope["rope_type"] != "llama3":
        return {}
    dim = head_dim(cfg)
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * float(rope["rope_theta"]) ** (i / dim)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return {"rope_freqs.weight": np.asarray(factors, dtype=np.float32)}

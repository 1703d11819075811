"""`ft plan`: parameters and memory per device of a run, from the model's config.json alone.

Pure arithmetic: no torch, no weights. The config comes from a local model directory or the
Hugging Face cache (never downloaded). The model is described as the linear layers a decoder
layer holds (what LoRA and bitsandbytes act on: `nn.Linear` modules) plus the other parameters
(norms, fused MoE expert tensors and routers, which transformers 5 keeps as plain parameters, so
4-bit quantization does not touch them; LoRA reaches the fused experts as parameters, see
finetune.adapters.expert_parameters), embeddings and the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Models whose config omits the key but whose classes tie input and output embeddings by default.
TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text"}
QKV_BIAS_ALWAYS = {"qwen2", "qwen2_moe"}  # Qwen2 attention has q/k/v biases with no config key for it
NORMS_PER_LAYER = {"gemma2": 4, "gemma3_text": 4}  # pre/post norms around attention and MLP


@dataclass(frozen=True)
class Linear:
    name: str
    d_in: int
    d_out: int
    bias: bool = False
    count: int = 1  # per decoder layer

    @property
    def params(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


@dataclass(frozen=True)
class Arch:
    """What memory depends on, read from config.json."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # per-token MLP width that is active (dense, or top_k experts + shared)
    linears: list[list[Linear]]  # per decoder layer
    other_per_layer: list[int]  # norms, fused expert tensors, routers, per layer
    tied: bool
    experts: int = 0
    top_k: int = 0
    # Per decoder layer, the fused expert tensors as (experts x d_out x d_in) linears: counted in
    # other_per_layer, listed here for the LoRA that the mlp/experts/all-linear presets put on them.
    fused: list[list[Linear]] | None = None

    @property
    def embed(self) -> int:
        return self.vocab * self.hidden

    @property
    def head(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def linear_params(self) -> int:
        return sum(lin.params for layer in self.linears for lin in layer)

    @property
    def total(self) -> int:
        return self.embed + self.head + self.hidden + self.linear_params + sum(self.other_per_layer)


# ------------------------------------------------------------------------------- config reading
def read_config(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a local model directory or of a Hub model in the local cache; never downloads."""
    local = Path(name_or_path)
    if local.is_dir():
        path: Path | None = local / "config.json"
        if not path.is_file():
            raise ConfigError(f"model.name_or_path: {local} has no config.json; `ft plan` needs only that file")
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
        path = Path(cached) if isinstance(cached, str) else None
        if path is None:
            raise ConfigError(
                f"model.name_or_path: {name_or_path}/config.json is neither a local directory nor in the Hugging "
                f"Face cache; fetch just that file (no weights): `hf download {name_or_path} config.json`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the model config ({err})") from None
    return config.get("text_config") or config  # multimodal configs nest the language model


def _expert_count(c: dict[str, Any]) -> int:
    return int(c.get("num_local_experts") or c.get("num_experts") or c.get("n_routed_experts") or 0)


def _fused(c: dict[str, Any], layer: int, h: int) -> list[Linear]:
    """The fused expert tensors of one layer (none in a dense layer), as `_mlp` counts them."""
    experts = _expert_count(c)
    step = int(c.get("decoder_sparse_step") or 1)
    if not experts or layer in set(c.get("mlp_only_layers") or []) or (layer + 1) % step:
        return []
    mi = int(c.get("moe_intermediate_size") or c["intermediate_size"])
    return [Linear("experts.gate_up_proj", h, 2 * mi, count=experts), Linear("experts.down_proj", mi, h, count=experts)]


def _mlp(c: dict[str, Any], layer: int, h: int) -> tuple[list[Linear], int, int]:
    """(linears, other params, active intermediate width) of one layer's MLP."""
    experts = _expert_count(c)
    dense_layers = set(c.get("mlp_only_layers") or [])
    step = int(c.get("decoder_sparse_step") or 1)
    if not experts or layer in dense_layers or (layer + 1) % step:
        i = int(c["intermediate_size"])
        names = ("gate_up_proj", "down_proj") if c.get("model_type") == "phi3" else ("gate_proj", "up_proj", "down_proj")
        if len(names) == 2:
            return [Linear("gate_up_proj", h, 2 * i), Linear("down_proj", i, h)], 0, i
        return [Linear("gate_proj", h, i), Linear("up_proj", h, i), Linear("down_proj", i, h)], 0, i
    mi = int(c.get("moe_intermediate_size") or c["intermediate_size"])
    top_k = int(c.get("num_experts_per_tok") or 2)
    fused_experts = experts * 3 * h * mi  # gate_up_proj (E, 2*mi, h) and down_proj (E, h, mi) parameters
    router = experts * h
    linears: list[Linear] = []
    shared = int(c.get("shared_expert_intermediate_size") or 0)
    if shared:
        linears = [Linear("gate_proj", h, shared), Linear("up_proj", h, shared), Linear("down_proj", shared, h),
                   Linear("shared_expert_gate", h, 1)]
    return linears, fused_experts + router, top_k * mi + shared


def architecture(c: dict[str, Any]) -> Arch:
    """The parameter layout of a decoder-only transformer config (Llama/Qwen/Mistral/Gemma/Phi-3, MoE)."""
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in c]
    if missing:
        raise ConfigError(f"model config: missing {', '.join(missing)}; `ft plan` handles decoder-only "
                          f"transformer configs (Llama, Qwen2/3, Mistral, Mixtral, Gemma, Phi-3)")
    mt = str(c.get("model_type", ""))
    h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or h // heads)
    bias = mt in QKV_BIAS_ALWAYS or bool(c.get("attention_bias") or c.get("qkv_bias"))
    if mt == "phi3":
        attn = [Linear("qkv_proj", h, (heads + 2 * kv) * hd), Linear("o_proj", heads * hd, h)]
    else:
        attn = [Linear("q_proj", h, heads * hd, bias), Linear("k_proj", h, kv * hd, bias),
                Linear("v_proj", h, kv * hd, bias), Linear("o_proj", heads * hd, h, bool(c.get("attention_bias")))]
    qk_norm = 2 * hd if mt.startswith("qwen3") else 0
    linears, other, widths = [], [], []
    for layer in range(int(c["num_hidden_layers"])):
        mlp, extra, width = _mlp(c, layer, h)
        linears.append(attn + mlp)
        other.append(NORMS_PER_LAYER.get(mt, 2) * h + qk_norm + extra)
        widths.append(width)
    tied = bool(c.get("tie_word_embeddings", mt in TIED_BY_DEFAULT))
    fused = [_fused(c, layer, h) for layer in range(int(c["num_hidden_layers"]))]
    return Arch(mt, int(c["vocab_size"]), h, int(c["num_hidden_layers"]), heads, kv, hd, max(widths),
                linears, other, tied, _expert_count(c), int(c.get("num_experts_per_tok") or 0), fused)

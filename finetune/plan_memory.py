"""Memory per device of one training step: weights, adapter, gradients, optimizer, activations,
the extra models an objective loads, divided by the strategy's sharding. Pure arithmetic.

Activation formula (elements kept for backward, per token and decoder layer):
    4*H + 2*heads*head_dim + 2*kv_heads*head_dim + 4*I  (+ 2*heads*seq with eager attention)
  (layer inputs and the normed inputs of attention and MLP, q/k/v, the attention output, and the
  MLP's gate, up, activation and product; I is the active MLP width: top_k experts plus shared),
  plus d_in + r per LoRA-adapted linear (its dropout input and its r-wide middle).
  Without checkpointing: tokens * layers * that; with it: tokens * (layers * H + one layer).
  Logits: tokens * vocab * (activation bytes + 12): the logits, the fp32 log-softmax the loss keeps,
  and the two fp32 gradient buffers of backward; they dominate for small models with large vocabularies.
  Every term is summed, as if all were alive at once (an upper bound: gradients grow while
  activations are freed); measured on CPU the total is within 20% of the peak (benchmarks/plan_vs_rss.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from finetune.plan import DTYPE_BYTES, Arch, Linear

# Optimizer states per trainable parameter: (number of states, bytes each; None: the parameter's dtype).
OPTIMIZERS: dict[str, tuple[float, int | None]] = {
    "adamw": (2, None), "adamw_torch": (2, None), "adamw_torch_fused": (2, None), "adamw_hf": (2, None),
    "adamw_8bit": (2, 1), "adamw_bnb_8bit": (2, 1), "paged_adamw_8bit": (2, 1), "paged_adamw_32bit": (2, 4),
    "lion_32bit": (1, 4), "lion_8bit": (1, 1), "sgd": (0, 4), "adafactor": (0, 4), "rmsprop": (1, None),
}
SHARDED = {"ddp": set(), "zero2": {"gradients", "optimizer"},
           "zero3": {"weights", "adapter", "gradients", "optimizer", "models"},
           "fsdp": {"weights", "adapter", "gradients", "optimizer", "models"}}
MIXED_MASTER = {"zero2", "zero3", "fsdp"}  # engines that keep fp32 master weights of 16-bit parameters
# Sequences per example each objective runs through the policy (preference pairs: chosen and rejected).
SEQUENCES = {"dpo": 2, "orpo": 2, "simpo": 2, "reward": 2, "kto": 1}


@dataclass(frozen=True)
class Setup:
    adapter: str = "lora"  # none | lora | qlora
    r: int = 16
    target_modules: Any = "all-linear"
    lora_layers: tuple[int, ...] | None = None
    trainable_layers: tuple[int, ...] | None = None
    trainable_modules: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    double_quant: bool = True
    dtype: str = "bfloat16"  # weights (and, for QLoRA, compute) dtype
    optimizer: str = "adamw_torch"
    seq: int = 1024
    batch: int = 8
    accumulation: int = 1
    checkpointing: bool = False
    eager_attention: bool = False
    objective: str = "sft"
    aux: tuple[str, ...] = ()  # extra models: reference, reward, value
    strategy: str = "ddp"
    gpus: int = 1
    offload: str = "none"  # none | optimizer | parameters
    overhead_gib: float = 0.0


@dataclass
class Estimate:
    total_params: int
    trainable_params: int
    bytes: dict[str, float] = field(default_factory=dict)  # per device, after sharding

    @property
    def total(self) -> float:
        return sum(self.bytes.values())


def _index(layers: tuple[int, ...] | None, n: int) -> set[int]:
    return set(range(n)) if layers is None else {i % n for i in layers}


def _targeted(lin: Linear, targets: Any) -> bool:
    import re

    from finetune.adapters import ROUTERS, target_names

    targets = target_names(targets)
    if targets == "all-linear":  # as the adapter applies it: routers are excluded
        return not re.fullmatch(ROUTERS, "." + lin.name)
    return lin.name in targets


def lora_linears(arch: Arch, s: Setup) -> list[Linear]:
    keep = _index(s.lora_layers, arch.layers)
    return [lin for i, layer in enumerate(arch.linears) if i in keep for lin in layer if _targeted(lin, s.target_modules)]


def lora_experts(arch: Arch, s: Setup) -> list[Linear]:
    """The fused expert tensors LoRA sits on (finetune.adapters.WITH_EXPERTS): a LoRA pair per expert,
    as r x d_in and d_out x r blocks of one A and one B."""
    from finetune.adapters import WITH_EXPERTS

    if not isinstance(s.target_modules, str) or s.target_modules not in WITH_EXPERTS or not arch.fused:
        return []
    keep = _index(s.lora_layers, arch.layers)
    return [lin for i, layer in enumerate(arch.fused) if i in keep for lin in layer]


def _module_params(arch: Arch, names: tuple[str, ...]) -> int:
    table = {"embed_tokens": arch.embed, "lm_head": arch.head or arch.embed, "norm": arch.hidden}
    return sum(size for key, size in table.items() if any(key in name for name in names))


def trainable(arch: Arch, s: Setup) -> tuple[int, int]:
    """(trainable parameters, of which held in fp32 LoRA/adapter tensors)."""
    if s.adapter == "none":
        if s.trainable_layers is None:
            return arch.total, 0
        keep = _index(s.trainable_layers, arch.layers)
        layers = sum(sum(lin.params for lin in arch.linears[i]) + arch.other_per_layer[i] for i in keep)
        return layers + _module_params(arch, s.trainable_modules), 0
    lora = sum(lin.count * s.r * (lin.d_in + lin.d_out) for lin in lora_linears(arch, s) + lora_experts(arch, s))
    saved = _module_params(arch, s.modules_to_save)
    return lora + saved, lora + saved


def weight_bytes(arch: Arch, s: Setup) -> float:
    """Base weights: dtype bytes each; QLoRA: nn.Linear weights in NF4 (half a byte, plus a 1-byte absmax per
    64 with double quantization and its fp32 constant per 256 blocks, or a 4-byte absmax per 64 without),
    while embeddings, lm_head, norms and fused expert tensors stay in the compute dtype."""
    b = DTYPE_BYTES[s.dtype]
    if s.adapter != "qlora":
        return arch.total * b
    per_param = 0.5 + (1 / 64 + 4 / (64 * 256) if s.double_quant else 4 / 64)
    biases = sum(lin.count * lin.d_out for layer in arch.linears for lin in layer if lin.bias)
    quantized = arch.linear_params - biases
    return quantized * per_param + (arch.total - quantized) * b


def activation_bytes(arch: Arch, s: Setup) -> float:
    b = DTYPE_BYTES[s.dtype]
    tokens = s.seq * s.batch * SEQUENCES.get(s.objective, 1)
    h = arch.hidden
    per_layer = 4 * h + 2 * arch.heads * arch.head_dim + 2 * arch.kv_heads * arch.head_dim + 4 * arch.intermediate
    if s.eager_attention:
        per_layer += 2 * arch.heads * s.seq
    if s.adapter != "none":
        adapted = lora_linears(arch, s)
        per_layer += sum(lin.count * (lin.d_in + s.r) for lin in adapted) / max(arch.layers, 1)
    kept = arch.layers * h + per_layer if s.checkpointing else arch.layers * per_layer
    return tokens * (kept + 2 * h) * b + tokens * arch.vocab * (b + 12)


def optimizer_bytes(params: int, fp32_params: int, s: Setup, hidden: int) -> tuple[float, float]:
    """(optimizer state bytes, fp32 master-weight bytes)."""
    states, each = OPTIMIZERS.get(s.optimizer, OPTIMIZERS["adamw"])
    low = params - fp32_params  # trainable parameters held in the weights dtype
    master = low * 4 if s.strategy in MIXED_MASTER and DTYPE_BYTES[s.dtype] < 4 else 0
    state_dtype = 4 if master else DTYPE_BYTES[s.dtype]
    per_low = states * (each if each is not None else state_dtype)
    per_fp32 = states * (each if each is not None else 4)
    if s.optimizer == "adafactor":  # factored second moment: about rows + columns floats per matrix
        per_low = per_fp32 = 4 * 2 / hidden
    return low * per_low + fp32_params * per_fp32, master


def _aux_bytes(arch: Arch, s: Setup) -> float:
    """Frozen reference/reward models are another copy of the policy's weights (a reward model is assumed to be
    the policy's size); a value model is trained in full, its optimizer states in the weights dtype."""
    copy = arch.total * DTYPE_BYTES[s.dtype]
    value = optimizer_bytes(arch.total, 0, replace(s, strategy="ddp"), arch.hidden)[0]
    return sum(copy + (copy + value if name == "value" else 0) for name in s.aux)


def estimate(arch: Arch, s: Setup) -> Estimate:
    params, fp32 = trainable(arch, s)
    optim, master = optimizer_bytes(params, fp32, s, arch.hidden)
    parts = {
        "weights": weight_bytes(arch, s),
        "adapter": fp32 * 4.0,
        "gradients": (params - fp32) * DTYPE_BYTES[s.dtype] + fp32 * 4.0,
        "optimizer": optim + master,
        "models": _aux_bytes(arch, s),
    }
    shards = SHARDED.get(s.strategy, set())
    parts = {k: v / s.gpus if k in shards and s.gpus > 1 else v for k, v in parts.items()}
    if s.offload in ("optimizer", "parameters"):
        parts["optimizer"] = 0.0
    if s.offload == "parameters":
        parts["weights"] = 0.0
    parts["activations"] = activation_bytes(arch, s)
    parts["overhead"] = s.overhead_gib * 1024**3
    return Estimate(arch.total, params, parts)

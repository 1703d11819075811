"""`ft plan RECIPE`: a recipe to a memory estimate, whether it fits, and changes that would make it fit."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from finetune.errors import ConfigError
from finetune.plan import GIB, Arch, architecture, read_config
from finetune.plan_memory import Estimate, Setup, estimate

UNITS = {"": GIB, "gib": GIB, "gb": 1000**3, "mib": 1024**2, "mb": 1000**2, "tib": 1024**4, "tb": 1000**4}
GPU_OVERHEAD_GIB = 1.0  # CUDA context, kernels and allocator slack: a round figure, not measured per device


def parse_memory(text: str) -> float:
    """'24GiB', '80GB', '24' (GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise ConfigError(f"--gpu-memory {text!r}: expected a size like 24GiB, 80GB or 24 (GiB)")
    return float(match.group(1)) * UNITS[match.group(2).lower()]


def _aux_models(recipe: Any) -> tuple[str, ...]:
    """Extra models the objective loads; a frozen reference is free under LoRA (the adapter is disabled)."""
    obj, full = recipe.objective, recipe.adapter.kind == "none"
    reference = ("reference",) if full else ()
    table: dict[str, Callable[[], tuple[str, ...]]] = {
        "dpo": lambda: () if getattr(obj, "precompute_ref_log_probs", False) else reference,
        "kto": lambda: reference,
        "grpo": lambda: reference if getattr(obj, "beta", 0) > 0 else (),
        "ppo": lambda: ("reward", "value") + reference,
    }
    return table.get(obj.kind, lambda: ())()


def _recipe_strategy(t: Any) -> str:
    """training.distributed, with `auto` (ddp when several processes; one process shards nothing,
    which the planner's ddp also means) and a missing key read as ddp."""
    chosen = getattr(t, "distributed", None) or "ddp"
    return "ddp" if chosen == "auto" else chosen


def setup_from_recipe(recipe: Any, strategy: str | None = None, gpus: int = 1) -> Setup:
    a, t, m = recipe.adapter, recipe.training, recipe.model
    lora = a.kind != "none"
    compute = getattr(a, "compute_dtype", "auto")
    dtype = compute if a.kind == "qlora" and compute != "auto" else m.dtype
    return Setup(
        adapter=a.kind, r=getattr(a, "r", 16),
        target_modules=getattr(a, "target_modules", "all-linear"),
        lora_layers=tuple(a.layers) if lora and a.layers is not None else None,
        trainable_layers=tuple(a.trainable_layers) if not lora and a.trainable_layers is not None else None,
        trainable_modules=tuple(getattr(a, "trainable_modules", ())),
        modules_to_save=tuple(getattr(a, "modules_to_save", ())),
        double_quant=getattr(a, "double_quant", True),
        dtype="bfloat16" if dtype == "auto" else dtype,  # auto resolves to bf16 on a current GPU
        optimizer=t.optimizer or "adamw_torch", seq=recipe.data.max_length, batch=t.batch_size,
        accumulation=t.gradient_accumulation_steps, checkpointing=t.gradient_checkpointing,
        eager_attention=m.attn_implementation == "eager", objective=recipe.objective.kind,
        aux=_aux_models(recipe), strategy=strategy or _recipe_strategy(t),
        gpus=gpus, overhead_gib=GPU_OVERHEAD_GIB)


# Changes that cut memory, in the order we recommend them (least disruptive first). Each returns the new
# setup and a one-line description, or None where it does not apply.
def _checkpointing(s: Setup) -> tuple[Setup, str] | None:
    return None if s.checkpointing else (replace(s, checkpointing=True), "training.gradient_checkpointing=true")


def _smaller_batch(s: Setup) -> tuple[Setup, str] | None:
    if s.batch == 1:
        return None
    acc = s.accumulation * s.batch
    return (replace(s, batch=1, accumulation=acc),
            f"training.batch_size=1 training.gradient_accumulation_steps={acc} (same effective batch)")


def _zero3(s: Setup) -> tuple[Setup, str] | None:
    if s.gpus < 2 or s.strategy in ("zero3", "fsdp") or s.adapter == "qlora":
        return None
    return replace(s, strategy="zero3"), f"training.distributed=zero3 (shard over {s.gpus} GPUs)"


def _offload(s: Setup) -> tuple[Setup, str] | None:
    if s.offload != "none" or s.adapter == "qlora":
        return None
    # CPU offload is a DeepSpeed (or FSDP) feature: under ddp it means ZeRO-2 with the optimizer offloaded.
    strategy = "zero2" if s.strategy == "ddp" else s.strategy
    return (replace(s, offload="optimizer", strategy=strategy),
            f"training.distributed={strategy} with optimizer states offloaded to CPU")


def _qlora(s: Setup) -> tuple[Setup, str] | None:
    if s.adapter == "qlora":
        return None
    new = replace(s, adapter="qlora", trainable_layers=None, aux=tuple(x for x in s.aux if x != "reference"),
                  strategy="ddp" if s.strategy == "zero3" else s.strategy)
    return new, "adapter.kind=qlora (4-bit NF4 base, LoRA r=%d)" % new.r


CHANGES = (_checkpointing, _smaller_batch, _zero3, _offload, _qlora)


@dataclass
class Plan:
    model: str
    setup: Setup
    estimate: Estimate
    budget: float | None
    suggestions: list[tuple[str, Estimate]]

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.estimate.total <= self.budget


def suggest(arch: Arch, s: Setup, budget: float) -> list[tuple[str, Estimate]]:
    """Single changes that fit, best first; if none does, the changes combined one after another."""
    single = [(text, estimate(arch, new)) for change in CHANGES if (got := change(s)) for new, text in [got]]
    fitting = [item for item in single if item[1].total <= budget]
    if fitting:
        return fitting
    combined, steps = s, []
    for change in CHANGES:
        got = change(combined)
        if got:
            combined, text = got
            steps.append(text)
            result = estimate(arch, combined)
            if result.total <= budget:
                return [(" + ".join(steps), result)]
    return []


def plan(recipe: Any, gpu_memory: str | None = None, gpus: int = 1, strategy: str | None = None) -> Plan:
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: must be at least 1")
    from finetune.plan_memory import SHARDED

    chosen = strategy or _recipe_strategy(recipe.training)
    if chosen not in SHARDED:
        raise ConfigError(f"--strategy {chosen}: expected one of {', '.join(SHARDED)}")
    arch = architecture(read_config(recipe.model.name_or_path, recipe.model.revision))
    s = setup_from_recipe(recipe, strategy, gpus)
    budget = parse_memory(gpu_memory) if gpu_memory else None
    result = estimate(arch, s)
    tips = suggest(arch, s, budget) if budget is not None and result.total > budget else []
    return Plan(recipe.model.name_or_path, s, result, budget, tips)


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 10 else f"{value / 1024**2:.1f} MiB"


def as_json(p: Plan) -> dict[str, Any]:
    return {"model": p.model, "setup": asdict(p.setup), "total_params": p.estimate.total_params,
            "trainable_params": p.estimate.trainable_params,
            "bytes_per_device": {k: round(v) for k, v in p.estimate.bytes.items()},
            "total_bytes_per_device": round(p.estimate.total), "gpu_memory_bytes": p.budget, "fits": p.fits,
            "suggestions": [{"change": text, "total_bytes_per_device": round(e.total)} for text, e in p.suggestions]}


def as_table(p: Plan) -> str:
    s, e = p.setup, p.estimate
    lines = [f"model       {p.model}",
             f"parameters  {e.total_params:,} total, {e.trainable_params:,} trainable "
             f"({100 * e.trainable_params / e.total_params:.2f}%)",
             f"setup       {s.adapter}, {s.dtype}, {s.optimizer}, seq {s.seq} x batch {s.batch}, checkpointing "
             f"{'on' if s.checkpointing else 'off'}, {s.strategy} x {s.gpus} GPU(s)"
             + (f", extra models: {', '.join(s.aux)}" if s.aux else ""),
             "", f"{'memory per device':<20}{'':>12}"]
    lines += [f"  {name:<18}{_gib(value):>12}" for name, value in e.bytes.items()]
    lines.append(f"  {'total':<18}{_gib(e.total):>12}")
    if p.budget is not None:
        verdict = "fits" if p.fits else "does NOT fit"
        lines.append(f"\n{verdict} in {_gib(p.budget)}")
        lines += [f"  {_gib(est.total):>12}  {text}" for text, est in p.suggestions]
        if not p.fits and not p.suggestions:
            lines.append("  no combination of checkpointing, batch 1, zero3, offload and QLoRA fits: more GPUs")
    return "\n".join(lines)

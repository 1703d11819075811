"""`training.distributed`: how N processes share the work, and the engine configuration ft generates.

ddp    every process holds the whole model; gradients are averaged (torch DDP).
fsdp   FSDP2 through Accelerate: parameters, gradients and optimizer states sharded across processes,
       one shard unit per decoder layer (the model's `_no_split_modules`). GPUs only: Accelerate
       enables FSDP on accelerator devices alone and would silently run DDP on a CPU, so ft refuses.
zero2  DeepSpeed ZeRO stage 2: optimizer states and gradients sharded.
zero3  DeepSpeed ZeRO stage 3: parameters too; final/ is gathered into 16-bit weights on save.

This module must stay importable without torch (`ft validate` uses `strategy_problems`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import ConfigError

if TYPE_CHECKING:
    from finetune.recipe.schema import RecipeBase, TrainingSection

Problems = list[tuple[tuple[str | int, ...], str]]
ZERO_STAGE = {"zero2": 2, "zero3": 3}
SHARDED = {"fsdp", *ZERO_STAGE}


def world_size(t: TrainingSection) -> int:
    """Processes in the run: the launched children know it from torchrun, the parent from the recipe."""
    return int(os.environ.get("WORLD_SIZE", t.nproc * t.nnodes))


def strategy(t: TrainingSection) -> str:
    """The strategy a run uses: the recipe's, with auto resolved (ddp for >1 process, none for one)."""
    if t.distributed != "auto":
        return t.distributed
    return "ddp" if world_size(t) > 1 else "none"


def strategy_problems(recipe: RecipeBase) -> Problems:
    """Combinations that cannot work, found by `ft validate` before anything is loaded."""
    t, chosen = recipe.training, recipe.training.distributed
    problems: Problems = []
    for key in ("deepspeed_config", "accelerate_config"):
        path = getattr(t, key)
        if path is not None and not Path(path).expanduser().is_file():
            problems.append((("training", key), f"file not found: {Path(path).expanduser().resolve()}"))
    if t.deepspeed_config is not None and chosen not in ZERO_STAGE:
        problems.append((("training", "deepspeed_config"), "a DeepSpeed config needs training.distributed: "
                         "zero2 or zero3 (the stage is read from your file; set the one that matches)"))
    if t.node_rank >= t.nnodes:
        problems.append((("training", "node_rank"), f"must be below nnodes ({t.nnodes}), got {t.node_rank}"))
    if chosen in SHARDED and world_size(t) == 1:
        problems.append((("training", "distributed"), f"{chosen} shards the model across processes, and this "
                         "run has one: set training.nproc (or --nproc) to 2 or more, or remove distributed"))
    if chosen == "zero3" and recipe.adapter.kind == "qlora":
        problems.append((("training", "distributed"), "ZeRO-3 cannot partition 4-bit (bitsandbytes) weights: use "
                         "distributed: fsdp for QLoRA (ft sets the matching quantization storage dtype), zero2, "
                         "or adapter.kind: lora"))
    if t.offload_params and chosen != "zero3":
        problems.append((("training", "offload_params"), "parameter offload is a ZeRO-3 feature: set "
                         "distributed: zero3, or use offload_optimizer (fsdp offloads parameters with it)"))
    if t.offload_optimizer and chosen not in SHARDED:
        problems.append((("training", "offload_optimizer"), "offload needs distributed: fsdp, zero2 or zero3"))
    return problems


def refuse_unrunnable(t: TrainingSection, has_gpu: bool) -> None:
    """Checks that need the machine, at the very start of `ft run` (before any process is launched)."""
    chosen = strategy(t)
    if chosen == "fsdp" and not has_gpu:
        raise ConfigError("training.distributed: fsdp needs GPUs. On a CPU, Accelerate does not enable FSDP and "
                          "would silently train plain DDP (every process holding the whole model). Use "
                          "distributed: zero3 (DeepSpeed shards parameters on CPU too) or ddp here.")
    if chosen in ZERO_STAGE:
        try:
            import deepspeed  # noqa: F401  (only checked for presence here)
        except ImportError as err:
            raise ConfigError(f"training.distributed: {chosen} needs DeepSpeed, which is not installed: "
                              "pip install -e '.[deepspeed]'") from err


def deepspeed_config(t: TrainingSection) -> dict[str, Any]:
    """The DeepSpeed JSON for zero2/zero3. "auto" values are filled by transformers from the
    TrainingArguments, so batch size, clipping and precision have one source: the recipe."""
    stage = ZERO_STAGE[t.distributed]
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if stage == 3:
        # Without this, ZeRO-3 saves a DeepSpeed checkpoint instead of model.safetensors in final/.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if t.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        # transformers 5 turns bf16 on by default; anything but "auto" here disagrees with it.
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def fsdp_config(t: TrainingSection, layer_classes: list[str]) -> dict[str, Any]:
    """TrainingArguments.fsdp_config for FSDP2: full sharding, one unit per decoder layer."""
    return {
        "version": 2,
        "reshard_after_forward": True,  # full sharding (ZeRO-3-like), not SHARD_GRAD_OP
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": layer_classes,
        "cpu_offload": t.offload_optimizer,
        # FSDP's own checkpointing; the training argument would all-gather again in backward.
        "activation_checkpointing": t.gradient_checkpointing,
        "state_dict_type": "FULL_STATE_DICT",  # final/ is one ordinary checkpoint written by rank 0
        "cpu_ram_efficient_loading": False,
    }


def layer_classes(model: Any) -> list[str]:
    """The decoder-layer class names FSDP wraps, from the model (a PEFT model's base included)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(f"training.distributed: fsdp: {type(base).__name__} names no decoder-layer class "
                          "(_no_split_modules); pass your own training.accelerate_config")
    return names


def engine_arguments(t: TrainingSection, model: Any, run_dir: Path) -> dict[str, Any]:
    """TrainingArguments fields for the strategy; the generated config is kept in the run directory
    (deepspeed.json / fsdp.json) so the user sees exactly what ran."""
    chosen = strategy(t)
    if chosen in ZERO_STAGE:
        if t.deepspeed_config is not None:
            return {"deepspeed": str(Path(t.deepspeed_config).expanduser().resolve())}
        config = deepspeed_config(t)
        _keep(run_dir / "deepspeed.json", config)
        return {"deepspeed": config}
    if chosen == "fsdp":
        import torch

        # Also here, for processes started by hand (torchrun ft run ...) rather than by `ft run --nproc`.
        refuse_unrunnable(t, has_gpu=torch.cuda.is_available())
        config = fsdp_config(t, layer_classes(model))
        _keep(run_dir / "fsdp.json", config)
        # FSDP checkpoints activations itself; the training argument would do it a second time.
        return {"fsdp": True, "fsdp_config": config, "gradient_checkpointing": False}
    return {}


def _keep(path: Path, config: dict[str, Any]) -> None:
    from finetune.outputs import is_main_process, write_atomic

    if is_main_process():
        write_atomic(path, json.dumps(config, indent=2) + "\n")

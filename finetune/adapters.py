"""Adapters: full (optionally partial) fine-tuning, LoRA, DoRA/rsLoRA, and QLoRA on a 4-bit base."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from finetune.errors import ConfigError
from finetune.model_kinds import ModelKind, model_kind
from finetune.notices import notice
from finetune.recipe.schema import FullAdapter, LoraAdapter, QLoraAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel



def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values are packed per stored byte
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def _num_layers(model: Any, layer: re.Pattern[str]) -> int:
    indices = {int(m.group(1)) for name, _ in model.named_parameters() if (m := layer.search("." + name))}
    return max(indices) + 1 if indices else 0


def _in_vision_part(name: str, kind: ModelKind, model: Any) -> bool:
    """A module or parameter of a vision-language model's vision tower or projector: neither under the
    language model nor the output layer."""
    if kind.language_model is None or name.startswith(kind.language_model):
        return False
    output = model.get_output_embeddings()
    names = {id(module): n for n, module in model.named_modules()}
    return not (output is not None and name.startswith(names.get(id(output), "\0")))


def _apply_full(model: PreTrainedModel, adapter: FullAdapter, *, kind: ModelKind, new_token_ids: list[int],
                **_: Any) -> PreTrainedModel:
    if adapter.trainable_layers is None:
        model.requires_grad_(True)
        if kind.language_model is not None and not adapter.train_vision:
            for name, param in model.named_parameters():
                param.requires_grad_(not _in_vision_part(name, kind, model))
        return model
    n = _num_layers(model, kind.layer_pattern)
    bad = [i for i in adapter.trainable_layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"adapter.trainable_layers: {bad} out of range for a model with {n} layers")
    if new_token_ids:
        raise ConfigError("adapter.trainable_layers with a chat template that adds tokens would leave the new "
                         "embeddings untrained; add embed_tokens and lm_head to adapter.trainable_modules")
    wanted = {i % n for i in adapter.trainable_layers}
    for name, param in model.named_parameters():
        match = kind.layer_pattern.search("." + name)
        in_layer = match is not None and int(match.group(1)) in wanted
        extra = any(part in name for part in adapter.trainable_modules)
        param.requires_grad_(in_layer or extra)
    return model


# The named target_modules presets: the module names (as PEFT matches them, by suffix) of the attention
# projections and of the feed-forward projections across the families ft supports (Llama/Qwen/Mistral/
# Gemma/MoE shared experts, Phi-3's fused ones, GPT-2, BERT, ModernBERT). No router name is in any.
# `experts` names no module: it is the fused expert weights alone (see expert_parameters).
TARGET_PRESETS: dict[str, list[str]] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query", "key", "value", "c_attn", "Wqkv", "Wo"],
    "mlp": ["gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "Wi"],
    "experts": [],
}
# The presets that put LoRA on a mixture-of-experts model's fused expert weights (when it has them):
# the routed experts are feed-forward layers (mlp) and linear maps (all-linear), and most of the model.
WITH_EXPERTS = frozenset({"mlp", "experts", "all-linear"})


def target_names(target_modules: str | list[str]) -> str | list[str]:
    """What LoraConfig.target_modules gets: all-linear or a list of names as given, a preset as its names."""
    if isinstance(target_modules, str) and target_modules in TARGET_PRESETS:
        return TARGET_PRESETS[target_modules]
    return target_modules


# Module names of mixture-of-experts routers (Mixtral/Qwen-MoE/OLMoE `mlp.gate`, Qwen-MoE's
# `shared_expert_gate`, `router` in others); dense models have none (their MLP's `gate_proj` differs).
ROUTERS = r".*\.(gate|router|shared_expert_gate)$"


def expert_parameters(model: Any, layer: re.Pattern[str], layers: list[int] | None = None) -> list[str]:
    """The fused expert weights of a mixture-of-experts model, as LoraConfig.target_parameters wants them.

    transformers 5 stores the routed experts of Qwen-MoE, Mixtral, OLMoE, Qwen3-MoE (and others) as one
    3D nn.Parameter per projection (experts x out x in) on an experts module, which target_modules cannot
    reach. Found by shape, not by architecture name: a 3D parameter inside a decoder layer held by a
    model's own module (a torch module's 3D weight, a Conv1d's, is no expert stack). Routers are 2D.
    """
    owners = dict(model.named_modules())
    found = {_parameter_name(name, layer, layers) for name, param in model.named_parameters()
             if param.ndim == 3 and not type(owners.get(name.rpartition(".")[0])).__module__.startswith("torch.")}
    return sorted(found - {None})


def _parameter_name(name: str, layer: re.Pattern[str], layers: list[int] | None) -> str | None:
    """A parameter inside a decoder layer as target_parameters names it: relative to the layer
    (`mlp.experts.gate_up_proj`, so one name serves every layer), or in full when `layers` selects
    layers (PEFT applies layers_to_transform to modules only); None outside the chosen layers."""
    match = layer.search("." + name)
    if match is None:
        return None
    if layers is None:
        return ("." + name)[match.end():]
    return name if int(match.group(1)) in layers else None


def _listed_parameters(names: list[str], model: Any, layer: re.Pattern[str],
                       layers: list[int] | None) -> tuple[list[str], list[str]]:
    """(module names, parameter names) of a target_modules list. A listed module that PEFT cannot wrap
    but that holds weights of its own is targeted by its weights: transformers 5's routers (`gate` of
    Mixtral/OLMoE/Qwen-MoE, a plain weight, put LoRA on only when listed) and `experts` (the fused
    expert weights)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    wrappable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D,
                 torch.nn.MultiheadAttention)
    modules, parameters = [], set()
    for target in names:
        found = [(name, module) for name, module in model.named_modules()
                 if name == target or name.endswith("." + target)]
        own = [f"{name}.{p}" for name, module in found for p, _ in module.named_parameters(recurse=False)]
        if found and own and not any(isinstance(module, wrappable) for _, module in found):
            parameters |= {_parameter_name(name, layer, layers) or name for name in own
                           if layers is None or _parameter_name(name, layer, layers)}
        else:
            modules.append(target)
    return modules, sorted(parameters)


def _targets(adapter: LoraAdapter, model: Any, layer: re.Pattern[str]) -> str | list[str]:
    """What LoraConfig.target_modules gets. The shorthand `all-linear` is spelled out (the names of the
    linear modules inside decoder layers, routers left out) where PEFT would mishandle it: with `layers`
    (PEFT refuses layers_to_transform with it), and on a model with fused experts, where PEFT's
    transformers-4-to-5 renaming resolves it to names it then maps onto the fused weights and the router
    (Mixtral, OLMoE), wrapping the router and putting a second LoRA on the experts."""
    names = target_names(adapter.target_modules)
    if isinstance(adapter.target_modules, str) and isinstance(names, list):
        return _present(names, model)
    if isinstance(names, list):
        return _listed_parameters(names, model, layer, _layer_indices(adapter.layers, model, layer))[0]
    if names != "all-linear" or (adapter.layers is None and not expert_parameters(model, layer)):
        return names
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and layer.search("." + name + ".")
                   and not re.fullmatch(ROUTERS, "." + name)})


def _present(names: list[str], model: Any) -> list[str]:
    """A preset's names that name a module of this model. PEFT rewrites the names of a mixture-of-experts
    model's old per-expert modules (gate_proj, w1, ...) into its fused weights, with its own ranks, when a
    model lacks such modules (OLMoE, Mixtral); ft targets the fused weights itself (expert_parameters)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [name for name in names if name in leaves]


def _parameter_targets(adapter: LoraAdapter, model: Any, layer: re.Pattern[str]) -> list[str]:
    """LoraConfig.target_parameters: the fused expert weights a preset includes, or the weights of the
    listed modules PEFT cannot wrap; [] for a dense model."""
    indices = _layer_indices(adapter.layers, model, layer)
    if isinstance(adapter.target_modules, list):
        listed = _listed_parameters(adapter.target_modules, model, layer, indices)[1]
        if listed and adapter.dora:
            raise ConfigError(f"adapter.dora: PEFT cannot put DoRA on {listed} (weights, not linear modules); "
                              f"set dora: false or leave them out of target_modules")
        return listed
    preset = adapter.target_modules
    if preset not in WITH_EXPERTS:
        return []
    experts = expert_parameters(model, layer, indices)
    if preset == "experts" and not experts:
        raise ConfigError("adapter.target_modules: experts: the model has no fused mixture-of-experts weights "
                          "(3D expert parameters such as mlp.experts.gate_up_proj); use mlp, all-linear or "
                          "a list of module names")
    if experts and adapter.dora:
        if preset == "experts":
            raise ConfigError("adapter.dora: PEFT cannot put DoRA on fused expert weights (target_modules: "
                              "experts); set dora: false, or target attention or a list of modules")
        notice(f"adapter.dora: PEFT cannot put DoRA on fused expert weights, so target_modules {preset} leaves "
               f"the routed experts frozen under DoRA; set dora: false to train them with LoRA")
        return []
    return experts


def _vision_language_targets(adapter: LoraAdapter, model: Any, kind: ModelKind) -> list[str]:
    """Full names of the linear modules LoRA wraps in a vision-language model: those of the language
    model that target_modules names (all-linear: every one), plus with train_vision every linear layer
    of the vision tower and projector. Names are exact, so the vision tower's `fc1`/`qkv` never match
    by accident."""
    import torch

    names = target_names(adapter.target_modules)
    # adapter.layers counts the language model's decoder layers only (not the vision tower's blocks).
    layers = _layer_indices(adapter.layers, model, kind.layer_pattern)
    wanted: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or re.fullmatch(ROUTERS, "." + name):
            continue
        if name.startswith(kind.language_model or "\0"):
            short, index = name.rsplit(".", 1)[-1], kind.layer_pattern.search("." + name + ".")
            in_layers = layers is None or (index is not None and int(index.group(1)) in layers)
            if in_layers and (names == "all-linear" or short in names or name in names):
                wanted.append(name)
        elif adapter.train_vision and _in_vision_part(name, kind, model):
            wanted.append(name)
    if not wanted:
        raise ConfigError(f"adapter.target_modules: {adapter.target_modules} matches no linear layer of the "
                          f"language model ({kind.language_model}*)")
    return wanted


def _layer_indices(layers: list[int] | None, model: Any, layer: re.Pattern[str]) -> list[int] | None:
    """Negative indices count from the end (PEFT wants them non-negative)."""
    if layers is None:
        return None
    n = _num_layers(model, layer)
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"adapter.layers: {bad} out of range for a model with {n} layers (0..{n - 1})")
    return sorted({i % n for i in layers})


def _lora_config(adapter: LoraAdapter, kind: ModelKind, new_token_rows: dict[str, list[int]], model: Any,
                 modules: str | list[str], experts: list[str], has_router: bool) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        # PEFT's wrapper of a fused expert weight refuses dropout (it cannot be factored out of the
        # weight); with experts the dropout is put on the module wrappers afterwards (_module_dropout).
        lora_dropout=0.0 if experts else adapter.dropout,
        target_modules=modules,
        target_parameters=list(experts) or None,
        # all-linear would wrap a mixture-of-experts router kept as nn.Linear (Qwen-MoE's shared_expert_gate;
        # the routers of transformers 5's Mixtral/Qwen-MoE/OLMoE are not nn.Linear). Routing is left as
        # trained unless target_modules names a router.
        exclude_modules=ROUTERS if adapter.target_modules == "all-linear" and has_router else None,
        use_dora=adapter.dora,
        use_rslora=adapter.rslora,
        layers_to_transform=None if kind.language_model else _layer_indices(adapter.layers, model, kind.layer_pattern),
        modules_to_save=adapter.modules_to_save or None,
        task_type=kind.peft_task_type,
        bias="none",
        # Tokens the chat template added have random embeddings: train just those rows.
        trainable_token_indices=new_token_rows or None,
    )


def _new_token_rows(model: PreTrainedModel, new_token_ids: list[int]) -> dict[str, list[int]]:
    """The embedding rows to train for tokens a chat template added, by module name: the input
    embeddings, and the output layer too unless it is tied to them (PEFT then trains the shared rows
    once, for both). Untied, an untrained output row would leave the model unable to emit the new
    end-of-turn token."""
    if not new_token_ids:
        return {}
    names = {id(module): name for name, module in model.named_modules()}
    rows = {names[id(model.get_input_embeddings())].rsplit(".", 1)[-1]: list(new_token_ids)}
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    if output is not None and not tied:
        rows[names[id(output)].rsplit(".", 1)[-1]] = list(new_token_ids)
    return rows


def _apply_lora(model: PreTrainedModel, adapter: LoraAdapter, *, kind: ModelKind,
                gradient_checkpointing: bool = False, new_token_ids: list[int]) -> PreTrainedModel:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if isinstance(adapter, QLoraAdapter):
        # Casts norms to fp32 and enables input grads so checkpointed 4-bit layers get gradients.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    # PEFT warns when exclude_modules matches nothing: name routers only where the model has one.
    has_router = any(re.fullmatch(ROUTERS, "." + name) for name, _ in model.named_modules())
    experts = _parameter_targets(adapter, model, kind.layer_pattern)
    modules = (_vision_language_targets(adapter, model, kind) if kind.language_model
               else _targets(adapter, model, kind.layer_pattern))
    if modules == [] and not experts:
        raise ConfigError(f"adapter.target_modules: {adapter.target_modules} matches no module of the model; "
                          f"choose another preset or list module names")
    peft_model = get_peft_model(model, _lora_config(adapter, kind, _new_token_rows(model, new_token_ids), model,
                                                    modules, experts, has_router))
    if experts and adapter.dropout:
        _module_dropout(peft_model, adapter.dropout)
    return peft_model


def _module_dropout(model: Any, p: float) -> None:
    """adapter.dropout on the LoRA wrappers of modules (linear layers), none on fused expert weights.
    The saved adapter config records dropout 0, the value PEFT can load expert wrappers with; dropout
    only acts in training, which builds its adapter from the recipe."""
    import torch
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    for module in model.modules():
        if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
            for name in module.lora_dropout:
                module.lora_dropout[name] = torch.nn.Dropout(p)
    notice(f"adapter.dropout {p:g} applies to the LoRA modules but not to LoRA on weights (fused experts, "
           f"a router), where PEFT cannot apply dropout")


_APPLY: dict[type, Callable[..., Any]] = {
    FullAdapter: _apply_full,
    LoraAdapter: _apply_lora,
    QLoraAdapter: _apply_lora,
}


def apply_adapter(model: PreTrainedModel, adapter: Any, *, kind: str = "causal_lm",
                  gradient_checkpointing: bool = False, new_token_ids: list[int] = ()) -> PreTrainedModel:
    """Wrap or freeze `model` (loaded as model kind `kind`) as the recipe's adapter section says."""
    return _APPLY[type(adapter)](model, adapter, kind=model_kind(kind), gradient_checkpointing=gradient_checkpointing,
                                 new_token_ids=list(new_token_ids))

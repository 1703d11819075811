"""Supervised fine-tuning on conversations or prompt/completion pairs, with TRL's SFTTrainer.

ft tokenizes the data itself (exact loss masks for any chat template, see data_templates) and
hands SFTTrainer `input_ids` + `labels`; TRL's collator uses the labels as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from finetune.notices import notice
from finetune.recipe.schema import ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts


class SFTSection(ObjectiveSection):
    kind: Literal["sft"] = "sft"
    loss_on: Literal["assistant", "last_assistant", "all_turns", "all"] = Field(
        "assistant",
        description="assistant: every assistant turn with its end-of-turn token; last_assistant: the "
        "final one only; all_turns: the content of every turn; all: every token, prompts included.",
    )

    def loss_policy(self) -> str:
        return self.loss_on


def build_sft_trainer(parts: RunParts, **config: Any) -> Any:
    """SFTTrainer over pre-tokenized data; shared by `sft` and `pretrain`."""
    from trl import SFTConfig, SFTTrainer

    packing = parts.recipe.data.packing
    args = parts.trainer_config(
        SFTConfig,
        # Truncation already happened (and was reported) in the data layer; packing needs the length.
        max_length=parts.recipe.data.max_length if packing else None,
        packing=packing,
        # Pinned, not left to TRL's default: best-fit-decreasing keeps every example whole and trains
        # padding-free, which is what data.packing documents (see data_templates/packing.py).
        **({"packing_strategy": "bfd"} if packing else {}),
        **_loss_type(parts),
        # data.batching: padding_free (finetune/batching.py); packing is padding-free already.
        padding_free=not packing and parts.recipe.data.batching == "padding_free",
        **_router_aux_loss(parts),
        **config,
    )
    return SFTTrainer(args=args, **parts.trainer_inputs())


def _loss_type(parts: RunParts) -> dict[str, str]:
    """TRL's default chunked loss reads the output layer's weight directly. When PEFT wraps that layer
    (rows a chat template added, tied or not; LoRA on lm_head) the wrapper's trained values would be
    skipped (or the wrapper has no `bias` and TRL fails): compute the plain loss from the logits."""
    import torch

    if "loss_type" in parts.recipe.training.extra:
        return {}
    model = parts.model.get_base_model() if hasattr(parts.model, "get_base_model") else parts.model
    output = model.get_output_embeddings()
    if output is None or type(output) is torch.nn.Linear:
        return {}
    notice(f"the output layer is wrapped by the adapter ({type(output).__name__}); training with the plain "
           f"token loss (loss_type nll) so its trained rows count")
    return {"loss_type": "nll"}


def _router_aux_loss(parts: RunParts) -> dict[str, float]:
    """Mixture-of-experts models train with the router's load-balancing loss (TRL adds it and logs
    `aux_loss`) at model.router_aux_loss_coef, or at the model config's own coefficient: TRL's
    default (0.001) would silently replace the one the model was trained with."""
    coef = parts.recipe.model.router_aux_loss_coef
    text_config = parts.model.config.get_text_config()
    if coef is None:
        coef = getattr(text_config, "router_aux_loss_coef", None)
    if coef is None or getattr(text_config, "output_router_logits", None) is None:
        if parts.recipe.model.router_aux_loss_coef:  # a dense model: no router, nothing to weigh
            notice(f"model.router_aux_loss_coef: {parts.recipe.model.name_or_path} is not a mixture-of-experts "
                   f"model (it has no router), so the coefficient has no effect; remove it")
        return {}
    return {"router_aux_loss_coef": float(coef)}


@objective("sft", section=SFTSection, data_form="sft", config_class="trl:SFTConfig",
           description="Supervised fine-tuning on conversations, instructions or prompt/completion pairs.")
def build(parts: RunParts) -> Any:
    return build_sft_trainer(parts)

"""Direct Preference Optimization on prompt/chosen/rejected pairs, with TRL's DPOTrainer.

The reference policy is the model as it was before training:
- LoRA / QLoRA: the base with the adapter disabled, so no second model is held in memory;
- full (or partial) fine-tuning: a frozen copy of the loaded model, or, with
  `precompute_ref_log_probs`, no copy at all: the reference log-probs are computed once up front.

Reference handling, the truncation rule and the dropped-row report are shared with `align.kto`
(see `align._preference`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator

from align._preference import (
    frozen_reference,
    require_chat_template,
    truncation_problems,
    use_base_as_reference,
    warn_dropped,
)
from finetune.recipe.schema import ObjectiveSection, RecipeBase
from finetune.registry import objective
from finetune.run_parts import RunParts

# The loss names TRL 1.12's DPOTrainer accepts (trl/trainer/dpo_config.py, `loss_type`).
DPOLossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]


class DPOSection(ObjectiveSection):
    kind: Literal["dpo"] = "dpo"
    beta: float = Field(
        0.1, gt=0,
        description="How far the policy may move from the reference: higher stays closer. For ipo it is tau.",
    )
    loss_type: Union[DPOLossType, Annotated[list[DPOLossType], Field(min_length=1)]] = Field(
        "sigmoid",
        description="sigmoid (the DPO paper), hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, "
        "aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm; a list combines several (e.g. "
        "[sigmoid, sft]), weighted by loss_weights.",
    )
    loss_weights: list[float] | None = Field(
        None, description="One weight per loss_type entry (default: 1.0 each)."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="Probability that a preference label is wrong (robust loss; ~0.1), or epsilon of exo_pair (~1e-3).",
    )
    precompute_ref_log_probs: bool = Field(
        False,
        description="Compute the reference log-probs of every pair once before training. With full fine-tuning "
        "this avoids holding a frozen copy of the model; with LoRA it saves the reference forward pass per step.",
    )

    @field_validator("loss_weights")
    @classmethod
    def _one_weight_per_loss(cls, weights: list[float] | None, info: ValidationInfo) -> list[float] | None:
        losses = info.data.get("loss_type")  # absent when loss_type itself was invalid
        n_losses = 1 if isinstance(losses, str) else len(losses or [])
        if weights is not None and losses is not None and len(weights) != n_losses:
            raise ValueError(f"one weight per loss_type entry: got {len(weights)} weights for {n_losses} losses")
        return weights

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        return truncation_problems(recipe)

    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


# ------------------------------------------------------------------------------------ DPO
@objective("dpo", section=DPOSection, data_form="preference", config_class="trl:DPOConfig",
           description="Direct Preference Optimization on prompt/chosen/rejected pairs.")
def build(parts: RunParts) -> Any:
    from trl import DPOConfig, DPOTrainer

    section: DPOSection = parts.recipe.objective  # type: ignore[assignment]
    require_chat_template(parts)
    args = parts.trainer_config(
        DPOConfig,
        beta=section.beta,
        loss_type=section.loss_types(),
        loss_weights=section.loss_weights,
        label_smoothing=section.label_smoothing,
        precompute_ref_log_probs=section.precompute_ref_log_probs,
        max_length=parts.recipe.data.max_length,
        truncation_mode="keep_start",
    )
    trainer = DPOTrainer(
        ref_model=frozen_reference(parts, precompute=args.precompute_ref_log_probs),
        args=args,
        **parts.trainer_inputs(),
    )
    use_base_as_reference(trainer)
    warn_dropped(trainer, parts, "the prompt alone fills max_length, leaving nothing to compare")
    return trainer

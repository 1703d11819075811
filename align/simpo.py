"""SimPO (simple preference optimisation) on prompt/chosen/rejected pairs, through TRL's CPOTrainer.

SimPO compares the length-normalised log-likelihoods of the two answers against a target margin, so
it needs no reference model (less memory than DPO, no reference forward pass). It is TRL's CPO
trainer with `loss_type: simpo`; `sft_weight` > 0 adds CPO's NLL term on the chosen answer (CPO-SimPO).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from align._preference import reference_free_trainer, truncation_problems
from finetune.recipe.schema import ObjectiveSection, RecipeBase
from finetune.registry import objective
from finetune.run_parts import RunParts


class SimPOSection(ObjectiveSection):
    kind: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, description="Scale of the reward difference (the SimPO paper uses 2.0-2.5).")
    gamma_ratio: float = Field(
        0.5, ge=0, description="Target reward margin as a fraction of beta (gamma / beta; 0.5 in the paper).")
    sft_weight: float = Field(
        0.0, ge=0, description="Weight of an NLL loss on the chosen answer (0: pure SimPO; > 0: CPO-SimPO).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Probability that a preference label is wrong.")

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        return truncation_problems(recipe)


@objective("simpo", section=SimPOSection, data_form="preference", config_class="trl.experimental.cpo:CPOConfig",
           description="SimPO: length-normalised preference optimisation, no reference model (pairs).")
def build(parts: RunParts) -> Any:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    section: SimPOSection = parts.recipe.objective  # type: ignore[assignment]
    return reference_free_trainer(parts, CPOConfig, CPOTrainer, loss_type="simpo", beta=section.beta,
                                  simpo_gamma=section.gamma_ratio, cpo_alpha=section.sft_weight,
                                  label_smoothing=section.label_smoothing)

"""Odds-Ratio Preference Optimisation (ORPO) on prompt/chosen/rejected pairs, with TRL's ORPOTrainer.

ORPO adds an odds-ratio penalty to the SFT loss of the chosen answer, so one stage replaces SFT then
DPO, and no reference model is held or computed: it needs the memory of SFT, about half of DPO's
under full fine-tuning. TRL 1.12 keeps the trainer under `trl.experimental`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from align._preference import reference_free_trainer, truncation_problems
from finetune.recipe.schema import ObjectiveSection, RecipeBase
from finetune.registry import objective
from finetune.run_parts import RunParts


class ORPOSection(ObjectiveSection):
    kind: Literal["orpo"] = "orpo"
    beta: float = Field(
        0.1, gt=0,
        description="Weight of the odds-ratio term against the SFT loss of the chosen answer (lambda in the "
        "ORPO paper; 0.1 there for 7B models).",
    )

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        return truncation_problems(recipe)


@objective("orpo", section=ORPOSection, data_form="preference", config_class="trl.experimental.orpo:ORPOConfig",
           description="ORPO: SFT and preference in one stage, no reference model (pairs).")
def build(parts: RunParts) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    section: ORPOSection = parts.recipe.objective  # type: ignore[assignment]
    return reference_free_trainer(parts, ORPOConfig, ORPOTrainer, beta=section.beta)

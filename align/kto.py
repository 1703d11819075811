"""Kahneman-Tversky Optimization on single answers labelled desirable or not, with TRL's KTOTrainer.

KTO was promoted to TRL's stable API in 1.x: `trl.KTOTrainer` is the home, `trl.experimental.kto`
a deprecated alias. The reference policy is handled as for DPO (see `align.dpo`): the base with the
adapter disabled under LoRA/QLoRA, a frozen copy under full fine-tuning, or precomputed log-probs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

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


class KTOSection(ObjectiveSection):
    kind: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference: higher stays closer.")
    desirable_weight: float = Field(
        1.0, gt=0,
        description="Weight of desirable examples' loss; with unbalanced labels keep "
        "desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3].",
    )
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable examples' loss.")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto", description="kto (the KTO paper) or apo_zero_unpaired (APO-zero, no KL estimate)."
    )
    precompute_ref_log_probs: bool = Field(
        False,
        description="Compute the reference log-probs once before training (no frozen copy under full fine-tuning).",
    )

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        problems = truncation_problems(recipe)
        # KTO's KL estimate pairs each prompt with another row's answer in the same batch.
        if self.loss_type == "kto" and recipe.training.batch_size < 2:
            problems.append((("training", "batch_size"), "KTO estimates its KL term from mismatched answers "
                             "within a batch, so it needs at least 2 examples per device (got "
                             f"{recipe.training.batch_size}); raise it, or use loss_type: apo_zero_unpaired."))
        return problems


@objective("kto", section=KTOSection, data_form="unpaired_preference", config_class="trl:KTOConfig",
           description="KTO on single answers labelled desirable or undesirable (thumbs up / down data).")
def build(parts: RunParts) -> Any:
    from trl import KTOConfig, KTOTrainer

    section: KTOSection = parts.recipe.objective  # type: ignore[assignment]
    require_chat_template(parts)
    args = parts.trainer_config(
        KTOConfig,
        beta=section.beta,
        desirable_weight=section.desirable_weight,
        undesirable_weight=section.undesirable_weight,
        loss_type=section.loss_type,
        precompute_ref_log_probs=section.precompute_ref_log_probs,
        max_length=parts.recipe.data.max_length,
    )
    # TRL 1.12 reads KTO data in order (the KL pairs are built within fixed batches), so it never
    # shuffles: shuffle once here, or the file's order (often all good, then all bad) is the order.
    train = parts.train_dataset.shuffle(seed=parts.recipe.seed)
    trainer = KTOTrainer(
        ref_model=frozen_reference(parts, precompute=args.precompute_ref_log_probs),
        args=args,
        **parts.trainer_inputs(train_dataset=train),
    )
    use_base_as_reference(trainer)
    warn_dropped(trainer, parts, "the prompt alone fills max_length, leaving nothing to score")
    return trainer

"""Reward modelling on prompt/chosen/rejected pairs, with TRL's RewardTrainer.

The model is loaded with a one-output sequence-classification head (`model_head` below); the loss
is -log sigmoid(r_chosen - r_rejected) and the validation split reports `eval_accuracy`, the share
of pairs where the chosen answer scores higher.

final/ always holds a complete AutoModelForSequenceClassification (see finetune.merged_head).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from finetune.recipe.schema import ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts


class RewardSection(ObjectiveSection):
    kind: Literal["reward"] = "reward"
    center_rewards_coefficient: float | None = Field(
        None, ge=0,
        description="Weight of a penalty on the squared mean reward, keeping scores centred on 0 (~0.01).",
    )

    def head_config(self, data: Any) -> dict[str, Any]:
        return {"num_labels": 1}  # one scalar score per answer


@objective("reward", section=RewardSection, data_form="preference", config_class="trl:RewardConfig",
           description="Reward model (one score per answer) trained on prompt/chosen/rejected pairs.",
           model_head="sequence_classification")
def build(parts: RunParts) -> Any:
    from trl import RewardConfig

    from align._preference import require_chat_template, warn_dropped

    section: RewardSection = parts.recipe.objective  # type: ignore[assignment]
    require_chat_template(parts)
    args = parts.trainer_config(
        RewardConfig,
        center_rewards_coefficient=section.center_rewards_coefficient,
        # RewardTrainer drops (never truncates) pairs longer than this; warn_dropped reports them.
        max_length=parts.recipe.data.max_length,
    )
    from trl import RewardTrainer

    from finetune.merged_head import merged_saver, merging_trainer_class

    trainer = merging_trainer_class(RewardTrainer)(args=args, **parts.trainer_inputs())
    trainer.save_merged = merged_saver(parts, section.head_config(None))
    warn_dropped(trainer, parts, "the prompt with its chosen or rejected answer is longer than max_length")
    return trainer

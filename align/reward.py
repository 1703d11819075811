"""Reward modelling on prompt/chosen/rejected pairs, with TRL's RewardTrainer.

The model is loaded with a one-output sequence-classification head (`model_head` below); the loss
is -log sigmoid(r_chosen - r_rejected) and the validation split reports `eval_accuracy`, the share
of pairs where the chosen answer scores higher.

final/ always holds a complete AutoModelForSequenceClassification. With LoRA/QLoRA the adapter
(and the fully trained score head, which PEFT's SEQ_CLS task adds to modules_to_save) is merged
into a fresh full-precision copy of the base: a reward model is consumed by scoring code, PPO and
GRPO, which load a plain classifier, and a 4-bit base cannot be merged into without loss.
Checkpoints keep the adapter, so `--resume` works as for any LoRA run.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field

from finetune.recipe.schema import FullAdapter, ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts


class RewardSection(ObjectiveSection):
    kind: Literal["reward"] = "reward"
    center_rewards_coefficient: float | None = Field(
        None, ge=0,
        description="Weight of a penalty on the squared mean reward, keeping scores centred on 0 (~0.01).",
    )


def merged_saver(parts: RunParts) -> Callable[[Any, str], None]:
    """save(peft_model, out_dir): write base + adapter merged, as one sequence-classification model."""

    def save(peft_model: Any, out_dir: str) -> None:
        from finetune.models import attach_adapter, load_model

        with tempfile.TemporaryDirectory() as tmp, _quiet_new_head():
            # Rows of tokens a template added are trainable tokens, saved as such: the full embedding is not needed.
            peft_model.save_pretrained(tmp, save_embedding_layers=False)
            # The recipe's model without quantization: same weights, dtype and head, on the CPU.
            base = load_model(parts.model_section, FullAdapter(), parts.hardware, "sequence_classification",
                              num_labels=1)
            merged = attach_adapter(base, tmp, vocab_size=len(parts.tokenizer), merge=True)
        # Sequence classification scores the last non-pad token: a reloaded model must know the pad id.
        merged.config.pad_token_id = parts.tokenizer.pad_token_id
        merged.save_pretrained(out_dir)

    return save


def _quiet_new_head() -> contextlib.AbstractContextManager[Any]:
    """Silence "score.weight newly initialized" on the reload: the adapter's trained head replaces it."""
    try:
        from trl.trainer.reward_trainer import (
            suppress_seqcls_warning,  # not public API; absent is harmless
        )
    except ImportError:
        return contextlib.nullcontext()
    return suppress_seqcls_warning()


@lru_cache(maxsize=1)
def _merging_trainer_class() -> type:
    """RewardTrainer whose final save merges a PEFT adapter (built lazily: trl is heavy to import)."""
    from accelerate.utils import is_peft_model
    from trl import RewardTrainer

    class MergingRewardTrainer(RewardTrainer):
        save_merged: Callable[[Any, str], None] | None = None

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            # Checkpoints (_internal_call) keep the adapter for --resume; the final save merges.
            if _internal_call or self.save_merged is None or not is_peft_model(self.model):
                super().save_model(output_dir, _internal_call)
                return
            if self.args.should_save:
                self.save_merged(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    return MergingRewardTrainer


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
    trainer = _merging_trainer_class()(args=args, **parts.trainer_inputs())
    trainer.save_merged = merged_saver(parts)
    warn_dropped(trainer, parts, "the prompt with its chosen or rejected answer is longer than max_length")
    return trainer

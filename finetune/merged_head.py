"""Classifier runs (reward models, `classify`) end with a plain AutoModelForSequenceClassification.

With LoRA/QLoRA the adapter (and the fully trained head, which PEFT's SEQ_CLS task puts in
modules_to_save) is merged into a fresh full-precision copy of the base when the final model is
saved: classifiers are consumed by scoring code, PPO, GRPO and serving stacks that load a plain
model, and a 4-bit base cannot be merged into without loss. Checkpoints keep the adapter, so
`--resume` works as for any LoRA run.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from finetune.recipe.schema import FullAdapter
from finetune.run_parts import RunParts


def merged_saver(parts: RunParts, model_config: dict[str, Any],
                 kind: str = "sequence_classification") -> Callable[[Any, str], None]:
    """save(peft_model, out_dir): base + adapter merged, as one model of model kind `kind` (a
    sequence classifier whose config carries `model_config`: num_labels, label names, problem type;
    or a masked LM)."""

    def save(peft_model: Any, out_dir: str) -> None:
        from finetune.models import attach_adapter, load_model

        with tempfile.TemporaryDirectory() as tmp, _quiet_new_head():
            # Rows of tokens a template added are trainable tokens, saved as such: the full embedding is not needed.
            peft_model.save_pretrained(tmp, save_embedding_layers=False)
            # The recipe's model without quantization: same weights, dtype and head, on the CPU.
            base = load_model(parts.model_section, FullAdapter(), parts.hardware, kind,
                              config=model_config)
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


@lru_cache(maxsize=4)
def merging_trainer_class(base: type) -> type:
    """`base` (a Trainer class) whose final save merges a PEFT adapter; checkpoints keep it."""
    from accelerate.utils import is_peft_model

    class MergingTrainer(base):  # type: ignore[misc, valid-type]
        save_merged: Callable[[Any, str], None] | None = None

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            if _internal_call or self.save_merged is None or not is_peft_model(self.model):
                super().save_model(output_dir, _internal_call)
                return
            if self.args.should_save:
                self.save_merged(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    MergingTrainer.__name__ = f"Merging{base.__name__}"
    return MergingTrainer

"""Continued pretraining on raw text: every token is trained."""

from __future__ import annotations

from typing import Any, Literal

from finetune.recipe.schema import ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts
from finetune.sft import build_sft_trainer


class PretrainSection(ObjectiveSection):
    kind: Literal["pretrain"] = "pretrain"


@objective("pretrain", section=PretrainSection, data_form="text", config_class="trl:SFTConfig",
           description="Continued pretraining on raw text (loss on every token).")
def build(parts: RunParts) -> Any:
    return build_sft_trainer(parts)

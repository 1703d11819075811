"""What DPO and KTO share: the reference policy, the truncation rule, and the rows TRL drops.

Both trainers follow the same design in TRL 1.12, so both objectives use these.
"""

from __future__ import annotations

from typing import Any

from finetune.errors import ConfigError
from finetune.notices import notice
from finetune.recipe.schema import RecipeBase
from finetune.run_parts import RunParts


def truncation_problems(recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
    """DPO and KTO truncate over-long sequences at the end (TRL 1.12 deprecates keep_end, has no drop)."""
    policy = recipe.data.truncation
    if policy == "keep_start":
        return []
    return [(("data", "truncation"), f"{recipe.objective.kind} keeps the start of over-long sequences (TRL "
             f"truncates the completion's end); {policy!r} is not supported here. Remove the key or set it to "
             f"keep_start.")]


def require_chat_template(parts: RunParts) -> None:
    """Conversational rows are rendered by the tokenizer's chat template; fail before TRL's jinja error."""
    from trl.data_utils import is_conversational

    if is_conversational(parts.train_dataset[0]) and not getattr(parts.tokenizer, "chat_template", None):
        raise ConfigError(
            f"model.chat_template: the data holds conversations (message lists) but the tokenizer of "
            f"{parts.recipe.model.name_or_path} has no chat template; set model.chat_template (e.g. chatml) "
            f"or give prompts and answers as plain text."
        )


def frozen_reference(parts: RunParts, *, precompute: bool) -> Any | None:
    """The reference model to hand TRL: None when it needs none, else a frozen copy of the policy.

    With a PEFT model TRL disables the adapter to get the reference; with precomputed log-probs it
    uses the policy once, before the first step. Otherwise we copy the loaded model ourselves rather
    than let TRL reload it from `name_or_path`: TRL's reload ignores the recipe's dtype (it loads
    float32), and misses embeddings resized for tokens a chat template added.
    """
    import copy

    from accelerate.utils import is_peft_model

    if is_peft_model(parts.model) or precompute:
        return None
    reference = copy.deepcopy(parts.model)
    reference.requires_grad_(False)
    return reference.eval()


def use_base_as_reference(trainer: Any) -> None:
    """Drop the 'ref' adapter TRL 1.12 adds when it is given a PeftModel.

    TRL assumes a PeftModel carries a pretrained adapter and copies it into a frozen 'ref' adapter.
    ft's adapter is always freshly initialised (LoRA B = 0, DoRA magnitude = weight norm), so the
    base with adapters disabled is the same reference, without the copy, and without a second
    adapter being written into every checkpoint and final/. TRL falls back to disabling adapters
    when no 'ref' adapter exists. Precomputed reference log-probs were taken before this runs.
    """
    from accelerate.utils import is_peft_model

    model = trainer.model
    if is_peft_model(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")


def warn_dropped(trainer: Any, parts: RunParts, why: str) -> None:
    """TRL filters some rows while tokenizing without saying so; say how many and how to keep them."""
    for name, before, after in (("train", parts.train_dataset, trainer.train_dataset),
                                ("validation", parts.eval_dataset, trainer.eval_dataset)):
        if before is None or after is None or not hasattr(after, "__len__"):
            continue
        dropped = len(before) - len(after)
        if dropped > 0:
            notice(f"{dropped} of {len(before)} {name} rows dropped: {why}; raise data.max_length "
                   f"(now {parts.recipe.data.max_length}) to keep them")


def reference_free_trainer(parts: RunParts, config_class: type, trainer_class: type, **objective: Any) -> Any:
    """ORPO and SimPO: TRL's (experimental) pair trainers that need no reference model. They tokenize
    the pairs themselves, keeping the start of over-long answers within data.max_length."""
    import warnings

    require_chat_template(parts)
    args = parts.trainer_config(config_class, max_length=parts.recipe.data.max_length, **objective)
    with warnings.catch_warnings():
        # "You are importing from 'trl.experimental'": ft pins TRL, so the API cannot move under us.
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        trainer = trainer_class(args=args, **parts.trainer_inputs())
    warn_dropped(trainer, parts, "the prompt alone fills max_length, leaving nothing to compare")
    return trainer

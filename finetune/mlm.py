"""Masked-language-model continued pre-training (BERT / RoBERTa / ModernBERT) on raw text.

Each text is tokenized with the tokenizer's own special tokens ([CLS] ... [SEP]); with
`data.packing` the texts are joined and cut into rows of max_length tokens (the "group texts" of
BERT-style pre-training), else each is truncated to max_length. transformers'
DataCollatorForLanguageModeling picks the masked tokens anew in every batch: `mlm_probability` of
the maskable tokens (never a special token nor padding, which the tokenizer's special-tokens mask
marks), 80% replaced by the mask token, 10% by a random token, 10% kept; the loss is on the picked
tokens only. Whole-word masking picks words (tokens joined without a gap in the text) and masks
every token of a picked word with the mask token (transformers 5 supports no random replacement
with it). LoRA runs end with the adapter merged: final/ is a plain AutoModelForMaskedLM, as an
encoder's downstream users (a classifier fine-tune, a fill-mask pipeline) load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from finetune.errors import ConfigError
from finetune.notices import notice
from finetune.recipe.schema import ObjectiveSection, RecipeBase
from finetune.registry import objective
from finetune.run_parts import RunParts

# Architectures that only predict the next token: AutoModelForMaskedLM has no head for them.
_DECODER_ONLY = ("ForCausalLM",)


class MlmSection(ObjectiveSection):
    kind: Literal["mlm"] = "mlm"
    mlm_probability: float = Field(
        0.15, gt=0, lt=1, description="Share of the maskable tokens (not special tokens, not padding) the loss "
        "predicts in each batch; of those, 80% are replaced by the mask token, 10% by a random token, 10% kept.")
    whole_word_masking: bool = Field(
        False, description="Pick whole words instead of single tokens and mask every token of a picked word "
        "(all with the mask token). Needs a fast tokenizer (offsets).")

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        architectures = _local_architectures(recipe.model.name_or_path)
        if architectures and all(a.endswith(_DECODER_ONLY) for a in architectures):
            message = (f"objective mlm needs a masked-LM encoder (BERT, RoBERTa, ModernBERT); "
                       f"{recipe.model.name_or_path} is a decoder-only model ({', '.join(architectures)}). Use "
                       f"objective.kind: pretrain for continued pre-training of a decoder")
            return [(("model", "name_or_path"), message)]
        return []


def _local_architectures(name_or_path: str) -> list[str]:
    """The `architectures` of a local model directory's config.json (read as JSON: validate stays
    free of torch); [] for a Hub id or an unreadable config (loading reports those)."""
    config = Path(name_or_path).expanduser() / "config.json"
    try:
        return [str(a) for a in json.loads(config.read_text()).get("architectures") or []]
    except (OSError, ValueError, AttributeError):
        return []


def encode(dataset: Any, tokenizer: Any, max_length: int, *, packing: bool, whole_word: bool) -> Any:
    """input_ids (+ attention mask, special-tokens mask, and offsets for whole-word masking): one row
    per text truncated to max_length, or with `packing` the texts joined and cut into max_length rows."""
    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return tokenizer(batch["text"], truncation=not packing, max_length=None if packing else max_length,
                         return_special_tokens_mask=True, return_offsets_mapping=whole_word)

    def group(batch: dict[str, list[list[Any]]]) -> dict[str, list[list[Any]]]:
        joined = {key: [item for row in rows for item in row] for key, rows in batch.items()}
        total = len(joined["input_ids"])
        # The last, shorter block is kept: a small corpus would otherwise lose up to a block of text.
        return {key: [values[i:i + max_length] for i in range(0, total, max_length)] for key, values in joined.items()}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
    if not packing:
        return tokenized
    # One batch: every text joins the stream (batches of the default size would each leave a short block).
    return tokenized.map(group, batched=True, batch_size=None)


def collator(tokenizer: Any, section: MlmSection, seed: int) -> Any:
    """DataCollatorForLanguageModeling, with offsets padded alongside the ids for whole-word masking."""
    from transformers import DataCollatorForLanguageModeling

    replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if section.whole_word_masking else {}
    inner = DataCollatorForLanguageModeling(tokenizer, mlm_probability=section.mlm_probability,
                                            whole_word_mask=section.whole_word_masking, seed=seed, **replace)
    if not section.whole_word_masking:
        return inner

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(e["input_ids"]) for e in examples)
        left = tokenizer.padding_side == "left"
        padded = []
        for e in examples:
            fill = [[0, 0]] * (longest - len(e["offset_mapping"]))
            padded.append({**e, "offset_mapping": fill + list(e["offset_mapping"]) if left
                           else list(e["offset_mapping"]) + fill})
        return inner(padded)

    return collate


def _check_tokenizer(parts: RunParts, section: MlmSection) -> None:
    tokenizer, where = parts.tokenizer, parts.recipe.model.name_or_path
    if tokenizer.mask_token is None:
        raise ConfigError(f"model.name_or_path: the tokenizer of {where} has no mask token, which masked-LM "
                          f"training replaces tokens with; use a masked-LM model's tokenizer (BERT, RoBERTa, ModernBERT)")
    if section.whole_word_masking and not tokenizer.is_fast:
        raise ConfigError(f"objective.whole_word_masking: needs a fast tokenizer (offsets); {where} has a slow one")


@objective("mlm", section=MlmSection, data_form="masked_text", config_class="transformers:TrainingArguments",
           description="Masked-LM continued pre-training of an encoder (BERT, RoBERTa, ModernBERT) on raw text.",
           model_head="masked_lm")
def build(parts: RunParts) -> Any:
    from transformers import Trainer, TrainingArguments

    from finetune.merged_head import merged_saver, merging_trainer_class

    section: MlmSection = parts.recipe.objective  # type: ignore[assignment]
    _check_tokenizer(parts, section)
    data = parts.recipe.data
    settings = {"packing": data.packing, "whole_word": section.whole_word_masking}
    train = encode(parts.train_dataset, parts.tokenizer, data.max_length, **settings)
    evaluation = encode(parts.eval_dataset, parts.tokenizer, data.max_length, **settings) \
        if parts.eval_dataset is not None else None
    if data.packing:
        notice(f"mlm: {len(parts.train_dataset):,} texts joined into {len(train):,} rows of up to "
               f"{data.max_length:,} tokens")
    # The collator reads special_tokens_mask and offset_mapping, which the model's forward does not take.
    args = parts.trainer_config(TrainingArguments, remove_unused_columns=False)
    trainer = merging_trainer_class(Trainer)(
        model=parts.model, args=args, train_dataset=train, eval_dataset=evaluation,
        processing_class=parts.tokenizer, callbacks=parts.callbacks,
        data_collator=collator(parts.tokenizer, section, parts.recipe.seed),
    )
    trainer.save_merged = merged_saver(parts, {}, kind="masked_lm")
    return trainer

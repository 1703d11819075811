"""Sequence classification (single-label, multi-label, regression) on `classification` data, for
encoder (BERT-style) and decoder models, with transformers' Trainer.

Label names map to ids in the order of `objective.labels` (or sorted, as found in the training
data); the mapping is saved in the model's config (id2label/label2id), so `final/` loads with
AutoModelForSequenceClassification and names its predictions. Validation reports accuracy and
macro F1 (single-label), micro F1 and exact match (multi-label), or MSE (regression). LoRA runs end
with the adapter merged into a plain classifier, as reward models do (finetune.merged_head).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from finetune.recipe.schema import ObjectiveSection, RecipeBase
from finetune.registry import objective
from finetune.run_parts import RunParts

ProblemType = Literal["single_label", "multi_label", "regression"]
# transformers' names for the loss each problem type trains with.
_HF_PROBLEM = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
               "regression": "regression"}


class ClassifySection(ObjectiveSection):
    kind: Literal["classify"] = "classify"
    problem_type: ProblemType = Field(
        "single_label", description="single_label (one class per text), multi_label (a list of classes per text) "
        "or regression (a number per text).")
    labels: list[str] | None = Field(
        None, min_length=2, description="The class names in id order. Default: the labels of the training data, "
        "sorted. Give them to fix the ids, or to refuse rows whose label is not among them.")

    def check_row(self, example: dict[str, Any]) -> None:
        from data_templates.formats import RowError

        label = example["label"]
        if self.problem_type == "regression":
            if isinstance(label, list) or isinstance(label, str):
                raise RowError(f"regression needs a number as label, got {label!r}")
            return
        if self.problem_type == "single_label" and isinstance(label, list):
            raise RowError(f"single_label needs one label per row, got a list {label!r} (use problem_type: "
                           f"multi_label)")
        names = label if isinstance(label, list) else [label]
        unknown = [str(n) for n in names if self.labels is not None and str(n) not in self.labels]
        if unknown:
            raise RowError(f"label {', '.join(unknown)} is not in objective.labels ({', '.join(self.labels or [])})")

    def head_config(self, data: Any) -> dict[str, Any]:
        if self.problem_type == "regression":
            return {"num_labels": 1, "problem_type": "regression"}
        names = self.labels or (label_names(data.train) if data is not None else [])
        if not names:
            return {"problem_type": _HF_PROBLEM[self.problem_type]}
        return {"num_labels": len(names), "problem_type": _HF_PROBLEM[self.problem_type],
                "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            return [(("objective", "labels"), "the class names must be distinct")]
        return []


def label_names(dataset: Any) -> list[str]:
    """Every class name the rows use, sorted (numbers as their text: ids given as 0/1 stay in order)."""
    found: set[str] = set()
    for label in dataset["label"]:
        found.update(str(n) for n in (label if isinstance(label, list) else [label]))
    return sorted(found, key=lambda n: (not n.lstrip("-").isdigit(), int(n) if n.lstrip("-").isdigit() else 0, n))


def encode(dataset: Any, tokenizer: Any, section: ClassifySection, label2id: dict[str, int], max_length: int) -> Any:
    """input_ids (truncated to max_length) and a label the loss reads: an id, a multi-hot row or a float."""
    from data_templates.prepare import DataError

    def one(row: dict[str, Any]) -> dict[str, Any]:
        encoded = tokenizer(row["text"], row.get("text_pair"), truncation=True, max_length=max_length)
        label = row["label"]
        if section.problem_type == "regression":
            target: Any = float(label)
        elif section.problem_type == "multi_label":
            target = [0.0] * len(label2id)
            for name in label if isinstance(label, list) else [label]:
                target[label2id[str(name)]] = 1.0
        else:
            target = label2id[str(label)]
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": target}

    try:
        return dataset.map(one, remove_columns=dataset.column_names)
    except KeyError as err:
        raise DataError(f"validation data: label {err} does not occur in the training data (labels: "
                        f"{', '.join(label2id)}); list every class in objective.labels") from None


def metrics_for(problem_type: str) -> Any:
    """compute_metrics for the Trainer: what the validation split reports."""
    import numpy as np

    def single(prediction: Any) -> dict[str, float]:
        predicted, gold = np.argmax(prediction.predictions, axis=-1), prediction.label_ids
        f1s = []
        for c in np.unique(np.concatenate([gold, predicted])):
            tp = np.sum((predicted == c) & (gold == c))
            denom = np.sum(predicted == c) + np.sum(gold == c)
            f1s.append(2 * tp / denom if denom else 0.0)
        return {"accuracy": float(np.mean(predicted == gold)), "f1": float(np.mean(f1s))}

    def multi(prediction: Any) -> dict[str, float]:
        predicted, gold = prediction.predictions > 0, prediction.label_ids > 0.5
        tp = np.sum(predicted & gold)
        denom = np.sum(predicted) + np.sum(gold)
        return {"f1": float(2 * tp / denom) if denom else 1.0,
                "exact_match": float(np.mean(np.all(predicted == gold, axis=-1)))}

    def regression(prediction: Any) -> dict[str, float]:
        return {"mse": float(np.mean((prediction.predictions.reshape(-1) - prediction.label_ids) ** 2))}

    return {"single_label": single, "multi_label": multi, "regression": regression}[problem_type]


@objective("classify", section=ClassifySection, data_form="classification", config_class="transformers:TrainingArguments",
           description="Sequence classification: single-label, multi-label or regression, encoder or decoder.",
           model_head="sequence_classification")
def build(parts: RunParts) -> Any:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from finetune.merged_head import merged_saver, merging_trainer_class

    section: ClassifySection = parts.recipe.objective  # type: ignore[assignment]
    label2id = dict(getattr(parts.model.config, "label2id", {}) or {})
    max_length = parts.recipe.data.max_length
    train = encode(parts.train_dataset, parts.tokenizer, section, label2id, max_length)
    evaluation = encode(parts.eval_dataset, parts.tokenizer, section, label2id, max_length) \
        if parts.eval_dataset is not None else None
    args = parts.trainer_config(TrainingArguments, remove_unused_columns=False)
    trainer = merging_trainer_class(Trainer)(
        model=parts.model, args=args, train_dataset=train, eval_dataset=evaluation,
        processing_class=parts.tokenizer, callbacks=parts.callbacks,
        data_collator=DataCollatorWithPadding(parts.tokenizer),
        compute_metrics=metrics_for(section.problem_type) if evaluation is not None else None,
    )
    config = {k: v for k, v in parts.model.config.to_dict().items()
              if k in ("num_labels", "problem_type", "id2label", "label2id")}
    trainer.save_merged = merged_saver(parts, config)
    return trainer

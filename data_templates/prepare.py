"""From a recipe's data section to the datasets the trainer consumes.

`prepare_data` is the one path from files to trainer inputs; `ft data preview` calls the same
functions, so what the preview shows is what is trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from data_templates.formats import FORMATS, RowError
from data_templates.sources import DataSourceError, Origin, read_rows
from finetune.recipe.schema import DataSection, DatasetSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZED_FORMS = ("sft", "text")  # forms ft tokenizes itself, with exact masks


class DataError(ValueError):
    """Bad data: the message names the file and row."""


@dataclass
class DatasetStats:
    name: str
    rows: int = 0
    skipped: int = 0
    truncated: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.name}: {self.rows:,} rows"
        if self.skipped:
            text += f", {self.skipped:,} bad rows skipped"
        if self.lengths:
            ordered = sorted(self.lengths)
            text += f"; tokens min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}"
            text += f"; {self.truncated:,} of {len(self.lengths) + self.dropped:,} truncated, {self.dropped:,} dropped"
        return text


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any | None
    stats: list[DatasetStats]

    def summary(self) -> str:
        return "\n".join(s.summary() for s in self.stats)


Row = tuple[Origin, dict[str, Any]]


def canonical_rows(spec: DatasetSpec, bad_rows: str, stats: DatasetStats) -> list[Row]:
    """Rows of one dataset in the canonical form of its format, column mapping applied."""
    fmt = FORMATS[spec.format]
    out: list[Row] = []
    try:
        for origin, row in read_rows(spec):
            try:
                out.append((origin, fmt.convert(_map_columns(row, spec.columns))))
            except RowError as err:
                if bad_rows == "fail":
                    raise DataError(f"{origin}: {err} (format {spec.format}; set data.bad_rows=skip to skip "
                                    f"bad rows)") from None
                stats.skipped += 1
    except DataSourceError as err:
        raise DataError(str(err)) from None
    if not out:
        raise DataError(f"{spec.path}: no usable rows")
    stats.rows = len(out)
    return out


def _map_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    if not columns:
        return row
    mapped = dict(row)
    for field_name, column in columns.items():
        if column not in row:
            raise RowError(f"missing column {column!r} (mapped to {field_name!r}); columns: {', '.join(row)}")
        mapped[field_name] = row[column]
    return mapped


def tokenize_example(tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], loss_on: str) -> dict[str, list[int]]:
    """input_ids and labels (-100 where no loss) for one canonical sft/text example."""
    from data_templates.masking import tokenize_conversation, tokenize_prompt_completion, tokenize_text

    if "messages" in example:
        return tokenize_conversation(tokenizer, example["messages"], loss_on)
    if "completion" in example:
        return tokenize_prompt_completion(tokenizer, example["prompt"], example["completion"],
                                          completion_only=loss_on != "all")
    return tokenize_text(tokenizer, example["text"])


def truncate(tokens: dict[str, list[int]], max_length: int, policy: str) -> dict[str, list[int]] | None:
    """Apply the truncation policy; None means the row is dropped."""
    if len(tokens["input_ids"]) <= max_length:
        return tokens
    if policy == "drop":
        return None
    cut = slice(None, max_length) if policy == "keep_start" else slice(-max_length, None)
    return {key: value[cut] for key, value in tokens.items()}


def tokenize_rows(tokenizer: PreTrainedTokenizerBase, rows: list[Row], data: DataSection,
                  loss_on: str, stats: DatasetStats) -> list[dict[str, list[int]]]:
    out = []
    for origin, row in rows:
        try:
            tokens = tokenize_example(tokenizer, row, loss_on)
        except ValueError as err:  # the template cannot render this row, or it has nothing to train on
            if data.bad_rows == "fail":
                raise DataError(f"{origin}: {err}") from None
            stats.skipped += 1
            continue
        kept = truncate(tokens, data.max_length, data.truncation)
        if kept is None or all(label == -100 for label in kept["labels"]):
            stats.dropped += 1  # nothing left to learn from in this row
            continue
        stats.truncated += len(kept["input_ids"]) < len(tokens["input_ids"])
        stats.lengths.append(len(kept["input_ids"]))
        out.append(kept)
    return out


def _split(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def prepare_data(data: DataSection, tokenizer: PreTrainedTokenizerBase, form: str, *, loss_on: str = "assistant",
                 seed: int = 42) -> PreparedData:
    """Train and validation datasets for an objective consuming `form`, with per-dataset stats."""
    import datasets

    stats: list[DatasetStats] = []

    def load(specs: list[DatasetSpec], split: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for index, spec in enumerate(specs):
            stat = DatasetStats(f"{split}[{index}] {spec.path}")
            stats.append(stat)
            canonical = canonical_rows(spec, data.bad_rows, stat)
            if form in TOKENIZED_FORMS:
                rows += tokenize_rows(tokenizer, canonical, data, loss_on, stat)
            else:
                rows += [row for _, row in canonical]
        return rows

    train = load(data.train, "train")
    evaluation = load(data.validation, "validation")
    if data.validation_fraction > 0:
        train, evaluation = _split(train, data.validation_fraction, seed)
    if not train:
        raise DataError("no training rows left after truncation and filtering; raise data.max_length")
    return PreparedData(
        train=datasets.Dataset.from_list(train),
        eval=datasets.Dataset.from_list(evaluation) if evaluation else None,
        stats=stats,
    )


__all__ = ["DataError", "DatasetStats", "Origin", "PreparedData", "prepare_data", "tokenize_example"]

"""From a recipe's data section to the datasets the trainer consumes.

`prepare_data` is the one path from files to trainer inputs; `ft data preview` calls the same
functions, so what the preview shows is what is trained. Per dataset: read rows, convert them
to their format's canonical form, tokenize with exact loss masks (sft and text forms; other
objectives' trainers tokenize themselves), truncate, and cache the result (see `cache`). Then
the validation rows are held out and the train datasets mixed by weight (see `mixing`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from data_templates import cache, mixing, parallel
from data_templates.formats import FORMATS, RowError
from data_templates.forms import data_form
from data_templates.sources import DataSourceError, Origin, read_rows
from finetune.errors import FtError
from finetune.recipe.schema import DataSection, DatasetSpec

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from data_templates.vision import VisionProcessor



class DataError(FtError, ValueError):
    """Bad data: the message names the file and row."""


@dataclass
class DatasetStats:
    """What happened to one dataset's rows; `summary` is the line the run starts with."""

    name: str
    rows: int = 0  # usable rows: tokenized forms count kept + dropped, so "truncated of rows" reads right
    skipped: int = 0  # bad rows left out (bad_rows: skip)
    truncated: int = 0  # rows longer than max_length, cut and kept
    dropped: int = 0  # rows left out at max_length: truncation: drop, or no trained token left after cutting
    first_bad: str | None = None  # "file:row: why" of the first skipped row
    tokenized: bool = False
    cached: bool = False  # loaded from the preprocessing cache instead of tokenized now
    used: int | None = None  # examples it gives the train or validation set, after the split and mixing
    lengths: list[int] = field(default_factory=list)  # tokens of each kept example

    def summary(self) -> str:
        text = f"{self.name}: {self.rows:,} rows"
        if self.skipped:
            text += f", {self.skipped:,} bad rows skipped (first: {self.first_bad})"
        if self.tokenized:
            text += f"; {self.truncated:,} of {self.rows:,} rows truncated, {self.dropped:,} dropped"
        if self.lengths:
            ordered = sorted(self.lengths)
            text += f"; tokens min {ordered[0]:,}, median {ordered[len(ordered) // 2]:,}, max {ordered[-1]:,}"
        if self.cached:
            text += "; loaded from the data cache"
        return text

    def to_meta(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in ("rows", "skipped", "truncated", "dropped", "first_bad")}


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any | None
    stats: list[DatasetStats]
    notes: list[str] = field(default_factory=list)  # how the sets were assembled: hold-out, mixing

    def summary(self) -> str:
        sizes = f"train: {len(self.train):,} examples; validation: "
        sizes += f"{len(self.eval):,} examples" if self.eval is not None else "none"
        return "\n".join([*(s.summary() for s in self.stats), *self.notes, sizes])


Row = tuple[Origin, dict[str, Any]]


def _bad_row(stats: DatasetStats, bad_rows: str, where: str, why: str, hint: str = "") -> None:
    """Fail on a bad row, or count it (and remember the first) when skipping."""
    if bad_rows == "fail":
        raise DataError(f"{where}: {why}{hint}; set data.bad_rows=skip to skip such rows")
    stats.skipped += 1
    stats.first_bad = stats.first_bad or f"{where}: {why}"


def canonical_rows(spec: DatasetSpec, bad_rows: str, stats: DatasetStats,
                   check_row: Callable[[dict[str, Any]], None] | None = None) -> list[Row]:
    """Rows of one dataset in the canonical form of its format, column mapping applied."""
    fmt = FORMATS[spec.format]
    out: list[Row] = []
    labels: dict[str, tuple[bool, str]] = {}  # unpaired rows: (prompt, completion) -> (label, where first seen)
    try:
        for origin, row in read_rows(spec):
            try:
                example = fmt.convert(map_columns(row, spec.columns))
                if fmt.form == "unpaired_preference":
                    _check_label_agrees(example, str(origin), labels)
                if check_row is not None:
                    check_row(example)
                out.append((origin, example))
            except RowError as err:
                _bad_row(stats, bad_rows, str(origin), str(err), f" (format {spec.format})")
    except DataSourceError as err:
        raise DataError(str(err)) from None
    if not out:
        raise DataError(_nothing_left(stats, "no rows"))
    stats.rows = len(out)
    return out


def _check_label_agrees(example: dict[str, Any], where: str, labels: dict[str, tuple[bool, str]]) -> None:
    """The same completion of the same prompt may not be both desirable and undesirable (KTO's
    counterpart of a pair whose chosen equals its rejected)."""
    import json

    key = json.dumps([example["prompt"], example["completion"]], sort_keys=True)
    label, first = labels.setdefault(key, (example["label"], where))
    if label != example["label"]:
        raise RowError(f"the same prompt and completion are labelled {str(label).lower()} at {first} and "
                       f"{str(example['label']).lower()} here")


def _nothing_left(stats: DatasetStats, what: str) -> str:
    if stats.skipped:
        return f"{stats.name}: every row was bad ({stats.skipped:,} skipped); the first: {stats.first_bad}"
    return f"{stats.name}: {what}"


def map_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    if not columns:
        return row
    mapped = dict(row)
    for field_name, column in columns.items():
        if column not in row:
            raise RowError(f"missing column {column!r} (mapped to {field_name!r}); columns: {', '.join(map(str, row))}")
        mapped[field_name] = row[column]
    return mapped


def tokenize_example(tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], loss_on: str) -> dict[str, list[int]]:
    """input_ids and labels (-100 where no loss) for one canonical sft/text example."""
    from data_templates.masking import (
        tokenize_conversation,
        tokenize_prompt_completion,
        tokenize_text,
    )

    if "messages" in example:
        return tokenize_conversation(tokenizer, example["messages"], loss_on)
    if "completion" in example:
        return tokenize_prompt_completion(tokenizer, example["prompt"], example["completion"],
                                          completion_only=loss_on != "all")
    return tokenize_text(tokenizer, example["text"])


def _tokenize_decoder(tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], loss_on: str) -> dict[str, list[int]]:
    return tokenize_example(tokenizer, example, loss_on)  # looked up when called, so it can be wrapped


def _tokenize_seq2seq(tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], loss_on: str) -> dict[str, list[int]]:
    from data_templates.masking import tokenize_seq2seq

    return tokenize_seq2seq(tokenizer, example)  # the whole target is trained: loss_on does not apply


# A tokenized data form's `example` -> how one canonical example becomes its tokens.
EXAMPLE_TOKENIZERS: dict[str, Callable[[Any, dict[str, Any], str], dict[str, list[int]]]] = {
    "decoder": _tokenize_decoder,
    "seq2seq": _tokenize_seq2seq,
}


def truncate(tokens: dict[str, list[int]], max_length: int, policy: str) -> dict[str, list[int]] | None:
    """Apply the truncation policy to each sequence (a seq2seq target is as long as it is, not as its
    source); None means the row is dropped."""
    if all(len(value) <= max_length for value in tokens.values()):
        return tokens
    if policy == "drop":
        return None
    cut = slice(None, max_length) if policy == "keep_start" else slice(-max_length, None)
    return {key: value[cut] for key, value in tokens.items()}


def _vision_tokens(tokenizer: PreTrainedTokenizerBase, rows: list[Row], loss_on: str,
                   vision: VisionProcessor) -> list[dict[str, Any] | str]:
    """Each image-text row's tokens (images expanded) or the reason it cannot be tokenized. One process:
    the image processor, not the tokenizer, is the cost, and the rows need their file's folder."""
    from data_templates.vision import tokenize_vision_conversation

    out: list[dict[str, Any] | str] = []
    for origin, row in rows:
        try:
            out.append(tokenize_vision_conversation(tokenizer, vision, row["messages"], loss_on, origin.source))
        except ValueError as err:
            out.append(str(err))
    return out


def _truncate(tokens: dict[str, Any], data: DataSection, vision: VisionProcessor | None) -> dict[str, Any] | None:
    if vision is None:
        return truncate(tokens, data.max_length, data.truncation)
    from data_templates.vision import truncate_vision

    return truncate_vision(tokens, data.max_length, data.truncation, vision.image_token_id)


def tokenize_rows(tokenizer: PreTrainedTokenizerBase, rows: list[Row], data: DataSection,
                  loss_on: str, stats: DatasetStats, form: str = "sft",
                  vision: VisionProcessor | None = None) -> list[dict[str, Any]]:
    """Tokenized, truncated examples; counts truncated and dropped rows into `stats`. An
    encoder-decoder's (seq2seq) source and target are each truncated to data.max_length. With
    `vision`, rows hold images (data form vision_sft)."""
    chat = data_form(form).chat
    if chat and not getattr(tokenizer, "chat_template", None) and any("messages" in row for _, row in rows):
        # A setup problem, not a bad row: say it once instead of for every row.
        raise DataError(f"{stats.name}: the rows are conversations, but the tokenizer has no chat template; set "
                        "model.chat_template (chatml, llama3, mistral, gemma, phi3, alpaca, completion or a "
                        ".jinja file)")
    out = []
    tokenized = (_vision_tokens(tokenizer, rows, loss_on, vision) if vision is not None
                 else parallel.tokenize_all(tokenizer, [row for _, row in rows], loss_on,
                                            tokenize=EXAMPLE_TOKENIZERS[data_form(form).example]))
    for (origin, _), tokens in zip(rows, tokenized):
        if isinstance(tokens, str):  # the template cannot render this row, or it has nothing to train on
            _bad_row(stats, data.bad_rows, str(origin), tokens)
            continue
        kept = _truncate(tokens, data, vision)
        if kept is None or all(label == -100 for label in kept["labels"]):
            stats.dropped += 1  # nothing left to learn from in this row
            continue
        stats.truncated += any(len(kept[k]) < len(tokens[k]) for k in kept)
        stats.lengths.append(len(kept["input_ids"]))
        out.append(kept)
    stats.rows = len(out) + stats.dropped
    if not out:
        raise DataError(_nothing_left(stats, f"all {stats.rows:,} rows were dropped at data.max_length="
                                      f"{data.max_length} (nothing left to train on); raise data.max_length"))
    return out


def to_dataset(rows: list[dict[str, Any]], name: str) -> Dataset:
    """A datasets.Dataset of `rows`; every field any row has becomes a column (None where absent)."""
    import datasets
    import pyarrow as pa

    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        return datasets.Dataset.from_dict({c: [row.get(c) for row in rows] for c in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise DataError(f"{name}: rows do not share one type per field (e.g. 'prompt' is text in some rows and "
                        f"a list of messages in others); use one kind throughout. ({err})") from None


def _lengths(dataset: Dataset) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


def load_one(spec: DatasetSpec, name: str, data: DataSection, tokenizer: PreTrainedTokenizerBase,
             form: str, loss_on: str, check_row: Callable[[dict[str, Any]], None] | None = None,
             vision: VisionProcessor | None = None) -> tuple[Dataset, DatasetStats]:
    """One dataset, ready to assemble: from the cache when it has it, else read and tokenized now."""
    stats = DatasetStats(name, tokenized=data_form(form).tokenized)
    cached = stats.tokenized and data.cache and not data_form(form).images
    key = cache.cache_key(spec, data, tokenizer, form=form, loss_on=loss_on) if cached else None
    hit = cache.load(key) if key else None
    if hit is not None:
        dataset, meta = hit
        for attr, value in meta["stats"].items():
            setattr(stats, attr, value)
        stats.cached, stats.lengths = True, _lengths(dataset)
        return dataset, stats
    rows = canonical_rows(spec, data.bad_rows, stats, check_row)
    if not stats.tokenized:
        return to_dataset([row for _, row in rows], name), stats
    if data_form(form).images:
        from data_templates.vision import require_images

        require_images(rows, name)
        if vision is None:
            raise DataError(f"{name}: the rows hold images, but no image processor was given")
    dataset = to_dataset(tokenize_rows(tokenizer, rows, data, loss_on, stats, form, vision), name)
    if key:
        dataset = cache.store(key, dataset, {"stats": stats.to_meta(), "source": spec.path})
    return dataset, stats


def _concat(parts: list[Dataset], split: str) -> Dataset:
    import datasets

    try:
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise DataError(f"the {split} datasets have different fields or types and cannot be joined ({err}); "
                        "give them the same format and kind of prompt (text or messages)") from None


def _assemble(train: list[tuple[Dataset, DatasetStats]], data: DataSection, seed: int,
              notes: list[str]) -> tuple[list[Dataset], list[Dataset]]:
    """Hold out validation rows, then mix by weight; returns (train parts, held-out parts)."""
    sets = [d for d, _ in train]
    names = [s.name for _, s in train]
    held: list[Dataset] = []
    if data.validation_fraction > 0:
        kept_idx, held_idx = mixing.holdout_indices([len(d) for d in sets], data.validation_fraction, seed)
        held = [mixing.select(d, h) for d, h in zip(sets, held_idx) if h]
        sets = [mixing.select(d, k) for d, k in zip(sets, kept_idx)]
        notes.append(f"validation: {sum(map(len, held_idx)):,} train rows held out at random "
                     f"(validation_fraction {data.validation_fraction:g}, seed {seed})")
    weights = [spec.weight for spec in data.train]
    if any(w is not None for w in weights):
        if any(w is None for w in weights):
            raise DataError("data.train: give every train dataset a weight, or none")
        sizes = [len(d) for d in sets]
        try:
            picks = mixing.mix_indices(sizes, weights, seed, names)
        except mixing.MixError as err:
            raise DataError(str(err)) from None
        notes.append(mixing.describe_mix(names, sizes, weights, picks))
        sets = [mixing.select(d, p) for d, p in zip(sets, picks)]
    for (_, stats), part in zip(train, sets):
        stats.used = len(part)
    return sets, held


def prepare_data(data: DataSection, tokenizer: PreTrainedTokenizerBase, form: str, *, loss_on: str = "assistant",
                 seed: int = 42, check_row: Callable[[dict[str, Any]], None] | None = None,
                 vision: VisionProcessor | None = None) -> PreparedData:
    """Train and validation datasets for an objective consuming `form`, with per-dataset stats.
    `check_row` is the objective's own test of a canonical example (RowError for a bad one); `vision`
    the image processor of a vision-language model (data form vision_sft)."""
    train = [load_one(spec, f"train[{i}] {spec.path}", data, tokenizer, form, loss_on, check_row, vision)
             for i, spec in enumerate(data.train)]
    given = [load_one(spec, f"validation[{i}] {spec.path}", data, tokenizer, form, loss_on, check_row, vision)
             for i, spec in enumerate(data.validation)]
    notes: list[str] = []
    train_sets, held = _assemble(train, data, seed, notes)
    for dataset, stats in given:
        stats.used = len(dataset)
    evaluation = [d for d, _ in given] + held
    if not sum(map(len, train_sets)):
        raise DataError("no training rows left after the validation split; lower data.validation_fraction "
                        "or add data")
    return PreparedData(
        train=_concat(train_sets, "train"),
        eval=_concat(evaluation, "validation") if evaluation else None,
        stats=[s for _, s in train + given],
        notes=notes,
    )


__all__ = ["DataError", "DatasetStats", "Origin", "PreparedData", "prepare_data", "tokenize_example", "truncate"]

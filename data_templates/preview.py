"""`ft data preview`: the first training examples exactly as the trainer gets them.

The examples come from `finetune.pipeline.load_data`, the function that feeds the trainer, so
the preview cannot drift from training. For sft and text data they are the trainer's rows
themselves (`input_ids`, `labels`), with the decoded `text` added; for seq2seq the row's source
(the encoder's input) and target (the labels) are shown as two sequences. Preference and unpaired rows
go to the trainer as canonical text (TRL tokenizes them itself); the preview tokenizes them with
ft's masking functions: prompt + answer, loss on the answer only. Prompt-only rows are shown as
the generating objectives render their prompts, with no loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from data_templates.forms import data_form
from data_templates.masking import (
    IGNORE_INDEX,
    prompt_ids,
    tokenize_prompt_completion,
)
from data_templates.prepare import DataError, PreparedData

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from finetune.recipe.schema import RecipeBase

TRAINED = "bold green"
UNTRAINED = "dim"


@dataclass
class Preview:
    recipe: RecipeBase
    form: str  # the objective's data form
    tokenizer: Any
    template: str | None  # where the chat template came from
    data: PreparedData
    examples: list[dict[str, Any]]


def tokens(tokenizer: Any, input_ids: list[int], labels: list[int]) -> dict[str, Any]:
    """One sequence as the JSON preview prints it."""
    text = tokenizer.decode(input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return {"input_ids": list(input_ids), "labels": list(labels), "text": text}


def _answer(tokenizer: Any, prompt: Any, answer: Any) -> dict[str, Any]:
    example = tokenize_prompt_completion(tokenizer, prompt, answer, completion_only=True)
    return tokens(tokenizer, example["input_ids"], example["labels"])


def _prompt(tokenizer: Any, prompt: Any) -> dict[str, Any]:
    """A prompt as ft's generating objectives (align.ppo, align.grpo) see it (masking.prompt_ids).
    No loss: the answers are generated during training."""
    ids = prompt_ids(tokenizer, prompt)
    return tokens(tokenizer, ids, [IGNORE_INDEX] * len(ids))


# How each data form's `preview` shows one trainer row (see the module docstring).
_PREVIEWS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "tokens": lambda tok, row: tokens(tok, row["input_ids"], row["labels"]),
    "pair": lambda tok, row: {"chosen": _answer(tok, row["prompt"], row["chosen"]),
                              "rejected": _answer(tok, row["prompt"], row["rejected"])},
    "unpaired": lambda tok, row: {"completion": _answer(tok, row["prompt"], row["completion"]), "label": row["label"]},
    "prompt": lambda tok, row: {"prompt": _prompt(tok, row["prompt"]), **{k: v for k, v in row.items() if k != "prompt"}},
    "classification": lambda tok, row: {**_classified(tok, row), "label": row["label"]},
    "masked": lambda tok, row: _maskable(tok, row),
    # An encoder-decoder's row: the encoder's source (no loss) and the decoder's target (all trained).
    "source_target": lambda tok, row: {"source": tokens(tok, row["input_ids"], [IGNORE_INDEX] * len(row["input_ids"])),
                                       "target": tokens(tok, row["labels"], row["labels"])},
    "vision": lambda tok, row: _with_images(tok, row),
}


def _with_images(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    """An image-text row: the trainer's tokens, its text with each image's tokens shown as
    `<image: PATH, N tokens>`, and its images."""
    from data_templates.vision import image_describer

    shown = tokens(tokenizer, row["input_ids"], row["labels"])
    shown["text"] = image_describer(tokenizer, row)(shown["text"])
    shown["images"] = [{"path": path, "tokens": count, "grid_thw": grid} for path, count, grid in
                       zip(row["image_paths"] or [], row["image_tokens"] or [], row["image_grid_thw"] or [])]
    shown["image_paths"], shown["image_tokens"] = row["image_paths"], row["image_tokens"]
    return shown


def _maskable(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A masked-LM text: the tokens the collator may pick (every one but the special tokens) shown as
    trained; which of them are masked is drawn anew in each batch (objective.mlm_probability)."""
    encoded = tokenizer(row["text"], return_special_tokens_mask=True)
    ids = encoded["input_ids"]
    return tokens(tokenizer, ids, [IGNORE_INDEX if special else i
                                   for i, special in zip(ids, encoded["special_tokens_mask"])])


def _classified(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The ids a classifier reads (the tokenizer's own special tokens included); no token loss."""
    ids = tokenizer(row["text"], row.get("text_pair"))["input_ids"]
    return tokens(tokenizer, ids, [IGNORE_INDEX] * len(ids))


def preview_example(tokenizer: Any, row: dict[str, Any], form: str) -> dict[str, Any]:
    """The JSON object of one trainer row (see the module docstring for each form)."""
    return _PREVIEWS[data_form(form).preview](tokenizer, row)


def preview_examples(data: PreparedData, tokenizer: Any, form: str, n: int) -> list[dict[str, Any]]:
    """The first `n` training rows, in the order the trainer's dataset holds them."""
    out = []
    for index in range(min(n, len(data.train))):
        try:
            out.append(preview_example(tokenizer, data.train[index], form))
        except ValueError as err:  # only non-sft forms tokenize here; sft rows were checked already
            raise DataError(f"train example {index + 1}: {err}") from None
    return out


def build_preview(recipe: RecipeBase, n: int) -> Preview:
    """Load the tokenizer (not the model), set the template and prepare the data as `ft run` does."""
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data, setup_template
    from finetune.registry import get_objective

    objective = get_objective(recipe.objective.kind)
    tokenizer = load_tokenizer(recipe.model)
    template = setup_template(tokenizer, recipe, objective)
    data = load_data(recipe, tokenizer, objective)
    examples = preview_examples(data, tokenizer, objective.data_form, n)
    return Preview(recipe, objective.data_form, tokenizer, template.source if template else None, data, examples)


def print_json(preview: Preview, out: IO[str]) -> None:
    """One JSON object per example, one per line."""
    for example in preview.examples:
        out.write(json.dumps(example, ensure_ascii=False) + "\n")


def styled(tokenizer: Any, example: dict[str, Any]) -> Text:
    """The example's text, trained tokens highlighted and the rest dimmed.

    Runs of tokens with the same training state are decoded together, so characters that span
    several byte-level tokens come out whole.
    """
    from rich.text import Text

    text = Text()
    ids, labels = example["input_ids"], example["labels"]
    rewrite = _image_rewriter(tokenizer, example)
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or (labels[end] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            run = rewrite(tokenizer.decode(ids[start:end], skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False))
            text.append(run, style=TRAINED if labels[start] != IGNORE_INDEX else UNTRAINED)
            start = end
    return text


def _image_rewriter(tokenizer: Any, example: dict[str, Any]) -> Callable[[str], str]:
    """Image-text rows show each image's tokens as `<image: PATH, N tokens>`; other text as it is."""
    if not example.get("image_paths"):
        return lambda text: text
    from data_templates.vision import image_describer

    return image_describer(tokenizer, example)


def _parts(example: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The token sequences of one preview example, with a label for each."""
    if "input_ids" in example:
        return [(f"(label {example['label']})" if "label" in example else "", example)]
    return [(f"{key}" + (f" (label {example['label']})" if key == "completion" else ""), value)
            for key, value in example.items() if isinstance(value, dict) and "input_ids" in value]


def print_rich(preview: Preview, console: Console | None = None) -> None:
    """Per-dataset counts and lengths, then each example with trained tokens highlighted."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from data_templates.packing import packing_note

    console = console or Console()
    recipe = preview.recipe
    console.print(Text(f"{recipe.objective.kind} on {recipe.model.name_or_path}; chat template: "
                       f"{preview.template or 'none'}; max_length {recipe.data.max_length:,}"))
    for line in preview.data.summary().splitlines():  # the lines `ft run` starts with
        console.print(Text(line))
    note = packing_note(recipe.data, recipe.model, preview.form)
    if note:
        console.print(Text(note, style="yellow"))
    if data_form(preview.form).preview == "prompt":
        console.print(Text("The trainer renders each prompt itself, as shown; answers are generated in training.",
                           style="italic"))
    elif not data_form(preview.form).tokenized and data_form(preview.form).note is None:
        console.print(Text("The trainer tokenizes these rows itself; shown as ft's masking functions tokenize "
                           "them (prompt + answer, loss on the answer).", style="italic"))
    console.print(Text.assemble("legend: ", ("trained", TRAINED), " / ", ("not trained", UNTRAINED)))
    for number, example in enumerate(preview.examples, start=1):
        for label, part in _parts(example):
            trained = sum(label_id != IGNORE_INDEX for label_id in part["labels"])
            name = f"example {number}" + (f" {label}" if label else "")
            title = f"{name}: {len(part['input_ids']):,} tokens, {trained:,} trained"
            console.print(Panel(styled(preview.tokenizer, part), title=title, title_align="left"))

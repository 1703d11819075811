"""`ft data preview`: its JSON is exactly the trainer's rows, its rich view shows the text with the
trained tokens highlighted, and preference data is shown as prompt+chosen / prompt+rejected."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from data_templates.masking import IGNORE_INDEX
from tests._data import chats, write_jsonl, write_recipe

ANSWER = "It is 5."


@pytest.fixture
def sft_recipe(tmp_path: Path, chat_model: Path) -> Path:
    rows = chats(6)
    rows[3] = {"messages": [{"role": "system", "content": "Be brief."}, *rows[3]["messages"]]}
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    return write_recipe(tmp_path, chat_model, f"""
        train:
          - path: {data}
        max_length: 64
        """)


def _cli_json(recipe: Path, *args: str) -> list[dict[str, Any]]:
    from cli import app

    result = CliRunner().invoke(app, ["data", "preview", str(recipe), "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _trainer_rows(recipe_path: Path, tmp_path: Path) -> tuple[list[dict[str, Any]], Any]:
    """The rows of the dataset SFTTrainer trains on, after TRL's own preparation."""
    from transformers import AutoModelForCausalLM

    from finetune.hardware import detect
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data, setup_template
    from finetune.quiet import quiet_library_noise
    from finetune.recipe.loader import load_recipe
    from finetune.registry import get_objective
    from finetune.run_parts import RunParts
    from finetune.sft import build_sft_trainer

    quiet_library_noise()
    recipe = load_recipe(recipe_path)
    objective = get_objective("sft")
    tokenizer = load_tokenizer(recipe.model)
    setup_template(tokenizer, recipe, objective)
    data = load_data(recipe, tokenizer, objective)
    model = AutoModelForCausalLM.from_pretrained(recipe.model.name_or_path)
    parts = RunParts(recipe=recipe, hardware=detect("cpu"), run_dir=tmp_path / "run", tokenizer=tokenizer,
                     model=model, train_dataset=data.train, eval_dataset=data.eval)
    trainer = build_sft_trainer(parts)
    return [dict(row) for row in trainer.train_dataset], tokenizer


def test_preview_json_is_exactly_what_the_trainer_trains_on(sft_recipe: Path, tmp_path: Path) -> None:
    preview = _cli_json(sft_recipe, "-n", "100")
    rows, tokenizer = _trainer_rows(sft_recipe, tmp_path)
    assert len(preview) == len(rows) == 6
    assert all(set(row) == {"input_ids", "labels"} for row in rows)  # nothing else reaches the model
    assert [{"input_ids": p["input_ids"], "labels": p["labels"]} for p in preview] == rows
    assert preview[3]["text"] == tokenizer.decode(rows[3]["input_ids"])
    assert preview[3]["text"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert any(label == IGNORE_INDEX for label in preview[0]["labels"])


def test_preview_n_limits_the_examples(sft_recipe: Path) -> None:
    assert len(_cli_json(sft_recipe, "--n", "2")) == 2


def test_rich_preview_shows_the_text_highlighted_and_the_counts(sft_recipe: Path) -> None:
    from rich.console import Console

    from data_templates.preview import TRAINED, UNTRAINED, build_preview, print_rich, styled
    from finetune.recipe.loader import load_recipe

    preview = build_preview(load_recipe(sft_recipe), 2)
    console = Console(file=io.StringIO(), width=200, record=True)
    print_rich(preview, console)
    out = console.export_text(clear=False)
    assert "q 0: What is 2+0?" in out and "It is 2.<|im_end|>" in out and "q 1: What is 2+1?" in out
    assert "q 2:" not in out  # two examples only
    assert "train[0]" in out and "6 rows; 0 of 6 rows truncated, 0 dropped; tokens min" in out
    with_styles = console.export_text(styles=True)
    assert "It is 2." in with_styles and "\x1b[" in with_styles
    text = styled(preview.tokenizer, preview.examples[0])
    spans = [(text.plain[span.start:span.end], span.style) for span in text.spans]
    assert ("It is 2.<|im_end|>", TRAINED) in spans
    assert all(style == UNTRAINED for text, style in spans if "What is" in text)


def test_cli_rich_preview_runs(sft_recipe: Path) -> None:
    from cli import app

    result = CliRunner().invoke(app, ["data", "preview", str(sft_recipe), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "q 0: What is 2+0?" in result.stdout and "legend:" in result.stdout


def test_preview_reports_bad_data_as_a_user_error(tmp_path: Path, chat_model: Path) -> None:
    from cli import app

    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": []}])
    recipe = write_recipe(tmp_path, chat_model, f"train: [{{path: {data}}}]")
    result = CliRunner().invoke(app, ["data", "preview", str(recipe)])
    assert result.exit_code == 2
    assert f"error: {data}:1: field 'messages' is an empty conversation" in result.output


def test_preference_preview_tokenizes_prompt_plus_each_answer(tmp_path: Path, chat_model: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": "What is 2+3?"}], "chosen": ANSWER, "rejected": "It is 6."}]
    data = write_jsonl(tmp_path / "pref.jsonl", rows)
    recipe = write_recipe(tmp_path, chat_model, f"train: [{{path: {data}, format: preference}}]", objective="dpo")
    from transformers import AutoTokenizer

    from data_templates.masking import tokenize_prompt_completion
    from tests._tokenizers import trained_runs

    [example] = _cli_json(recipe)
    assert set(example) == {"chosen", "rejected"}
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    for key, answer in (("chosen", ANSWER), ("rejected", "It is 6.")):
        part = example[key]
        assert set(part) == {"input_ids", "labels", "text"}
        expected = tokenize_prompt_completion(tokenizer, rows[0]["prompt"],
                                              [{"role": "assistant", "content": answer}], completion_only=True)
        assert {"input_ids": part["input_ids"], "labels": part["labels"]} == expected
        assert trained_runs(tokenizer, part) == [answer + "<|im_end|>"]  # completion-only loss
        assert part["text"].startswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")


def test_unpaired_and_prompt_only_previews() -> None:
    from data_templates.preview import preview_example
    from tests._data import chatml_tokenizer
    from tests._tokenizers import trained_runs

    tokenizer = chatml_tokenizer()
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    kto = preview_example(tokenizer, {"prompt": prompt, "completion": [{"role": "assistant", "content": ANSWER}],
                                      "label": True}, "unpaired_preference")
    assert kto["label"] is True and trained_runs(tokenizer, kto["completion"]) == [ANSWER + "<|im_end|>"]
    grpo = preview_example(tokenizer, {"prompt": prompt, "reference": "5"}, "prompt_only")
    assert grpo["reference"] == "5" and set(grpo["prompt"]["labels"]) == {IGNORE_INDEX}
    assert grpo["prompt"]["text"] == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    # A text prompt becomes a user message, as align.ppo and align.grpo render it.
    assert preview_example(tokenizer, {"prompt": "What is 2+3?"}, "prompt_only") == {"prompt": grpo["prompt"]}

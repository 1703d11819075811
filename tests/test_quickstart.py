"""The README's quickstart, as shipped: it trains the tiny chat model in examples/ and the greedy
answers to the training prompts are the trained answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from finetune.generate import generate, load_for_generation
from tests._runs import CHAT_DATA, ROOT


@pytest.mark.slow
def test_quickstart_learns_its_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the recipe names its model and data relative to the repository root
    out = tmp_path / "quickstart"
    result = CliRunner().invoke(app, ["run", "recipes/quickstart.yaml", f"output_dir={out}"])
    assert result.exit_code == 0, result.output
    assert f"Run saved to {out}" in result.output and "ft generate" in result.output

    model, tokenizer = load_for_generation(out)
    rows = [json.loads(line)["messages"] for line in CHAT_DATA.read_text().splitlines()[:5]]
    answers = [generate(model, tokenizer, messages[:-1], max_new_tokens=40) for messages in rows]
    matches = sum(answer == messages[-1]["content"] for answer, messages in zip(answers, rows))
    assert matches >= 4, list(zip(answers, [m[-1]["content"] for m in rows]))

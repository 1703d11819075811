"""Helpers for the data-layer tests: a tiny ChatML tokenizer, data files and data sections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_templates.chat_templates import resolve_chat_template
from finetune.recipe.schema import DataSection, DatasetSpec
from tests._tokenizers import make_tokenizer


def chatml_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the shipped ChatML template (Qwen-style: eos is <|im_end|>)."""
    tokenizer = make_tokenizer(bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    resolve_chat_template(tokenizer, "chatml")
    return tokenizer


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def chats(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    """n distinct conversations, so every row tokenizes differently."""
    return [chat(f"{prefix} {i}: What is 2+{i}?", f"It is {2 + i}.") for i in range(n)]


def spec(path: Path | str, **kw: Any) -> DatasetSpec:
    return DatasetSpec(path=str(path), **kw)


def section(*train: DatasetSpec, **kw: Any) -> DataSection:
    return DataSection(train=list(train), **kw)


@pytest.fixture(autouse=True)
def data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every data test gets its own empty cache (never ~/.cache)."""
    root = tmp_path / "ft-cache"
    monkeypatch.setenv("FT_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the ChatML tokenizer, saved like a downloaded model."""
    from finetune.tiny import build_tiny_model

    return build_tiny_model("llama", chatml_tokenizer(), tmp_path_factory.mktemp("tiny-chat"))


def write_recipe(tmp_path: Path, model: Path, data: str, *, objective: str = "sft", extra: str = "") -> Path:
    """A recipe for `model` whose data section is the YAML `data` (any indentation)."""
    import textwrap

    block = textwrap.indent(textwrap.dedent(data).strip(), "  ")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model:\n  name_or_path: {model}\nadapter:\n  kind: none\ndata:\n{block}\n"
                    f"objective:\n  kind: {objective}\ntraining:\n  max_steps: 1\n  batch_size: 2\n"
                    f"  progress_bar: false\n{extra}output_dir: {tmp_path / 'run'}\n")
    return path

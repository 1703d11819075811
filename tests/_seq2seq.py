"""Tiny T5 and BART encoder-decoders for the seq2seq tests, and a recipe that trains them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from finetune.tiny_seq2seq import build_seq2seq_tokenizer, build_tiny_seq2seq
from tests._runs import ROOT

SEQ2SEQ_DATA = ROOT / "examples" / "data" / "seq2seq.jsonl"
CHAT_DATA = ROOT / "examples" / "data" / "quickstart.jsonl"


def corpus() -> list[str]:
    texts = ["system user assistant"]
    for line in SEQ2SEQ_DATA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["prompt"], row["completion"]]
    for line in CHAT_DATA.read_text(encoding="utf-8").splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


@pytest.fixture(scope="session")
def seq2seq_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch (t5 | bart) -> a saved tiny random model with its tokenizer; read-only for tests."""
    root = tmp_path_factory.mktemp("seq2seq-models")
    texts = corpus()
    # A larger init scale lets a LoRA run (output layer frozen) move the loss within a few steps.
    return {arch: build_tiny_seq2seq(arch, build_seq2seq_tokenizer(texts, arch), root / arch, initializer_range=0.2)
            for arch in ("t5", "bart")}


def seq2seq_recipe(tmp_path: Path, model: Path, *, adapter: str = "lora", data: Path = SEQ2SEQ_DATA,
                   fmt: str = "prompt_completion", steps: int = 6, rows: int = 4, lr: float = 1e-2,
                   objective: str = "seq2seq") -> Path:
    """A fixed batch (`rows` rows, one batch) trained `steps` steps at a constant learning rate."""
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""
        model:
          name_or_path: {model}
          dtype: float32
        adapter:
          kind: {adapter}
        data:
          train:
            - path: {data}
              format: {fmt}
              max_rows: {rows}
          max_length: 128
        objective:
          kind: {objective}
        training:
          max_steps: {steps}
          batch_size: {rows}
          learning_rate: {lr}
          lr_scheduler: constant
          logging_steps: 1
          progress_bar: false
        seed: 0
        output_dir: {tmp_path / "run"}
        """).lstrip())
    return path

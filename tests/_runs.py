"""Helpers for tests that train: a recipe on tiny models, and a callback that snapshots weights."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from finetune.pipeline import RunResult, run
from finetune.recipe.loader import load_recipe

ROOT = Path(__file__).resolve().parents[1]
CHAT_DATA = ROOT / "examples" / "data" / "quickstart.jsonl"
TEXT_DATA = ROOT / "examples" / "data" / "pretrain.jsonl"


def write_recipe(tmp_path: Path, model: Path, *, data: Path = CHAT_DATA, fmt: str = "messages",
                 objective: str = "sft", adapter: str = "lora") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""
        description: test run
        model:
          name_or_path: {model}
        adapter:
          kind: {adapter}
        data:
          train:
            - path: {data}
              format: {fmt}
          max_length: 128
        objective:
          kind: {objective}
        training:
          max_steps: 6
          batch_size: 4
          learning_rate: 1.0e-2
          logging_steps: 1
          save_steps: 3
          progress_bar: false
        seed: 0
        output_dir: {tmp_path / "run"}
        """).lstrip())
    return path


class Snapshot(TrainerCallback):
    """Copies every parameter at the start and end of training, with its requires_grad flag."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.trainable: set[str] = set()
        self.model: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.model = model

    def changed(self) -> set[str]:
        return {n for n in self.before if not torch.equal(self.before[n], self.after[n])}


def train(recipe_path: Path, *overrides: str, **kwargs: Any) -> tuple[RunResult, Snapshot]:
    snapshot = Snapshot()
    result = run(load_recipe(recipe_path, list(overrides)), callbacks=[snapshot], **kwargs)
    return result, snapshot

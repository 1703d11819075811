"""Bad inputs of the model families beyond chat decoders, through the real CLI: masked LM (BERT),
sequence classification, mixture of experts. Each must exit non-zero with no traceback and a message
naming the file (and row) or the recipe key, and saying what to do."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from finetune.tiny import (
    build_tiny_encoder,
    build_tiny_model,
    build_tokenizer,
    build_wordpiece_tokenizer,
)
from tests._runs import CHAT_DATA, TEXT_DATA

TEXTS = [json.loads(line)["text"] for line in TEXT_DATA.read_text().splitlines()]
Models = dict[str, Path]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("families")
    words = build_tokenizer(TEXTS)
    return {
        "bert": build_tiny_encoder(build_wordpiece_tokenizer(TEXTS), root / "bert"),
        # A BERT whose tokenizer has no mask token (a byte-level BPE): masked-LM training cannot mask.
        "bert-no-mask": build_tiny_encoder(words, root / "bert-no-mask"),
        "mixtral": build_tiny_model("mixtral", words, root / "mixtral", hidden_size=32),
        "llama": build_tiny_model("llama", words, root / "llama", hidden_size=32),
    }


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # run | validate
    model: str
    objective: dict
    rows: str | None  # the data file's text; None: the shipped text data
    fmt: str
    adapter: dict
    expect: tuple[str, ...]  # "{data}" is replaced by the data file's path


def _args(case: Case, tmp: Path, models: Models) -> list[str]:
    data = TEXT_DATA
    if case.rows is not None:
        data = tmp / "rows.jsonl"
        data.write_text(case.rows)
    recipe = {
        "model": {"name_or_path": str(models[case.model])},
        "adapter": case.adapter,
        "data": {"train": [{"path": str(data), "format": case.fmt}], "max_length": 32},
        "objective": case.objective,
        "training": {"max_steps": 1, "batch_size": 2, "progress_bar": False},
        "output_dir": str(tmp / "run"),
    }
    (tmp / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return [case.command, str(tmp / "r.yaml")]


def _rows(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


LORA = {"kind": "lora"}
MLM, CLASSIFY, PRETRAIN = {"kind": "mlm"}, {"kind": "classify"}, {"kind": "pretrain"}
LABELS = {"kind": "classify", "labels": ["negative", "positive"]}
CHAT = CHAT_DATA.read_text().splitlines()[0] + "\n"

CASES = [
    # masked LM
    Case("mlm-chat-data", "validate", "bert", MLM, CHAT, "messages", LORA, ("data.train.0.format",)),
    Case("mlm-rows-without-text", "run", "bert", MLM, _rows({"body": "a text"}), "text", LORA,
         ("rows.jsonl", "text")),
    Case("mlm-tokenizer-without-mask", "run", "bert-no-mask", MLM, None, "text", LORA,
         ("model.name_or_path", "no mask token")),
    Case("mlm-on-a-mixture-of-experts-decoder", "validate", "mixtral", MLM, None, "text", LORA,
         ("model.name_or_path", "objective mlm needs a masked-LM encoder")),
    # sequence classification
    Case("classify-chat-data", "validate", "bert", CLASSIFY, CHAT, "messages", LORA, ("data.train.0.format",)),
    Case("classify-label-not-in-set", "run", "bert", LABELS,
         _rows({"text": "good", "label": "positive"}, {"text": "meh", "label": "neutral"}), "classification",
         LORA, ("rows.jsonl:2", "neutral", "objective.labels")),
    Case("classify-label-missing", "run", "llama", LABELS, _rows({"text": "good"}), "classification",
         {"kind": "qlora"}, ("rows.jsonl:1", "label")),
    Case("classify-regression-label-not-a-number", "run", "bert", {"kind": "classify", "problem_type": "regression"},
         _rows({"text": "good", "label": "high"}), "classification", LORA, ("rows.jsonl:1", "regression")),
    # mixture of experts
    Case("moe-experts-on-a-dense-model", "validate", "llama", PRETRAIN, None, "text",
         {"kind": "lora", "target_modules": "experts"}, ("adapter.target_modules", "not a mixture-of-experts")),
    Case("moe-per-expert-checkpoint-name", "validate", "mixtral", PRETRAIN, None, "text",
         {"kind": "lora", "target_modules": ["w1", "w3"]}, ("adapter.target_modules", "target_modules: experts")),
    Case("moe-dora-on-experts", "run", "mixtral", PRETRAIN, None, "text",
         {"kind": "lora", "target_modules": "experts", "dora": True}, ("adapter.dora", "dora: false")),
    Case("moe-router-coefficient-negative", "validate", "mixtral", PRETRAIN, None, "text", LORA,
         ("model.router_aux_loss_coef",)),
    Case("moe-router-coefficient-for-dpo", "validate", "mixtral", {"kind": "dpo"},
         _rows({"prompt": "a", "chosen": "b", "rejected": "c"}), "preference", LORA,
         ("model.router_aux_loss_coef", "dpo")),
]
OVERRIDES = {"moe-router-coefficient-negative": ["model.router_aux_loss_coef=-1"],
             "moe-router-coefficient-for-dpo": ["model.router_aux_loss_coef=0.1"]}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_message(case: Case, models: Models, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, _args(case, tmp_path, models) + OVERRIDES.get(case.id, []))
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {type(result.exception).__name__}: {result.exception}\n{output[-2000:]}")
    assert result.exit_code != 0 and "Traceback" not in output, output[-2000:]
    for fragment in case.expect:
        assert fragment in output, f"{fragment!r} not in:\n{output[-2000:]}"

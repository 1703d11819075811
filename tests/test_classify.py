"""`classify`: single-label, multi-label and regression heads on encoder and decoder models; labels map
to the right ids and are saved in the config; the head trains; final/ is a plain classifier; bad
labels are refused with file:row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from data_templates.prepare import DataError
from finetune.tiny import build_tiny_encoder, build_tokenizer
from tests._runs import train, write_recipe

# One word decides the label, so a tiny random model learns it in a few dozen steps.
NOUNS = ("film", "food", "book", "service", "staff", "room", "song", "game", "car", "phone")
ROWS = [{"text": f"the {n} was {w}", "label": label} for n in NOUNS
        for w, label in (("good", "positive"), ("bad", "negative"))]
FAST = ("training.max_steps=30", "training.save_steps=30", "training.batch_size=8", "data.max_length=32")
LR = {"lora": "training.learning_rate=1e-2", "qlora": "training.learning_rate=1e-2",
      "none": "training.learning_rate=3e-3"}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = build_tokenizer([r["text"] for r in ROWS], pad_token="<pad>")
    return build_tiny_encoder(tokenizer, tmp_path_factory.mktemp("bert") / "bert")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _classify(tmp_path: Path, model: Path, data: Path | None = None, adapter: str = "lora") -> Path:
    data = data or _write(tmp_path / "rows.jsonl", ROWS)
    return write_recipe(tmp_path, model, data=data, fmt="classification", objective="classify", adapter=adapter)


def _accuracy(final: Path, rows: list[dict]) -> float:
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    return sum(model.config.id2label[p] == r["label"] for p, r in zip(predicted, rows)) / len(rows)


@pytest.mark.parametrize(("arch", "adapter"), [("bert", "lora"), ("bert", "none"), ("llama", "lora"),
                                             ("bert", "qlora"), ("llama", "qlora")])
def test_single_label_learns_and_saves_label_names(arch: str, adapter: str, encoder: Path,
                                                   tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = encoder if arch == "bert" else tiny_models["llama"]
    result, snap = train(_classify(tmp_path, model, adapter=adapter), *FAST, LR[adapter],
                         "objective.labels=[negative,positive]")
    config = json.loads((result.final_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"]["positive"] == 1
    assert not (result.final_dir / "adapter_config.json").exists(), "final/ is a plain classifier"
    assert snap.changed() == snap.trainable
    head = {n for n in snap.trainable if "classifier" in n or "score" in n}
    assert head, "the new head trains"
    if adapter == "qlora":  # a 4-bit base with LoRA and the full-precision head trained beside it
        assert any(type(m).__name__ == "Linear4bit" for m in snap.model.modules())
        assert snap.trainable == head | {n for n in snap.trainable if "lora_" in n}
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    assert _accuracy(result.final_dir, ROWS) >= 0.9


def test_labels_default_to_the_sorted_training_labels_and_ids_follow(encoder: Path, tmp_path: Path) -> None:
    rows = [{"text": r["text"], "label": {"positive": "b-good", "negative": "a-bad"}[r["label"]]} for r in ROWS]
    result, _ = train(_classify(tmp_path, encoder, _write(tmp_path / "d.jsonl", rows)), *FAST,
                      "training.max_steps=1")
    assert json.loads((result.final_dir / "config.json").read_text())["id2label"] == {"0": "a-bad", "1": "b-good"}


def test_multi_label_and_regression(encoder: Path, tmp_path: Path) -> None:
    multi = [{"text": r["text"], "label": [r["label"], "review"]} for r in ROWS]
    (tmp_path / "m").mkdir()
    result, _ = train(_classify(tmp_path / "m", encoder, _write(tmp_path / "m.jsonl", multi)), *FAST, LR["lora"],
                      "objective.problem_type=multi_label", "data.validation_fraction=0.2")
    config = json.loads((result.final_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 3
    assert any("eval_f1" in m for m in result.metrics) and any("eval_exact_match" in m for m in result.metrics)
    scores = [{"text": r["text"], "label": 1.0 if r["label"] == "positive" else -1.0} for r in ROWS]
    (tmp_path / "r").mkdir()
    result, _ = train(_classify(tmp_path / "r", encoder, _write(tmp_path / "r.jsonl", scores)), *FAST, LR["lora"],
                      "objective.problem_type=regression", "data.validation_fraction=0.2")
    assert len(json.loads((result.final_dir / "config.json").read_text())["id2label"]) == 1
    assert any("eval_mse" in m for m in result.metrics)


@pytest.mark.parametrize(("rows", "override", "message"), [
    ([{"text": "a", "label": "positive"}, {"text": "b", "label": "neutral"}], "objective.labels=[negative,positive]",
     r"d.jsonl:2: label neutral is not in objective.labels"),
    ([{"text": "a", "label": ["x", "y"]}], "objective.problem_type=single_label", r"d.jsonl:1: single_label needs one"),
    ([{"text": "a", "label": "x"}], "objective.problem_type=regression", r"d.jsonl:1: regression needs a number"),
    ([{"text": "a"}], "seed=1", r"d.jsonl:1: missing field 'label'"),
])
def test_bad_labels_name_the_row(rows: list[dict], override: str, message: str, encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message):
        train(_classify(tmp_path, encoder, _write(tmp_path / "d.jsonl", rows)), *FAST, override)


def test_layer_ranges_of_an_encoder_are_checked_at_validation(encoder: Path, tmp_path: Path) -> None:
    """BERT's blocks are `encoder.layer.<i>.`: validation counts them like decoder layers."""
    from finetune.recipe.errors import RecipeError
    from finetune.recipe.loader import load_recipe

    recipe = _classify(tmp_path, encoder, adapter="none")
    with pytest.raises(RecipeError, match=r"layers \[5\] out of range: .* has 2 layers"):
        load_recipe(recipe, ["adapter.trainable_layers=[5]"])
    load_recipe(recipe, ["adapter.trainable_layers=[-1]"])

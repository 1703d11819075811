"""Reward modelling end to end on a tiny model: validation accuracy reaches 1.0 on separable pairs,
the score head trains with LoRA, and final/ is a plain sequence classifier that ranks chosen first."""

from __future__ import annotations

import re

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests._align_helpers import metric, spy_on_trainer, toy_pairs
from tests._runs import train, write_recipe

FAST = ("training.max_steps=12", "training.save_steps=12", "training.eval_steps=12", "data.max_length=64",
        "data.validation_fraction=0.25", "training.learning_rate=1e-2")


def scores(final_dir: Path, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores of `rows` from final/, loaded the way a PPO or scoring script would."""
    model = AutoModelForSequenceClassification.from_pretrained(final_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(final_dir)

    def score(row: dict, answer: str) -> float:
        text = tokenizer.apply_chat_template(row["prompt"] + [{"role": "assistant", "content": row[answer]}],
                                             tokenize=False)
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()

    return (torch.tensor([score(r, "chosen") for r in rows]), torch.tensor([score(r, "rejected") for r in rows]))


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_accuracy_reaches_one_and_final_is_a_plain_classifier(adapter: str, align_model: Path,
                                                              align_data: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, "reward")
    recipe = write_recipe(tmp_path, align_model, data=align_data["pairs"], fmt="preference", objective="reward",
                          adapter=adapter)
    result, snap = train(recipe, *FAST)
    assert metric(result.metrics, "eval_accuracy")[-1] == 1.0
    assert metric(result.metrics, "eval_margin")[-1] > 1.0  # not a lucky coin flip: the scores are far apart
    losses = metric(result.metrics, "loss")
    assert losses[-1] < 0.1 * losses[0]
    assert snap.trainable and snap.changed() == snap.trainable
    if adapter == "lora":
        # The freshly initialised score head is trained in full (PEFT's SEQ_CLS modules_to_save), the rest is LoRA.
        head = {n for n in snap.trainable if "lora_" not in n}
        assert head == {"base_model.model.score.modules_to_save.default.weight"}

    final = result.final_dir
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    chosen, rejected = scores(final, toy_pairs())
    assert bool((chosen > rejected).all())
    # The merged model scores exactly like the trained one.
    trained = built[0].model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    loaded = AutoModelForSequenceClassification.from_pretrained(final).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5)


def test_merge_keeps_the_rows_of_tokens_a_chat_template_added(tiny_models: dict[str, Path], align_data: dict[str, Path],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A base model without ChatML's tokens: the run adds them and trains just their embedding rows.
    base = tiny_models["mistral"]
    built = spy_on_trainer(monkeypatch, "reward")
    recipe = write_recipe(tmp_path, base, data=align_data["pairs"], fmt="preference", objective="reward")
    result, _ = train(recipe, "model.chat_template=chatml", "training.max_steps=3", "training.save_steps=3",
                      "data.max_length=64")
    final = AutoTokenizer.from_pretrained(result.final_dir)
    ids = final(final.apply_chat_template(toy_pairs()[0]["prompt"], tokenize=False), return_tensors="pt")["input_ids"]
    assert int(ids.max()) >= len(AutoTokenizer.from_pretrained(base))  # the added tokens are in the input
    loaded = AutoModelForSequenceClassification.from_pretrained(result.final_dir).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, built[0].model.eval()(input_ids=ids).logits, atol=1e-5)


def test_pairs_longer_than_max_length_are_dropped_with_a_warning(align_model: Path, align_data: dict[str, Path],
                                                                 tmp_path: Path, notices: list[str]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(align_model)
    chats = [r["prompt"] + [{"role": "assistant", "content": r["chosen"]}] for r in toy_pairs()]
    lengths = sorted(len(tokenizer.apply_chat_template(chat, return_dict=True)["input_ids"]) for chat in chats)
    assert lengths[0] < lengths[-1]
    recipe = write_recipe(tmp_path, align_model, data=align_data["pairs"], fmt="preference", objective="reward")
    longer = sum(n > lengths[0] for n in lengths)
    expected = rf"{longer} of 12 train rows dropped: .* raise data.max_length \(now {lengths[0]}\)"
    train(recipe, "training.max_steps=1", f"data.max_length={lengths[0]}")
    assert any(re.search(expected, message) for message in notices)

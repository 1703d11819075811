"""ORPO and SimPO end to end on a tiny model: no reference model, the right weights train, chosen
answers gain on rejected ones, the output loads back, and bad options are refused at validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from tests._align_helpers import metric, spy_on_trainer
from tests._runs import train, write_recipe

FAST = ("training.max_steps=8", "training.save_steps=8", "data.max_length=64")


def pair_recipe(tmp_path: Path, model: Path, data: dict[str, Path], kind: str, adapter: str) -> Path:
    return write_recipe(tmp_path, model, data=data["pairs"], fmt="preference", objective=kind, adapter=adapter)


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
@pytest.mark.parametrize(("adapter", "lr"), [("lora", "5e-3"), ("none", "1e-3")])
def test_reference_free_objectives_prefer_chosen(kind: str, adapter: str, lr: str, align_model: Path,
                                                 align_data: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, kind)
    result, snap = train(pair_recipe(tmp_path, align_model, align_data, kind, adapter), *FAST,
                         f"training.learning_rate={lr}")
    (trainer,) = built
    assert getattr(trainer, "ref_model", None) is None, "reference-free: no second model"
    assert snap.trainable and snap.changed() == snap.trainable
    if adapter == "lora":
        assert all("lora_" in n for n in snap.trainable)
    margins = metric(result.metrics, "rewards/margins")
    assert margins[-1] > margins[0], f"chosen should gain on rejected: {margins}"
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert loaded.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False).shape[1] == 5


def test_simpo_sets_the_cpo_trainer_to_the_simpo_loss(align_model: Path, align_data: dict[str, Path],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, "simpo")
    train(pair_recipe(tmp_path, align_model, align_data, "simpo", "lora"), *FAST, "training.max_steps=1",
          "objective.gamma_ratio=0.25", "objective.sft_weight=0.5")
    args = built[0].args
    assert (args.loss_type, args.beta, args.simpo_gamma, args.cpo_alpha) == ("simpo", 2.0, 0.25, 0.5)


@pytest.mark.parametrize(("kind", "override", "message"), [
    ("orpo", "objective.beta=0", "objective.beta"),
    ("simpo", "objective.gamma_ratio=-1", "objective.gamma_ratio"),
    ("orpo", "data.truncation=keep_end", "data.truncation"),
    ("simpo", "objective.ref_model=x", "objective.ref_model"),
])
def test_bad_options_are_refused(kind: str, override: str, message: str, align_model: Path,
                                 align_data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(pair_recipe(tmp_path, align_model, align_data, kind, "lora"), [override])

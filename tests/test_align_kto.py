"""KTO end to end on a tiny model, with LoRA and with full fine-tuning: the right weights train, the
reference is never trained, the output loads, and a batch too small for the KL term is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from tests._align_helpers import metric, spy_on_trainer
from tests._runs import train, write_recipe

FAST = ("training.max_steps=6", "training.save_steps=6", "data.max_length=64", "objective.beta=0.5")


def kto_recipe(tmp_path: Path, model: Path, data: dict[str, Path], adapter: str) -> Path:
    return write_recipe(tmp_path, model, data=data["unpaired"], fmt="unpaired_preference", objective="kto",
                        adapter=adapter)


@pytest.mark.parametrize(("adapter", "lr"), [("lora", "5e-3"), ("none", "1e-3")])
def test_kto_trains_the_policy_against_a_fixed_reference(adapter: str, lr: str, align_model: Path,
                                                         align_data: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, "kto")
    result, snap = train(kto_recipe(tmp_path, align_model, align_data, adapter), *FAST, f"training.learning_rate={lr}")
    (trainer,) = built
    assert snap.trainable and snap.changed() == snap.trainable
    if adapter == "lora":
        assert all("lora_" in n for n in snap.trainable)
        assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    else:
        reference = trainer.ref_model
        assert not reference.training and not any(p.requires_grad for p in reference.parameters())
        assert all(torch.equal(p, snap.before[n]) for n, p in reference.named_parameters())
    # Desirable answers gain log-probability relative to the reference, undesirable ones lose it.
    assert metric(result.metrics, "rewards/chosen")[-1] > 0 > metric(result.metrics, "rewards/rejected")[-1]
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert loaded.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False).shape[1] == 5


def test_kto_needs_two_examples_per_batch(align_model: Path, align_data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="training.batch_size: KTO estimates its KL term"):
        load_recipe(kto_recipe(tmp_path, align_model, align_data, "lora"), ["training.batch_size=1"])

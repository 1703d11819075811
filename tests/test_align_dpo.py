"""DPO end to end on a tiny model: the right weights train, the reference is the right model and is
never trained, the implicit reward margin grows, and DPO options are validated like any other key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune.errors import ConfigError
from finetune.pipeline import run
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from tests._align_helpers import metric, spy_on_trainer
from tests._runs import train, write_recipe

FAST = ("training.max_steps=8", "training.save_steps=8", "data.max_length=64", "objective.beta=0.5")


def dpo_recipe(tmp_path: Path, model: Path, data: dict[str, Path], adapter: str = "lora") -> Path:
    return write_recipe(tmp_path, model, data=data["pairs"], fmt="preference", objective="dpo", adapter=adapter)


def assert_margin_grew(metrics: list[dict]) -> None:
    margins = metric(metrics, "rewards/margins")
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # step 1 is measured before any update: policy == reference
    assert margins[-1] > 0.5 and max(margins[-3:]) > margins[1]


def test_lora_reference_is_the_base_with_the_adapter_off(align_model: Path, align_data: dict[str, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, "dpo")
    result, snap = train(dpo_recipe(tmp_path, align_model, align_data), *FAST, "training.learning_rate=5e-3")
    (trainer,) = built
    # No second model, and no copy of the adapter either (TRL 1.12 would add a "ref" adapter).
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable
    assert_margin_grew(result.metrics)

    base = AutoModelForCausalLM.from_pretrained(align_model).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model = snap.model.eval()
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in result.final_dir.iterdir()}
    assert not (result.final_dir / "ref").exists()
    AutoModelForCausalLM.from_pretrained(result.final_dir)


def test_full_finetuning_keeps_a_frozen_copy_as_reference(align_model: Path, align_data: dict[str, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, "dpo")
    result, snap = train(dpo_recipe(tmp_path, align_model, align_data, adapter="none"), *FAST,
                         "training.learning_rate=1e-3")
    (trainer,) = built
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    # The reference still holds the starting weights; every policy weight moved.
    assert all(torch.equal(p, snap.before[n]) for n, p in reference.named_parameters())
    assert snap.trainable == set(snap.before) and snap.changed() == snap.trainable
    assert_margin_grew(result.metrics)
    AutoModelForCausalLM.from_pretrained(result.final_dir)


def test_precomputed_reference_needs_no_copy(align_model: Path, align_data: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_on_trainer(monkeypatch, "dpo")
    result, snap = train(dpo_recipe(tmp_path, align_model, align_data, adapter="none"), *FAST,
                         "training.learning_rate=1e-3", "objective.precompute_ref_log_probs=true")
    (trainer,) = built
    assert trainer.ref_model is None and "ref_chosen_logps" in trainer.train_dataset.column_names
    assert snap.changed() == snap.trainable
    assert_margin_grew(result.metrics)


def test_qlora_trains_adapters_on_a_frozen_4bit_base(tiny_models: dict[str, Path], align_data: dict[str, Path],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The Qwen2.5-shaped model: its own template (with a default system prompt), no bos, pad <|endoftext|>.
    built = spy_on_trainer(monkeypatch, "dpo")
    result, snap = train(dpo_recipe(tmp_path, tiny_models["qwen2"], align_data, adapter="qlora"), *FAST,
                         "training.learning_rate=5e-3")
    assert built[0].ref_model is None and list(built[0].model.peft_config) == ["default"]
    assert any(type(m).__name__ == "Linear4bit" for m in snap.model.modules())
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable
    assert_margin_grew(result.metrics)


def test_dpo_options_are_validated(align_model: Path, align_data: dict[str, Path], tmp_path: Path) -> None:
    recipe = dpo_recipe(tmp_path, align_model, align_data)
    combined = load_recipe(recipe, ["objective.loss_type=[sigmoid, sft]"]).objective
    assert combined.loss_types() == ["sigmoid", "sft"]
    with pytest.raises(RecipeError, match="objective.loss_type: expected .*'sigmoid'.*got 'sigmod'"):
        load_recipe(recipe, ["objective.loss_type=sigmod"])
    with pytest.raises(RecipeError, match="objective.loss_weights: one weight per loss_type entry: got 1 weights"):
        load_recipe(recipe, ["objective.loss_type=[sigmoid, sft]", "objective.loss_weights=[1.0]"])
    with pytest.raises(RecipeError, match="objective.loss_type: .*at least 1 item"):
        load_recipe(recipe, ["objective.loss_type=[]"])
    with pytest.raises(RecipeError, match=r"objective.label_smoothing: must be < 0.5"):
        load_recipe(recipe, ["objective.label_smoothing=0.5"])


def test_a_dpo_key_in_an_sft_recipe_is_an_error_naming_it(align_model: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, align_model)  # an SFT recipe
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, ["objective.beta=0.1"])
    assert "objective.beta: unknown key" in str(err.value)


def test_unsupported_data_settings_fail_before_training_naming_the_key(align_model: Path, align_data: dict[str, Path],
                                                                       tiny_models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="data.truncation: dpo keeps the start"):
        load_recipe(dpo_recipe(tmp_path, align_model, align_data), ["data.truncation=drop"])
    # Conversations need a chat template; this base model (Mistral-like) has none.
    recipe = load_recipe(dpo_recipe(tmp_path, tiny_models["mistral"], align_data), [f"output_dir={tmp_path / 'run2'}"])
    with pytest.raises(ConfigError, match="model.chat_template: the data holds conversations"):
        run(recipe, log=lambda *_: None)

"""Mixture-of-experts (tiny Qwen2-MoE, Mixtral, OLMoE): the router's load-balancing loss is on by default
at the model config's coefficient, logged as aux_loss, and added to the loss with
model.router_aux_loss_coef; LoRA on all-linear trains the experts and leaves the routers alone; the run
trains and final/ reloads; trainable_layers takes a layer with its experts and router.
Expert LoRA in detail: tests/test_moe_experts.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from finetune.models import load_trained
from finetune.pipeline import run
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from finetune.tiny import build_tiny_model, build_tokenizer
from tests._runs import TEXT_DATA, Snapshot, write_recipe

TEXTS = TEXT_DATA.read_text().splitlines()


ARCHS = ("qwen2_moe", "mixtral", "olmoe")
# The coefficients finetune.tiny gives each architecture's config (each differs from TRL's 0.001).
CONFIG_COEF = {"qwen2_moe": 0.01, "mixtral": 0.02, "olmoe": 0.03}


@pytest.fixture(scope="module")
def moes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tokenizer, root = build_tokenizer(TEXTS), tmp_path_factory.mktemp("moe")
    return {arch: build_tiny_model(arch, tokenizer, root / arch, hidden_size=32, initializer_range=0.2)
            for arch in ARCHS}


@pytest.fixture(scope="module")
def moe(moes: dict[str, Path]) -> Path:
    return moes["qwen2_moe"]


class Coefficient(TrainerCallback):
    """The coefficient the trainer ran with."""

    value: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.value = getattr(args, "router_aux_loss_coef", None)


def _pretrain(tmp_path: Path, model: Path, *overrides: str, adapter: str = "lora") -> tuple[Any, Any, Any]:
    coefficient, snap = Coefficient(), Snapshot()
    recipe = write_recipe(tmp_path, model, data=TEXT_DATA, fmt="text", objective="pretrain", adapter=adapter)
    result = run(load_recipe(recipe, ["data.max_length=32", *overrides]), callbacks=[snap, coefficient])
    return result, snap, coefficient.value


def _first(result: Any, key: str) -> float:
    return next(m[key] for m in result.metrics if key in m)


@pytest.mark.parametrize("arch", ARCHS)
def test_aux_loss_is_on_at_the_config_coefficient_and_adds_coef_times_aux(arch: str, moes: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    moe = moes[arch]
    (tmp_path / "default").mkdir(), (tmp_path / "off").mkdir(), (tmp_path / "half").mkdir()
    default, _, coef = _pretrain(tmp_path / "default", moe, "training.max_steps=1")
    assert coef == pytest.approx(CONFIG_COEF[arch]), "the model config's own coefficient, not TRL's 0.001"
    assert _first(default, "aux_loss") > 0
    off, _, coef = _pretrain(tmp_path / "off", moe, "training.max_steps=1", "model.router_aux_loss_coef=0")
    assert coef == 0 and not any("aux_loss" in m for m in off.metrics)
    half, _, _ = _pretrain(tmp_path / "half", moe, "training.max_steps=1", "model.router_aux_loss_coef=0.5")
    # Same weights, same first batch: the losses differ by exactly coef * aux_loss.
    assert _first(half, "loss") - _first(off, "loss") == pytest.approx(0.5 * _first(half, "aux_loss"), abs=1e-4)


def test_lora_trains_the_experts_not_the_routers_and_final_reloads(moe: Path, tmp_path: Path) -> None:
    result, snap, _ = _pretrain(tmp_path, moe, "training.max_steps=12", "training.learning_rate=1e-2")
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable
    assert any("q_proj.lora_A" in n for n in snap.trainable) and any("shared_expert.up_proj.lora_A" in n
                                                                      for n in snap.trainable)
    assert any("mlp.experts.lora_A" in n for n in snap.trainable), "all-linear reaches the fused experts"
    assert not any(".mlp.gate." in n or "shared_expert_gate" in n for n in snap.trainable), "routers not wrapped"
    assert not any(n.endswith(("experts.gate_up_proj", "experts.down_proj")) for n in snap.changed()), \
        "the fused base expert weights stay frozen under their LoRA"
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert sum(losses[-3:]) < sum(losses[:3])
    model, tokenizer = load_trained(result.run_dir, merge=True)
    with torch.no_grad():
        assert model(**tokenizer("Packing puts", return_tensors="pt")).logits.shape[-1] == len(tokenizer)


def test_router_coefficient_on_a_dense_model_says_it_has_no_effect(tmp_path: Path, notices: list[str]) -> None:
    dense = build_tiny_model("llama", build_tokenizer(TEXTS), tmp_path / "llama", hidden_size=32)
    result, _, _ = _pretrain(tmp_path, dense, "training.max_steps=1", "model.router_aux_loss_coef=0.1")
    assert not any("aux_loss" in m for m in result.metrics)
    assert any("model.router_aux_loss_coef" in n and "no effect" in n for n in notices)


def test_router_coefficient_is_refused_where_no_router_loss_is_added(moe: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, moe, fmt="preference", objective="dpo")
    with pytest.raises(RecipeError, match="model.router_aux_loss_coef"):
        load_recipe(recipe, ["model.router_aux_loss_coef=0.1"])


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_layers_take_a_layer_with_its_experts_and_router(arch: str, moes: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    from finetune.adapters import apply_adapter
    from finetune.recipe.schema import FullAdapter

    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes[arch]), FullAdapter(trainable_layers=[-1]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj",
            "model.layers.1.mlp.gate.weight"} <= trainable
    layer = {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    assert trainable == layer, "the whole last layer (attention, norms, experts, router) and nothing else"


def test_trainable_layers_train_the_experts_of_that_layer_only(moes: dict[str, Path], tmp_path: Path) -> None:
    _, snap, _ = _pretrain(tmp_path, moes["mixtral"], "training.max_steps=2", "adapter.trainable_layers=[0]",
                           adapter="none")
    assert {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"} <= snap.changed()
    assert snap.changed() <= {n for n in snap.trainable if n.startswith("model.layers.0.")}
    assert not any(n.startswith("model.layers.1.") for n in snap.changed())

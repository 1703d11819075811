"""LoRA on the fused routed experts of Qwen2-MoE, Mixtral, OLMoE and Qwen3-MoE (transformers 5 keeps
them as 3D parameters that target_modules cannot reach): the experts preset trains expert LoRA and nothing else,
the fused base weights and the routers stay as they were, a merge folds the deltas into the fused
weights with the adapter model's logits, and the merged model saves and reloads. The mlp and
all-linear presets include the experts, never the router; adapter.layers and `ft plan` agree;
`ft validate` checks expert targets against a local model's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from cli import app
from finetune.adapters import apply_adapter
from finetune.export.serving import why_merged
from finetune.models import load_trained, merge_adapter
from finetune.plan import architecture, read_config
from finetune.plan_memory import Setup, estimate
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from finetune.recipe.schema import LoraAdapter
from finetune.tiny import build_tiny_model, build_tokenizer
from tests._runs import TEXT_DATA, train, write_recipe

ARCHS = ("qwen2_moe", "mixtral", "olmoe", "qwen3_moe")
PROMPT = "Packing puts several short examples"


@pytest.fixture(scope="module")
def moes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tokenizer = build_tokenizer(TEXT_DATA.read_text().splitlines())
    root = tmp_path_factory.mktemp("moes")
    return {arch: build_tiny_model(arch, tokenizer, root / arch, hidden_size=32, initializer_range=0.2)
            for arch in ARCHS}


def _is_fused_base(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("gate_up_proj", "down_proj") and ".experts." in name and "lora_" not in name


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**tokenizer(PROMPT, return_tensors="pt")).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_expert_lora_trains_the_experts_and_merges_into_the_fused_weights(arch: str, moes: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, moes[arch], data=TEXT_DATA, fmt="text", objective="pretrain")
    result, snap = train(recipe, "adapter.target_modules=experts", "training.max_steps=3", "data.max_length=32")
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert all(".mlp.experts." in n for n in snap.trainable), "the experts preset adapts the experts only"
    assert snap.changed() == snap.trainable, "every expert LoRA matrix moved, nothing else did"
    fused = [n for n in snap.before if _is_fused_base(n)]
    routers = [n for n in snap.before if n.endswith(".mlp.gate.weight")]
    assert len(fused) == 4 and len(routers) == 2, (fused, routers)

    adapted, tokenizer = load_trained(result.run_dir)  # final/ reloads onto its base
    merged, _ = load_trained(result.run_dir, merge=True)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(adapted, tokenizer), atol=1e-4, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(moes[arch])
    delta = merged.model.layers[0].mlp.experts.gate_up_proj - base.model.layers[0].mlp.experts.gate_up_proj
    assert delta.abs().max() > 0, "the expert deltas are folded into the fused weights"
    torch.testing.assert_close(merged.model.layers[0].mlp.gate.weight, base.model.layers[0].mlp.gate.weight)

    out = merge_adapter(str(result.final_dir), tmp_path / "merged")  # what a next stage trains on
    exported = CliRunner().invoke(app, ["export", str(result.run_dir), "--to", "merged", "--out",
                                        str(tmp_path / "export"), "--dtype", "float32"])
    assert exported.exit_code == 0, exported.output
    assert "fused mixture-of-experts weights" in why_merged("vllm", result.final_dir)
    for saved in (out, tmp_path / "export"):  # saved with per-expert names, fused again on load
        reloaded = AutoModelForCausalLM.from_pretrained(saved)
        torch.testing.assert_close(_logits(reloaded, tokenizer), _logits(adapted, tokenizer), atol=1e-4, rtol=0)


def test_qlora_with_checkpointing_trains_the_experts_beside_a_4bit_attention(moes: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, moes["olmoe"], data=TEXT_DATA, fmt="text", objective="pretrain", adapter="qlora")
    result, snap = train(recipe, "training.max_steps=2", "data.max_length=32", "training.gradient_checkpointing=true")
    assert any(".mlp.experts.lora_" in n for n in snap.trainable) and snap.changed() == snap.trainable
    assert any(type(m).__name__ == "Linear4bit" for m in snap.model.modules()), "attention is 4-bit"
    assert not any(_is_fused_base(n) for n in snap.changed())
    merged, _ = load_trained(result.run_dir, merge=True)  # onto the unquantized base
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def _adapted(model: Any) -> set[str]:
    """The adapted modules of decoder layer 0 or 1, by their path inside the layer."""
    return {n.split(".lora_A")[0].split(".layers.")[1].split(".", 1)[1].removesuffix(".base_layer")
            for n, _ in model.named_parameters() if ".lora_A" in n}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("preset", "wrapped"), [
    ("experts", {"mlp.experts"}),
    ("mlp", {"mlp.experts", "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"}),
    ("all-linear", {"mlp.experts", "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj",
                    "mlp.shared_expert.down_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
    ("attention", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
])
def test_presets_reach_the_experts_and_never_the_router(arch: str, preset: str, wrapped: set[str],
                                                        moes: dict[str, Path]) -> None:
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes[arch]), LoraAdapter(target_modules=preset))
    # Only Qwen2-MoE has a shared expert.
    expected = wrapped if arch == "qwen2_moe" else {w for w in wrapped if "shared_expert" not in w}
    assert _adapted(model) == expected
    assert not any(".mlp.gate." in n and "lora_" in n for n, _ in model.named_parameters())
    if "mlp.experts" in expected:  # both fused tensors of every layer carry a LoRA pair
        targeted = model.base_model.targeted_parameter_names
        assert sorted(targeted) == sorted(f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1)
                                          for p in ("down_proj", "gate_up_proj"))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_listed_router_or_experts_is_adapted_by_its_weights(arch: str, moes: dict[str, Path]) -> None:
    """transformers 5's routers and expert stacks are not nn.Linear: named in a list, their weights are."""
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes[arch]),
                          LoraAdapter(target_modules=["q_proj", "gate"]))
    assert _adapted(model) == {"self_attn.q_proj", "mlp.gate"}
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes[arch]),
                          LoraAdapter(target_modules=["experts"], layers=[0]))
    assert sorted(model.base_model.targeted_parameter_names) == ["model.layers.0.mlp.experts.down_proj",
                                                                 "model.layers.0.mlp.experts.gate_up_proj"]


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_layers_restrict_the_expert_lora_and_plan_counts_it(arch: str, moes: dict[str, Path]) -> None:
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes[arch]),
                          LoraAdapter(target_modules="experts", layers=[-1], r=4))
    lora = {n: p.numel() for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(".layers.1.mlp.experts." in n for n in lora)
    planned = estimate(architecture(read_config(str(moes[arch]))),
                       Setup(r=4, target_modules="experts", lora_layers=(-1,)))
    assert planned.trainable_params == sum(lora.values())


def test_dora_cannot_go_on_the_experts(moes: dict[str, Path], notices: list[str]) -> None:
    from finetune.errors import ConfigError

    for targets in ("experts", ["q_proj", "gate"]):
        with pytest.raises(ConfigError, match="adapter.dora"):
            apply_adapter(AutoModelForCausalLM.from_pretrained(moes["olmoe"]),
                          LoraAdapter(target_modules=targets, dora=True))
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes["olmoe"]),
                          LoraAdapter(target_modules="all-linear", dora=True))
    assert _adapted(model) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
    assert any("DoRA" in n and "experts" in n for n in notices)


def test_dropout_stays_on_the_module_lora_only(moes: dict[str, Path], notices: list[str]) -> None:
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(moes["qwen2_moe"]), LoraAdapter(dropout=0.1))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.lora_dropout["default"], torch.nn.Dropout) and q_proj.lora_dropout["default"].p == 0.1
    assert model.peft_config["default"].lora_dropout == 0.0, "the saved config must load expert wrappers"
    assert any("adapter.dropout 0.1" in n for n in notices)


def test_the_experts_preset_on_a_dense_model_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    with pytest.raises(RecipeError, match="adapter.target_modules: experts: .* not a mixture-of-experts model"):
        load_recipe(recipe, ["adapter.target_modules=experts"])


def test_validate_accepts_expert_presets_and_explains_per_expert_names(moes: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, moes["mixtral"], data=TEXT_DATA, fmt="text", objective="pretrain")
    for preset in ("experts", "mlp", "all-linear", "attention"):
        load_recipe(recipe, [f"adapter.target_modules={preset}"])
    # The checkpoint stores experts.0.w1 ...; loaded, they are the fused experts.gate_up_proj.
    with pytest.raises(RecipeError, match=r"\['w1'\] name per-expert weights, which transformers fuses"):
        load_recipe(recipe, ["adapter.target_modules=[q_proj,w1]"])

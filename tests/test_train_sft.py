"""SFT and continued pretraining end to end on tiny models: exactly the right parameters train,
the run directory is complete, and final/ loads back with transformers/PEFT and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.generate import generate, load_for_generation
from finetune.outputs import OutputDirError
from finetune.recipe.loader import load_recipe
from tests._runs import TEXT_DATA, train, write_recipe


def test_lora_trains_only_adapters_and_the_run_directory_is_complete(tiny_models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    result, snap = train(write_recipe(tmp_path, tiny_models["llama"]))
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable  # every adapter weight moved; nothing else did

    run_dir = result.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".ft-run", "checkpoints", "final", "loss.png", "manifest.json", "metrics.jsonl", "recipe.yaml"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in (run_dir / "final").iterdir()}
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not list(run_dir.rglob("*.tmp")) and [p.name for p in run_dir.glob(".*")] == [".ft-run"]

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in losses] == [1, 2, 3, 4, 5, 6]
    assert losses[-1]["loss"] < losses[0]["loss"]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    for package in ("ft-toolkit", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes"):
        assert manifest["versions"][package]
    assert manifest["seed"] == 0 and manifest["device"] == "cpu" and manifest["wall_time_s"] > 0
    assert manifest["data"][0]["fingerprint"].startswith("sha256:")
    assert 0 < manifest["parameters"]["trainable"] < manifest["parameters"]["total"]

    # The resolved recipe is complete and runs as it is.
    resolved = load_recipe(run_dir / "recipe.yaml")
    assert resolved.training.max_steps == 6 and resolved.adapter.kind == "lora"
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["training"]["learning_rate"] == 0.01


def test_final_loads_with_transformers_and_matches_the_trained_model(tiny_models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    result, snap = train(write_recipe(tmp_path, tiny_models["llama"]))
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()  # PEFT adapter, base from its config
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    ids = tokenizer("What is ft?", return_tensors="pt")["input_ids"]
    snap.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, snap.model(input_ids=ids).logits, atol=1e-5)
    model, tok = load_for_generation(result.run_dir)
    assert isinstance(generate(model, tok, [{"role": "user", "content": "What is ft?"}], max_new_tokens=5), str)


def test_qlora_keeps_the_4bit_base_frozen(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result, snap = train(write_recipe(tmp_path, tiny_models["qwen2"], adapter="qlora"))
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable
    quantized = [m for m in snap.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "the base linear layers are 4-bit"
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert loaded.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape[1] == 6


def test_dora_and_rslora_train_their_magnitude_vectors(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    _, snap = train(write_recipe(tmp_path, tiny_models["llama"]), "adapter.dora=true", "adapter.rslora=true")
    assert any("lora_magnitude_vector" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable
    config = snap.model.peft_config["default"]
    assert config.use_dora and config.use_rslora


def test_full_fine_tuning_trains_every_parameter(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result, snap = train(write_recipe(tmp_path, tiny_models["llama"], adapter="none"))
    assert snap.trainable == set(snap.before)
    assert snap.changed() == snap.trainable
    assert (result.final_dir / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    for name, param in loaded.named_parameters():
        assert torch.equal(param, snap.after[name])


def test_partial_fine_tuning_trains_only_the_listed_layers(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    _, snap = train(write_recipe(tmp_path, tiny_models["llama"], adapter="none"),
                    "adapter.trainable_layers=[-1]", "adapter.trainable_modules=[lm_head]")
    assert snap.trainable and all(".layers.1." in n or "lm_head" in n for n in snap.trainable)
    assert not any(".layers.0." in n or "embed_tokens" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable


def test_pretrain_on_raw_text_with_a_base_model_without_template(tiny_models: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["mistral"], data=TEXT_DATA, fmt="text", objective="pretrain")
    result, snap = train(recipe)
    assert snap.changed() == snap.trainable
    assert not (result.final_dir / "chat_template.jinja").exists()


def test_sft_on_a_base_model_needs_a_template_and_a_shipped_one_works(tiny_models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from finetune.errors import ConfigError
    from data_templates.prepare import DataError

    recipe = write_recipe(tmp_path, tiny_models["mistral"])
    with pytest.raises((DataError, ConfigError), match="chat template"):
        train(recipe)
    result, _ = train(recipe, "model.chat_template=mistral", overwrite=True)
    assert "[INST]" in (result.final_dir / "chat_template.jinja").read_text()


def test_existing_output_is_refused_then_overwritten_or_resumed(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    first, _ = train(recipe, "training.max_steps=3")
    with pytest.raises(OutputDirError, match="--overwrite"):
        train(recipe)
    resumed, snap = train(recipe, "training.max_steps=6", resume=True)
    steps = [m["step"] for m in resumed.metrics if "loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]  # 1-3 from the first run, 4-6 after resuming from checkpoint-3
    assert (resumed.run_dir / "checkpoints" / "checkpoint-6").is_dir()
    again, _ = train(recipe, "training.max_steps=2", overwrite=True)
    assert [m["step"] for m in again.metrics if "loss" in m] == [1, 2]


def test_extra_reaches_the_trl_config_but_cannot_override_objective_settings(tiny_models: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from finetune.errors import ConfigError

    recipe = write_recipe(tmp_path, tiny_models["llama"])
    with pytest.raises(ConfigError, match="training.extra: packing set by ft"):
        train(recipe, "training.extra={packing: true}")
    result, _ = train(recipe, "training.extra={neftune_noise_alpha: 5.0}", overwrite=True)
    args = torch.load(result.final_dir.parent / "checkpoints" / "checkpoint-6" / "training_args.bin",
                      weights_only=False)
    assert args.neftune_noise_alpha == 5.0

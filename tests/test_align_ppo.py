"""PPO end to end on a tiny model and a tiny random reward model: LoRA and (partial) full policies
train, frozen weights stay put, and final/ holds the policy alone, which loads and generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open

from finetune.errors import ConfigError
from finetune.generate import generate, load_for_generation
from finetune.recipe.loader import load_recipe
from tests._runs import train, write_recipe

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "data" / "prompts.jsonl"


def build_score_model(policy_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A random one-output sequence classifier of the policy's shape, saved with its tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(policy_dir)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def reward_model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_score_model(tiny_models["llama"], tmp_path_factory.mktemp("ppo") / "reward")


def write_ppo_recipe(tmp_path: Path, policy: Path, reward: Path, adapter: dict[str, Any]) -> Path:
    recipe = {
        "model": {"name_or_path": str(policy)},
        "adapter": adapter,
        "data": {"train": [{"path": str(PROMPTS), "format": "prompt_only"}], "max_length": 64},
        "objective": {"kind": "ppo", "reward_model": str(reward), "response_length": 8, "num_ppo_epochs": 2,
                      "num_mini_batches": 2},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1.0e-3, "logging_steps": 1,
                     "progress_bar": False},
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "ppo.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def assert_trained_and_frozen(snap: object) -> None:
    policy = {n for n in snap.trainable if n.startswith("policy.")}  # type: ignore[attr-defined]
    assert policy and policy <= snap.changed()  # type: ignore[attr-defined]
    value = {n for n in snap.trainable if n.startswith("value_model.")}  # type: ignore[attr-defined]
    assert value and value <= snap.changed()  # type: ignore[attr-defined]
    frozen = set(snap.before) - snap.trainable  # type: ignore[attr-defined]
    assert frozen and not frozen & snap.changed()  # type: ignore[attr-defined]


def assert_generates(run_dir: Path) -> None:
    model, tokenizer = load_for_generation(run_dir)
    text = generate(model, tokenizer, [{"role": "user", "content": "What is 2+3?"}], max_new_tokens=4)
    assert isinstance(text, str)


def test_ppo_lora_policy(tiny_models: dict[str, Path], reward_model: Path, tmp_path: Path) -> None:
    recipe = write_ppo_recipe(tmp_path, tiny_models["llama"], reward_model, {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0})
    result, snap = train(recipe)
    assert_trained_and_frozen(snap)
    assert {n for n in snap.trainable if n.startswith("policy.")} == {
        n for n in snap.before if n.startswith("policy.") and "lora_" in n}
    scores = [m["objective/scores"] for m in result.metrics if "objective/scores" in m]
    assert len(scores) == 2
    # final/ is the policy's adapter and tokenizer: no value head, no PPO wrapper.
    final = result.final_dir
    assert (final / "adapter_config.json").exists() and (final / "chat_template.jinja").exists()
    with safe_open(final / "adapter_model.safetensors", "pt") as weights:
        assert weights.keys() and all("lora_" in key for key in weights.keys())  # noqa: SIM118 (safe_open is no dict)
    assert_generates(result.run_dir)


def test_ppo_partial_full_policy(tiny_models: dict[str, Path], reward_model: Path, tmp_path: Path) -> None:
    recipe = write_ppo_recipe(tmp_path, tiny_models["llama"], reward_model, {"kind": "none", "trainable_layers": [-1]})
    result, snap = train(recipe)
    assert_trained_and_frozen(snap)
    assert all(".layers.1." in n for n in snap.trainable if n.startswith("policy."))
    final = result.final_dir
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    with safe_open(final / "model.safetensors", "pt") as weights:
        assert not [key for key in weights.keys() if "score" in key or "value" in key]  # noqa: SIM118
    # The rollout stop token does not leak into the saved generation settings.
    saved_eos = json.loads((final / "generation_config.json").read_text())["eos_token_id"]
    original_eos = json.loads((tiny_models["llama"] / "generation_config.json").read_text())["eos_token_id"]
    assert saved_eos == original_eos
    assert_generates(result.run_dir)


def test_ppo_needs_one_full_rollout_batch(tiny_models: dict[str, Path], reward_model: Path, tmp_path: Path) -> None:
    recipe = write_ppo_recipe(tmp_path, tiny_models["llama"], reward_model, {"kind": "lora"})
    # 22 prompts, rollout batch 32: TRL's loader drops the incomplete batch and would spin forever.
    with pytest.raises(ConfigError, match="fewer than one rollout batch"):
        train(recipe, "training.batch_size=32", "objective.num_mini_batches=1")


def test_ppo_rejects_a_reward_model_with_another_vocabulary(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    # PPO feeds the reward model the policy's token ids: a smaller vocabulary would index out of range.
    config = AutoConfig.from_pretrained(tiny_models["llama"])
    config.num_labels, config.vocab_size = 1, 300
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "small-reward")
    recipe = write_ppo_recipe(tmp_path, tiny_models["llama"], tmp_path / "small-reward", {"kind": "lora"})
    with pytest.raises(ConfigError, match="share the policy's tokenizer"):
        train(recipe)


def test_ppo_recipe_needs_a_reward_model(tmp_path: Path) -> None:
    from finetune.recipe.errors import RecipeError

    recipe = load_recipe(ROOT / "recipes" / "ppo.yaml")
    assert recipe.objective.kind == "ppo" and recipe.data.train[0].format == "prompt_only"
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes" / "ppo.yaml").read_text().replace("reward_model:", "reward_modle:"))
    with pytest.raises(RecipeError, match="did you mean reward_model"):
        load_recipe(bad)


def test_ppo_from_a_lora_sft_run(tiny_models: dict[str, Path], reward_model: Path, tmp_path: Path) -> None:
    """An SFT run's adapter is merged into its base, so PPO starts from the SFT policy, not the base."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    (tmp_path / "sft").mkdir()
    sft, _ = train(write_recipe(tmp_path / "sft", tiny_models["llama"]), "training.max_steps=2",
                   "training.save_steps=2")
    merged = AutoPeftModelForCausalLM.from_pretrained(sft.final_dir).merge_and_unload().state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"  # frozen below: PPO leaves it as it loaded it
    assert not torch.equal(merged[name], base[name])

    recipe = write_ppo_recipe(tmp_path, sft.final_dir, reward_model, {"kind": "none", "trainable_layers": [-1]})
    result, snap = train(recipe, "training.max_steps=1")
    assert torch.equal(snap.before[f"policy.{name}"], merged[name])
    assert (result.final_dir / "model.safetensors").exists()  # whole weights: the SFT delta is kept

    # A new LoRA over the SFT LoRA trains on the merged SFT weights, kept in the run's base/, and its
    # saved adapter points there: loading final/ gives SFT + PPO, not the original base + PPO.
    (tmp_path / "lora").mkdir()
    lora = write_ppo_recipe(tmp_path / "lora", sft.final_dir, reward_model, {"kind": "lora"})
    result, snap = train(lora, "training.max_steps=1")
    base_dir = result.run_dir / "base"
    assert torch.equal(AutoModelForCausalLM.from_pretrained(base_dir).state_dict()[name], merged[name])
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(result.final_dir).eval()
    trained = snap.model.policy.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trained(input_ids=ids).logits, atol=1e-5)


def test_prompts_are_rendered_with_the_generation_prompt(tiny_models: dict[str, Path], notices: list[str]) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from align.ppo import tokenize_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    text = Dataset.from_list([{"prompt": "What is 2+3?", "reference": "5"}])
    rows = tokenize_prompts(text, tokenizer, 64, "keep_end")
    assert rows.column_names == ["input_ids"]  # PPO's padding collator cannot batch text columns
    assert tokenizer.decode(rows[0]["input_ids"]) == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    chat = Dataset.from_list([{"prompt": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 4+4?"}]}])
    assert tokenizer.decode(tokenize_prompts(chat, tokenizer, 64, "keep_end")[0]["input_ids"]).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>")
    short = tokenize_prompts(text, tokenizer, 6, "keep_end")
    assert any("1 prompts truncated" in message for message in notices)
    assert tokenizer.decode(short[0]["input_ids"]).endswith("<|im_start|>assistant\n")  # the end is kept

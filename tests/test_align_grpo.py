"""GRPO end to end on a tiny chat model: a built-in reward rises, a user's function runs only when
the recipe opts in, and a reward model scores completions alongside a rule."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from finetune.errors import ConfigError
from finetune.generate import generate, load_for_generation
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from tests._runs import train

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "data" / "prompts.jsonl"

# A user's reward module: it checks what TRL hands it (conversational completions, the reference
# column) and pays 1 for a completion with a digit, like the built-in regex "[0-9]" does.
CUSTOM = '''
import re

def has_digit(prompts, completions, reference, completion_ids, **kwargs):
    assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"
    assert len(reference) == len(completions) == len(completion_ids) and reference[0].isdigit()
    return [1.0 if re.search("[0-9]", c[0]["content"]) else 0.0 for c in completions]
'''


def write_grpo_recipe(tmp_path: Path, model: Path, rewards: list[dict[str, Any]], *, adapter: str = "none",
                      **objective: Any) -> Path:
    recipe = {
        "model": {"name_or_path": str(model)},
        "adapter": {"kind": adapter},
        "data": {"train": [{"path": str(PROMPTS), "format": "prompt_only"}], "max_length": 64},
        "objective": {"kind": "grpo", "num_generations": 8, "max_completion_length": 8, "rewards": rewards,
                      **objective},
        "training": {"max_steps": 2, "batch_size": 16, "learning_rate": 3.0e-2, "lr_scheduler": "constant",
                     "logging_steps": 1, "progress_bar": False},
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def rewards_logged(metrics: list[dict], key: str = "reward") -> list[float]:
    return [m[key] for m in metrics if key in m]


def test_regex_reward_rises(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    # Toy task: answer with a number. A random tiny model writes a digit in ~10% of its completions;
    # rewarding those makes it write digits in nearly all of them within a dozen steps.
    recipe = write_grpo_recipe(tmp_path, tiny_models["llama"], [{"kind": "regex", "pattern": "[0-9]"}])
    result, snap = train(recipe, "training.max_steps=12")
    rewards = rewards_logged(result.metrics)
    assert len(rewards) == 12
    assert rewards == rewards_logged(result.metrics, "rewards/regex/mean")
    first, last = statistics.mean(rewards[:3]), statistics.mean(rewards[-3:])
    assert first < 0.4 and last > first + 0.4, rewards
    assert snap.trainable and snap.changed() == snap.trainable


def test_custom_reward_runs_when_allowed(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(CUSTOM)
    rewards = [{"kind": "custom", "function": f"{tmp_path / 'my_rewards.py'}:has_digit", "weight": 0.5},
               {"kind": "regex", "pattern": "[0-9]"}, {"kind": "exact_match", "mode": "contains"}]
    recipe = write_grpo_recipe(tmp_path, tiny_models["llama"], rewards, adapter="lora", allow_custom_code=True)
    result, snap = train(recipe)
    custom = rewards_logged(result.metrics, "rewards/has_digit/mean")
    assert len(custom) == 2 and custom == rewards_logged(result.metrics, "rewards/regex/mean")
    assert len(rewards_logged(result.metrics, "rewards/exact_match/mean")) == 2  # read the reference column
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    model, tokenizer = load_for_generation(result.run_dir)
    assert isinstance(generate(model, tokenizer, [{"role": "user", "content": "What is 2+3?"}], 4), str)


def test_custom_reward_needs_opt_in(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_grpo_recipe(tmp_path, tiny_models["llama"], [{"kind": "custom", "function": "my_rewards:has_digit"}])
    with pytest.raises(RecipeError, match="allow_custom_code: true") as err:
        load_recipe(recipe)
    assert "runs Python code" in str(err.value)


def test_reward_model_source(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(tiny_models["qwen2"])  # another tokenizer and template than the policy's
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "scorer")
    AutoTokenizer.from_pretrained(tiny_models["qwen2"]).save_pretrained(tmp_path / "scorer")
    # LoRA with beta > 0: the reference policy is a frozen copy of the adapter.
    rewards = [{"kind": "reward_model", "path": str(tmp_path / "scorer")},
               {"kind": "length", "target": 4, "weight": 0.1}]
    recipe = write_grpo_recipe(tmp_path, tiny_models["llama"], rewards, adapter="lora", beta=0.04)
    result, _ = train(recipe)
    scores = rewards_logged(result.metrics, "rewards/reward_model/mean")
    assert len(scores) == 2 and all(math.isfinite(s) and s != 0.0 for s in scores)  # real model scores
    assert rewards_logged(result.metrics, "kl")


def test_group_must_fit_the_batch(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_grpo_recipe(tmp_path, tiny_models["llama"], [{"kind": "regex", "pattern": "x"}])
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        train(recipe, "training.batch_size=12")


def test_reward_reads_a_missing_column(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_grpo_recipe(tmp_path, tiny_models["llama"], [{"kind": "exact_match", "column": "answer"}])
    with pytest.raises(ConfigError, match="'answer' column"):
        train(recipe)


def test_shipped_recipe_and_reward_errors(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "recipes" / "grpo.yaml")
    assert [r.kind for r in recipe.objective.rewards] == ["exact_match", "regex", "length"]
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "recipes" / "grpo.yaml").read_text()
    bad.write_text(text.replace("kind: length", "kind: lenght").replace("mode: contains", "mode: contain"))
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    message = str(err.value)
    assert "objective.rewards.2" in message and "lenght" in message
    assert "objective.rewards.0.mode" in message and "contain" in message


def test_over_long_prompts_are_dropped_or_reported(tiny_models: dict[str, Path], notices: list[str]) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from align.grpo import conversational_prompts, fit_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    prompts = Dataset.from_list([{"prompt": "What is 2+3?", "reference": "5"}, {"prompt": "word " * 100, "reference": "1"}])
    assert fit_prompts(prompts, tokenizer, 64, "drop")["reference"] == ["5"]
    assert len(fit_prompts(prompts, tokenizer, 64, "keep_start")) == 2
    assert any("1 prompts are longer than data.max_length=64" in message for message in notices)
    # With a chat template a text prompt becomes the user's message; the other columns stay.
    row = conversational_prompts(prompts, tokenizer)[0]
    assert row == {"prompt": [{"role": "user", "content": "What is 2+3?"}], "reference": "5"}

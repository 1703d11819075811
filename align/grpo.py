"""GRPO with TRL's GRPOTrainer: sample a group of completions per prompt, score them with the
recipe's reward sources (see `align.rewards`), and push the policy towards the better ones.

Prompts come from `prompt_only` data; a text prompt becomes a user message when the tokenizer
has a chat template, so TRL renders it with the template and its generation prompt, and the
reward functions then receive completions as assistant messages. Extra columns (`reference`)
reach every reward function as keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from align.rewards import CustomReward, RewardModelReward, RewardSpec
from finetune.errors import ConfigError
from finetune.notices import notice
from finetune.recipe.schema import ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class GRPOSection(ObjectiveSection):
    kind: Literal["grpo"] = "grpo"
    rewards: list[RewardSpec] = Field(
        min_length=1, description="Reward sources, each with a `kind` (exact_match, regex, length, reward_model, "
        "custom) and a `weight`; GRPO optimises their weighted sum.")
    allow_custom_code: bool = Field(
        False, description="Allow `custom` rewards, which import and run Python code named in the recipe.")
    num_generations: int = Field(
        8, ge=2, description="Completions sampled per prompt. training.batch_size counts completions, so "
        "batch_size × gradient_accumulation_steps × processes must be a multiple of it.")
    max_completion_length: int = Field(256, gt=0, description="Most tokens sampled per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    beta: float = Field(0.0, ge=0, description="KL penalty against the initial policy (0: no reference model).")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = Field(
        "dapo", description="How token losses are aggregated (TRL's loss_type); dapo normalises by the active "
        "tokens of the accumulated batch, grpo by each sequence's length.")

    @model_validator(mode="after")
    def _custom_code_is_opt_in(self) -> GRPOSection:
        custom = [f"rewards.{i} ({r.function})" for i, r in enumerate(self.rewards) if isinstance(r, CustomReward)]
        if custom and not self.allow_custom_code:
            raise ValueError(f"{', '.join(custom)}: a custom reward imports and runs Python code from outside the "
                             f"recipe; set objective.allow_custom_code: true if you trust it")
        return self


def conversational_prompts(dataset: Any, tokenizer: PreTrainedTokenizerBase) -> Any:
    """Text prompts as one user message when there is a chat template (TRL only templates messages)."""
    if not getattr(tokenizer, "chat_template", None):
        return dataset
    return dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]
                                    if isinstance(row["prompt"], str) else row["prompt"]})


def fit_prompts(dataset: Any, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: str) -> Any:
    """GRPOTrainer (TRL 1.12) never truncates prompts: drop the over-long ones when data.truncation
    says drop, else warn, since cutting a rendered conversation would break its template."""
    from align.ppo import render_prompt

    long = {i for i, prompt in enumerate(dataset["prompt"]) if len(render_prompt(tokenizer, prompt)) > max_length}
    if not long:
        return dataset
    if truncation != "drop":
        notice(f"{len(long)} prompts are longer than data.max_length={max_length} tokens and are used whole "
               f"(GRPO does not truncate prompts); set data.truncation=drop to leave them out")
        return dataset
    if len(long) == len(dataset):
        raise ConfigError(f"data: every prompt is longer than data.max_length={max_length}; raise it")
    return dataset.select([i for i in range(len(dataset)) if i not in long])


def reward_sources(parts: RunParts) -> tuple[list[Any], list[Any], list[float]]:
    """(reward functions or models, their tokenizers or None, weights), in the recipe's order."""
    from align.rewards import (
        NamedReward,
        builtin_reward,
        load_custom,
        load_score_model,
        load_score_tokenizer,
    )
    from finetune.hardware import resolve_dtype

    section: GRPOSection = parts.recipe.objective  # type: ignore[assignment]
    columns = set(parts.train_dataset.column_names)
    trust = parts.recipe.model.trust_remote_code
    funcs: list[Any] = []
    tokenizers: list[Any] = []
    used: dict[str, int] = {}
    for index, spec in enumerate(section.rewards):
        where = f"objective.rewards.{index}"
        fn = load_custom(spec.function, f"{where}.function") if isinstance(spec, CustomReward) else None
        name = getattr(fn, "__name__", spec.kind)
        # A repeated name gets a suffix, so each reward is logged under its own rewards/<name>/mean.
        used[name] = used.get(name, 0) + 1
        name = name if used[name] == 1 else f"{name}_{used[name]}"
        if isinstance(spec, RewardModelReward):
            dtype = resolve_dtype(parts.recipe.model.dtype, parts.hardware)
            model = load_score_model(spec.path, f"{where}.path", dtype=dtype, trust_remote_code=trust)
            # TRL logs a model under the last part of its path, "final" for a reward run's final/.
            model.config._name_or_path = name
            funcs.append(model.requires_grad_(False).eval())
            tokenizers.append(load_score_tokenizer(spec.path, f"{where}.path", trust_remote_code=trust))
            continue
        column = getattr(spec, "column", None)
        if column is not None and column not in columns:
            raise ConfigError(f"{where}: {spec.kind} reads the {column!r} column, which the training data lacks "
                              f"(columns: {', '.join(sorted(columns))})")
        funcs.append(NamedReward(name, fn) if fn is not None else builtin_reward(spec, name))  # type: ignore[arg-type]
        tokenizers.append(None)
    return funcs, tokenizers, [spec.weight for spec in section.rewards]


def check_group_size(parts: RunParts) -> None:
    """GRPO splits each generation batch into whole groups of num_generations completions."""
    from accelerate import PartialState

    t = parts.recipe.training
    group = parts.recipe.objective.num_generations  # type: ignore[attr-defined]
    batch = t.batch_size * t.gradient_accumulation_steps * PartialState().num_processes
    if batch % group:
        raise ConfigError(f"objective.num_generations: {group} completions per prompt do not fit in a generation "
                          f"batch of training.batch_size × gradient_accumulation_steps × processes = {batch}; "
                          f"make that a multiple of num_generations")
    if parts.eval_dataset is not None and (t.batch_size * PartialState().num_processes) % group:
        raise ConfigError(f"objective.num_generations: with validation data, training.batch_size × processes "
                          f"({t.batch_size * PartialState().num_processes}) must be a multiple of {group}")


@objective("grpo", section=GRPOSection, data_form="prompt_only", config_class="trl:GRPOConfig",
           description="GRPO: online RL from prompts with rule-based rewards, reward models or your own functions.")
def build(parts: RunParts) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    section: GRPOSection = parts.recipe.objective  # type: ignore[assignment]
    check_group_size(parts)
    funcs, reward_tokenizers, weights = reward_sources(parts)
    try:
        args = parts.trainer_config(
            GRPOConfig,
            num_generations=section.num_generations,
            max_completion_length=section.max_completion_length,
            temperature=section.temperature,
            beta=section.beta,
            loss_type=section.loss_type,
            reward_weights=weights,
        )
    except ValueError as err:
        raise ConfigError(f"objective: GRPOConfig rejects these settings: {err}") from None
    data, tokenizer = parts.recipe.data, parts.tokenizer

    def prompts(dataset: Any) -> Any:
        return conversational_prompts(fit_prompts(dataset, tokenizer, data.max_length, data.truncation), tokenizer)

    return GRPOTrainer(
        reward_funcs=funcs,
        args=args,
        reward_processing_classes=reward_tokenizers,
        **parts.trainer_inputs(train_dataset=prompts(parts.train_dataset),
                               eval_dataset=prompts(parts.eval_dataset) if parts.eval_dataset is not None else None),
    )

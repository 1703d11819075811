"""PPO with TRL 1.12's `trl.experimental.ppo.PPOTrainer` (removed from TRL in 1.13).

The policy is the recipe's model (a base, or an SFT run's final/) with the recipe's adapter; a
frozen reward model scores each sampled response and a value model (by default a trainable copy
of the reward model) estimates returns. Prompts come from `prompt_only` data and are tokenized
here, with the chat template and its generation prompt, because PPOTrainer reads `input_ids`.

What final/ holds: PPOTrainer.save_model saves the policy alone (adapter or full weights), not
the policy+value wrapper it trains, so `ft generate` loads it like any other run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from finetune.errors import ConfigError
from finetune.notices import notice
from finetune.recipe.schema import ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# TRL warns on every import of trl.experimental; ft pins trl<1.13 (the last release with PPO), so the
# warning tells the user nothing they can act on.
warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")


class PPOSection(ObjectiveSection):
    kind: Literal["ppo"] = "ppo"
    reward_model: str = Field(
        description="Sequence-classification model with one output that scores responses: a `reward` run's final/ "
        "or any such model. It must use the policy's tokenizer (PPO feeds it the policy's token ids).")
    value_model: str | None = Field(
        None, description="Model the value head starts from (None: a trainable copy of reward_model).")
    response_length: int = Field(53, gt=0, description="Tokens sampled per response.")
    kl_coef: float = Field(0.05, ge=0, description="Weight of the per-token KL penalty against the initial policy.")
    num_ppo_epochs: int = Field(4, gt=0, description="Optimisation passes over each batch of rollouts.")
    num_mini_batches: int = Field(
        1, gt=0, description="Mini-batches per rollout batch; must divide batch_size × gradient_accumulation_steps.")
    stop_token: str | None = Field(
        "eos", description="Token that ends a response: eos (the tokenizer's), another single token such as "
        "<|im_end|>, or null to always sample response_length tokens.")
    missing_eos_penalty: float | None = Field(
        None, gt=0, description="Subtracted from the score of a response without the tokenizer's eos token, "
        "whatever stop_token is (None: no penalty).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the rollouts.")


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt as the policy answers it (data_templates.masking.prompt_ids)."""
    from data_templates.masking import prompt_ids

    try:
        return prompt_ids(tokenizer, prompt)
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None


def tokenize_prompts(dataset: Any, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: str) -> Any:
    """A dataset of `input_ids` only: PPOTrainer's padding collator cannot batch text columns."""
    import datasets

    from data_templates.prepare import truncate

    rows, cut = [], 0
    for prompt in dataset["prompt"]:
        ids = render_prompt(tokenizer, prompt)
        kept = truncate({"input_ids": ids}, max_length, truncation)
        if kept is None:
            continue
        cut += len(kept["input_ids"]) < len(ids)
        rows.append(kept["input_ids"])
    if cut or len(rows) < len(dataset):
        notice(f"{cut} prompts truncated and {len(dataset) - len(rows)} dropped at data.max_length="
               f"{max_length}; raise data.max_length to keep them whole")
    return datasets.Dataset.from_dict({"input_ids": rows})


def load_critics(parts: RunParts) -> tuple[PreTrainedModel, PreTrainedModel]:
    """(reward model, frozen; value model, trainable), in the policy's dtype."""
    import copy

    from align.rewards import load_score_model
    from finetune.hardware import resolve_dtype

    section: PPOSection = parts.recipe.objective  # type: ignore[assignment]
    dtype = resolve_dtype(parts.recipe.model.dtype, parts.hardware)
    trust = parts.recipe.model.trust_remote_code
    reward = load_score_model(section.reward_model, "objective.reward_model", dtype=dtype, trust_remote_code=trust)
    if section.value_model is None:
        value, value_where = copy.deepcopy(reward), "objective.reward_model"
    else:
        value_where = "objective.value_model"
        value = load_score_model(section.value_model, value_where, dtype=dtype, trust_remote_code=trust)
    reward.requires_grad_(False).eval()
    value.requires_grad_(True)
    for model, where in ((reward, "objective.reward_model"), (value, value_where)):
        check_critic(model, parts.tokenizer, where)
        model.config.pad_token_id = parts.tokenizer.pad_token_id
    return reward, value


def check_critic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """PPOTrainer runs the critic's backbone and `score` head on the policy's token ids."""
    if not hasattr(model, "score") or not hasattr(model, model.base_model_prefix):
        raise ConfigError(f"{where}: {type(model).__name__} has no `score` head on a `{model.base_model_prefix}` "
                          f"backbone, which TRL's PPO reads; use a decoder model (Llama, Qwen, Mistral, ...)")
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < len(tokenizer):
        raise ConfigError(f"{where}: its vocabulary ({vocab} tokens) is smaller than the policy tokenizer's "
                          f"({len(tokenizer)}); PPO scores the policy's token ids directly, so the reward and value "
                          f"models must share the policy's tokenizer (train them from the same base), or use grpo")


def stop_settings(section: PPOSection, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    if section.stop_token is None:
        return {"stop_token": None, "stop_token_id": None}
    if section.stop_token == "eos":
        return {"stop_token": "eos", "stop_token_id": None}
    token_id = tokenizer.convert_tokens_to_ids(section.stop_token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        raise ConfigError(f"objective.stop_token: {section.stop_token!r} is not a single token of the tokenizer")
    return {"stop_token": None, "stop_token_id": token_id}


def batch_settings(parts: RunParts, n_prompts: int) -> dict[str, Any]:
    """PPOTrainer counts episodes (prompts), not steps; map training.max_steps onto them."""
    from accelerate import PartialState

    t, section = parts.recipe.training, parts.recipe.objective
    local = t.batch_size * t.gradient_accumulation_steps
    if local % section.num_mini_batches:  # type: ignore[attr-defined]
        raise ConfigError(f"objective.num_mini_batches: {section.num_mini_batches} does not divide "  # type: ignore[attr-defined]
                          f"training.batch_size × gradient_accumulation_steps = {local}")
    if n_prompts < local:
        # The rollout loader drops incomplete batches and cycles forever: with none it would hang.
        raise ConfigError(f"data: {n_prompts} prompts, fewer than one rollout batch (training.batch_size × "
                          f"gradient_accumulation_steps = {local}); add prompts or lower the batch size")
    if t.max_steps is None:
        return {}
    return {"total_episodes": t.max_steps * local * PartialState().num_processes}


def trainer_class() -> type:
    from trl.experimental.ppo import PPOTrainer

    class FtPPOTrainer(PPOTrainer):
        """PPOTrainer.train takes no arguments (the pipeline passes resume_from_checkpoint), and its
        __init__ overwrites the policy's generation_config.eos_token_id with the stop token."""

        def __init__(self, *args: Any, model: Any, **kwargs: Any) -> None:
            self.user_eos = model.generation_config.eos_token_id
            super().__init__(*args, model=model, **kwargs)

        def train(self, resume_from_checkpoint: str | None = None, **_: Any) -> None:
            if resume_from_checkpoint:
                raise ConfigError("ppo cannot resume from a checkpoint (TRL's PPOTrainer does not support it); "
                                  "start a new run instead")
            try:
                super().train()
            finally:
                # final/generation_config.json keeps the model's own stop tokens, not PPO's rollout setting.
                self.policy_model.generation_config.eos_token_id = self.user_eos

    return FtPPOTrainer


@objective("ppo", section=PPOSection, data_form="prompt_only", config_class="trl.experimental.ppo:PPOConfig",
           description="PPO (RLHF) against a reward model, with a value model, from prompts.")
def build(parts: RunParts) -> Any:
    from trl.experimental.ppo import PPOConfig

    section: PPOSection = parts.recipe.objective  # type: ignore[assignment]
    data = parts.recipe.data
    # Prompts are left-padded so every sampled response starts at the same position; a copy keeps
    # the tokenizer saved in final/ as the user's.
    tokenizer = _left_padded(parts.tokenizer)
    train = tokenize_prompts(parts.train_dataset, tokenizer, data.max_length, data.truncation)
    evaluation = (tokenize_prompts(parts.eval_dataset, tokenizer, data.max_length, data.truncation)
                  if parts.eval_dataset is not None else None)
    reward, value = load_critics(parts)
    if parts.recipe.training.gradient_checkpointing:
        # PPOTrainer skips Trainer.__init__, which is what turns it on for the other objectives.
        parts.model.gradient_checkpointing_enable()
    args = parts.trainer_config(
        PPOConfig,
        response_length=section.response_length,
        kl_coef=section.kl_coef,
        num_ppo_epochs=section.num_ppo_epochs,
        num_mini_batches=section.num_mini_batches,
        missing_eos_penalty=section.missing_eos_penalty,
        temperature=section.temperature,
        **stop_settings(section, tokenizer),
        **batch_settings(parts, len(train)),
    )
    return trainer_class()(
        args=args, ref_model=None, reward_model=reward, value_model=value,
        **parts.trainer_inputs(processing_class=tokenizer, train_dataset=train, eval_dataset=evaluation),
    )


def _left_padded(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    import copy

    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    return left

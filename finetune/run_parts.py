"""What an objective's builder receives: the loaded pieces of a run, and its TRL config factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.distributed import engine_arguments
from finetune.hardware import Hardware
from finetune.recipe.schema import ModelSection, RecipeBase, TrainingSection

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback


@dataclass
class RunParts:
    recipe: RecipeBase
    hardware: Hardware
    run_dir: Path
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    train_dataset: Any
    eval_dataset: Any | None
    callbacks: list[TrainerCallback] = field(default_factory=list)
    # The model section the weights were loaded from: the recipe's, except that a LoRA run named as
    # the model is replaced by its merged base/ (see finetune.models.merge_adapter).
    base: ModelSection | None = None
    # A vision-language model's image processor (data_templates.vision.VisionProcessor); None for text.
    vision: Any = None

    def trainer_inputs(self, **overrides: Any) -> dict[str, Any]:
        """What every TRL trainer takes from the run: model, data, tokenizer and callbacks."""
        return {"model": self.model, "train_dataset": self.train_dataset, "eval_dataset": self.eval_dataset,
                "processing_class": self.tokenizer, "callbacks": self.callbacks, **overrides}

    @property
    def model_section(self) -> ModelSection:
        return self.base or self.recipe.model

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def trainer_config(self, config_class: type, **objective_kwargs: Any) -> Any:
        """The objective's TRL config: training section + objective settings + training.extra."""
        kwargs = training_kwargs(self.recipe.training, self.hardware, has_eval=self.eval_dataset is not None)
        kwargs.update(output_dir=str(self.checkpoint_dir), seed=self.recipe.seed, data_seed=self.recipe.seed,
                      run_name=self.run_dir.name)  # the trackers' run name
        kwargs.update(engine_arguments(self.recipe.training, self.model, self.run_dir))
        kwargs.update(objective_kwargs)
        clash = sorted(set(self.recipe.training.extra) & set(objective_kwargs))
        if clash:
            from finetune.errors import ConfigError

            raise ConfigError(f"training.extra: {', '.join(clash)} set by ft from the recipe for "
                              f"{self.recipe.objective.kind} (objective or data section); set them there")
        kwargs.update(self.recipe.training.extra)
        return config_class(**kwargs)


def training_kwargs(t: TrainingSection, hardware: Hardware, *, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by every TRL config class."""
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if t.eval_steps else "epoch"
    optimizer = {"optim": t.optimizer} if t.optimizer else {}
    return {
        **optimizer,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        # transformers 5 reads a float in [0, 1) as a ratio of the total steps.
        "warmup_steps": t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "gradient_checkpointing": t.gradient_checkpointing,
        "bf16": hardware.precision == "bf16",
        "fp16": hardware.precision == "fp16",
        "use_cpu": hardware.device == "cpu",
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps" if t.save_steps else "epoch",
        "save_steps": t.save_steps or 500,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": eval_strategy,
        "eval_steps": t.eval_steps,
        "report_to": t.report_to or "none",
        "disable_tqdm": not t.progress_bar,
        "use_liger_kernel": t.liger,
        "torch_compile": t.compile,
        # Real (unpadded) tokens trained, for tokens/s and MFU in the manifest (finetune/throughput.py).
        "include_num_input_tokens_seen": "non_padding",
    }


def _managed_fields() -> dict[str, str]:
    """TRL config fields ft fills from the recipe, and the recipe key each comes from."""
    from finetune.hardware import Hardware

    names = training_kwargs(TrainingSection(optimizer="adamw_torch"), Hardware("cpu", "fp32", ""), has_eval=True)
    sources = {name: "the training section" for name in names}
    sources.update(deepspeed="training.distributed", fsdp="training.distributed",
                   fsdp_config="training.distributed")
    sources.update(output_dir="output_dir", run_name="output_dir", seed="seed", data_seed="seed",
                   learning_rate="training.learning_rate",
                   max_steps="training.max_steps", num_train_epochs="training.epochs",
                   per_device_train_batch_size="training.batch_size", optim="training.optimizer",
                   bf16="training.precision", fp16="training.precision", use_cpu="training.device",
                   use_liger_kernel="training.liger", torch_compile="training.compile")
    return sources


def check_extra(config_class_path: str, training: TrainingSection) -> list[str]:
    """Problems with training.extra, found by constructing the objective's TRL config class."""
    import dataclasses
    import difflib
    import tempfile

    from finetune.registry import load_attr

    if not training.extra:
        return []
    from finetune.quiet import quiet_library_noise

    quiet_library_noise()
    config_class = load_attr(config_class_path)
    names = [f.name for f in dataclasses.fields(config_class)]
    problems = []
    managed = _managed_fields()
    for key in training.extra:
        if key in managed:
            problems.append(f"training.extra.{key}: ft sets this from {managed[key]}; set it there")
        elif key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"training.extra.{key}: not a field of {config_class.__name__}{hint}")
    if problems:
        return problems
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config_class(output_dir=tmp, use_cpu=True, report_to="none", **training.extra)
    except (TypeError, ValueError) as err:
        return [f"training.extra: {config_class.__name__} rejects these values: {err}"]
    return []

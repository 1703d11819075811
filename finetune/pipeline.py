"""`run(recipe)`: tokenizer -> template -> dataset -> model -> adapter -> trainer -> save.

Objectives differ only in the trainer they build (see `finetune.registry`). Every step is a
function that can be called and tested alone.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune import batching, run_files, throughput
from finetune.distributed import strategy
from finetune.errors import ConfigError, FtError
from finetune.hardware import Hardware, detect
from finetune.notices import Sink, notice, notices_to
from finetune.outputs import is_main_process, prepare_output_dir, write_atomic
from finetune.quiet import quiet_library_noise
from finetune.recipe.loader import dump_recipe
from finetune.recipe.schema import ModelSection, RecipeBase
from finetune.registry import Objective, get_objective
from finetune.run_parts import RunParts, check_extra
from finetune.trackers import run_config_callback, tracking_env

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from data_templates.chat_templates import ResolvedTemplate
    from data_templates.prepare import PreparedData


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    metrics: list[dict[str, Any]]
    manifest: dict[str, Any]

    def plot(self) -> Any:
        """The loss plot (loss.png): shown inline when it is a notebook cell's last expression."""
        from IPython.display import Image

        return Image(filename=str(self.run_dir / "loss.png"))


def setup_template(tokenizer: PreTrainedTokenizerBase, recipe: RecipeBase, objective: Objective) -> ResolvedTemplate | None:
    """Give the tokenizer the recipe's chat template; None when the objective reads raw text."""
    from data_templates.chat_templates import resolve_chat_template
    from data_templates.forms import data_form

    if not data_form(objective.data_form).chat and recipe.model.chat_template is None:
        return None
    if recipe.model.chat_template is None and not getattr(tokenizer, "chat_template", None):
        return None  # plain prompt/completion data needs none; conversational rows will say so
    try:
        return resolve_chat_template(tokenizer, recipe.model.chat_template)
    except ValueError as err:
        raise ConfigError(f"model.chat_template: {err}") from None


_LOAD = object()  # load_data's default: read the image processor itself


def load_data(recipe: RecipeBase, tokenizer: PreTrainedTokenizerBase, objective: Objective,
              vision: Any = _LOAD) -> PreparedData:
    """Tokenize (or canonicalise) the data once, on the main process first, before other ranks need it.
    `vision`: the run's image processor when the caller already has it (None for a text model)."""
    from accelerate import PartialState

    from data_templates.prepare import prepare_data
    from finetune.models import load_vision

    if vision is _LOAD:
        vision = load_vision(recipe.model, objective.model_head)  # None but for a vision-language model
    with PartialState().main_process_first():
        return prepare_data(recipe.data, tokenizer, objective.data_form, loss_on=recipe.objective.loss_policy(),
                            seed=recipe.seed, check_row=recipe.objective.check_row, vision=vision)


def report_data(recipe: RecipeBase, data: PreparedData) -> None:
    """Before training, say what the data is: per dataset its rows, bad rows, truncation counts and
    lengths; how the sets were assembled; and, with packing, what packing does to attention."""
    from data_templates.packing import packing_note

    notice(data.summary())
    note = packing_note(recipe.data, recipe.model, get_objective(recipe.objective.kind).data_form)
    if note:
        notice(note)


def base_section(recipe: RecipeBase, run_dir: Path) -> ModelSection:
    """The model section to load: the recipe's, or, when it names a LoRA run (sft -> dpo, say), the
    same section pointing at that run's merged weights, kept in this run's base/."""
    from accelerate import PartialState

    from finetune.models import is_adapter_dir, merge_adapter, model_location

    if not is_adapter_dir(model_location(recipe.model)):
        return recipe.model
    with PartialState().main_process_first():
        base = merge_adapter(model_location(recipe.model), run_dir / "base")
    return recipe.model.model_copy(update={"name_or_path": str(base)})


def build_model(recipe: RecipeBase, section: ModelSection, hardware: Hardware, objective: Objective,
                tokenizer: PreTrainedTokenizerBase, template: ResolvedTemplate | None,
                data: PreparedData | None = None) -> Any:
    from finetune.adapters import apply_adapter
    from finetune.models import load_model

    model = load_model(section, recipe.adapter, hardware, objective.model_head,
                       config=recipe.objective.head_config(data), for_fsdp=strategy(recipe.training) == "fsdp")
    new_ids: list[int] = []
    if template is not None and template.added_tokens:
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tokenizer))
        new_ids = list(range(old, len(tokenizer)))
    # A vision-language model's top config has no pad id; its text config does.
    text_config = model.config.get_text_config()
    if getattr(text_config, "pad_token_id", None) is None:
        text_config.pad_token_id = tokenizer.pad_token_id
    return apply_adapter(model, recipe.adapter, kind=objective.model_head,
                         gradient_checkpointing=recipe.training.gradient_checkpointing, new_token_ids=new_ids)


def resume_checkpoint(run_dir: Path, recipe: RecipeBase, world_size: int | None = None) -> Path | None:
    """The complete checkpoint `--resume` continues from, after checking the recipe still matches it
    (`world_size`: the processes that will train; by default this process's WORLD_SIZE)."""
    from finetune.resume import check_unchanged, checkpoint_to_resume

    checkpoint = checkpoint_to_resume(run_dir)
    if checkpoint is not None:
        check_unchanged(checkpoint, recipe, world_size)
    return checkpoint


def run_guards(recipe: RecipeBase, run_dir: Path) -> list[Any]:
    """[checkpoint stamp, signal stop, non-finite stop]: the callbacks every run trains with."""
    from finetune.guards import StopOnNonFinite, StopOnSignal, interrupted
    from finetune.resume import resume_command, stamp_callback

    def stopped(signal_name: str, step: int) -> FtError:
        # The run ends with this (no final/, no manifest), naming the command that continues it.
        return interrupted(f"{signal_name} received: stopped after step {step}, saved in "
                           f"{run_dir / 'checkpoints' / f'checkpoint-{step}'}. Continue with:\n  "
                           f"{resume_command(recipe)}")

    return [stamp_callback(recipe), StopOnSignal(stopped), StopOnNonFinite()]


def run(recipe: RecipeBase, *, overwrite: bool = False, resume: bool = False,
        callbacks: list[Any] | None = None, log: Sink | None = None) -> RunResult:
    """Train `recipe` and write its run directory; returns where everything went. Notices (data
    counts, truncation, ...) go to `log` when given, else to the current notice channel."""
    with notices_to(log) if log else nullcontext():
        return _run(recipe, overwrite=overwrite, resume=resume, callbacks=callbacks)


def _run(recipe: RecipeBase, *, overwrite: bool, resume: bool, callbacks: list[Any] | None) -> RunResult:
    from transformers import set_seed

    started = time.time()
    quiet_library_noise()
    objective = get_objective(recipe.objective.kind)
    run_dir = Path(recipe.output_dir).expanduser().resolve()
    if is_main_process():
        prepare_output_dir(run_dir, overwrite=overwrite, resume=resume)
    # Checked before anything loads: a changed recipe or a corrupt checkpoint is refused at once.
    checkpoint = resume_checkpoint(run_dir, recipe) if resume else None
    extra_problems = check_extra(objective.config_class, recipe.training)
    if extra_problems:
        raise ConfigError("\n".join(extra_problems))
    hardware = detect(recipe.training.device, recipe.training.precision)
    throughput.check_hardware(recipe, hardware)
    set_seed(recipe.seed)

    from finetune.models import check_model_files, load_tokenizer, load_vision
    from finetune.preflight import check_model_head

    check_model_files(recipe.model)  # fail in a second, not after the data is tokenized
    tokenizer = load_tokenizer(recipe.model)  # (offline for a Hub id that is not local: see finetune.hub)
    check_model_head(recipe)
    template = setup_template(tokenizer, recipe, objective)
    # A vision-language model's image processor, read once: data preparation, the collator and final/.
    vision = load_vision(recipe.model, objective.model_head)
    data = load_data(recipe, tokenizer, objective, vision)
    if is_main_process():
        report_data(recipe, data)
    section = base_section(recipe, run_dir)
    model = build_model(recipe, section, hardware, objective, tokenizer, template, data)
    metrics_path = run_dir / "metrics.jsonl"
    guards = run_guards(recipe, run_dir)
    parts = RunParts(recipe=recipe, hardware=hardware, run_dir=run_dir, tokenizer=tokenizer, model=model,
                     train_dataset=data.train, eval_dataset=data.eval, base=section, vision=vision,
                     callbacks=[run_files.MetricsCallback(metrics_path, resume_from=checkpoint), *guards,
                                *_tracker_callbacks(recipe, hardware, model), *(callbacks or [])])
    with tracking_env(recipe.training.report_to, run_dir):  # trackers read their directories at setup
        trainer = objective.build_trainer(parts)
        chosen = batching.install(trainer, recipe, batching.choose(recipe))
        if is_main_process():
            notice(chosen.notice())
            write_atomic(run_dir / "recipe.yaml", dump_recipe(recipe))
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            guards[1].restore()  # the signal handlers, also when training raised
    final_dir = run_files.save_final(trainer, tokenizer, run_dir, vision.image_processor if vision else None)
    manifest = run_files.write_manifest(run_dir, recipe, hardware, model, data, template, started,
                                        extra={"batching": chosen.to_manifest(),
                                               "throughput": throughput.from_trainer(trainer, model, hardware)})
    metrics = run_files.finish_metrics(run_dir, recipe)
    if recipe.export and is_main_process():
        manifest = _export(run_dir, recipe, manifest)
    return RunResult(run_dir=run_dir, final_dir=final_dir, metrics=metrics, manifest=manifest)


def _tracker_callbacks(recipe: RecipeBase, hardware: Hardware, model: Any) -> list[Any]:
    """Log the resolved recipe and what the manifest will record (known before training) as the
    trackers' run config."""
    if not recipe.training.report_to:
        return []
    from finetune.adapters import count_parameters

    trainable, total = count_parameters(model)
    manifest = {"versions": run_files.package_versions(), "seed": recipe.seed, "objective": recipe.objective.kind,
                "adapter": recipe.adapter.kind, "base_model": recipe.model.name_or_path, "device": hardware.device,
                "hardware": hardware.name, "precision": hardware.precision,
                "parameters": {"trainable": trainable, "total": total}}
    config = {"recipe": recipe.model_dump(mode="json"), "manifest": manifest}
    return [run_config_callback(list(recipe.training.report_to), config)]


def _export(run_dir: Path, recipe: RecipeBase, manifest: dict[str, Any]) -> dict[str, Any]:
    """The recipe's `export:` list, run on the finished run; the manifest records what was written."""
    from finetune.export.targets import run_recipe_exports
    from finetune.outputs import write_json

    manifest = {**manifest, "exports": run_recipe_exports(run_dir, list(recipe.export))}
    write_json(run_dir / "manifest.json", manifest)
    return manifest


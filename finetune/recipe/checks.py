"""Checks pydantic cannot express: files exist, names are known, sections fit together.

They run after schema validation, on the typed recipe, and report every problem at once.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from finetune import batching, throughput
from finetune.distributed import strategy_problems
from finetune.recipe.errors import Problem, Source
from finetune.recipe.schema import DatasetSpec, RecipeBase
from finetune.recipe.yaml_source import KeyPath, Positions
from finetune.trackers import tracker_problems

# "org/name" or "name": what a Hub id looks like. A path with a file extension or a leading
# ./ ../ / ~ is meant to be local, so a missing one is reported now rather than sent to the Hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_HINT = re.compile(r"^(\.{1,2}/|/|~)|\.(jsonl?|csv|parquet|txt|arrow)$")


def looks_local(path: str) -> bool:
    return Path(path).expanduser().exists() or bool(_LOCAL_HINT.search(path)) or not _HUB_ID.match(path)


def semantic_problems(recipe: RecipeBase, positions: Positions, default: Source,
                      pending: frozenset[str] = frozenset()) -> list[Problem]:
    def at(path: KeyPath, message: str) -> Problem:
        source = next((positions[path[:n]] for n in range(len(path), 0, -1) if path[:n] in positions), default)
        return Problem(source, ".".join(map(str, path)), message)

    problems: list[Problem] = []
    model_path = recipe.model.name_or_path
    if looks_local(model_path) and not Path(model_path).expanduser().exists() and model_path not in pending:
        problems.append(at(("model", "name_or_path"), f"model directory not found: {Path(model_path).expanduser().resolve()}"))
    problems += _template_problems(recipe, at)
    for split in ("train", "validation"):
        for index, spec in enumerate(getattr(recipe.data, split)):
            problems += _dataset_problems(spec, (("data", split, index)), recipe.objective.kind, at)
    if recipe.data.validation and recipe.data.validation_fraction > 0:
        problems.append(at(("data", "validation_fraction"), "give validation datasets or a validation_fraction, not both"))
    problems += _mixing_problems(recipe, at)
    problems += [at(("training", "report_to", i), message) for i, message in tracker_problems(recipe.training.report_to)]
    problems += [at(path, message) for path, message in recipe.objective.recipe_problems(recipe)]
    from finetune.preflight import recipe_problems

    problems += recipe_problems(recipe, at, pending)
    problems += [at(path, message) for path, message in strategy_problems(recipe)]
    problems += [at(path, message) for path, message in [*batching.problems(recipe), *throughput.recipe_problems(recipe)]]
    return problems


def _mixing_problems(recipe: RecipeBase, at) -> list[Problem]:
    """Weights mix train datasets only, all of them or none; packing is for objectives ft tokenizes for."""
    from data_templates.forms import data_form
    from finetune.registry import get_objective

    problems = []
    weighted = [spec.weight is not None for spec in recipe.data.train]
    if any(weighted) and not all(weighted):
        missing = ", ".join(f"train[{i}]" for i, w in enumerate(weighted) if not w)
        problems.append(at(("data", "train"), f"give every train dataset a weight, or none ({missing} has none)"))
    for index, spec in enumerate(recipe.data.validation):
        if spec.weight is not None:
            problems.append(at(("data", "validation", index, "weight"), "validation data is not mixed; remove weight"))
    form = get_objective(recipe.objective.kind).data_form
    if recipe.model.router_aux_loss_coef is not None and get_objective(recipe.objective.kind).config_class != "trl:SFTConfig":
        problems.append(at(("model", "router_aux_loss_coef"), f"objective {recipe.objective.kind!r} does not add the "
                           "router loss; it is for sft and pretrain (remove the key)"))
    if getattr(recipe.adapter, "train_vision", False) and get_objective(recipe.objective.kind).model_head != \
            "vision_causal_lm":
        problems.append(at(("adapter", "train_vision"), f"objective {recipe.objective.kind!r} trains a text model, "
                           "which has no vision tower; train_vision is for vlm_sft (remove the key)"))
    if recipe.data.packing and not data_form(form).packs:
        problems.append(at(("data", "packing"), f"objective {recipe.objective.kind!r} does not pack examples; "
                           "packing is for sft, pretrain and mlm"))
    return problems


def _template_problems(recipe: RecipeBase, at) -> list[Problem]:
    from data_templates.chat_templates import TEMPLATES

    choice = recipe.model.chat_template
    if choice is None or choice in TEMPLATES:
        return []
    if choice.endswith(".jinja"):
        if Path(choice).expanduser().is_file():
            return []
        return [at(("model", "chat_template"), f"template file not found: {Path(choice).expanduser().resolve()}")]
    close = difflib.get_close_matches(choice, list(TEMPLATES), n=1)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(TEMPLATES)}, or a path to a .jinja file"
    return [at(("model", "chat_template"), f"unknown chat template {choice!r} ({hint})")]


def _has_images(form: str) -> bool:
    from data_templates.forms import data_form

    return data_form(form).images


def _dataset_problems(spec: DatasetSpec, path: KeyPath, objective: str, at) -> list[Problem]:
    from data_templates.formats import FORMATS, formats_for
    from finetune.registry import get_objective

    problems = []
    if looks_local(spec.path) and not Path(spec.path).expanduser().exists():
        problems.append(at(path + ("path",), f"file not found: {Path(spec.path).expanduser().resolve()}"))
    if Path(spec.path).expanduser().exists():
        # Local files are read whole; a Hub-only key would be silently ignored.
        for key, value, default in (("name", spec.name, None), ("revision", spec.revision, None),
                                    ("split", spec.split, "train")):
            if value != default:
                problems.append(at(path + (key,), f"applies to Hub datasets only, and {spec.path} is a local "
                                   f"path{'; give the file of that split' if key == 'split' else ''}"))
    fmt = FORMATS.get(spec.format)
    if fmt is None:
        close = difflib.get_close_matches(spec.format, list(FORMATS), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(FORMATS)}"
        return problems + [at(path + ("format",), f"unknown format {spec.format!r} ({hint})")]
    form = get_objective(objective).data_form
    accepted = formats_for(form)
    if spec.format not in accepted:
        problems.append(at(path + ("format",), f"objective {objective!r} cannot train on {spec.format!r} data; "
                           f"use one of: {', '.join(accepted)}"))
    if spec.format in accepted and fmt.form == form and Path(spec.path).expanduser().exists() and _has_images(form):
        from data_templates.vision import image_problems

        problems += [at(path + ("path",), problem) for problem in image_problems(spec)]
    for field in spec.columns:
        if field not in fmt.fields + fmt.optional:
            close = difflib.get_close_matches(field, list(fmt.fields + fmt.optional), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" ({spec.format} fields: {', '.join(fmt.fields + fmt.optional)})"
            problems.append(at(path + ("columns", field), f"unknown field of format {spec.format!r}{hint}"))
    return problems

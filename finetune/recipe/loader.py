"""Load a recipe: read YAML, resolve `extends`, apply KEY=VALUE overrides, validate strictly.

`load_recipe` either returns a typed, frozen recipe or raises `RecipeError` listing every
problem at once. Nothing here imports torch.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, create_model

from finetune.recipe.checks import semantic_problems
from finetune.recipe.errors import Problem, RecipeError, Source
from finetune.recipe.schema import RecipeBase
from finetune.recipe.validation import allowed_keys, problems_from
from finetune.recipe.yaml_source import (
    KeyPath,
    Positions,
    non_finite,
    parse_scalar,
    read_yaml,
)
from finetune.registry import objectives

Recipe = RecipeBase  # the static type of a validated recipe; `objective` is one registered section


@lru_cache(maxsize=1)
def recipe_model() -> type[RecipeBase]:
    """The recipe model with `objective` narrowed to the union of registered objective sections."""
    sections = tuple(obj.section for obj in objectives().values())
    union = Annotated[Union[sections], Field(discriminator="kind")]  # type: ignore[valid-type]
    return create_model(
        "Recipe",
        __base__=RecipeBase,
        objective=(union, Field(description="What to train for; `kind` picks the objective.")),
    )


def load_raw(path: str | Path, overrides: list[str] = ()) -> tuple[dict[str, Any], Positions]:
    """The merged recipe mapping (extends + overrides) and where each key came from."""
    data, positions = read_with_extends(Path(path))
    problems: list[Problem] = []
    for override in overrides:
        problem = _apply_override(data, positions, override)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise RecipeError(problems)
    return data, positions


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    raw, positions = load_raw(path, overrides)
    return validate_raw(raw, positions, Source(str(path), 1))


def validate_raw(raw: dict[str, Any], positions: Positions, default: Source,
                 pending: frozenset[str] = frozenset()) -> Recipe:
    """The typed recipe, or every problem at once. `pending` names model paths an earlier pipeline
    stage will produce, so they need not exist yet."""
    if "stages" in raw:
        raise RecipeError([Problem(positions.get(("stages",), default), "stages",
                                   "this is a pipeline of stages, not a single recipe; run it with ft run")])
    model = recipe_model()
    try:
        recipe = model.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_ordered(problems_from(err, raw, model, positions, default))) from None
    problems = semantic_problems(recipe, positions, default, pending)
    if problems:
        raise RecipeError(_ordered(problems))
    return recipe


def _ordered(problems: list[Problem]) -> list[Problem]:
    """File order, then line: how a reader fixes them."""
    return sorted(problems, key=lambda p: (p.source.line is None, p.source.file, p.source.line or 0))


def dump_recipe(recipe: RecipeBase) -> str:
    """The fully resolved recipe as YAML (defaults filled in), loadable by `ft run`."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Positions]:
    data, positions = read_yaml(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, positions
    here = Source(str(path), positions.get(("extends",), Source(str(path))).line)
    if not isinstance(parent_ref, str):
        raise RecipeError([Problem(here, "extends", "expected the path of a parent recipe")])
    parent_path = (path.parent / parent_ref).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise RecipeError([Problem(here, "extends", f"circular extends through {parent_ref}")])
    if not parent_path.is_file():
        raise RecipeError([Problem(here, "extends", f"parent recipe not found: {parent_path}")])
    parent, parent_positions = read_with_extends(parent_path, seen + (path.resolve(),))
    parent_positions.update({k: v for k, v in positions.items() if k != ("extends",)})
    return merge_recipes(parent, data), parent_positions


def merge_recipes(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`deep_merge`, after dropping the parent's keys of sections whose kind the child changed.

    Only the parent's keys go: a key the child itself wrote that its kind lacks (`adapter: {kind:
    none, r: 8}`) stays, so validation reports it in the child's file.
    """
    parent = copy.deepcopy(parent)
    for section in _kind_changes(parent, child):
        node: Any = parent
        for part in section:
            node = node[part]
        node["kind"] = _at(child, section)["kind"]
        _switch_kind(parent, section)
    return deep_merge(parent, child)


def _at(data: Any, section: KeyPath) -> Any:
    for part in section:
        data = data[part]
    return data


def deep_merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced by the child.

    A section whose `kind` the child changes (adapter lora -> none, objective sft -> dpo) is
    replaced whole: the parent's keys belong to the other kind.
    """
    merged = copy.deepcopy(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _switch_kind(data: dict[str, Any], section: KeyPath) -> None:
    """After `section.kind` changed (adapter lora -> none), drop the keys the new kind does not have.

    Keys both kinds share (lora -> qlora keeps r and alpha) are kept; an unknown kind prunes nothing,
    so its own error is reported.
    """
    node: Any = data
    for part in section:
        node = node[part]
    allowed = allowed_keys(recipe_model(), data, section)
    if allowed:
        for key in [k for k in node if k not in allowed]:
            del node[key]


def _kind_changes(parent: Any, child: Any, path: KeyPath = ()) -> list[KeyPath]:
    """Sections whose `kind` the child sets to something other than the parent's."""
    if not (isinstance(parent, dict) and isinstance(child, dict)):
        return []
    found = [path] if "kind" in child and "kind" in parent and child["kind"] != parent["kind"] else []
    for key, value in child.items():
        found += _kind_changes(parent.get(key), value, path + (key,))
    return found


def _apply_override(data: dict[str, Any], positions: Positions, text: str) -> Problem | None:
    source = Source(f"override '{text}'")
    key, sep, value_text = text.partition("=")
    if not sep or not key.strip():
        return Problem(source, "", "expected KEY=VALUE, e.g. training.max_steps=20")
    path: KeyPath = tuple(int(p) if p.lstrip("-").isdigit() else p for p in key.strip().split("."))
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, list) and isinstance(part, int):
            if not -len(node) <= part < len(node):
                return Problem(source, key, f"index {part} is out of range (the list has {len(node)} items)")
            node = node[part]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            where = ".".join(map(str, path[: depth + 1]))
            return Problem(source, key, f"cannot set inside {where}: it is not a mapping")
        if not isinstance(node, (dict, list)):
            where = ".".join(map(str, path[: depth + 1]))
            return Problem(source, key, f"cannot set inside {where}: it is a single value")
    if isinstance(node, list) and not isinstance(path[-1], int):
        return Problem(source, key, "expected a list index")
    if isinstance(node, list) and not -len(node) <= path[-1] < len(node):
        return Problem(source, key, f"index {path[-1]} is out of range (the list has {len(node)} items)")
    try:
        value = parse_scalar(value_text)
    except ValueError as err:
        return Problem(source, key, str(err))
    if non_finite(value):
        return Problem(source, key, "not a finite number (inf or nan, or too large for a float)")
    previous = node.get(path[-1]) if isinstance(node, dict) else None
    node[path[-1]] = value
    if path[-1] == "kind" and previous is not None and previous != node[path[-1]]:
        _switch_kind(data, path[:-1])
    for existing in [p for p in positions if p[: len(path)] == path]:
        del positions[existing]
    positions[path] = source
    return None

"""Read YAML safely and remember the file and line of every key, for error messages."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from finetune.recipe.errors import Problem, RecipeError, Source

KeyPath = tuple[str | int, ...]
Positions = dict[KeyPath, Source]


class _Loader(yaml.SafeLoader):
    """The safe loader, with YAML 1.2 floats: PyYAML reads `2e-4` as a string otherwise."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """PyYAML keeps the last of two equal keys; a recipe with two `learning_rate:` lines is a mistake."""
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key; construct_mapping reports it
        if first is not None:
            raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_scalar(text: str) -> Any:
    """A command-line value, read as YAML (so `20` is an int, `[a, b]` a list, `null` None).
    Raises ValueError naming the problem when the text is not valid YAML."""
    try:
        return yaml.load(text, Loader=_Loader)
    except _DuplicateKey as err:
        raise ValueError(f"duplicate key {err.key!r}") from None
    except yaml.YAMLError as err:
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"the value is not valid YAML ({reason}); quote it if it is a string") from None


def non_finite(data: Any, path: KeyPath = ()) -> list[KeyPath]:
    """Key paths of float values that are inf or nan (1.0e+400 reads as inf)."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [path]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite(v, path + (k,))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite(v, path + (i,))]
    return []


def read_yaml(path: Path) -> tuple[dict[str, Any], Positions]:
    """The mapping in `path` and the source line of each key path in it."""
    display = str(path)
    if path.is_dir():
        raise RecipeError([Problem(Source(display), "", "is a directory; give the recipe's YAML file")])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([Problem(Source(display), "", "recipe file not found")]) from None
    except UnicodeDecodeError as err:
        raise RecipeError([Problem(Source(display), "", f"not UTF-8 text ({err.reason})")]) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except _DuplicateKey as err:
        raise RecipeError([Problem(Source(display, err.second), str(err.key),
                                   f"duplicate key (also at line {err.first}); keep one")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(err, "problem", None) or str(err)
        raise RecipeError([Problem(Source(display, line), "", f"invalid YAML: {reason}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([Problem(Source(display, 1), "", "a recipe must be a mapping of keys")])
    positions: Positions = {}
    if node is not None:
        _collect(node, (), display, positions)
    bad = non_finite(data)
    if bad:
        raise RecipeError([Problem(positions.get(p, Source(display)), ".".join(map(str, p)),
                                   "not a finite number (inf or nan, or too large for a float)") for p in bad])
    return data, positions


def _collect(node: yaml.Node, path: KeyPath, file: str, out: Positions) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = Source(file, key_node.start_mark.line + 1)
            _collect(value_node, path + (key,), file, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[path + (index,)] = Source(file, item.start_mark.line + 1)
            _collect(item, path + (index,), file, out)

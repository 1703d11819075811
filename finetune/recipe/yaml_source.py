"""Read YAML safely and remember the file and line of every key, for error messages."""

from __future__ import annotations

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


def parse_scalar(text: str) -> Any:
    """A command-line value, read as YAML (so `20` is an int, `[a, b]` a list, `null` None)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path) -> tuple[dict[str, Any], Positions]:
    """The mapping in `path` and the source line of each key path in it."""
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([Problem(Source(display), "", "recipe file not found")]) from None
    except UnicodeDecodeError as err:
        raise RecipeError([Problem(Source(display), "", f"not UTF-8 text ({err.reason})")]) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
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

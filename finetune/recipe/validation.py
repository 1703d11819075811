"""Turn pydantic's validation errors into `FILE:LINE  key.path: message` problems.

pydantic's locations include union tags (`adapter.lora.r`) and its messages are written for
programmers; users get the key path they wrote, the file and line it is on, a plain message and,
for a typo, the nearest valid key.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from finetune.recipe.errors import Problem, Source, join_path
from finetune.recipe.yaml_source import KeyPath, Positions

# Names users bring from TRL, PEFT, transformers, axolotl and LLaMA-Factory configs; spelling
# distance alone would not find `r` for `rank`.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "use_dora": "dora", "use_rslora": "rslora", "lora_target": "target_modules", "lr": "learning_rate",
    "num_train_epochs": "epochs", "num_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size", "lr_scheduler_type": "lr_scheduler", "optim": "optimizer",
    "max_seq_length": "max_length", "sequence_len": "max_length", "cutoff_len": "max_length",
    "torch_dtype": "dtype", "model_name_or_path": "name_or_path", "base_model": "name_or_path",
    "template": "chat_template", "type": "kind", "datasets": "train", "dataset": "train",
}


def problems_from(error: ValidationError, raw: dict[str, Any], model: type[BaseModel],
                  positions: Positions, default: Source) -> list[Problem]:
    merged: dict[KeyPath, list[str]] = {}
    for item in error.errors():
        path, tagged = _user_path(item["loc"], raw, item["type"])
        if item["type"] == "union_tag_invalid":
            path += (item.get("ctx", {}).get("discriminator", "'kind'").strip("'"),)
        message = _message(item, path, raw, model)
        messages = merged.setdefault(path, [])
        if tagged and messages:
            # Several union members rejected the same value; one line says what fits.
            messages[-1] = messages[-1] + " or " + message.removeprefix("expected ")
        elif message not in messages:
            messages.append(message)
    problems = []
    for path, messages in merged.items():
        for message in messages:
            problems.append(Problem(_source(path, positions, default), join_path(path), message))
    return problems


def _user_path(loc: tuple[Any, ...], raw: Any, kind: str) -> tuple[KeyPath, bool]:
    """The key path as written in the recipe: drop union tags pydantic inserts into `loc`."""
    path: list[str | int] = []
    node = raw
    tagged = False
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif last and kind in ("missing", "extra_forbidden"):
            path.append(part)
        else:
            tagged = True  # a union member's tag, not a key the user wrote
    return tuple(path), tagged


def _source(path: KeyPath, positions: Positions, default: Source) -> Source:
    for end in range(len(path), 0, -1):
        if path[:end] in positions:
            return positions[path[:end]]
    return default


def _message(item: dict[str, Any], path: KeyPath, raw: dict[str, Any], model: type[BaseModel]) -> str:
    kind, ctx, value = item["type"], item.get("ctx", {}), item.get("input")
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, raw, path[:-1])
        alias = ALIASES.get(str(path[-1]))
        close = [alias] if alias in allowed else difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(sorted(allowed))})"
        return "unknown key" + hint
    if kind == "missing":
        return "required key is missing"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}, got {value!r}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {value!r}"
    if kind == "union_tag_invalid":
        return f"unknown {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"needs a `{ctx.get('discriminator', 'kind').strip(chr(39))}` key"
    text = item["msg"].split(", unable to")[0]
    text = text.removeprefix("Input should be ").removeprefix("Value error, ")
    return f"expected {text}, got {value!r}" if item["msg"].startswith("Input should") else text


def allowed_keys(model: type[BaseModel], raw: Any, path: KeyPath) -> list[str]:
    """Field names of the model that validates the mapping at `path` (union members by `kind`)."""
    annotation: Any = model
    node = raw
    for part in path:
        cls = _pick_model(annotation, node)
        if cls is not None:
            field = cls.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        else:
            annotation = _item_type(annotation)
        node = node[part] if isinstance(node, (dict, list)) else None
    cls = _pick_model(annotation, node)
    return list(cls.model_fields) if cls is not None else []


def _pick_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    annotation = _strip_annotated(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [m for m in (_pick_model(a, node) for a in typing.get_args(annotation)) if m]
        kind = node.get("kind") if isinstance(node, dict) else None
        for member in members:
            field = member.model_fields.get("kind")
            if field is not None and field.default == kind:
                return member
        return members[0] if members else None
    return None


def _item_type(annotation: Any) -> Any:
    annotation = _strip_annotated(annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in args:
            if typing.get_origin(_strip_annotated(arg)) in (list, dict):
                return _item_type(arg)
        return None
    return args[-1] if args else None


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation

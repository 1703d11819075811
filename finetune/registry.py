"""The objective registry: one objective, one module, one entry point.

An objective module declares its recipe section (a pydantic model with a literal `kind`) and
registers a builder with `@objective(...)`. Modules keep torch/transformers/trl imports inside
their functions, so importing the registry (and validating a recipe) stays light.

Third-party objectives can register through the `ft.objectives` entry-point group: each entry
point names a module that calls `@objective` when imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune.recipe.schema import ObjectiveSection
    from finetune.run_parts import RunParts

# The canonical example form an objective consumes: a key of data_templates.forms.DATA_FORMS (the
# data layer turns every dataset format into one of these).
DataForm = str
# The model kind the weights are loaded as: a key of finetune.model_kinds.MODEL_KINDS.
ModelHead = str

BUILTIN_OBJECTIVE_MODULES: tuple[str, ...] = (
    "finetune.sft",
    "finetune.pretrain",
    "finetune.classify",
    "finetune.mlm",
    "finetune.seq2seq",
    "finetune.vlm",
    "align.dpo",
    "align.reward",
    "align.kto",
    "align.ppo",
    "align.grpo",
    "align.orpo",
    "align.simpo",
)


@dataclass(frozen=True)
class Objective:
    kind: str
    section: type[ObjectiveSection]
    build_trainer: Callable[[RunParts], Any]
    data_form: DataForm
    config_class: str  # "module:Class" of the TRL config; training.extra is checked against it
    description: str
    model_head: ModelHead = "causal_lm"


_REGISTRY: dict[str, Objective] = {}
_discovered = False


def objective(
    kind: str,
    *,
    section: type[ObjectiveSection],
    data_form: DataForm,
    config_class: str,
    description: str,
    model_head: ModelHead = "causal_lm",
) -> Callable[[Callable[[RunParts], Any]], Callable[[RunParts], Any]]:
    """Register `build_trainer(parts) -> Trainer` as the entry point of objective `kind`."""

    from data_templates.forms import DATA_FORMS
    from finetune.model_kinds import MODEL_KINDS

    if data_form not in DATA_FORMS or model_head not in MODEL_KINDS:
        raise ValueError(f"objective {kind!r}: data_form must be one of {', '.join(DATA_FORMS)} and model_head one "
                         f"of {', '.join(MODEL_KINDS)}")

    def register(fn: Callable[[RunParts], Any]) -> Callable[[RunParts], Any]:
        if kind in _REGISTRY and _REGISTRY[kind].build_trainer is not fn:
            raise ValueError(f"objective {kind!r} is registered twice")
        _REGISTRY[kind] = Objective(
            kind=kind,
            section=section,
            build_trainer=fn,
            data_form=data_form,
            config_class=config_class,
            description=description,
            model_head=model_head,
        )
        return fn

    return register


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in BUILTIN_OBJECTIVE_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group="ft.objectives"):
        importlib.import_module(ep.value)
    _discovered = True


def objectives() -> dict[str, Objective]:
    """All registered objectives, by kind (imports the objective modules on first use), built-ins in
    the order of BUILTIN_OBJECTIVE_MODULES whichever module was imported first, then the others."""
    _discover()
    order = {module: i for i, module in enumerate(BUILTIN_OBJECTIVE_MODULES)}
    ranked = sorted(_REGISTRY.values(), key=lambda o: order.get(o.build_trainer.__module__, len(order)))
    return {o.kind: o for o in ranked}


def get_objective(kind: str) -> Objective:
    known = objectives()
    if kind not in known:
        raise KeyError(f"unknown objective {kind!r}; known: {', '.join(sorted(known))}")
    return known[kind]


def load_attr(path: str) -> Any:
    """Import "package.module:Name" lazily."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)

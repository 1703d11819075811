"""Checks that need only the recipe, the libraries' own name lists and a local model's files.

`recipe_problems` runs inside validation (so `ft validate` sees them) without importing torch:
library names are read from the installed sources with `ast`, and a local model's modules and
layer count come from config.json and the safetensors header (JSON), never from the weights.
`check_run_start` adds what needs the hardware or the command line, at the very start of `ft run`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import struct
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError
from finetune.recipe.errors import Problem
from finetune.recipe.schema import FullAdapter, LoraAdapter, RecipeBase

At = Callable[[tuple[str | int, ...], str], Problem]
MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers.set_seed passes the seed to
MAX_RANK = 4096
MAX_ALPHA = 1e6
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


# --------------------------------------------------------------------------- library name lists
def _module_source(module: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], *module.split(".")[1:]).with_suffix(".py")
    return ast.parse(path.read_text(encoding="utf-8")) if path.is_file() else None


def _enum_values(module: str, cls: str) -> tuple[str, ...]:
    tree = _module_source(module)
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return tuple(s.value.value for s in node.body if isinstance(s, ast.Assign)
                         and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
    return ()


def _dict_keys(module: str, name: str) -> tuple[str, ...]:
    tree = _module_source(module)
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return ()


@lru_cache(maxsize=1)
def library_names() -> dict[str, tuple[str, ...]]:
    """transformers' own lists, read from its installed source (importing it would import torch)."""
    return {
        "lr_scheduler": _enum_values("transformers.trainer_utils", "SchedulerType"),
        "optimizer": _enum_values("transformers.training_args", "OptimizerNames"),
        "report_to": _dict_keys("transformers.integrations.integration_utils", "INTEGRATION_TO_CALLBACK")
        + ("all", "none"),
    }


def _name_problems(recipe: RecipeBase, at: At) -> list[Problem]:
    names = library_names()
    chosen = {"lr_scheduler": [recipe.training.lr_scheduler], "optimizer": [recipe.training.optimizer],
              "report_to": recipe.training.report_to}
    problems = []
    for key, values in chosen.items():
        for index, value in enumerate(values):
            if value is not None and names[key] and value not in names[key]:
                path = ("training", key, index) if key == "report_to" else ("training", key)
                problems.append(at(path, f"unknown {key} {value!r}; transformers knows: {', '.join(names[key])}"))
    return problems


# ------------------------------------------------------------------------------------ ranges
def _range_problems(recipe: RecipeBase, at: At) -> list[Problem]:
    problems = []
    if not 0 <= recipe.seed <= MAX_SEED:
        problems.append(at(("seed",), f"must be between 0 and {MAX_SEED}, got {recipe.seed}"))
    adapter = recipe.adapter
    if isinstance(adapter, LoraAdapter):
        if adapter.r > MAX_RANK:
            problems.append(at(("adapter", "r"), f"LoRA rank {adapter.r} is too large (at most {MAX_RANK}; "
                               "typical values are 8 to 128)"))
        if adapter.alpha > MAX_ALPHA:
            problems.append(at(("adapter", "alpha"), f"must be at most {MAX_ALPHA:g}, got {adapter.alpha:g}"))
    key, layers = _layers_key(adapter)
    if layers is not None:
        if not layers:
            problems.append(at(("adapter", key), "an empty list trains nothing; remove the key or list layers"))
        elif len(set(layers)) != len(layers):
            problems.append(at(("adapter", key), f"lists a layer twice: {layers}"))
    return problems


def _layers_key(adapter: Any) -> tuple[str, list[int] | None]:
    if isinstance(adapter, FullAdapter):
        return "trainable_layers", adapter.trainable_layers
    return "layers", getattr(adapter, "layers", None)


# ------------------------------------------------------------------------------- local model
def model_modules(model_dir: Path) -> tuple[int | None, set[str]]:
    """(decoder layer count, module paths) of a local model, from config.json and the safetensors
    header only. Empty when the directory has no such files (a Hub id, an adapter)."""
    layers = None
    config = model_dir / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data = data.get("text_config", data) if isinstance(data, dict) else {}
        layers = next((data[k] for k in _LAYER_KEYS if isinstance(data.get(k), int)), None)
    modules: set[str] = set()
    for weights in sorted(model_dir.glob("*.safetensors")):
        modules |= {name.rsplit(".", 1)[0] for name in _safetensors_names(weights) if name.endswith(".weight")}
    return layers, modules


def _safetensors_names(path: Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100_000_000:
                return []
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return []  # unreadable weights are reported where they load, naming the file
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []


def _layer(recipe: RecipeBase) -> re.Pattern[str]:
    """The block-index pattern of the model kind the objective loads (finetune.model_kinds), the one
    `trainable_layers` and `adapter.layers` are applied with."""
    from finetune.model_kinds import model_kind
    from finetune.registry import get_objective

    return model_kind(get_objective(recipe.objective.kind).model_head).layer_pattern


def head_problems(recipe: RecipeBase, config: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """A generating objective on the wrong shape of model (`config`: its config.json): seq2seq on a
    decoder-only model, or a causal objective (sft, dpo, ...) on an encoder-decoder (T5, BART). At
    `ft validate` for a local model, and at run start with the Hub config (finetune.pipeline)."""
    from finetune.model_kinds import head_mismatch, model_kind
    from finetune.registry import get_objective, objectives

    kind = model_kind(get_objective(recipe.objective.kind).model_head)
    found = head_mismatch(kind, config)
    if found is None:
        return []
    fitting = [o.kind for o in objectives().values() if model_kind(o.model_head).generates
               and model_kind(o.model_head).encoder_decoder != kind.encoder_decoder]
    wanted = "an encoder-decoder model (T5, Flan-T5, BART)" if kind.encoder_decoder else "a decoder-only (causal) model"
    hint = f"; for this model use objective.kind: {fitting[0]}" if fitting else ""
    message = f"objective.kind {recipe.objective.kind} trains {wanted}, and {recipe.model.name_or_path} is {found}{hint}"
    return [(("model", "name_or_path"), message)]


def _local_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no or an unreadable config: reported where the model loads, naming the file
    return data if isinstance(data, dict) else {}


def _model_problems(recipe: RecipeBase, at: At, pending: frozenset[str]) -> list[Problem]:
    path = Path(recipe.model.name_or_path).expanduser()
    if recipe.model.name_or_path in pending or not path.is_dir():
        return []
    mismatch = [at(key, message) for key, message in head_problems(recipe, _local_config(path))]
    if mismatch:
        return mismatch  # the layer and module checks below read the model as the wrong kind
    layers, modules = model_modules(path)
    if layers is None and modules:
        indices = {int(m.group(1)) for name in modules if (m := _layer(recipe).search("." + name))}
        layers = max(indices) + 1 if indices else None
    problems = []
    key, chosen = _layers_key(recipe.adapter)
    if layers and chosen:
        bad = [i for i in chosen if not -layers <= i < layers]
        if bad:
            problems.append(at(("adapter", key), f"layers {bad} out of range: {path} has {layers} layers "
                               f"(valid: 0..{layers - 1}, or -{layers}..-1 from the end)"))
    return problems + _target_problems(recipe, at, path, modules)


# A checkpoint's per-expert weights (`mlp.experts.3.up_proj`, `block_sparse_moe.experts.0.w1`): transformers 5
# fuses them on load into one 3D parameter per projection, which no target_modules name reaches.
_PER_EXPERT = re.compile(r"\.experts\.\d+\.")


def _target_problems(recipe: RecipeBase, at: At, path: Path, modules: set[str]) -> list[Problem]:
    targets = getattr(recipe.adapter, "target_modules", "all-linear")
    if not modules:
        return []
    if targets == "experts" and not any(_PER_EXPERT.search("." + m) or ".experts." in m for m in modules):
        return [at(("adapter", "target_modules"), f"experts: {path} is not a mixture-of-experts model (its weights "
                   f"hold no experts); use attention, mlp, all-linear or a list of module names")]
    if not isinstance(targets, list):
        return []
    loaded = {m for m in modules if not _PER_EXPERT.search("." + m + ".")}
    leaves = {name.rsplit(".", 1)[-1] for name in loaded if _layer(recipe).search("." + name)}
    unmatched = [t for t in targets if not any(m == t or m.endswith("." + t) for m in loaded)]
    if not unmatched:
        return []
    fused = [t for t in unmatched if any(m.endswith("." + t) for m in modules)]
    why = (f"; {fused} name per-expert weights, which transformers fuses into experts.gate_up_proj / "
           f"experts.down_proj on load: use target_modules: experts (or mlp / all-linear) for them") if fused else ""
    return [at(("adapter", "target_modules"), f"{unmatched} match no module of {path}; its layer modules: "
               f"{', '.join(sorted(leaves))}{why}")]


def _output_problems(recipe: RecipeBase, at: At) -> list[Problem]:
    from finetune.outputs import OutputDirError, check_output_path

    try:
        check_output_path(Path(recipe.output_dir).expanduser().resolve())
    except OutputDirError as err:
        return [at(("output_dir",), str(err).removeprefix("output_dir "))]
    return []


def recipe_problems(recipe: RecipeBase, at: At, pending: frozenset[str] = frozenset()) -> list[Problem]:
    """Everything `ft validate` can see without torch: ranges, library names, the local model's shape."""
    return (_range_problems(recipe, at) + _name_problems(recipe, at) + _model_problems(recipe, at, pending)
            + _output_problems(recipe, at))


# ----------------------------------------------------------------------------- ft run start
def check_arguments(*, overwrite: bool, resume: bool, nproc: int | None) -> None:
    if overwrite and resume:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run in "
                          "output_dir, --overwrite deletes it. Choose one.")
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")


def check_hardware(recipes: list[RecipeBase]) -> None:
    """training.device / precision against the machine, before the tokenizer, data or weights load."""
    from finetune.hardware import detect

    for recipe in recipes:
        try:
            detect(recipe.training.device, recipe.training.precision)
        except RuntimeError as err:
            raise ConfigError(f"{err} (output_dir {recipe.output_dir})") from None


def check_run_start(spec: Any, recipes: list[RecipeBase], recipe_path: Path, *, overwrite: bool) -> None:
    """The output directory and the hardware, before anything loads (a pipeline: every stage's)."""
    from finetune.outputs import check_output_path, check_replaceable

    top = Path(getattr(spec, "output_dir", None) or recipes[0].output_dir).expanduser().resolve()
    check_output_path(top)
    if overwrite:
        check_replaceable(top, (recipe_path,))
    for recipe in recipes:
        check_output_path(Path(recipe.output_dir).expanduser().resolve())
    check_hardware(recipes)


def check_model_head(recipe: RecipeBase) -> None:
    """At run start, before the data is tokenized: `head_problems` for a Hub model too, with the
    config.json transformers resolves (the Hub cache offline). A LoRA run named as the model is merged
    first and checked as it loads; a config that does not load is reported where the model loads."""
    from transformers import AutoConfig

    from finetune.models import is_adapter_dir, model_location

    location = model_location(recipe.model)
    if is_adapter_dir(location):
        return
    try:
        config = AutoConfig.from_pretrained(location, revision=recipe.model.revision,
                                            trust_remote_code=recipe.model.trust_remote_code).to_dict()
    except (OSError, ValueError, KeyError):
        return
    problems = head_problems(recipe, config)
    if problems:
        raise ConfigError("\n".join(f"{'.'.join(map(str, key))}: {message}" for key, message in problems))

"""The Python API for notebooks and scripts; `ft` is a thin layer over exactly these functions.

    from finetune import Recipe, run, generate, smoke
    recipe = Recipe.load("recipes/quickstart.yaml", ["training.max_steps=20"])
    result = run(recipe)
    result.plot()
    generate(result.run_dir, "What is ft?")

User errors raise `FtError` subclasses (never SystemExit); `str(err)` is what the CLI prints.
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from finetune.notices import Sink

if TYPE_CHECKING:
    from finetune.pipeline import RunResult
    from finetune.recipe.schema import RecipeBase
    from finetune.smoke.report import SmokeReport
    from finetune.stages import Pipeline

    AnyRecipe = Union[RecipeBase, Pipeline]


class Recipe:
    """Build a validated recipe (or pipeline): from a YAML file, or from a dict in a notebook cell.
    Both go through the same strict validation and raise `RecipeError` listing every problem."""

    @staticmethod
    def load(path: str | Path, overrides: list[str] = ()) -> AnyRecipe:
        from finetune.stages import load

        return load(path, list(overrides))

    @staticmethod
    def from_dict(data: dict[str, Any], overrides: list[str] = (), *, source: str = "<dict>") -> AnyRecipe:
        """A recipe from a mapping with the YAML's keys; problems are reported against `source`.
        A pipeline's `recipe:` files are read relative to the working directory."""
        from finetune.recipe.errors import Problem, RecipeError, Source
        from finetune.recipe.loader import _apply_override, validate_raw
        from finetune.stages import build_pipeline

        if not isinstance(data, dict):
            raise RecipeError([Problem(Source(source), "", f"expected a mapping, got {type(data).__name__}")])
        raw, positions = copy.deepcopy(data), {}
        problems = [p for p in (_apply_override(raw, positions, o) for o in overrides) if p is not None]
        if problems:
            raise RecipeError(problems)
        if "stages" in raw:
            return build_pipeline(raw, positions, Path(source))
        return validate_raw(raw, positions, Source(source))


def _as_recipe(recipe: AnyRecipe | str | Path) -> AnyRecipe:
    return Recipe.load(recipe) if isinstance(recipe, (str, Path)) else recipe


def run(recipe: AnyRecipe | str | Path, *, overwrite: bool = False, resume: bool = False,
        rerun: set[str] | list[str] = (), log: Sink | None = None) -> RunResult | list[RunResult | None]:
    """Train a recipe and return its RunResult (a pipeline: one per stage, None for a skipped one).
    Calling it again in the same process starts clean: the first run's model and trainer are freed."""
    from finetune.pipeline import run as run_recipe
    from finetune.stages import Pipeline, run_pipeline

    spec = _as_recipe(recipe)
    try:
        if isinstance(spec, Pipeline):
            return run_pipeline(spec, overwrite=overwrite, rerun=set(rerun), log=log)
        return run_recipe(spec, overwrite=overwrite, resume=resume, log=log)
    finally:
        release_memory()


def release_memory() -> None:
    """Free what a finished run left: Python cycles (trainer <-> model) and the CUDA cache."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate(run_dir: str | Path, prompt: str | list[dict[str, Any]], *, system: str | None = None,
             max_new_tokens: int = 128, images: list[str | Path] = ()) -> str:
    """The trained model's greedy answer to `prompt` (a user message, or a whole conversation).
    `images`: image files shown before a text prompt (a vision-language run)."""
    from finetune.generate import generate as gen
    from finetune.generate import load_for_generation, load_vision_for_generation

    model, tokenizer = load_for_generation(run_dir)
    vision = load_vision_for_generation(run_dir, model)
    if images and isinstance(prompt, str):
        content = [*({"type": "image", "image": str(Path(p).expanduser().resolve())} for p in images),
                   {"type": "text", "text": prompt}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    else:
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    try:
        return gen(model, tokenizer, messages, max_new_tokens, vision)
    finally:
        del model
        release_memory()


def smoke(recipe: str | Path, overrides: list[str] = (), *, steps: int = 3, rows: int = 32,
          work_dir: str | Path | None = None) -> SmokeReport:
    """`ft smoke`: the recipe shrunk to a tiny model of its architecture; see finetune.smoke.runner."""
    from finetune.smoke.runner import smoke as run_smoke

    return run_smoke(recipe, overrides, steps=steps, rows=rows, work_dir=work_dir)

"""Pipelines of stages: sft -> reward -> ppo, or sft -> dpo, from one recipe.

A pipeline recipe has the shared keys of a recipe plus `stages:`, a mapping of stage name to a
stage body. A stage inherits the shared keys, may name a `recipe:` file to start from, and adds
its own keys (stage keys > shared keys > the stage's recipe file). A later stage refers to an
earlier stage's output as `${stages.NAME.output}` (its final/ directory) or `${stages.NAME.dir}`
(its run directory). Each stage writes a complete run directory under `<output_dir>/<name>/`.

Re-running skips the stages that finished; the first stage that did not finish resumes from its
last checkpoint, and every stage after a stage that ran runs again (its inputs changed).
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune.notices import Sink, notice, notices_to
from finetune.recipe.errors import Problem, RecipeError, Source
from finetune.recipe.loader import merge_recipes, read_with_extends, validate_raw
from finetune.recipe.schema import RecipeBase
from finetune.recipe.yaml_source import KeyPath, Positions

_REF = re.compile(r"\$\{stages\.([^.}]+)\.([^}]+)\}")
_NAME = re.compile(r"^[A-Za-z_][\w-]*$")
_SHARED_ONLY = ("stages", "output_dir", "description")


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: RecipeBase
    run_dir: Path

    def finished(self) -> bool:
        return (self.run_dir / "manifest.json").is_file() and (self.run_dir / "final").is_dir()


@dataclass(frozen=True)
class Pipeline:
    description: str
    output_dir: Path
    stages: tuple[Stage, ...]


def load(path: str | Path, overrides: list[str] = ()) -> RecipeBase | Pipeline:
    """A single recipe, or a pipeline when the file has `stages:`."""
    from finetune.recipe.loader import load_raw

    raw, positions = load_raw(path, overrides)
    staged = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] == "stages"]
    if staged and ("stages",) not in positions:
        # Only overrides wrote `stages`: the file is a single recipe, and a typo'd prefix must not
        # quietly turn it into a one-stage pipeline writing elsewhere.
        raise RecipeError([Problem(Source(f"override '{staged[0]}'"), "stages",
                                   f"{path} is a single recipe, not a pipeline; drop the 'stages.NAME.' prefix")])
    if "stages" in raw:
        return build_pipeline(raw, positions, Path(path))
    return validate_raw(raw, positions, Source(str(path), 1))


def build_pipeline(raw: dict[str, Any], positions: Positions, path: Path) -> Pipeline:
    """Validate every stage (all problems at once) and return them in order."""
    default = Source(str(path), 1)
    at = lambda key, message: Problem(positions.get(key, default), ".".join(map(str, key)), message)  # noqa: E731
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise RecipeError([at(("stages",), "expected a mapping of stage name to stage recipe")])
    if not isinstance(raw.get("output_dir"), str):
        raise RecipeError([at(("output_dir",), "a pipeline needs an output_dir; each stage writes under it")])
    output_dir = Path(raw["output_dir"]).expanduser().resolve()
    shared = {k: v for k, v in raw.items() if k not in _SHARED_ONLY}
    problems: list[Problem] = []
    stages: list[Stage] = []
    outputs: dict[str, dict[str, str]] = {}
    last = list(stages_raw)[-1]
    for name, body in stages_raw.items():
        key: KeyPath = ("stages", name)
        # A pipeline-level `export:` is for the deployable result: the last stage's model only.
        stage_shared = shared if name == last else {k: v for k, v in shared.items() if k != "export"}
        if not _NAME.match(str(name)) or not isinstance(body, dict):
            problems.append(at(key, "a stage needs a simple name (letters, digits, _ or -) and a mapping"))
            continue
        if "output_dir" in body:
            problems.append(at(key + ("output_dir",), f"a stage writes to <output_dir>/{name}; remove this key"))
        try:
            stage = _build_stage(str(name), dict(body), stage_shared, positions, path, output_dir, outputs)
        except RecipeError as err:
            problems += err.problems
            continue
        stages.append(stage)
        outputs[str(name)] = {"output": str(stage.run_dir / "final"), "dir": str(stage.run_dir)}
    if problems:
        raise RecipeError(_unique(problems))
    return Pipeline(str(raw.get("description", "")), output_dir, tuple(stages))


def _build_stage(name: str, body: dict[str, Any], shared: dict[str, Any], positions: Positions, path: Path,
                 output_dir: Path, outputs: dict[str, dict[str, str]]) -> Stage:
    key: KeyPath = ("stages", name)
    base: dict[str, Any] = {}
    stage_positions: Positions = {}
    recipe_ref = body.pop("recipe", None)
    body.pop("output_dir", None)
    if recipe_ref is not None:
        ref_path = (path.parent / str(recipe_ref)).resolve()
        if not ref_path.is_file():
            raise RecipeError([Problem(positions.get(key + ("recipe",), Source(str(path))),
                                       f"stages.{name}.recipe", f"recipe not found: {ref_path}")])
        base, stage_positions = read_with_extends(ref_path)
        base.pop("output_dir", None)
    stage_positions.update({k: v for k, v in positions.items() if k and k[0] not in _SHARED_ONLY})
    stage_positions.update({k[2:]: v for k, v in positions.items() if k[:2] == key and len(k) > 2})
    merged = merge_recipes(merge_recipes(base, shared), body)
    merged["output_dir"] = str(output_dir / name)
    problems: list[Problem] = []
    unresolved: set[str] = set()

    def report(at: KeyPath, message: str, value: str) -> None:
        unresolved.add(value)
        problems.append(Problem(stage_positions.get(at, Source(str(path))),
                                f"stages.{name}." + ".".join(map(str, at)), message))

    merged = _interpolate(merged, outputs, report)
    # Earlier stages' outputs do not exist yet; a bad reference is reported once, above.
    pending = frozenset(v["output"] for v in outputs.values()) | unresolved
    try:
        recipe = validate_raw(merged, stage_positions, Source(str(path), positions.get(key, Source("", 1)).line),
                              pending=pending)
    except RecipeError as err:
        problems += [_in_stage(p, name, positions) for p in err.problems]
    if problems:
        raise RecipeError(problems)
    return Stage(name, recipe, output_dir / name)


def _interpolate(node: Any, outputs: dict[str, dict[str, str]], report: Any, path: KeyPath = ()) -> Any:
    """Replace ${stages.NAME.output|dir} with the earlier stage's path."""
    if isinstance(node, dict):
        return {k: _interpolate(v, outputs, report, path + (k,)) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, outputs, report, path + (i,)) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        stage, field = match.group(1), match.group(2)
        if stage not in outputs:
            earlier = ", ".join(outputs) or "none"
            report(path, f"${{stages.{stage}.{field}}}: no earlier stage {stage!r} (earlier stages: {earlier})",
                   node)
            return match.group(0)
        if field not in outputs[stage]:
            report(path, f"${{stages.{stage}.{field}}}: a stage has 'output' (its final/) and 'dir'", node)
            return match.group(0)
        return outputs[stage][field]

    return _REF.sub(substitute, node)


def _in_stage(problem: Problem, name: str, positions: Positions) -> Problem:
    """Shared keys keep their own path (reported once); stage keys get the stage prefix."""
    shared_sources = {v for k, v in positions.items() if k and k[0] not in _SHARED_ONLY}
    if problem.source in shared_sources:
        return problem
    return Problem(problem.source, f"stages.{name}.{problem.path}" if problem.path else f"stages.{name}",
                   problem.message)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for p in problems:
        if (str(p.source), p.path, p.message) not in seen:
            seen.add((str(p.source), p.path, p.message))
            out.append(p)
    return out


def plan(pipeline: Pipeline, rerun: set[str]) -> list[tuple[Stage, bool]]:
    """(stage, run it?) for every stage: finished stages are skipped until one runs."""
    unknown = rerun - {s.name for s in pipeline.stages} - {"all"}
    if unknown:
        raise RecipeError([Problem(Source("--rerun"), "", f"no stage named {', '.join(sorted(unknown))}; "
                                   f"stages: {', '.join(s.name for s in pipeline.stages)}")])
    steps, dirty = [], "all" in rerun
    for stage in pipeline.stages:
        dirty = dirty or stage.name in rerun or not stage.finished()
        steps.append((stage, dirty))
    return steps


def run_pipeline(pipeline: Pipeline, *, overwrite: bool = False, rerun: set[str] = frozenset(),
                 log: Sink | None = None) -> list[Any]:
    """Run the stages that need it, in order; returns each stage's RunResult (None when skipped).
    Notices go to `log` when given, else to the current notice channel."""
    with notices_to(log) if log else nullcontext():
        return _run_stages(pipeline, overwrite=overwrite, rerun=rerun)


def _run_stages(pipeline: Pipeline, *, overwrite: bool, rerun: set[str]) -> list[Any]:
    from finetune.outputs import is_main_process, mark_ft_dir, replace_dir, write_atomic
    from finetune.pipeline import run

    if overwrite and is_main_process():
        replace_dir(pipeline.output_dir)
    if is_main_process():
        mark_ft_dir(pipeline.output_dir)
    steps = plan(pipeline, set(rerun))  # decided once, before any stage writes, identically on every rank
    if is_main_process():
        resolved = {s.name: s.recipe.model_dump(mode="json") for s in pipeline.stages}
        write_atomic(pipeline.output_dir / "pipeline.yaml", yaml.safe_dump(
            {"description": pipeline.description, "stages": resolved}, sort_keys=False))
    results = []
    for stage, needed in steps:
        if not needed:
            notice(f"stage {stage.name}: already finished in {stage.run_dir}; skipped (--rerun {stage.name} to redo)")
            results.append(None)
            continue
        notice(f"stage {stage.name}: {stage.recipe.objective.kind} -> {stage.run_dir}")
        redo = stage.finished()  # finished, but asked to redo (or an earlier stage changed)
        # A stage that failed part-way continues from its last checkpoint.
        partial = not redo and stage.run_dir.is_dir() and any(stage.run_dir.iterdir())
        results.append(run(stage.recipe, overwrite=redo, resume=partial))
    return results

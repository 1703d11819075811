"""`smoke(recipe)`: the same recipe (single or pipeline), shrunk to run on a CPU in seconds, with a
pass/fail check per step. The recipe is rewritten, never edited: the model becomes a small random
model of its own architecture with its real tokenizer, data the first rows of every dataset,
training a few steps; GPU-only settings are reduced to what this machine has, and the report says so."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from finetune.notices import notices_to
from finetune.recipe.schema import RecipeBase
from finetune.smoke import checks
from finetune.smoke.report import Check, SmokeReport
from finetune.smoke.shrink import ShrunkModel, shrink

MAX_LENGTH = 128  # tokens per example in a smoke run
LEARN_STEPS = 6
LEARN_ROWS = 4
# Objectives whose loss on one repeated batch must fall; RL objectives' losses are sampled, not fitted.
# Objectives whose loss on one repeated batch need not fall, and why; every other one must fit it.
NO_FIXED_BATCH = {"ppo": "its loss comes from sampled rollouts, not a fixed batch",
                  "grpo": "its loss comes from sampled rollouts, not a fixed batch",
                  "mlm": "its masked tokens are drawn anew for every batch"}
# PPO's rollout is capped: sampling and re-optimising long responses exercises no wiring that a few
# tokens and one pass do not, and it is most of a PPO stage's time on a CPU. GRPO's group size and
# completion length stay: its advantage is the spread of rewards within a group, and short, few
# completions of a random model all score alike (zero advantage, nothing trains).
ROLLOUT_CAPS = {"response_length": 8, "num_ppo_epochs": 1}


class _Shrinker:
    """Shrinks each model a recipe names once per smoke run, and rewrites recipes to use them."""

    def __init__(self, work: Path, steps: int, rows: int, report: SmokeReport, old_root: Path | None) -> None:
        self.work, self.steps, self.rows, self.report = work, steps, rows, report
        self.old_root, self.new_root = old_root, work / "runs"
        self.models: dict[tuple[str, str | None], ShrunkModel] = {}

    def model(self, name: str, revision: str | None, head: str | None = None) -> str:
        key = (name, head)
        if key not in self.models:
            # head None: the generating kind the config is (a causal LM, or an encoder-decoder such as T5).
            out = self.work / "models" / f"{len(self.models)}-{head or 'model'}"
            shrunk = shrink(name, out, revision=revision, head=head)
            self.models[key] = shrunk
            self.report.models.append(f"{name} -> {shrunk.architecture} ({head or 'its own head'}), "
                                      f"{shrunk.parameters:,} parameters, vocabulary {shrunk.vocab_size:,}")
        return str(self.models[key].path)

    def _moved(self, node: Any) -> Any:
        """Paths under the pipeline's output_dir now live under the smoke run's own directory."""
        if isinstance(node, dict):
            return {k: self._moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._moved(v) for v in node]
        if isinstance(node, str) and self.old_root is not None and node.startswith(str(self.old_root)):
            return str(self.new_root) + node[len(str(self.old_root)):]
        return node

    def _produced(self, path: str) -> bool:
        return path.startswith(str(self.new_root))

    def recipe(self, recipe: RecipeBase, stage: str) -> RecipeBase:
        from finetune.recipe.loader import recipe_model

        raw = self._moved(recipe.model_dump(mode="json"))
        raw["output_dir"] = str(self.new_root / stage)
        model = raw["model"]
        if not self._produced(model["name_or_path"]):
            model["name_or_path"] = self.model(model["name_or_path"], model.get("revision"))
            model["revision"] = None
        self._score_models(raw, recipe, stage)
        self._rollouts(raw["objective"], stage)
        self._data(raw["data"])
        self._training(raw["training"], stage, raw["objective"].get("num_generations"))
        return recipe_model().model_validate(raw)

    def _score_models(self, raw: dict[str, Any], recipe: RecipeBase, stage: str) -> None:
        """A reward/value model an earlier stage writes is used as written; one that exists is shrunk
        keeping its head; a missing one (ppo.yaml before its reward run) is the policy's shrunk
        with a score head, as the report says."""
        import json

        for field in checks.SCORE_MODEL_FIELDS:
            path = raw["objective"].get(field)
            if not isinstance(path, str) or self._produced(path):
                continue
            config = Path(path).expanduser() / "config.json"
            if config.is_file():
                archs = json.loads(config.read_text()).get("architectures") or []
                head = "sequence_classification" if any(a.endswith("ForSequenceClassification") for a in archs) \
                    else "causal_lm"
                raw["objective"][field] = self.model(str(Path(path).expanduser().resolve()), None, head)
            else:
                raw["objective"][field] = self.model(recipe.model.name_or_path, recipe.model.revision,
                                                     "sequence_classification")
                self.report.reductions.append(f"{stage}: objective.{field} {path} does not exist: a shrunk "
                                              f"{recipe.model.name_or_path} with a score head stands in")

    def _rollouts(self, objective: dict[str, Any], stage: str) -> None:
        for key, cap in ROLLOUT_CAPS.items():
            if isinstance(objective.get(key), int) and objective[key] > cap:
                self.report.reductions.append(f"{stage}: objective.{key} {objective[key]} -> {cap} (a short "
                                              f"rollout checks the same wiring)")
                objective[key] = cap

    def _data(self, data: dict[str, Any]) -> None:
        for spec in [*data["train"], *data["validation"]]:
            spec["max_rows"] = min(spec.get("max_rows") or self.rows, self.rows)
        data["max_length"] = min(data["max_length"], MAX_LENGTH)
        data["cache"] = False  # a smoke run must not fill the user's data cache

    def _training(self, t: dict[str, Any], stage: str, group: int | None) -> None:
        import torch

        t.update(max_steps=self.steps, logging_steps=1, save_steps=None)
        for key, reduced, why in self._reductions(t, torch.cuda.is_available(), group):
            self.report.reductions.append(f"{stage}: training.{key} {t[key]} -> {reduced} ({why})")
            t[key] = reduced

    @staticmethod
    def _reductions(t: dict[str, Any], cuda: bool, group: int | None) -> list[tuple[str, Any, str]]:
        out: list[tuple[str, Any, str]] = []
        # One micro-batch per step: accumulation multiplies a step's compute and checks no other wiring.
        # GRPO keeps it where one micro-batch would no longer hold whole groups of completions.
        if t["gradient_accumulation_steps"] > 1 and (group is None or t["batch_size"] % group == 0):
            out.append(("gradient_accumulation_steps", 1, "one micro-batch per smoke step"))
        if t["nproc"] > 1:
            out.append(("nproc", 1, "one process in a smoke run"))
        if t["report_to"]:
            out.append(("report_to", [], "no tracker in a smoke run"))
        if not cuda and t["device"] == "cuda":
            out.append(("device", "auto", "no CUDA device here"))
        if not cuda and t["precision"] in ("bf16", "fp16"):
            out.append(("precision", "fp32", "no GPU here"))
        return out


def fixed_batch(recipe: RecipeBase, out: Path) -> RecipeBase:
    """The same recipe on its first few rows, all in one batch, repeated at a constant learning rate:
    its loss must fall if the wiring (masks, labels, trainable parameters) is right."""
    from finetune.recipe.loader import recipe_model

    raw = recipe.model_dump(mode="json")
    for spec in raw["data"]["train"]:
        spec["max_rows"] = min(spec.get("max_rows") or LEARN_ROWS, LEARN_ROWS)
    raw["data"].update(validation=[], validation_fraction=0.0)
    raw["training"].update(batch_size=LEARN_ROWS * len(raw["data"]["train"]), gradient_accumulation_steps=1,
                           max_steps=LEARN_STEPS, learning_rate=1e-3, lr_scheduler="constant", warmup_steps=0,
                           warmup_ratio=0.0, eval_steps=None)
    raw["output_dir"] = str(out)
    return recipe_model().model_validate(raw)


def _train(stage: str, recipe: RecipeBase, sink: list[str]) -> tuple[Any, checks.ParameterWatch, Check | None]:
    from finetune.pipeline import run

    watch = checks.ParameterWatch()
    try:
        with notices_to(sink.append):
            return run(recipe, overwrite=True, callbacks=[watch]), watch, None
    except Exception as err:  # noqa: BLE001 - a failed run is a failed check, reported with its message
        return None, watch, Check(stage, "trains", "fail", checks._why(err))


def smoke_stage(stage: str, recipe: RecipeBase, work: Path, steps: int) -> list[Check]:
    """Every check of one stage (a single recipe is one stage)."""
    from finetune.registry import get_objective

    head = get_objective(recipe.objective.kind).model_head
    found = [checks.check_data(stage, recipe)]
    inputs = checks.check_score_models(stage, recipe)
    found += [inputs] if inputs else []
    if any(c.status == "fail" for c in found):
        return found + [Check(stage, "trains", "skip", "the checks above failed")]
    notes: list[str] = []
    result, watch, failed = _train(stage, recipe, notes)
    if failed:
        return found + [failed]
    found += [checks.check_loss_finite(stage, result.metrics), watch.check(stage),
              checks.check_final(stage, result.final_dir, head), checks.check_files(stage, result.run_dir)]
    found += _exports(stage, recipe, result.run_dir)
    why_not = NO_FIXED_BATCH.get(recipe.objective.kind)
    if why_not is None:
        learned, _, failed = _train(stage, fixed_batch(recipe, work / "fixed-batch" / stage), notes)
        found.append(failed or checks.check_learns(stage, learned.metrics, LEARN_STEPS))
    else:
        found.append(Check(stage, "learns: loss goes down on a fixed batch", "skip",
                           f"{recipe.objective.kind}: {why_not}"))
    return found


def _exports(stage: str, recipe: RecipeBase, run_dir: Path) -> list[Check]:
    """The recipe's `export:` list ran at the end of the run (finetune.pipeline): each target is in the
    manifest and what it wrote exists."""
    import json

    wanted = [spec.to for spec in getattr(recipe, "export", None) or []]
    if not wanted:
        return []
    manifest = json.loads((run_dir / "manifest.json").read_text())
    written = {entry["to"]: Path(entry["path"]) for entry in manifest.get("exports", [])}
    found = []
    for target in wanted:
        path = written.get(target)
        if path is None:
            found.append(Check(stage, f"export {target}", "fail", "not listed in the manifest's exports"))
        elif not path.exists():
            found.append(Check(stage, f"export {target}", "fail", f"{path} does not exist"))
        else:
            found.append(Check(stage, f"export {target}", "pass"))
    return found


def smoke(path: str | Path, overrides: list[str] = (), *, steps: int = 3, rows: int = 32,
          work_dir: str | Path | None = None) -> SmokeReport:
    """Run RECIPE shrunk; returns the report (its `exit_code` is 0 only when every check passed).
    An invalid recipe raises RecipeError; a model whose config/tokenizer are not cached raises
    SmokeSourceError."""
    from finetune.stages import Pipeline, load

    started = time.time()
    spec = load(path, list(overrides))
    report = SmokeReport(recipe=str(path))
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="ft-smoke-"))
    work = work.expanduser().resolve()
    if isinstance(spec, Pipeline):
        stages, old_root = [(s.name, s.recipe) for s in spec.stages], spec.output_dir
    else:
        stages, old_root = [(Path(str(path)).stem, spec)], None
    shrinker = _Shrinker(work, steps, rows, report, old_root)
    for name, recipe in stages:
        small = shrinker.recipe(recipe, name)
        report.checks += smoke_stage(name, small, work, steps)
        if any(c.status == "fail" for c in report.checks):
            break  # later stages read this one's output
    report.seconds = time.time() - started
    return report


def prefetch_recipe(path: str | Path, overrides: list[str] = ()) -> list[str]:
    """Cache the config and tokenizer (never weights) of every Hub model the recipe names."""
    from finetune.recipe.checks import looks_local
    from finetune.smoke.shrink import prefetch
    from finetune.stages import Pipeline, load

    spec = load(path, list(overrides))
    recipes = [s.recipe for s in spec.stages] if isinstance(spec, Pipeline) else [spec]
    names = {(r.model.name_or_path, r.model.revision) for r in recipes if not looks_local(r.model.name_or_path)}
    return [f"{name}: {prefetch(name, revision)}" for name, revision in sorted(names, key=str)]

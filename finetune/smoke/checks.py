"""The checks of a smoke run. Each returns a `Check`; none raises for a failing check."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from finetune.errors import FtError
from finetune.recipe.schema import RecipeBase
from finetune.smoke.report import Check

# Objective fields that name a model PPO/GRPO score with: they need a one-score classifier head.
SCORE_MODEL_FIELDS = ("reward_model", "value_model")


def _why(err: BaseException) -> str:
    return str(err) if isinstance(err, FtError) else f"{type(err).__name__}: {err}"


def check_data(stage: str, recipe: RecipeBase) -> Check:
    """Every dataset, through its real format, template and masks, yields examples with trained
    tokens (none dropped entirely); truncation and drops are counted in the detail."""
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data, setup_template
    from finetune.registry import get_objective

    name = "data: every dataset yields trained examples"
    try:
        objective = get_objective(recipe.objective.kind)
        tokenizer = load_tokenizer(recipe.model)
        setup_template(tokenizer, recipe, objective)
        data = load_data(recipe, tokenizer, objective)
    except Exception as err:  # noqa: BLE001 - any failure here is this check's failure, reported as such
        return Check(stage, name, "fail", _why(err))
    empty = [s.name for s in data.stats if s.tokenized and s.rows - s.dropped <= 0]
    details = "; ".join(f"{s.name}: {s.rows} rows, {s.truncated} truncated, {s.dropped} dropped" for s in data.stats)
    if empty:
        return Check(stage, name, "fail", f"no trained tokens left in {', '.join(empty)} ({details})")
    return Check(stage, name, "pass", details)


def check_score_models(stage: str, recipe: RecipeBase) -> Check | None:
    """A reward/value model a stage reads has a one-score sequence-classification head."""
    paths = [(f, getattr(recipe.objective, f, None)) for f in SCORE_MODEL_FIELDS]
    paths = [(f, p) for f, p in paths if isinstance(p, str)]
    if not paths:
        return None
    name = "inputs: reward/value model has a score head"
    for field, path in paths:
        config = Path(path) / "config.json"
        if not config.is_file():
            return Check(stage, name, "fail", f"objective.{field}: {path} has no config.json (not a model directory, "
                         "or an earlier stage did not write it)")
        archs = json.loads(config.read_text()).get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            return Check(stage, name, "fail", f"objective.{field}: {path} is {', '.join(archs) or 'no known class'}, "
                         "not a ...ForSequenceClassification reward model (train one with objective.kind=reward)")
    return Check(stage, name, "pass", ", ".join(f"{f}={p}" for f, p in paths))


def loss_values(metrics: list[dict[str, Any]]) -> list[float]:
    """Training losses as logged: `loss`, or an objective's split losses (`loss/...`)."""
    return [float(v) for m in metrics for k, v in m.items()
            if (k == "loss" or k.startswith("loss/")) and isinstance(v, (int, float))]


def check_loss_finite(stage: str, metrics: list[dict[str, Any]]) -> Check:
    name = "loss is finite"
    losses = loss_values(metrics)
    if not losses:
        return Check(stage, name, "fail", "no loss was logged")
    bad = [v for v in losses if not math.isfinite(v)]
    if bad:
        return Check(stage, name, "fail", f"{len(bad)} of {len(losses)} logged losses are not finite ({bad[0]})")
    return Check(stage, name, "pass", f"{len(losses)} values, {losses[0]:.4g} -> {losses[-1]:.4g}")


def check_learns(stage: str, metrics: list[dict[str, Any]], steps: int) -> Check:
    name = "learns: loss goes down on a fixed batch"
    losses = [float(m["loss"]) for m in metrics if isinstance(m.get("loss"), (int, float))]
    if len(losses) < 2:
        return Check(stage, name, "fail", f"fewer than two losses logged ({losses})")
    if not losses[-1] < losses[0]:
        return Check(stage, name, "fail", f"loss did not go down over {steps} steps on one batch: {losses}")
    return Check(stage, name, "pass", f"{losses[0]:.4g} -> {losses[-1]:.4g} over {len(losses)} steps")


def _param_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class ParameterWatch(_param_base()):  # type: ignore[misc]
    """Snapshots every parameter when training starts and compares when it ends: the trainable ones
    must have changed and the frozen ones must not have."""

    def __init__(self) -> None:
        self.before: dict[str, tuple[bool, Any]] = {}
        self.changed: dict[str, bool] = {}
        self.seen = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.seen = True
            self.before = {n: (p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()}

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        import torch

        if model is not None:
            now = dict(model.named_parameters())
            self.changed = {n: not torch.equal(old, now[n].detach()) for n, (_, old) in self.before.items() if n in now}

    def check(self, stage: str) -> Check:
        name = "parameters: trainable changed, frozen did not"
        if not self.seen or not self.changed:
            return Check(stage, name, "fail", "the trainer did not report its model at the start and end of training")
        trainable = [n for n, (grad, _) in self.before.items() if grad]
        frozen = [n for n, (grad, _) in self.before.items() if not grad]
        moved = [n for n in trainable if self.changed.get(n)]
        leaked = [n for n in frozen if self.changed.get(n)]
        detail = f"{len(moved)} of {len(trainable)} trainable tensors changed, {len(leaked)} of {len(frozen)} frozen"
        if not moved or leaked:
            example = leaked[0] if leaked else trainable[0] if trainable else "none trainable"
            return Check(stage, name, "fail", f"{detail} (e.g. {example})")
        return Check(stage, name, "pass", detail)


def check_final(stage: str, final_dir: Path, head: str) -> Check:
    """final/ loads back with the one loader and, for a generating model, answers a prompt."""
    from finetune.generate import generate
    from finetune.model_kinds import model_kind
    from finetune.models import load_trained

    generates = model_kind(head).generates
    name = "final/ loads back" + (" and generates" if generates else "")
    try:
        model, tokenizer = load_trained(final_dir, kind=head)
        if not generates:
            return Check(stage, name, "pass", type(model).__name__)
        text = generate(model, tokenizer, [{"role": "user", "content": "Hello"}], max_new_tokens=4)
    except Exception as err:  # noqa: BLE001 - a failing load is this check's failure
        return Check(stage, name, "fail", _why(err))
    return Check(stage, name, "pass", f"{type(model).__name__}, generated {text!r}")


def check_files(stage: str, run_dir: Path) -> Check:
    name = "manifest and metrics written"
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        return Check(stage, name, "fail", _why(err))
    if not lines or "objective" not in manifest:
        return Check(stage, name, "fail", f"metrics.jsonl has {len(lines)} records; manifest keys: {sorted(manifest)}")
    return Check(stage, name, "pass", f"manifest.json, metrics.jsonl ({len(lines)} records)")

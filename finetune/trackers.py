"""Experiment trackers (`training.report_to`): TensorBoard, Weights & Biases, MLflow.

Each tracker writes inside the run directory unless the user pointed it elsewhere through its own
environment variable, so a run directory stays complete and self-describing. transformers reads
these locations from the environment; they are set for the run only and restored afterwards, so
two runs in one process (a notebook) do not share a tracker directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tracker:
    module: str  # what must be importable (checked with find_spec, never imported at validate)
    extra: str  # the pip extra that installs it
    env: tuple[tuple[str, str], ...]  # (variable, value template with {run_dir}) set unless the user set it


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("tensorboard", "tensorboard", (("TENSORBOARD_LOGGING_DIR", "{run_dir}/tensorboard"),)),
    "wandb": Tracker("wandb", "wandb", (("WANDB_DIR", "{run_dir}"), ("WANDB_PROJECT", "ft"))),
    # MLflow's plain file store is opt-in since MLflow 3 (MLFLOW_ALLOW_FILE_STORE); it needs no database.
    "mlflow": Tracker("mlflow", "mlflow", (("MLFLOW_TRACKING_URI", "file://{run_dir}/mlruns"),
                                           ("MLFLOW_ALLOW_FILE_STORE", "true"))),
}


def tracker_problems(report_to: list[str]) -> list[tuple[int, str]]:
    """(index in report_to, message) for every tracker that is unknown or not installed."""
    problems = []
    for i, name in enumerate(report_to):
        tracker = TRACKERS.get(name)
        if tracker is None:
            problems.append((i, f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}"))
        elif importlib.util.find_spec(tracker.module) is None:
            problems.append((i, f"{name} is not installed; install it with: pip install 'ft-toolkit[{tracker.extra}]'"))
    return problems


@contextmanager
def tracking_env(report_to: list[str], run_dir: Path) -> Iterator[None]:
    """Point the named trackers inside `run_dir` for the duration of the run (the user's own
    settings win), restoring the environment afterwards."""
    saved: dict[str, str | None] = {}
    for name in report_to:
        for variable, template in TRACKERS[name].env if name in TRACKERS else ():
            if variable not in os.environ:
                saved[variable] = None
                os.environ[variable] = template.format(run_dir=run_dir)
    if "wandb" in report_to:
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for variable in saved:
            os.environ.pop(variable, None)


def run_config_callback(report_to: list[str], config: dict[str, Any]) -> Any:
    """A TrainerCallback that logs the run name, the resolved recipe and the manifest's known parts
    as the tracker run's config when training starts (after transformers' own callbacks opened
    their runs). Built here so that importing this module (ft validate) does not import transformers."""
    from transformers import TrainerCallback

    class RunConfigCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if not state.is_world_process_zero:
                return
            flat = {"ft_run_name": args.run_name, "ft_recipe": json.dumps(config["recipe"]),
                    "ft_manifest": json.dumps(config["manifest"])}
            for name in report_to:
                _LOGGERS[name](flat, config)

    return RunConfigCallback()


def _to_wandb(flat: dict[str, str], config: dict[str, Any]) -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.config.update({"ft": config}, allow_val_change=True)


def _to_mlflow(flat: dict[str, str], config: dict[str, Any]) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_dict(config, "ft_config.json")
        mlflow.set_tag("ft_run_name", flat["ft_run_name"])


def _to_tensorboard(flat: dict[str, str], config: dict[str, Any]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=os.environ.get("TENSORBOARD_LOGGING_DIR"))
    for key, value in flat.items():
        writer.add_text(key, value)
    writer.close()


_LOGGERS = {"wandb": _to_wandb, "mlflow": _to_mlflow, "tensorboard": _to_tensorboard}

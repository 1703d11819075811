"""training.report_to: TensorBoard, W&B (offline) and MLflow (local file store) write inside the run
directory and log the run name, the resolved recipe and the manifest; a tracker that is not
installed is a validate-time error naming the extra."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from finetune.pipeline import run
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from finetune.trackers import TRACKERS, Tracker
from tests._runs import ROOT

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
INSTALLED = [name for name, t in TRACKERS.items() if importlib.util.find_spec(t.module) is not None]


def test_unknown_or_missing_tracker_is_a_validate_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RecipeError, match=r"training\.report_to\.0: unknown tracker 'tensorbord'"):
        load_recipe(QUICKSTART, ["training.report_to=[tensorbord]"])
    monkeypatch.setitem(TRACKERS, "wandb", Tracker("ft_no_such_module", "wandb", ()))
    with pytest.raises(RecipeError, match=r"wandb is not installed; install it with: pip install 'ft-toolkit\[wandb\]'"):
        load_recipe(QUICKSTART, ["training.report_to=[wandb]"])


@pytest.mark.slow
@pytest.mark.skipif(len(INSTALLED) < 3, reason=f"needs tensorboard, wandb and mlflow (installed: {INSTALLED})")
def test_trackers_write_inside_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(variable, raising=False)
    recipe = load_recipe(QUICKSTART, [f"output_dir={tmp_path / 'run'}", "training.max_steps=2",
                                      "training.logging_steps=1", "training.report_to=[tensorboard,wandb,mlflow]"])
    result = run(recipe, log=lambda _: None)
    run_dir = result.run_dir
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert wandb_runs and list(wandb_runs[0].rglob("*.wandb"))
    import wandb

    assert wandb.run is not None and wandb.run.name == "run"  # the run dir's name
    assert wandb.run.config["ft"]["recipe"]["output_dir"] == str(run_dir)
    wandb.finish()
    ft_configs = list((run_dir / "mlruns").rglob("ft_config.json"))
    assert ft_configs, sorted(str(p) for p in (run_dir / "mlruns").rglob("*"))[:20]
    logged = json.loads(ft_configs[0].read_text())
    assert logged["recipe"]["output_dir"] == str(run_dir) and logged["manifest"]["objective"] == "sft"
    assert list((run_dir / "mlruns").rglob("ft_run_name")), "run name tag"
    for variable in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "MLFLOW_TRACKING_URI"):
        assert variable not in os.environ  # restored after the run

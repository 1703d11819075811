"""Checked, preemption-safe resume: a run stopped by a signal saves a complete checkpoint at the end of
the step, `--resume` continues it to exactly the losses of the uninterrupted run, a changed recipe is
refused before anything loads, a corrupt checkpoint falls back to the previous one, and a diverging
run stops with an error instead of a "Done"."""

from __future__ import annotations

import json
import os
import signal
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from finetune.errors import TrainingError
from finetune.guards import INTERRUPTED_EXIT_CODE, Interrupted
from finetune.resume import STAMP, ResumeError
from finetune.pipeline import run
from finetune.recipe.loader import load_recipe
from tests._runs import train, write_recipe

TOLERANCE = 1e-5


class SignalAt(TrainerCallback):
    """Sends this process SIGTERM while step `step` runs, as a scheduler preempting the job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def losses(metrics: list[dict[str, Any]]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics if "loss" in m}


def assert_no_half_written_files(run_dir: Path) -> None:
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())


def interrupted_then_resumed(recipe: Path, tmp: Path, *overrides: str, stop_at: int = 3) -> dict[int, float]:
    """Train `recipe` into tmp/run, stopped by SIGTERM during step `stop_at`, then resume it."""
    with pytest.raises(Interrupted, match=rf"(?s)stopped after step {stop_at}.*--resume") as stopped:
        run(load_recipe(recipe, [*overrides, f"output_dir={tmp}"]), callbacks=[SignalAt(stop_at)])
    assert stopped.value.exit_code == INTERRUPTED_EXIT_CODE
    checkpoint = tmp / "checkpoints" / f"checkpoint-{stop_at}"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / STAMP).is_file()
    assert not (tmp / "final").exists() and not (tmp / "manifest.json").exists()
    assert_no_half_written_files(tmp)
    resumed, _ = train(recipe, *overrides, f"output_dir={tmp}", resume=True)
    return losses(resumed.metrics)


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_sft_resumed_after_sigterm_reproduces_the_uninterrupted_losses(tiny_models: dict[str, Path], tmp_path: Path,
                                                                        adapter: str) -> None:
    # 10 rows, batch 4: steps 1-3 are epoch 1 and 4-6 epoch 2, so stopping at 4 resumes mid-epoch.
    recipe = write_recipe(tmp_path, tiny_models["llama"], adapter=adapter)
    lr = "training.learning_rate=1e-3" if adapter == "none" else "training.learning_rate=1e-2"
    full, _ = train(recipe, lr)
    expected = losses(full.metrics)
    got = interrupted_then_resumed(recipe, tmp_path / "resumed", lr, stop_at=4)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]  # metrics.jsonl continued, no duplicates
    assert all(abs(got[s] - expected[s]) <= TOLERANCE for s in expected), (got, expected)


def _ft(*args: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name("ft")), *args]


def _env() -> dict[str, str]:
    from tests._runs import ROOT

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_ft_run_killed_by_sigterm_saves_and_resumes_to_the_same_losses(tiny_models: dict[str, Path],
                                                                       tmp_path: Path, nproc: int) -> None:
    import subprocess
    import time

    from tests._runs import ROOT

    recipe = write_recipe(tmp_path, tiny_models["llama"])
    args = ["training.max_steps=24", "training.save_steps=10", "training.batch_size=1", f"--nproc={nproc}"]
    full = subprocess.run(_ft("run", str(recipe), *args, f"output_dir={tmp_path / 'full'}"), env=_env(),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert full.returncode == 0, full.stderr[-3000:]
    run_dir = tmp_path / "stopped"
    command = _ft("run", str(recipe), *args, f"output_dir={run_dir}")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 240
    while _logged_steps(run_dir) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, err[-3000:]
    stopped_at = _logged_steps(run_dir)
    assert 3 <= stopped_at < 24
    assert f"stopped after step {stopped_at}" in err and "Done" not in out
    assert f"{' '.join(command[1:])} --resume" in err  # the exact command that continues the run
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{stopped_at}"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert_no_half_written_files(run_dir)
    resumed = subprocess.run([*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=300,
                             cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    read = lambda d: {m["step"]: m["loss"] for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                      if "loss" in m}  # noqa: E731
    expected, got = read(tmp_path / "full"), read(run_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    assert all(abs(got[s] - expected[s]) <= TOLERANCE for s in expected), (got, expected)
    assert_no_half_written_files(run_dir)

"""Checked, preemption-safe resume: a run stopped by a signal saves a complete checkpoint at the end of
the step, `--resume` continues it to exactly the losses of the uninterrupted run, a changed recipe is
refused before anything loads, a corrupt checkpoint falls back to the previous one, and a diverging
run stops with an error instead of a "Done"."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from finetune.errors import TrainingError
from finetune.guards import INTERRUPTED_EXIT_CODE, Interrupted
from finetune.pipeline import run
from finetune.recipe.loader import load_recipe
from finetune.resume import STAMP, ResumeError
from tests._runs import CHAT_DATA as CHAT
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dpo_resumed_after_sigterm_reproduces_the_uninterrupted_losses(align_model: Path, align_data: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, align_model, data=align_data["pairs"], fmt="preference", objective="dpo")
    fast = ("training.max_steps=6", "data.max_length=64", "objective.beta=0.5")
    full, _ = train(recipe, *fast)
    expected = losses(full.metrics)
    got = interrupted_then_resumed(recipe, tmp_path / "resumed", *fast, stop_at=4)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert all(abs(got[s] - expected[s]) <= TOLERANCE for s in expected), (got, expected)


def test_resume_refuses_a_recipe_that_changes_training_and_accepts_harmless_changes(
        tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notices: list[str]) -> None:
    import finetune.models

    data = tmp_path / "chat.jsonl"
    shutil.copyfile(CHAT, data)
    recipe = write_recipe(tmp_path, tiny_models["llama"], data=data)
    train(recipe, "training.max_steps=3")
    load_tokenizer = finetune.models.load_tokenizer

    def must_not_load(*_: Any) -> None:
        raise AssertionError("a refused resume loaded the tokenizer")

    monkeypatch.setattr(finetune.models, "load_tokenizer", must_not_load)
    with pytest.raises(ResumeError) as refused:
        train(recipe, "training.max_steps=3", "training.learning_rate=0.05", "data.max_length=64",
              "adapter.r=8", "training.max_steps=2", resume=True)
    message = str(refused.value)
    for line in ("training.learning_rate: 0.01 -> 0.05", "data.max_length: 128 -> 64", "adapter.r: 16 -> 8",
                 "training.max_steps: 3 -> 2", "checkpoint-3"):
        assert line in message, message
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ResumeError, match=r"world size: 1 -> 2 processes.*--nproc 1"):
        train(recipe, "training.max_steps=3", resume=True)
    monkeypatch.delenv("WORLD_SIZE")
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])
    with pytest.raises(ResumeError, match=r"data.train\[0\] .*content changed"):
        train(recipe, "training.max_steps=3", resume=True)
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:-1]))

    monkeypatch.setattr(finetune.models, "load_tokenizer", load_tokenizer)
    resumed, _ = train(recipe, "training.max_steps=5", "training.logging_steps=2", "training.save_steps=5",
                       "training.progress_bar=true", resume=True)
    # Logged every 2 steps after step 3, and at the last step.
    assert [m["step"] for m in resumed.metrics if "loss" in m] == [1, 2, 3, 4, 5]
    allowed = next(n for n in notices if n.startswith("resuming checkpoint-3 with changes"))
    for line in ("training.max_steps: 3 -> 5", "training.logging_steps: 1 -> 2", "training.progress_bar: false -> true"):
        assert line in allowed
    stretched = next(n for n in notices if "learning-rate schedule is recomputed" in n)
    assert stretched.startswith("training.max_steps: 3 -> 5") and "checkpoint-3" in stretched


def test_a_corrupt_checkpoint_falls_back_to_the_previous_complete_one(tiny_models: dict[str, Path], tmp_path: Path,
                                                                      notices: list[str]) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    first, _ = train(recipe)  # checkpoints 3 and 6
    expected = losses(first.metrics)
    checkpoints = first.run_dir / "checkpoints"
    optimizer = checkpoints / "checkpoint-6" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    resumed, _ = train(recipe, resume=True)
    fallback = next(n for n in notices if n.startswith("resuming from checkpoint-3 instead"))
    assert str(optimizer) in fallback and "delete it" in fallback
    got = losses(resumed.metrics)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert all(abs(got[s] - expected[s]) <= TOLERANCE for s in expected)

    for checkpoint in checkpoints.glob("checkpoint-*"):
        (checkpoint / "trainer_state.json").write_text('{"global_step": 3,')
    with pytest.raises(ResumeError, match=r"no complete checkpoint.*trainer_state.json: not valid JSON"):
        train(recipe, resume=True)


@pytest.fixture(scope="module")
def one_checkpoint(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete LoRA checkpoint (read-only for tests: copy it before damaging it)."""
    recipe = write_recipe(tmp_path_factory.mktemp("one-checkpoint"), tiny_models["llama"])
    first, _ = train(recipe, "training.max_steps=1", "training.save_steps=1")
    return first.run_dir / "checkpoints" / "checkpoint-1"


@pytest.mark.parametrize("name, damage", [
    ("optimizer.pt", lambda b: b[: len(b) // 2]),
    ("scheduler.pt", lambda b: b"garbage" * 10),
    ("rng_state.pth", lambda b: b[:-20]),
    ("trainer_state.json", lambda b: b[: len(b) // 2]),
    ("adapter_model.safetensors", lambda b: b[:-4]),
    ("adapter_model.safetensors", lambda b: b"\xff" * 64),
    ("trainer_state.json", None),
])
def test_each_damaged_checkpoint_file_is_named(one_checkpoint: Path, tmp_path: Path, name: str, damage: Any) -> None:
    from finetune.resume import checkpoint_problem

    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(one_checkpoint, checkpoint)
    assert checkpoint_problem(checkpoint) is None
    path = checkpoint / name
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    problem = checkpoint_problem(checkpoint)
    assert problem is not None and str(path) in problem


def test_a_diverging_run_stops_naming_the_step_and_writes_no_broken_checkpoint(tiny_models: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    recipe = write_recipe(tmp_path, tiny_models["llama"], adapter="none")
    with pytest.raises(TrainingError, match=r"training diverged at step (\d+): gradient norm is nan") as failed:
        train(recipe, "training.learning_rate=1e30", "training.save_steps=1", "training.max_steps=20")
    assert failed.value.exit_code == 1
    step = int(__import__("re").search(r"step (\d+)", str(failed.value)).group(1))
    run_dir = tmp_path / "run"
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert saved and max(saved) == step - 1, "the last good checkpoint is kept, nothing after it"
    assert f"checkpoint-{step - 1}" in str(failed.value)
    weights = load_file(run_dir / "checkpoints" / f"checkpoint-{step - 1}" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (run_dir / "final").exists() and not (run_dir / "manifest.json").exists()


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
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
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
    resumed = subprocess.run([*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=300, check=False,
                             cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    read = lambda d: {m["step"]: m["loss"] for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                      if "loss" in m}
    expected, got = read(tmp_path / "full"), read(run_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    assert all(abs(got[s] - expected[s]) <= TOLERANCE for s in expected), (got, expected)
    assert_no_half_written_files(run_dir)


class SignalTwiceAt(SignalAt):
    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_signal_stops_at_once_without_saving(tiny_models: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import finetune.guards
    from finetune.guards import StoppedAtOnce

    monkeypatch.setattr(finetune.guards, "REPEAT_WINDOW_S", 0.0)  # no repeat from a launcher in this test
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    with pytest.raises(StoppedAtOnce, match="SIGINT received twice: stopped at once") as stopped:
        run(load_recipe(recipe, []), callbacks=[SignalTwiceAt(2)])
    assert stopped.value.exit_code == 143
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert_no_half_written_files(tmp_path / "run")


def test_resume_with_another_process_count_is_refused_before_launching(tiny_models: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    import subprocess

    from tests._runs import ROOT

    recipe = write_recipe(tmp_path, tiny_models["llama"])
    train(recipe, "training.max_steps=3")
    proc = subprocess.run(_ft("run", str(recipe), "training.max_steps=3", "--nproc", "2", "--resume"), env=_env(),
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "world size: 1 -> 2 processes" in proc.stderr and "--nproc 1" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("world size") == 1  # the parent refused alone

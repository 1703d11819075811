"""The Python API: one light import, recipes from a dict with the same errors as files, typed
errors (never SystemExit), and two runs in one process that do not share state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import FtError, Recipe, generate, run
from finetune.recipe.errors import RecipeError
from tests._runs import ROOT

QUICKSTART = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())


def _dict(out: Path, **training: object) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(QUICKSTART))
    raw["model"]["name_or_path"] = str(ROOT / "examples" / "models" / "tiny-chat")
    raw["data"]["train"][0]["path"] = str(ROOT / "examples" / "data" / "quickstart.jsonl")
    raw["training"].update(max_steps=2, logging_steps=1, save_steps=None, **training)
    raw["output_dir"] = str(out)
    return raw


def test_import_finetune_does_not_import_torch() -> None:
    code = "import sys, finetune; from finetune import Recipe, run, generate, smoke; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_api_names_win_over_submodules() -> None:
    import finetune.generate  # noqa: F401 - a submodule of the same name, imported on purpose

    assert callable(finetune.generate) and finetune.generate.__module__ == "finetune.api"
    with pytest.raises(AttributeError):
        finetune.no_such_name  # noqa: B018


def test_from_dict_validates_like_a_file(tmp_path: Path) -> None:
    raw = _dict(tmp_path / "run")
    raw["training"]["learning_rat"] = 1e-3
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(raw)
    assert "<dict>" in str(err.value) and "training.learning_rat: unknown key (did you mean learning_rate?)" in str(err.value)
    assert Recipe.from_dict(_dict(tmp_path / "run"), ["training.max_steps=3"]).training.max_steps == 3


def test_user_errors_are_ft_errors_not_system_exit(tmp_path: Path) -> None:
    with pytest.raises(FtError, match="no trained model here"):
        generate(tmp_path / "nothing-here", "hi")
    with pytest.raises(FtError):
        Recipe.load(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_two_runs_in_one_process(tmp_path: Path) -> None:
    from finetune import notices

    sink_before = notices._sink
    first = run(Recipe.from_dict(_dict(tmp_path / "a")), log=lambda _: None)
    second = run(Recipe.from_dict(_dict(tmp_path / "b", learning_rate=1e-4)), log=lambda _: None)
    assert first.run_dir != second.run_dir and second.run_dir.name == "b"
    assert (second.run_dir / "final").is_dir() and second.metrics and second.metrics != first.metrics
    assert notices._sink is sink_before  # no notice sink left over
    assert type(second.plot()).__name__ == "Image"
    assert isinstance(generate(second.run_dir, "What is ft?", max_new_tokens=4), str)

"""Pipelines of stages: shared keys, ${stages.NAME.output}, per-stage run directories, skipping
finished stages and resuming at the stage that failed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from data_templates.prepare import DataError
from finetune.recipe.errors import RecipeError
from finetune.stages import Pipeline, load, run_pipeline
from tests._runs import CHAT_DATA, ROOT


def write_pipeline(tmp_path: Path, model: Path, second_data: Path = CHAT_DATA) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(f"""
        # Run: ft run pipeline.yaml
        description: two sft stages, the second starting from the first's output
        model:
          name_or_path: {model}
        adapter:
          kind: none
        data:
          train:
            - path: {CHAT_DATA}
              format: messages
          max_length: 128
        objective:
          kind: sft
        training:
          max_steps: 2
          batch_size: 4
          learning_rate: 1.0e-3
          logging_steps: 1
          progress_bar: false
        seed: 0
        output_dir: {tmp_path / "out"}
        stages:
          first: {{}}
          second:
            model:
              name_or_path: ${{stages.first.output}}
            data:
              train:
                - path: {second_data}
                  format: messages
            training:
              max_steps: 3
        """).lstrip())
    return path


def test_stages_inherit_shared_keys_and_refer_to_earlier_outputs(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    pipeline = load(write_pipeline(tmp_path, tiny_models["llama"]))
    assert isinstance(pipeline, Pipeline)
    first, second = pipeline.stages
    assert first.recipe.training.max_steps == 2 and second.recipe.training.max_steps == 3
    assert second.recipe.training.learning_rate == pytest.approx(1e-3)  # shared
    assert second.recipe.model.name_or_path == str(tmp_path / "out" / "first" / "final")
    assert first.run_dir == tmp_path / "out" / "first"


def test_stage_problems_are_reported_together_with_the_stage_in_the_path(tiny_models: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, tiny_models["llama"])
    text = path.read_text().replace("${stages.first.output}", "${stages.third.output}")
    path.write_text(text.replace("      max_steps: 3", "      max_step: 3"))
    with pytest.raises(RecipeError) as info:
        load(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}:26  stages.second.model.name_or_path: ${{stages.third.output}}: no earlier stage 'third' "
        f"(earlier stages: first)",
        f"{path}:32  stages.second.training.max_step: unknown key (did you mean max_steps?)",
    ]
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"stages.second.model.name_or_path"):
        load(path)


@pytest.mark.slow
def test_a_failed_stage_resumes_and_finished_stages_are_skipped(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    path = write_pipeline(tmp_path, tiny_models["llama"], second_data=bad)
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*assistant"):
        run_pipeline(load(path), log=lambda *_: None)
    first_manifest = (tmp_path / "out" / "first" / "manifest.json").read_text()
    assert not (tmp_path / "out" / "second" / "manifest.json").exists()

    bad.write_text(CHAT_DATA.read_text())  # the user fixes the data and runs again
    messages: list[str] = []
    results = run_pipeline(load(path), log=messages.append)
    assert results[0] is None and results[1] is not None
    assert any("stage first: already finished" in m for m in messages)
    assert (tmp_path / "out" / "first" / "manifest.json").read_text() == first_manifest  # untouched
    second = json.loads((tmp_path / "out" / "second" / "manifest.json").read_text())
    assert second["base_model"] == str(tmp_path / "out" / "first" / "final")
    assert (tmp_path / "out" / "pipeline.yaml").exists()

    # Asking for the first stage again reruns it and everything after it.
    results = run_pipeline(load(path), rerun={"first"}, log=lambda *_: None)
    assert all(r is not None for r in results)
    with pytest.raises(RecipeError, match="no stage named nope"):
        run_pipeline(load(path), rerun={"nope"})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pipeline_dpo", "pipeline_rlhf"])
def test_shipped_pipelines_run_end_to_end_with_a_local_model(name: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only model.name_or_path is overridden (to the shipped tiny model), as the recipes promise."""
    from finetune.generate import generate, load_for_generation

    monkeypatch.chdir(ROOT)
    pipeline = load(ROOT / "recipes" / f"{name}.yaml",
                    ["model.name_or_path=examples/models/tiny-chat", f"output_dir={tmp_path}"])
    results = run_pipeline(pipeline, log=lambda *_: None)
    assert all(r is not None for r in results)
    for stage in pipeline.stages:
        manifest = json.loads((stage.run_dir / "manifest.json").read_text())
        assert manifest["objective"] == stage.recipe.objective.kind
    last = pipeline.stages[-1]
    assert json.loads((last.run_dir / "manifest.json").read_text())["merged_base"] == str(last.run_dir / "base")
    model, tokenizer = load_for_generation(last.run_dir)
    assert isinstance(generate(model, tokenizer, [{"role": "user", "content": "What is 2+3?"}], 4), str)

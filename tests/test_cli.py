"""The `ft` command: lazy imports, exit codes, listing, schema, generate and chat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tests._runs import ROOT, train, write_recipe

runner = CliRunner()


def _modules_after(*args: str) -> set[str]:
    code = ("import sys, cli\n"
            "try:\n    cli.app(args=sys.argv[1:], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_help_and_validate_do_not_import_torch() -> None:
    for args in (["--help"], ["validate", "recipes/sft_lora.yaml"], ["recipes"]):
        loaded = _modules_after(*args)
        assert "torch" not in loaded and "transformers" not in loaded, args


def test_validate_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    ok = runner.invoke(app, ["validate", "recipes/sft_lora.yaml"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["validate", "recipes/sft_lora.yaml", "training.learning_rat=1"])
    assert bad.exit_code == 2
    assert "training.learning_rat: unknown key (did you mean learning_rate?)" in bad.output
    assert "Traceback" not in bad.output
    extra = runner.invoke(app, ["validate", "recipes/sft_lora.yaml", "training.extra={packin: true}"])
    assert extra.exit_code == 2 and "training.extra.packin: not a field of SFTConfig (did you mean packing?)" in extra.output
    printed = runner.invoke(app, ["validate", "recipes/sft_qlora.yaml", "--print"])
    assert printed.exit_code == 0 and "kind: qlora" in printed.output and "learning_rate: 0.0002" in printed.output


def test_recipes_lists_every_shipped_recipe_with_a_description() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == len(list((ROOT / "recipes").glob("*.yaml")))
    assert all(len(line.split(None, 1)) == 2 for line in lines)
    assert any(line.startswith("quickstart") for line in lines)


def test_objectives_lists_every_registered_kind_with_its_formats() -> None:
    result = runner.invoke(app, ["objectives"])
    assert result.exit_code == 0
    kinds = [line.split()[0] for line in result.output.splitlines() if not line.startswith(" ")]
    assert kinds == ["sft", "pretrain", "classify", "mlm", "seq2seq", "vlm_sft", "dpo", "reward", "kto", "ppo", "grpo",
                     "orpo", "simpo"]
    assert "data: preference; model: causal_lm" in result.output and "data: prompt_only" in result.output
    assert "model: seq2seq_lm" in result.output and "model: vision_causal_lm" in result.output
    assert "data: classification; model: sequence_classification" in result.output
    assert "torch" not in _modules_after("objectives")


def test_schema_is_json_with_the_fixed_keys() -> None:
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.output)
    assert {"model", "adapter", "data", "objective", "training", "seed", "output_dir"} <= set(schema["properties"])


def test_run_refuses_existing_output_with_a_clear_message(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "already holds a run" in result.output and "--overwrite" in result.output


def test_offline_hub_model_says_what_it_could_not_find(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, Path("some-org/not-a-local-model"))
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "could not find 'some-org/not-a-local-model'" in result.output
    assert "Traceback" not in result.output


def test_generate_and_chat_use_the_trained_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result, _ = train(write_recipe(tmp_path, tiny_models["llama"]))
    gen = runner.invoke(app, ["generate", str(result.run_dir), "--prompt", "What is ft?", "--max-new-tokens", "4"])
    assert gen.exit_code == 0, gen.output
    chat = runner.invoke(app, ["chat", str(result.run_dir), "--max-new-tokens", "4"],
                         input="hello\n/reset\nWhat is ft?\n/exit\nnot read\n")
    assert chat.exit_code == 0, chat.output
    assert chat.output.count("ft> ") == 2
    missing = runner.invoke(app, ["generate", str(tmp_path), "--prompt", "x"])
    assert missing.exit_code == 2 and "no trained model here" in missing.output


def test_data_preview_of_a_pipeline_needs_a_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = ["data", "preview", "recipes/pipeline_dpo.yaml", "model.name_or_path=examples/models/tiny-chat"]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "choose a stage with --stage (sft, dpo)" in missing.output
    pending = runner.invoke(app, [*args, "--stage", "dpo"])
    assert pending.exit_code == 2 and "starts from stage sft's output, which does not exist yet" in pending.output
    shown = runner.invoke(app, [*args, "--stage", "dpo", "stages.dpo.model.name_or_path=examples/models/tiny-chat",
                                "--json", "--n", "1"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.stdout.splitlines()[0])
    assert set(row) == {"chosen", "rejected"} and -100 in row["chosen"]["labels"]


def test_extra_cannot_shadow_what_the_recipe_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["validate", "recipes/sft_lora.yaml", "training.extra={learning_rate: 1}"])
    assert result.exit_code == 2
    assert "training.extra.learning_rate: ft sets this from training.learning_rate; set it there" in result.output

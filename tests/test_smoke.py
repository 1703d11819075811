"""`ft smoke`: shipped recipes pass offline against a cache of configs and tokenizers only, recipes
made faulty on purpose fail with the right check named, and the shrunk models keep their
architecture, vocabulary and chat template."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from finetune.api import smoke
from finetune.recipe.errors import RecipeError
from finetune.smoke.report import SmokeReport
from tests._fake_hub import write_fake_hub
from tests._runs import ROOT

QUICKSTART = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
TINY_CHAT = str(ROOT / "examples" / "models" / "tiny-chat")
SHIPPED = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_hub(tmp_path_factory.mktemp("hf"))


@pytest.fixture
def offline_hub(fake_hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(fake_hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(ROOT)
    return fake_hub


def _recipe(tmp_path: Path, **changes: object) -> Path:
    raw = json.loads(json.dumps(QUICKSTART))
    raw["model"]["name_or_path"] = TINY_CHAT
    raw["data"]["train"][0]["path"] = str(ROOT / "examples" / "data" / "quickstart.jsonl")
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _failed(report: SmokeReport) -> list[str]:
    return [c.name for c in report.failed()]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_passes_offline(name: str, offline_hub: Path, tmp_path: Path) -> None:
    report = smoke(ROOT / "recipes" / f"{name}.yaml", steps=2, rows=16, work_dir=tmp_path)
    assert report.ok, report.render()
    assert report.exit_code == 0


@pytest.mark.slow
def test_report_lines_junit_and_reductions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    recipe = _recipe(tmp_path, training__nproc=2, training__precision="bf16", training__report_to=["tensorboard"])
    report = smoke(recipe, steps=2, rows=8, work_dir=tmp_path / "w")
    assert report.ok, report.render()
    names = [c.name for c in report.checks]
    assert names[:6] == ["data: every dataset yields trained examples", "loss is finite",
                         "parameters: trainable changed, frozen did not", "final/ loads back and generates",
                         "manifest and metrics written", "learns: loss goes down on a fixed batch"]
    reduced = "\n".join(report.reductions)
    assert "training.nproc 2 -> 1" in reduced and "training.report_to" in reduced
    assert "training.precision bf16 -> fp32" in reduced
    assert "LlamaForCausalLM" in report.models[0]
    junit = ET.parse(report.write_junit(tmp_path / "smoke.xml")).getroot()
    cases = junit.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == names and not junit.findall(".//failure")


@pytest.mark.slow
def test_template_that_drops_assistant_turns_fails_the_data_check(tmp_path: Path) -> None:
    template = tmp_path / "no_assistant.jinja"
    template.write_text("{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n"
                        "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    report = smoke(_recipe(tmp_path, model__chat_template=str(template)), steps=1, rows=8, work_dir=tmp_path / "w")
    assert _failed(report) == ["data: every dataset yields trained examples"], report.render()
    assert report.exit_code == 1


def test_loss_on_that_trains_nothing_fails_the_data_check(tmp_path: Path) -> None:
    # Conversations without an assistant turn: loss_on=assistant has nothing to train on.
    data = tmp_path / "users.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}]}) for i in range(4)))
    recipe = _recipe(tmp_path, data__train=[{"path": str(data), "format": "messages"}], data__bad_rows="skip",
                     objective__loss_on="assistant")
    report = smoke(recipe, steps=1, rows=8, work_dir=tmp_path / "w")
    assert _failed(report) == ["data: every dataset yields trained examples"], report.render()
    assert [c.status for c in report.checks if c.name == "trains"] == ["skip"]


def test_renamed_column_fails_the_data_check(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (ROOT / "examples" / "data" / "quickstart.jsonl").read_text().splitlines()]
    data = tmp_path / "renamed.jsonl"
    data.write_text("\n".join(json.dumps({"conversation": r["messages"]}) for r in rows))
    report = smoke(_recipe(tmp_path, data__train=[{"path": str(data), "format": "messages"}]), steps=1, rows=8,
                   work_dir=tmp_path / "w")
    assert _failed(report) == ["data: every dataset yields trained examples"], report.render()
    assert "conversation" in report.failed()[0].detail or "messages" in report.failed()[0].detail


def test_pipeline_stage_pointing_at_a_missing_output_is_an_invalid_recipe(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load((ROOT / "recipes" / "pipeline_dpo.yaml").read_text())
    raw["stages"]["dpo"]["model"]["name_or_path"] = "${stages.sft.dir}/merged"  # sft writes no merged/
    for stage in raw["stages"].values():
        stage["recipe"] = str(ROOT / "recipes" / stage["recipe"])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=r"stages\.dpo\.model\.name_or_path"):
        smoke(path, [f"model.name_or_path={TINY_CHAT}"], steps=1, rows=8, work_dir=tmp_path / "w")


@pytest.mark.slow
def test_reward_model_with_the_wrong_head_fails_the_inputs_check(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    report = smoke(ROOT / "recipes" / "ppo.yaml", [f"model.name_or_path={TINY_CHAT}",
                                                   f"objective.reward_model={TINY_CHAT}"],  # a causal LM
                   steps=1, rows=8, work_dir=tmp_path / "w")
    assert _failed(report) == ["inputs: reward/value model has a score head"], report.render()
    assert "LlamaForCausalLM" in report.failed()[0].detail


def test_not_cached_names_the_files_and_the_prefetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.smoke.shrink import SmokeSourceError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    with pytest.raises(SmokeSourceError) as err:
        smoke(ROOT / "recipes" / "sft_lora.yaml", work_dir=tmp_path / "w")
    assert "config.json" in str(err.value) and "ft smoke --prefetch RECIPE" in str(err.value)
    with pytest.raises(SmokeSourceError, match="could not download"):
        from finetune.smoke.runner import prefetch_recipe

        prefetch_recipe(ROOT / "recipes" / "sft_lora.yaml")


def test_cli_exit_codes_for_an_invalid_recipe(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["smoke", str(_recipe(tmp_path)), "training.learning_rat=1"])
    assert result.exit_code == 2 and "learning_rat: unknown key" in result.output


def test_ppo_rollouts_and_accumulation_shrink_grpo_groups_stay(tmp_path: Path) -> None:
    from finetune.smoke.runner import _Shrinker

    report = SmokeReport(recipe="r.yaml")
    shrinker = _Shrinker(tmp_path, 2, 8, report, None)
    ppo, grpo = {"response_length": 53, "num_ppo_epochs": 4}, {"num_generations": 8, "max_completion_length": 64}
    for objective in (ppo, grpo):
        shrinker._rollouts(objective, "s")
    assert ppo == {"response_length": 8, "num_ppo_epochs": 1}
    assert grpo == {"num_generations": 8, "max_completion_length": 64}, "GRPO needs its groups to train at all"
    assert any("objective.response_length 53 -> 8" in r for r in report.reductions)
    training = {"gradient_accumulation_steps": 2, "batch_size": 4, "nproc": 1, "report_to": [], "device": "auto",
                "precision": "fp32"}
    assert _Shrinker._reductions(training, False, 8) == [], "4 rows hold no whole group of 8: accumulation stays"
    assert _Shrinker._reductions({**training, "batch_size": 8}, False, 8)[0][:2] == ("gradient_accumulation_steps", 1)
    assert _Shrinker._reductions(training, False, None)[0][:2] == ("gradient_accumulation_steps", 1)

"""The recipe schema: shipped recipes validate, every problem is reported once with file:line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import dump_recipe, load_raw, load_recipe, recipe_model
from finetune.recipe.schema import LoraAdapter, QLoraAdapter

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    return write(tmp_path, "base.yaml", f"""
        model:
          name_or_path: {tmp_path}
        adapter:
          kind: lora
          r: 8
        data:
          train:
            - path: {data}
              format: messages
        objective:
          kind: sft
        training:
          learning_rate: 1.0e-4
          max_steps: 5
        output_dir: {tmp_path / "out"}
        """)


def problems(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return str(info.value).splitlines()


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.stages import Pipeline, load

    monkeypatch.chdir(ROOT)  # recipes name data relative to the repository root
    spec = load(path)
    recipes = [s.recipe for s in spec.stages] if isinstance(spec, Pipeline) else [spec]
    assert all(r.output_dir and r.description for r in recipes)
    assert path.read_text().startswith("#"), "each recipe starts with a comment saying how to run it"
    assert "# Run:" in path.read_text()


def test_valid_recipe_is_typed_and_frozen(base: Path) -> None:
    recipe = load_recipe(base)
    assert isinstance(recipe.adapter, LoraAdapter) and recipe.adapter.r == 8
    assert recipe.training.learning_rate == pytest.approx(1e-4)  # YAML 1.2 float, not the string "1.0e-4"
    with pytest.raises(Exception):
        recipe.training.learning_rate = 1.0  # type: ignore[misc]


def test_unknown_keys_at_every_depth_are_all_reported_with_file_line_and_hint(base: Path) -> None:
    text = base.read_text().replace("  learning_rate:", "  learning_rat:").replace("  r: 8", "  rank: 8")
    text = text.replace("      format: messages", "      formt: messages") + "seeed: 1\n"
    base.write_text(text)
    lines = problems(base)
    assert lines == [
        f"{base}:5  adapter.rank: unknown key (did you mean r?)",
        f"{base}:9  data.train.0.formt: unknown key (did you mean format?)",
        f"{base}:13  training.learning_rat: unknown key (did you mean learning_rate?)",
        f"{base}:16  seeed: unknown key (did you mean seed?)",
    ]


def test_wrong_types_and_bounds(base: Path) -> None:
    base.write_text(base.read_text().replace("r: 8", "r: 0").replace("max_steps: 5", "max_steps: many"))
    assert problems(base) == [
        f"{base}:5  adapter.r: must be > 0, got 0",
        f"{base}:14  training.max_steps: expected a valid integer, got 'many'",
    ]


def test_objective_keys_belong_to_their_kind(base: Path) -> None:
    base.write_text(base.read_text().replace("  kind: sft", "  kind: sft\n  beta: 0.1"))
    (line,) = problems(base)
    assert line == f"{base}:12  objective.beta: unknown key (valid keys: kind, loss_on)"


def test_unknown_objective_kind_lists_known_ones(base: Path) -> None:
    base.write_text(base.read_text().replace("kind: sft", "kind: sftt"))
    (line,) = problems(base)
    assert line.startswith(f"{base}:11  objective.kind: unknown 'sftt'; expected one of") and "'dpo'" in line


def test_overrides_resolve_and_bad_overrides_fail_the_same_way(base: Path) -> None:
    recipe = load_recipe(base, ["training.max_steps=20", "output_dir=/tmp/run", "adapter.r=4",
                                "training.report_to=[tensorboard]"])
    assert (recipe.training.max_steps, recipe.output_dir, recipe.adapter.r) == (20, "/tmp/run", 4)
    assert recipe.training.report_to == ["tensorboard"]
    assert problems(base, ["training.learning_rat=0.1", "training.max_steps"]) == [
        "override 'training.max_steps'  expected KEY=VALUE, e.g. training.max_steps=20",
    ]
    assert problems(base, ["training.learning_rat=0.1"]) == [
        "override 'training.learning_rat=0.1'  training.learning_rat: unknown key (did you mean learning_rate?)",
    ]
    assert problems(base, ["data.train.3.path=x"]) == [
        "override 'data.train.3.path=x'  data.train.3.path: index 3 is out of range (the list has 1 items)",
    ]


def test_override_that_changes_a_kind_drops_the_old_kinds_keys(base: Path) -> None:
    full = load_recipe(base, ["adapter.kind=none"])
    assert full.adapter.kind == "none"
    qlora = load_recipe(base, ["adapter.kind=qlora"])
    assert isinstance(qlora, object) and isinstance(qlora.adapter, QLoraAdapter) and qlora.adapter.r == 8


def test_extends_deep_merges_child_wins(base: Path, tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", """
        extends: base.yaml
        adapter:
          kind: qlora
          alpha: 64
        training:
          max_steps: 7
        """)
    recipe = load_recipe(child)
    assert isinstance(recipe.adapter, QLoraAdapter)
    assert (recipe.adapter.r, recipe.adapter.alpha) == (8, 64)  # r from the parent, alpha from the child
    assert recipe.training.max_steps == 7 and recipe.training.learning_rate == pytest.approx(1e-4)
    resolved = dump_recipe(recipe)
    assert "\nextends:" not in resolved and "kind: qlora" in resolved
    raw, positions = load_raw(child)
    assert positions[("training", "max_steps")].file == str(child)
    assert positions[("training", "learning_rate")].file.endswith("base.yaml")


def test_extends_problems_point_at_the_file_that_has_them(base: Path, tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntraining:\n  warmup_ratoi: 0.1\n")
    base.write_text(base.read_text().replace("r: 8", "rr: 8"))
    assert problems(child) == [
        f"{base}:5  adapter.rr: unknown key (did you mean r?)",
        f"{child}:3  training.warmup_ratoi: unknown key (did you mean warmup_ratio?)",
    ]


def test_missing_files_are_reported(base: Path, tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}  recipe file not found"]
    child = write(tmp_path, "child.yaml", "extends: gone.yaml\n")
    assert problems(child) == [f"{child}:1  extends: parent recipe not found: {tmp_path / 'gone.yaml'}"]
    lines = problems(base, ["data.train.0.path=missing/train.jsonl", "model.name_or_path=./no/model"])
    assert lines == [
        f"override 'data.train.0.path=missing/train.jsonl'  data.train.0.path: file not found: "
        f"{Path('missing/train.jsonl').resolve()}",
        f"override 'model.name_or_path=./no/model'  model.name_or_path: model directory not found: "
        f"{Path('no/model').resolve()}",
    ]


def test_hub_ids_are_not_checked_offline(base: Path) -> None:
    recipe = load_recipe(base, ["model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct"])
    assert recipe.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"


def test_format_must_suit_the_objective(base: Path) -> None:
    lines = problems(base, ["data.train.0.format=preference"])
    assert lines == ["override 'data.train.0.format=preference'  data.train.0.format: objective 'sft' cannot "
                     "train on 'preference' data; use one of: text, messages, prompt_completion, alpaca, sharegpt"]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "model:\n  name_or_path: [unclosed\n")
    (line,) = problems(bad)
    assert line.startswith(f"{bad}:3  invalid YAML")


def test_trust_remote_code_is_off_by_default(base: Path) -> None:
    assert load_recipe(base).model.trust_remote_code is False


def test_json_schema_has_descriptions_and_every_objective() -> None:
    schema = json.loads(json.dumps(recipe_model().model_json_schema()))
    text = json.dumps(schema)
    assert '"learning_rate"' in text and "Peak learning rate." in text
    kinds = {d["properties"]["kind"].get("const") for d in schema["$defs"].values()
             if "kind" in d.get("properties", {}) and "const" in d["properties"]["kind"]}
    assert {"sft", "pretrain", "lora", "qlora", "none"} <= kinds

"""What --overwrite may replace, and adapter.layers with the default target_modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.errors import ConfigError
from finetune.outputs import RUN_MARKER, OutputDirError, prepare_output_dir
from finetune.recipe.schema import LoraAdapter

ROOT = Path(__file__).resolve().parents[1]


def test_overwrite_replaces_a_run_ft_wrote(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_output_dir(run, overwrite=False, resume=False)
    assert (run / RUN_MARKER).is_file()  # every run dir ft creates is marked
    (run / "metrics.jsonl").write_text("{}\n")
    prepare_output_dir(run, overwrite=True, resume=False)
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]


def test_overwrite_of_an_empty_directory_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    prepare_output_dir(tmp_path / "empty", overwrite=True, resume=False)
    assert (tmp_path / "empty" / RUN_MARKER).is_file()


def test_overwrite_refuses_other_work_and_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("chapter 1")
    with pytest.raises(OutputDirError, match="not a run directory ft wrote"):
        prepare_output_dir(tmp_path / "thesis", overwrite=True, resume=False)
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "chapter 1"


def test_overwrite_refuses_a_run_dir_that_holds_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "r.yaml").write_text("x")
    with pytest.raises(OutputDirError, match="r.yaml"):
        prepare_output_dir(tmp_path, overwrite=True, resume=False, protect=(tmp_path / "r.yaml",))
    assert (tmp_path / "r.yaml").exists()


def test_adapter_layers_work_with_all_linear(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    from finetune.adapters import apply_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    wrapped = apply_adapter(model, LoraAdapter(layers=[-1]))
    lora = [n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all(".layers.1." in n for n in lora)
    # every linear module of that layer is adapted, as all-linear means without layers
    assert {n.split(".layers.1.")[1].split(".lora_")[0] for n in lora} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def test_adapter_layers_out_of_range_is_a_config_error(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    from finetune.adapters import apply_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with pytest.raises(ConfigError, match=r"adapter.layers: \[9\] out of range"):
        apply_adapter(model, LoraAdapter(layers=[9]))


def test_a_directory_holding_only_the_marker_counts_as_empty(tmp_path: Path) -> None:
    # `ft run --nproc N` prepares the directory in the parent; the ranks must not find it taken.
    prepare_output_dir(tmp_path / "run", overwrite=False, resume=False)
    prepare_output_dir(tmp_path / "run", overwrite=False, resume=False)

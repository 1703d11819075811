"""ft export: merged models equal ft generate, engine decisions, hub cards, recipe exports, bad input."""

from __future__ import annotations

import errno
import importlib
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
)

from data_templates.masking import prompt_ids
from finetune.export import export
from finetune.export.common import ExportError
from finetune.export.serving import RULES, AdapterFacts, why_merged
from finetune.generate import load_for_generation, stop_ids
from tests._export_runs import GGUF_CALLS, RUNS, train_runs

QUESTION = [{"role": "user", "content": "What is ft?"}]


@pytest.fixture(scope="module")
def runs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_runs(tiny_models, tmp_path_factory.mktemp("export-runs"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [*RUNS, "from_lora"])
def test_merged_export_equals_ft_generate(runs: dict[str, Path], name: str, tmp_path: Path) -> None:
    result = export(runs[name], "merged", out=tmp_path / "merged", dtype="float32")
    assert {"config.json", "generation_config.json", "tokenizer_config.json"} <= {p.name for p in result.out.iterdir()}
    assert list(result.out.glob("*.safetensors"))
    reference, tokenizer = load_for_generation(runs[name])
    merged = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
    merged_tok = AutoTokenizer.from_pretrained(result.out)
    ids = torch.tensor([prompt_ids(tokenizer, QUESTION if tokenizer.chat_template else "What is ft?")])
    assert prompt_ids(merged_tok, QUESTION if merged_tok.chat_template else "What is ft?") == ids[0].tolist()
    with torch.no_grad():
        diff = (merged(ids).logits - reference(ids).logits).abs().max().item()
    assert diff < 1e-4
    # ft generate's greedy tokens; the export generates with nothing but its own generation_config.json.
    want = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(tokenizer))
    got = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12)
    assert got.tolist() == want.tolist()
    assert str(result.out) in result.command


def test_default_dtype_is_the_training_dtype_and_float16_for_qlora(runs: dict[str, Path], tmp_path: Path) -> None:
    out = export(runs["qwen2_qlora"], "merged", out=tmp_path / "q").out
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    out = export(runs["llama_lora"], "merged", out=tmp_path / "l").out
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


class _ForceAt(LogitsProcessor):
    """Makes `token` the only choice at generated position `step` (0-based)."""

    def __init__(self, start: int, step: int, token: int) -> None:
        self.at, self.token = start + step, token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.at:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token] = 0
        return scores


def test_generation_config_stops_at_the_end_of_turn_token(runs: dict[str, Path], tmp_path: Path) -> None:
    out = export(runs["mistral_added_tokens"], "merged", out=tmp_path / "m").out
    tokenizer = AutoTokenizer.from_pretrained(out)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn != tokenizer.eos_token_id  # eos is </s>: ChatML's closer must be listed too
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert set(eos) == {tokenizer.eos_token_id, end_of_turn}
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([prompt_ids(tokenizer, QUESTION)])
    forced = LogitsProcessorList([_ForceAt(ids.shape[1], 2, end_of_turn)])
    got = model.generate(ids, max_new_tokens=10, min_new_tokens=0, logits_processor=forced)
    assert got.shape[1] == ids.shape[1] + 3 and got[0, -1].item() == end_of_turn


def _facts(**config: object) -> AdapterFacts:
    base = {"peft_type": "LORA", "r": 8, "bias": "none", "task_type": "CAUSAL_LM"}
    return AdapterFacts({**base, **config}, 100, 100, frozenset({"model.layers.0.self_attn.q_proj"}))


@pytest.mark.parametrize(("facts", "reason"), [
    (_facts(), None),
    (_facts(use_dora=True), "DoRA"),
    (_facts(bias="lora_only"), "biases"),
    (_facts(modules_to_save=["lm_head"]), "modules_to_save"),
    (_facts(r=1024), "largest --max-lora-rank"),
    (AdapterFacts({"peft_type": "LORA", "r": 8}, 102, 100, frozenset({"x.q_proj"})), "resized"),
    (AdapterFacts({"peft_type": "LORA", "r": 8}, None, None, frozenset({"x.my_layer"})), "targets modules"),
])
def test_vllm_decision_table(facts: AdapterFacts, reason: str | None) -> None:
    why = next((w for broken, w in RULES["vllm"] if broken(facts)), None)
    assert (why is None) if reason is None else (reason in why)


def test_vllm_keeps_a_plain_lora_adapter_and_prints_the_command(runs: dict[str, Path], tmp_path: Path) -> None:
    result = export(runs["llama_lora"], "vllm", out=tmp_path / "v", name="tiny")
    base = json.loads((runs["llama_lora"] / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapter = tmp_path / "v" / "adapter"
    assert result.command == (f"vllm serve {base} --enable-lora --lora-modules tiny={adapter} --max-lora-rank 8 "
                              f"--generation-config {tmp_path / 'v'} --chat-template {adapter / 'chat_template.jinja'}")
    assert (adapter / "adapter_model.safetensors").is_file() and result.command in (tmp_path / "v" / "serve.sh").read_text()
    lmdeploy = export(runs["llama_lora"], "lmdeploy", out=tmp_path / "l", name="tiny")
    assert lmdeploy.command == (f"lmdeploy serve api_server {base} --backend pytorch --adapters "
                                f"tiny={tmp_path / 'l' / 'adapter'}")


def test_engines_get_the_merged_model_when_the_embeddings_were_resized(runs: dict[str, Path], tmp_path: Path,
                                                                      notices: list[str]) -> None:
    assert "resized" in (why_merged("vllm", runs["mistral_added_tokens"] / "final") or "")
    result = export(runs["mistral_added_tokens"], "vllm", out=tmp_path / "v", name="tiny")
    assert result.command == f"vllm serve {tmp_path / 'v' / 'model'} --served-model-name tiny"
    assert (tmp_path / "v" / "model" / "config.json").is_file()
    assert any("merged model because the chat template added tokens" in n for n in notices)
    assert "full fine-tune" in why_merged("lmdeploy", runs["llama_full"] / "final")


def test_hub_dry_run_writes_the_card_and_folder(runs: dict[str, Path], tmp_path: Path) -> None:
    result = export(runs["llama_lora"], "hub", out=tmp_path / "h", name="me/tiny", dry_run=True)
    card = (result.out / "README.md").read_text()
    manifest = json.loads((runs["llama_lora"] / "manifest.json").read_text())
    assert f"base_model: {manifest['base_model']}" in card
    assert manifest["data"][0]["fingerprint"] in card and "![loss](loss.png)" in card
    assert "vllm serve me/tiny" in card and "lmdeploy serve api_server me/tiny" in card
    assert "adapter:\n  kind: lora" in card and "| final train loss |" in card
    assert (result.out / "loss.png").is_file() and (result.out / "config.json").is_file()
    adapter = export(runs["llama_lora"], "hub", out=tmp_path / "a", name="me/tiny", dry_run=True, adapter_only=True)
    assert (adapter.out / "adapter_config.json").is_file() and "library_name: peft" in (adapter.out / "README.md").read_text()


def test_hub_offline_fails_at_once(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot be reached.*--dry-run"):
        export(runs["llama_lora"], "hub", out=tmp_path / "h", name="me/tiny")
    assert not (tmp_path / "h").exists()


def test_bad_input_is_refused_and_nothing_is_written(runs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match="no trained model here"):
        export(tmp_path, "merged")
    with pytest.raises(ExportError, match="unknown export target 'tgi'.*merged, vllm"):
        export(runs["llama_lora"], "tgi")
    with pytest.raises(ExportError, match="--type 'q9_x'"):
        export(runs["llama_lora"], "gguf", type="q9_x", out=tmp_path / "g")
    with pytest.raises(ExportError, match="--dtype 'int8'"):
        export(runs["llama_lora"], "merged", dtype="int8", out=tmp_path / "d")
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        export(runs["llama_lora"], "merged", out=taken)
    with pytest.raises(ExportError, match="not written by ft export"):
        export(runs["llama_lora"], "merged", out=taken, overwrite=True)

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importlib.import_module("finetune.export.merged"), "save_merged", full)
    with pytest.raises(ExportError, match="no space left on the device; nothing was written"):
        export(runs["llama_lora"], "merged", out=tmp_path / "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert not list(tmp_path.glob("d*")) and not list(tmp_path.glob(".*"))


def test_overwrite_replaces_an_earlier_export(runs: dict[str, Path], tmp_path: Path) -> None:
    first = export(runs["llama_lora"], "lmdeploy", out=tmp_path / "e", name="a")
    second = export(runs["llama_lora"], "lmdeploy", out=tmp_path / "e", name="b", overwrite=True)
    assert "a=" in first.command and "b=" in (tmp_path / "e" / "serve.sh").read_text()
    assert second.out == first.out and sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_gguf_and_ollama_dispatch_write_from_a_merged_model(runs: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.import_module("finetune.export.targets"), "GGUF_WRITER", "tests._export_runs:FakeGguf")
    monkeypatch.setattr(importlib.import_module("finetune.export.targets"), "MODELFILE_WRITER", "tests._export_runs:fake_modelfile")
    result = export(runs["llama_lora"], "gguf", type="q8_0", out=tmp_path / "g", name="tiny")
    assert GGUF_CALLS == [{"config": True, "type": "q8_0", "name": "tiny"}]
    assert result.command == f"llama-cli -m {tmp_path / 'g' / 'tiny-q8_0.gguf'} -cnv"
    assert (tmp_path / "g" / "tiny-q8_0.gguf").read_bytes() == b"GGUF"
    result = export(runs["llama_lora"], "ollama", out=tmp_path / "o", name="tiny")
    assert result.command == f"cd {tmp_path / 'o'} && ollama create tiny -f Modelfile && ollama run tiny"
    assert (tmp_path / "o" / "Modelfile").read_text() == "FROM ./tiny-f16.gguf\n"
    # The temporary merged model is gone; only the two exports remain.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "o"]


def test_gguf_export_with_the_real_writer(runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("finetune.export.gguf")
    pytest.importorskip("gguf")
    result = export(runs["llama_lora"], "ollama", type="f32", out=tmp_path / "o", name="tiny")
    assert (tmp_path / "o" / "tiny-f32.gguf").is_file()
    assert "TEMPLATE" in (tmp_path / "o" / "Modelfile").read_text() and "ollama create tiny" in result.command


def test_recipe_export_list_runs_after_training_and_is_in_the_manifest(tiny_models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from tests._runs import train, write_recipe

    recipe = write_recipe(tmp_path, tiny_models["llama"])
    recipe.write_text(recipe.read_text() + "export:\n  - to: merged\n  - to: vllm\n    name: tiny\n")
    result, _ = train(recipe, "training.max_steps=2")
    exports = json.loads((result.run_dir / "manifest.json").read_text())["exports"]
    assert [e["to"] for e in exports] == ["merged", "vllm"]
    assert exports[0]["path"] == str(result.run_dir / "export" / "merged")
    assert (result.run_dir / "export" / "merged" / "config.json").is_file()
    assert (result.run_dir / "export" / "vllm" / "serve.sh").read_text().count("--lora-modules tiny=") == 1


def test_recipe_export_list_is_validated_with_file_and_line(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from finetune.recipe.errors import RecipeError
    from finetune.recipe.loader import load_recipe
    from tests._runs import write_recipe

    recipe = write_recipe(tmp_path, tiny_models["llama"])
    lines = recipe.read_text().splitlines()
    recipe.write_text("\n".join(lines + ["export:", "  - to: gguf", "    type: q9_x", "  - to: merged",
                                         "    type: q8_0", "  - to: tgi"]) + "\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    text = str(err.value)
    assert f"{recipe}:{len(lines) + 3}" in text and "export.0" in text and "q9_x" in text
    assert "export.1" in text and "export.2" in text


def test_cli_prints_the_command(runs: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    out = tmp_path / "l"
    result = CliRunner().invoke(app, ["export", str(runs["llama_lora"]), "--to", "lmdeploy", "--out", str(out),
                                      "--name", "tiny"])
    assert result.exit_code == 0, result.output
    assert "lmdeploy serve api_server" in result.output and f"tiny={out / 'adapter'}" in result.output
    again = CliRunner().invoke(app, ["export", str(runs["llama_lora"]), "--to", "lmdeploy", "--out", str(out)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output


def test_a_pipelines_export_list_is_for_its_last_stage(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from finetune.stages import load
    from tests.test_stages import write_pipeline

    path = write_pipeline(tmp_path, tiny_models["llama"])
    path.write_text(path.read_text() + "export:\n  - to: merged\n  - to: gguf\n    type: q8_0\n")
    first, second = load(path).stages
    assert first.recipe.export == []
    assert [(e.to, getattr(e, "type", None)) for e in second.recipe.export] == [("merged", None), ("gguf", "q8_0")]


@pytest.mark.slow
def test_a_reward_run_exports_as_a_classifier(align_model: Path, align_data: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from tests._runs import train, write_recipe
    from tests.test_align_reward import FAST

    run = train(write_recipe(tmp_path, align_model, data=align_data["pairs"], fmt="preference", objective="reward"),
                *FAST)[0]
    out = export(run.run_dir, "merged", out=tmp_path / "m").out
    ids = torch.tensor([[5, 6, 7, 8]])
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    trained = AutoModelForSequenceClassification.from_pretrained(run.final_dir).eval()
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, trained(ids).logits, atol=1e-6)
    assert not (out / "generation_config.json").exists()
    with pytest.raises(ExportError, match="looks like a pipeline: export one of its stages \\(run\\)"):
        export(tmp_path, "merged")

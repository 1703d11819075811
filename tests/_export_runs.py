"""Tiny trained runs shared by the export and eval tests (trained once per module that asks)."""

from __future__ import annotations

from pathlib import Path

from tests._runs import train, write_recipe

# name -> (tiny model, adapter kind, overrides); `from_lora` is trained on the `llama_lora` run.
RUNS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "llama_lora": ("llama", "lora", ("adapter.r=8",)),
    # Mistral's tokenizer has no ChatML tokens: the template adds them, the embeddings are resized.
    "mistral_added_tokens": ("mistral", "lora", ("model.chat_template=chatml",)),
    "qwen2_qlora": ("qwen2", "qlora", ()),
    "llama_full": ("llama", "none", ()),
}


def train_runs(tiny_models: dict[str, Path], root: Path) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for name, (model, adapter, overrides) in RUNS.items():
        (root / name).mkdir()
        recipe = write_recipe(root / name, tiny_models[model], adapter=adapter)
        runs[name] = train(recipe, "training.max_steps=4", *overrides)[0].run_dir
    (root / "from_lora").mkdir()
    recipe = write_recipe(root / "from_lora", runs["llama_lora"] / "final")
    runs["from_lora"] = train(recipe, "training.max_steps=3")[0].run_dir
    return runs


GGUF_CALLS: list[dict[str, object]] = []


class FakeGguf:
    """Stands in for finetune.export.gguf's writer in dispatch tests: records what it is handed."""

    quantize_command: str | None = None

    def __init__(self, model_dir: Path, out_file: Path, type: str, name: str | None = None) -> None:
        GGUF_CALLS.append({"config": (Path(model_dir) / "config.json").is_file(), "type": type, "name": name})
        self.path = Path(out_file)
        self.path.write_bytes(b"GGUF")


def fake_modelfile(gguf_file: Path, model_dir: Path, out_dir: Path, name: str | None = None) -> None:
    (Path(out_dir) / "Modelfile").write_text(f"FROM ./{Path(gguf_file).name}\n")

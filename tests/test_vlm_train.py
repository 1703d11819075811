"""vlm_sft trains a tiny random Qwen2-VL on CPU: loss falls on a fixed batch, LoRA changes the language
model only (vision tower and base weights untouched unless adapter.train_vision), the run directory
is complete, final/ reloads and answers an image + text prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.pipeline import RunResult
from finetune.tiny_vlm import build_tiny_vlm
from tests._runs import ROOT, Snapshot, train

RECIPE = ROOT / "recipes" / "vlm_sft.yaml"
IMAGE = ROOT / "examples" / "data" / "images" / "red_square.png"
ANSWER = "It shows a red square on a white background."


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2-vl", initializer_range=0.3)


def _data(tmp_path: Path) -> Path:
    """Two rows, one batch: the first from the shipped example data (its image path made absolute)."""
    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": str(IMAGE)},
                                                     {"type": "text", "text": "What is in this picture?"}]},
                        {"role": "assistant", "content": ANSWER}]}
    other = json.loads(json.dumps(row).replace("red_square.png", "blue_circle.png").replace("red square", "blue circle"))
    path = tmp_path / "vlm.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n")
    return path


def _train(tmp_path: Path, model: Path, *extra: str) -> tuple[RunResult, Snapshot]:
    return train(RECIPE, f"model.name_or_path={model}", f"data.train.0.path={_data(tmp_path)}",
                 f"output_dir={tmp_path / 'run'}", "training.max_steps=12", "training.batch_size=2",
                 "training.gradient_accumulation_steps=1", "training.learning_rate=2.0e-2",
                 "training.lr_scheduler=constant", "training.warmup_ratio=0", "training.logging_steps=1",
                 "training.progress_bar=false", "model.dtype=float32", *extra, log=lambda *_: None)


@pytest.fixture(scope="module")
def lora_run(tiny_vlm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Snapshot]:
    return _train(tmp_path_factory.mktemp("lora"), tiny_vlm)


def test_lora_trains_the_language_model_and_leaves_the_vision_tower(lora_run: tuple[RunResult, Snapshot]) -> None:
    result, snap = lora_run
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0]
    assert snap.trainable and all("lora_" in name for name in snap.trainable)
    assert all(".language_model." in name for name in snap.trainable)  # no adapter on the vision tower
    assert snap.changed() == snap.trainable  # every LoRA weight moved, nothing else did
    assert any(".visual." in name for name in snap.before)


def test_the_run_directory_is_complete_and_final_reloads_and_sees_images(lora_run: tuple[RunResult, Snapshot],
                                                                          tiny_vlm: Path) -> None:
    from finetune.api import generate
    from finetune.models import load_trained

    result, _ = lora_run
    final = result.final_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "preprocessor_config.json"):
        assert (final / name).is_file(), name
    assert {"manifest.json", "metrics.jsonl", "loss.png", "recipe.yaml"} <= {p.name for p in result.run_dir.iterdir()}
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_vlm)
    model, tokenizer = load_trained(result.run_dir)
    assert type(model.get_base_model()).__name__ == "Qwen2VLForConditionalGeneration"
    assert tokenizer.chat_template and "<|image_pad|>" in tokenizer.get_vocab()
    # The overfitted answer needs the image: the same question about the other image gets its own answer.
    assert generate(result.run_dir, "What is in this picture?", images=[IMAGE], max_new_tokens=32) == ANSWER
    blue = IMAGE.with_name("blue_circle.png")
    assert generate(result.run_dir, "What is in this picture?", images=[blue], max_new_tokens=32) == \
        ANSWER.replace("red square", "blue circle")


def test_train_vision_puts_lora_on_the_vision_tower_too(tiny_vlm: Path, tmp_path: Path) -> None:
    _, snap = _train(tmp_path, tiny_vlm, "adapter.train_vision=true", "training.max_steps=2")
    vision = {name for name in snap.trainable if ".visual." in name}
    assert vision and all("lora_" in name for name in vision)
    assert vision & snap.changed()
    assert not {n for n in snap.changed() if "lora_" not in n}  # base weights stay as loaded


def test_full_fine_tuning_freezes_the_vision_tower_by_default(tiny_vlm: Path, tmp_path: Path) -> None:
    _, snap = _train(tmp_path, tiny_vlm, "adapter.kind=none", "training.max_steps=2")
    frozen = {n for n in snap.before if n not in snap.trainable}
    assert frozen == {n for n in snap.before if ".visual." in n} and frozen
    assert not frozen & snap.changed() and snap.changed()


def test_qwen2_5_vl_trains_the_same_way(tmp_path: Path) -> None:
    model = build_tiny_vlm(tmp_path / "qwen2.5-vl", arch="qwen2_5_vl", initializer_range=0.3)
    result, snap = _train(tmp_path, model, "training.max_steps=3")
    assert type(snap.model.get_base_model()).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert snap.trainable and all(".language_model." in n and "lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable
    assert (result.final_dir / "preprocessor_config.json").is_file()


def test_merged_export_and_a_next_stage_keep_the_image_processor(lora_run: tuple[RunResult, Snapshot],
                                                                 tmp_path: Path) -> None:
    from finetune.export import export
    from finetune.generate import generate, load_vision_for_generation
    from finetune.models import load_trained

    result, _ = lora_run
    merged = export(result.run_dir, "merged", out=tmp_path / "merged").out
    assert (merged / "preprocessor_config.json").is_file() and not (merged / "adapter_config.json").exists()
    model, tokenizer = load_trained(merged)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    prompt = [{"role": "user", "content": [{"type": "image", "image": str(IMAGE)},
                                           {"type": "text", "text": "What is in this picture?"}]}]
    assert generate(model, tokenizer, prompt, 32, load_vision_for_generation(merged, model)) == ANSWER
    # A vlm_sft run on the LoRA run's final/: merged into its base/ first, image processor included.
    (tmp_path / "next").mkdir()
    _, snap = _train(tmp_path / "next", result.final_dir, "training.max_steps=1")
    assert (tmp_path / "next" / "run" / "base" / "preprocessor_config.json").is_file() and snap.changed()

"""Tokens a chat template adds to the vocabulary train under LoRA and QLoRA, tied or untied.

A Gemma-2-style base (input and output embeddings tied) given the Gemma template gains
<start_of_turn>/<end_of_turn>. TRL's default chunked loss read the output layer's weight directly and
failed on PEFT's wrapper ('TrainableTokensWrapper' object has no attribute 'bias'); untied, the new
output rows were never trained, so the model could not learn to end its turn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.generate import generate, load_for_generation
from finetune.tiny import build_tiny_model, build_tokenizer
from tests._runs import CHAT_DATA, train, write_recipe


@pytest.fixture(scope="module")
def base_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Base models without a chat template: Gemma-2-style tied embeddings, and an untied Llama."""
    texts = [m["content"] for line in CHAT_DATA.read_text().splitlines() for m in json.loads(line)["messages"]]
    root = tmp_path_factory.mktemp("bases")
    tokenizer = build_tokenizer(texts + ["user model assistant"], add_bos_token=True, pad_token="<pad>")
    return {"tied": build_tiny_model("gemma2", tokenizer, root / "gemma2"),
            "untied": build_tiny_model("llama", tokenizer, root / "llama")}


@pytest.mark.parametrize("adapter", ["lora", "qlora"])
@pytest.mark.parametrize("embeddings", ["tied", "untied"])
def test_template_tokens_train_and_the_run_generates(base_models: dict[str, Path], tmp_path: Path, adapter: str,
                                                     embeddings: str) -> None:
    recipe = write_recipe(tmp_path, base_models[embeddings], adapter=adapter)
    result, snap = train(recipe, "model.chat_template=gemma", "training.max_steps=8")
    assert all(l == l and l < float("inf") for l in (m["loss"] for m in result.metrics if "loss" in m))
    token_rows = {name for name in snap.trainable if "trainable_tokens" in name}
    # Tied: one set of rows serves both layers; untied: the output layer's rows train as well.
    assert any("embed_tokens" in name for name in token_rows)
    assert any("lm_head" in name for name in token_rows) == (embeddings == "untied")
    assert token_rows <= snap.changed(), "the new tokens' rows were not trained"
    frozen_base = {n for n in snap.before if n not in snap.trainable}
    assert not frozen_base & snap.changed()
    model, tokenizer = load_for_generation(result.run_dir)
    assert "<end_of_turn>" in tokenizer.get_vocab()
    assert isinstance(generate(model, tokenizer, [{"role": "user", "content": "What is ft?"}], 8), str)

"""`mlm`: masked-LM continued pre-training of a BERT-style encoder. The loss falls and the intended
weights change; final/ is a plain masked LM; the collator masks ~mlm_probability of the maskable
tokens and never a special token or padding; whole-word masking masks whole words; decoder-only
models are refused naming model.name_or_path."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from data_templates.preview import preview_example
from finetune.errors import ConfigError
from finetune.mlm import MlmSection, collator, encode
from finetune.models import load_trained
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from finetune.tiny import (
    build_tiny_encoder,
    build_tiny_model,
    build_wordpiece_tokenizer,
)
from tests._runs import TEXT_DATA, train, write_recipe

TEXTS = [json.loads(line)["text"] for line in TEXT_DATA.read_text().splitlines()]
FAST = ("training.max_steps=25", "training.save_steps=25", "training.batch_size=8", "data.max_length=32",
        "objective.mlm_probability=0.3")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(build_wordpiece_tokenizer(TEXTS), tmp_path_factory.mktemp("bert") / "bert",
                              initializer_range=0.2)  # see build_tiny_encoder


def _mlm(tmp_path: Path, model: Path, adapter: str = "lora", data: Path = TEXT_DATA) -> Path:
    return write_recipe(tmp_path, model, data=data, fmt="text", objective="mlm", adapter=adapter)


@pytest.mark.slow
@pytest.mark.parametrize(("adapter", "lr"), [("lora", "1e-2"), ("none", "3e-3")])
def test_loss_falls_and_final_is_a_plain_masked_lm(adapter: str, lr: str, encoder: Path, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.jsonl"  # a tiny batch: two texts, seen again at every step
    tiny.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:2]))
    result, snap = train(_mlm(tmp_path, encoder, adapter, tiny), *FAST, f"training.learning_rate={lr}")
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    # The tiny WordPiece vocabulary differs a little between processes (tokenizers' trainer breaks ties
    # by hash order), so the bar is a clear drop in nats rather than a ratio tuned to one vocabulary.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert snap.changed() == snap.trainable, "every trainable weight moved, no frozen one did"
    if adapter == "lora":
        assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert not (result.final_dir / "adapter_config.json").exists(), "LoRA is merged into a plain masked LM"
    final = AutoModelForMaskedLM.from_pretrained(result.final_dir)
    base = AutoModelForMaskedLM.from_pretrained(encoder)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(final.state_dict()[query], base.state_dict()[query]), "the training reached final/"
    model, tokenizer = load_trained(result.run_dir, kind="masked_lm")
    assert type(model).__name__ == "BertForMaskedLM" and tokenizer.mask_token == "[MASK]"


def test_qlora_trains_lora_on_a_4bit_encoder_and_final_is_a_plain_masked_lm(encoder: Path, tmp_path: Path) -> None:
    result, snap = train(_mlm(tmp_path, encoder, "qlora"), "training.max_steps=3", "training.save_steps=3",
                         "data.max_length=32")
    assert snap.trainable and all("lora_" in n for n in snap.trainable), "the 4-bit base is frozen"
    assert snap.changed() == snap.trainable
    modules = dict(snap.model.named_modules())
    assert type(modules["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer"]).__name__ == "Linear4bit"
    # The output layer is tied to the input embeddings: it stays full precision (bitsandbytes cannot pack it).
    assert type(modules["base_model.model.cls.predictions.decoder"]).__name__ == "Linear"
    assert not (result.final_dir / "adapter_config.json").exists(), "LoRA is merged into a plain masked LM"
    final = AutoModelForMaskedLM.from_pretrained(result.final_dir)
    base = AutoModelForMaskedLM.from_pretrained(encoder)
    query, words = "bert.encoder.layer.0.attention.self.query.weight", "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(final.state_dict()[query], base.state_dict()[query]), "the training reached final/"
    assert torch.equal(final.state_dict()[words], base.state_dict()[words])
    # Merged into the unquantized base: the change is the rank-r LoRA update, not 4-bit rounding (full rank).
    change = final.state_dict()[query] - base.state_dict()[query]
    assert torch.linalg.matrix_rank(change, atol=1e-5) <= 16 < change.shape[0]


def _batches(tokenizer, section: MlmSection, texts: list[str], packing: bool = False, n: int = 40):
    data = encode(datasets.Dataset.from_dict({"text": texts}), tokenizer, 24, packing=packing,
                  whole_word=section.whole_word_masking)
    collate = collator(tokenizer, section, seed=0)
    rows = [data[i] for i in range(len(data))]
    for _ in range(n):
        yield rows, collate(rows)


def test_masks_the_configured_share_of_maskable_tokens_only(encoder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    masked = maskable = 0
    for rows, batch in _batches(tokenizer, MlmSection(), TEXTS[:6]):
        original = torch.nn.utils.rnn.pad_sequence([torch.tensor(r["input_ids"]) for r in rows], batch_first=True,
                                                   padding_value=tokenizer.pad_token_id)
        special = torch.tensor(tokenizer.get_special_tokens_mask(original.view(-1).tolist(),
                                                                 already_has_special_tokens=True)).view_as(original)
        picked = batch["labels"] != -100
        assert not picked[special.bool()].any(), "no special token or padding is ever masked"
        assert torch.equal(batch["labels"][picked], original[picked]), "labels are the original tokens"
        masked += int(picked.sum())
        maskable += int((special == 0).sum())
    assert 0.13 < masked / maskable < 0.17, masked / maskable  # ~15% of ~4,000 maskable tokens


def test_whole_word_masking_masks_whole_words() -> None:
    tokenizer = build_wordpiece_tokenizer(TEXTS, vocab_size=120)  # small: most words are several pieces
    section = MlmSection(whole_word_masking=True, mlm_probability=0.3)
    split_words = 0
    for rows, batch in _batches(tokenizer, section, TEXTS[:6], packing=True, n=10):
        for row, labels, ids in zip(rows, batch["labels"].tolist(), batch["input_ids"].tolist()):
            pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
            words: list[list[int]] = []
            for i, piece in enumerate(pieces):
                if row["special_tokens_mask"][i]:
                    continue
                if piece.startswith("##") and words:
                    words[-1].append(i)
                else:
                    words.append([i])
            for word in words:
                states = {labels[i] != -100 for i in word}
                assert len(states) == 1, f"word {[pieces[i] for i in word]} partly masked"
                if len(word) > 1 and states == {True}:
                    split_words += 1
                    assert all(ids[i] == tokenizer.mask_token_id for i in word)
    assert split_words > 0, "some multi-piece words were masked whole"


def test_packing_joins_texts_into_max_length_rows(encoder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    data = encode(datasets.Dataset.from_dict({"text": TEXTS}), tokenizer, 32, packing=True, whole_word=False)
    total = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert [len(r) for r in data["input_ids"]] == [32] * (total // 32) + ([total % 32] if total % 32 else [])


def test_decoder_only_model_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="model.name_or_path: objective mlm needs a masked-LM encoder"):
        load_recipe(_mlm(tmp_path, tiny_models["llama"]))


def test_a_model_without_a_masked_lm_head_is_refused_at_load(tmp_path: Path) -> None:
    """A decoder saved as a classifier passes the recipe check; loading says what is wrong."""
    tokenizer = build_wordpiece_tokenizer(TEXTS)
    model = build_tiny_model("llama", tokenizer, tmp_path / "llama")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ConfigError, match="cannot be loaded as AutoModelForMaskedLM"):
        train(_mlm(tmp_path, model), "training.max_steps=1")


def test_preview_shows_every_maskable_token_as_trained(encoder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    shown = preview_example(tokenizer, {"text": TEXTS[0]}, "masked_text")
    assert shown["input_ids"][0] == tokenizer.cls_token_id and shown["labels"][0] == -100
    assert shown["labels"][1:-1] == shown["input_ids"][1:-1] and shown["labels"][-1] == -100

"""seq2seq data: exact sources and labels for T5 and BART, the collator's decoder inputs, the preview,
the model-kind row, and the bad inputs (wrong model shape either way, a format it cannot read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from data_templates.masking import (
    IGNORE_INDEX,
    encoder_text,
    prompt_ids,
    tokenize_seq2seq,
)
from data_templates.prepare import DataError, prepare_data, truncate
from data_templates.preview import build_preview, preview_example, print_rich
from finetune.errors import ConfigError
from finetune.model_kinds import MODEL_KINDS, kind_of_config
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from tests._runs import ROOT
from tests._seq2seq import SEQ2SEQ_DATA, seq2seq_recipe

TINY_CHAT = ROOT / "examples" / "models" / "tiny-chat"
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Translate: Good morning."},
                {"role": "assistant", "content": "Guten Morgen."}]


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_labels_are_the_target_tokens_with_the_models_special_tokens(arch: str, seq2seq_models: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(seq2seq_models[arch])
    row = tokenize_seq2seq(tok, {"prompt": "translate English to German: Thank you.", "completion": "Vielen Dank."})
    target = tok("Vielen Dank.", add_special_tokens=False)["input_ids"]
    source = tok("translate English to German: Thank you.", add_special_tokens=False)["input_ids"]
    # T5: text </s> (ids pad 0, eos 1); BART: <s> text </s> (bos 0, eos 2).
    wrap = {"t5": lambda ids: ids + [1], "bart": lambda ids: [0] + ids + [2]}[arch]
    assert row["labels"] == wrap(target)
    assert row["input_ids"] == wrap(source)
    assert IGNORE_INDEX not in row["labels"]  # every target token is trained, no source token is a label


def test_conversation_source_is_every_turn_before_the_last_reply(seq2seq_models: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(seq2seq_models["t5"])
    row = tokenize_seq2seq(tok, {"messages": CONVERSATION})
    expected_source = "system: Be brief.\nuser: Say hi.\nassistant: Hi.\nuser: Translate: Good morning."
    assert encoder_text(tok, CONVERSATION[:4]) == expected_source
    assert row["input_ids"] == tok(expected_source)["input_ids"]
    assert row["labels"] == tok("Guten Morgen.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # A lone user turn reads as its content, so chat at generation matches prompt_completion training.
    assert prompt_ids(tok, [{"role": "user", "content": "Good morning."}], encoder=True) == \
        tokenize_seq2seq(tok, {"prompt": "Good morning.", "completion": "x"})["input_ids"]


def test_alpaca_source_is_instruction_and_input(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "alpaca.jsonl"
    data.write_text(json.dumps({"instruction": "Translate to German.", "input": "Good night.",
                                "output": "Gute Nacht."}) + "\n")
    recipe = load_recipe(seq2seq_recipe(tmp_path, seq2seq_models["t5"], data=data, fmt="alpaca", rows=1))
    tok = AutoTokenizer.from_pretrained(seq2seq_models["t5"])
    prepared = prepare_data(recipe.data, tok, "seq2seq")
    assert prepared.train[0]["input_ids"] == tok("Translate to German.\n\nGood night.")["input_ids"]
    assert prepared.train[0]["labels"] == tok("Gute Nacht.")["input_ids"]


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_collator_pads_labels_with_ignore_and_derives_decoder_inputs_as_the_model(
        arch: str, seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from finetune.hardware import detect
    from finetune.run_parts import RunParts
    from finetune.seq2seq import build

    recipe = load_recipe(seq2seq_recipe(tmp_path, seq2seq_models[arch], adapter="none"))
    tok = AutoTokenizer.from_pretrained(seq2seq_models[arch])
    model = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_models[arch])
    data = prepare_data(recipe.data, tok, "seq2seq")
    parts = RunParts(recipe=recipe, hardware=detect("cpu", "fp32"), run_dir=tmp_path / "run", tokenizer=tok,
                     model=model, train_dataset=data.train, eval_dataset=None)
    rows = [data.train[i] for i in range(4)]
    batch = build(parts).data_collator(rows)
    longest = max(len(r["labels"]) for r in rows)
    for row, labels in zip(rows, batch["labels"].tolist()):
        assert labels == row["labels"] + [IGNORE_INDEX] * (longest - len(row["labels"]))
    start = model.config.decoder_start_token_id
    pad_labels = batch["labels"].masked_fill(batch["labels"] == IGNORE_INDEX, tok.pad_token_id)
    expected = torch.cat([torch.full((4, 1), start), pad_labels[:, :-1]], dim=1)
    assert torch.equal(batch["decoder_input_ids"], expected)
    with torch.no_grad():  # the same loss as when the model derives the decoder inputs itself
        derived = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        assert torch.allclose(model(**batch).loss, derived.loss)


def test_preview_shows_untrained_source_and_trained_target(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    preview = build_preview(load_recipe(seq2seq_recipe(tmp_path, seq2seq_models["bart"])), 2)
    first = preview.examples[0]
    assert set(first) == {"source", "target"}
    assert first["source"]["text"].startswith("<s>summarize: ft reads one YAML recipe")
    assert set(first["source"]["labels"]) == {IGNORE_INDEX}
    assert first["target"]["text"] == "<s>One YAML recipe, one command, one training run.</s>"
    assert first["target"]["labels"] == first["target"]["input_ids"]
    assert preview_example(preview.tokenizer, preview.data.train[1], "seq2seq")["target"]["labels"] == \
        preview.data.train[1]["labels"]
    console = Console(record=True, width=200)
    print_rich(preview, console)
    shown = console.export_text()
    assert f"example 1 source: {len(first['source']['input_ids'])} tokens, 0 trained" in shown
    assert f"example 1 target: {len(first['target']['labels'])} tokens, {len(first['target']['labels'])} trained" in shown


def test_model_kind_row_and_layer_pattern(seq2seq_models: dict[str, Path]) -> None:
    from finetune.adapters import apply_adapter
    from finetune.recipe.schema import FullAdapter

    kind = MODEL_KINDS["seq2seq_lm"]
    assert (kind.peft_task_type, kind.generates, kind.encoder_decoder) == ("SEQ_2_SEQ_LM", True, True)
    assert kind_of_config({"is_encoder_decoder": True}) is kind and kind_of_config({}).name == "causal_lm"
    for arch, block in (("t5", "block"), ("bart", "layers")):
        model = apply_adapter(AutoModelForSeq2SeqLM.from_pretrained(seq2seq_models[arch]),
                              FullAdapter(trainable_layers=[-1]), kind="seq2seq_lm")
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all(f".{block}.1." in n for n in trained)
        assert any(n.startswith(("encoder.", "model.encoder.")) for n in trained)
        assert any(n.startswith(("decoder.", "model.decoder.")) for n in trained)


def _problems(path: Path, *overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, list(overrides))
    return str(err.value)


def test_seq2seq_on_a_decoder_only_model_is_refused_at_validate(tmp_path: Path) -> None:
    message = _problems(seq2seq_recipe(tmp_path, TINY_CHAT))
    assert "model.name_or_path" in message and "objective.kind seq2seq" in message
    assert "decoder-only model (LlamaForCausalLM)" in message and "objective.kind: sft" in message


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_causal_objective_on_an_encoder_decoder_is_refused_at_validate(
        objective: str, seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    message = _problems(seq2seq_recipe(tmp_path, seq2seq_models["t5"], objective=objective))
    assert "model.name_or_path" in message and f"objective.kind {objective}" in message
    assert "encoder-decoder model (T5ForConditionalGeneration)" in message and "objective.kind: seq2seq" in message


def test_causal_objective_on_a_hub_encoder_decoder_is_refused_at_run_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from finetune.pipeline import run
    from tests._fake_hub import write_fake_hub

    # huggingface_hub reads HF_HOME once, at import: point its resolved cache at the fake hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(write_fake_hub(tmp_path / "hf") / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(seq2seq_recipe(tmp_path, Path("google/flan-t5-small"), objective="sft"))
    with pytest.raises(ConfigError, match=r"model.name_or_path: objective.kind sft trains a decoder-only .*"
                                          r"google/flan-t5-small is an encoder-decoder model"):
        run(recipe, log=lambda *_: None)
    assert not (tmp_path / "run" / "final").exists()


def test_a_format_seq2seq_cannot_read_names_the_key(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    path = seq2seq_recipe(tmp_path, seq2seq_models["t5"], data=ROOT / "examples" / "data" / "preference.jsonl",
                          fmt="preference")
    message = _problems(path)
    assert f"{path}:" in message and "data.train.0.format" in message
    assert "objective 'seq2seq' cannot train on 'preference' data" in message


def test_a_conversation_without_a_reply_names_file_and_row(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
                    + "\n" + json.dumps({"messages": [{"role": "assistant", "content": "Hello"}]}) + "\n")
    recipe = load_recipe(seq2seq_recipe(tmp_path, seq2seq_models["t5"], data=data, fmt="messages"))
    tok = AutoTokenizer.from_pretrained(seq2seq_models["t5"])
    with pytest.raises(DataError, match=rf"{data}:2: .*source is empty"):
        prepare_data(recipe.data, tok, "seq2seq")


# facebook/bart-base's config.json dimensions and special ids (the rest are BartConfig's defaults).
_BART_BASE = {"architectures": ["BartModel"], "model_type": "bart", "d_model": 768, "encoder_layers": 6,
              "decoder_layers": 6, "encoder_attention_heads": 12, "decoder_attention_heads": 12,
              "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "max_position_embeddings": 1024,
              "is_encoder_decoder": True, "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
              "decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2, "vocab_size": 50265}


def test_smoke_shrinks_t5_and_bart_to_small_encoder_decoders(seq2seq_models: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from finetune.smoke.shrink import shrink
    from tests._fake_hub import write_fake_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(write_fake_hub(tmp_path / "hf") / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t5 = shrink("google/flan-t5-small", tmp_path / "t5")
    saved = json.loads((t5.path / "config.json").read_text())
    assert t5.architecture == "T5ForConditionalGeneration"
    assert (saved["d_model"], saved["d_ff"], saved["d_kv"], saved["num_layers"], saved["num_decoder_layers"],
            saved["num_heads"]) == (64, 128, 16, 2, 2, 4)
    assert saved["feed_forward_proj"] == "gated-gelu" and saved["decoder_start_token_id"] == 0

    bart_dir = tmp_path / "bart-base"
    AutoTokenizer.from_pretrained(seq2seq_models["bart"]).save_pretrained(bart_dir)
    (bart_dir / "config.json").write_text(json.dumps({**_BART_BASE, "vocab_size": 400}))
    bart = shrink(str(bart_dir), tmp_path / "bart")
    saved = json.loads((bart.path / "config.json").read_text())
    assert bart.architecture == "BartForConditionalGeneration"
    assert (saved["d_model"], saved["encoder_layers"], saved["decoder_layers"], saved["encoder_ffn_dim"],
            saved["decoder_ffn_dim"], saved["encoder_attention_heads"]) == (64, 2, 2, 128, 128, 4)
    assert saved["decoder_start_token_id"] == 2 and saved["eos_token_id"] == 2


def test_lora_layers_pick_the_same_block_of_encoder_and_decoder(seq2seq_models: dict[str, Path]) -> None:
    from finetune.adapters import apply_adapter
    from finetune.recipe.schema import LoraAdapter

    for arch, block in (("t5", "block"), ("bart", "layers")):
        model = apply_adapter(AutoModelForSeq2SeqLM.from_pretrained(seq2seq_models[arch]),
                              LoraAdapter(layers=[-1]), kind="seq2seq_lm")
        wrapped = {n for n, p in model.named_parameters() if "lora_A" in n}
        assert wrapped and all(f".{block}.1." in n for n in wrapped)
        assert {n.split(f".{block}.")[0].rsplit(".", 1)[-1] for n in wrapped} == {"encoder", "decoder"}


def test_max_length_truncates_source_and_target_each(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = load_recipe(seq2seq_recipe(tmp_path, seq2seq_models["t5"]), ["data.max_length=6"])
    tok = AutoTokenizer.from_pretrained(seq2seq_models["t5"])
    prepared = prepare_data(recipe.data, tok, "seq2seq")
    first = json.loads(SEQ2SEQ_DATA.read_text().splitlines()[0])
    full = tokenize_seq2seq(tok, first)
    assert len(full["input_ids"]) > 6 and len(full["labels"]) > 6
    assert {"input_ids": full["input_ids"][:6], "labels": full["labels"][:6]} in [dict(r) for r in prepared.train]
    assert prepared.stats[0].truncated == prepared.stats[0].rows == 4
    # A short source with a long target: the target alone is cut.
    short = truncate({"input_ids": [5, 1], "labels": list(range(10))}, 6, "keep_start")
    assert short == {"input_ids": [5, 1], "labels": [0, 1, 2, 3, 4, 5]}

"""seq2seq training on tiny random T5 and BART models: LoRA, full and QLoRA runs learn a fixed batch,
change only the parameters they should, write the run directory, reload from final/ and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.generate import generate, load_for_generation
from finetune.models import load_trained
from tests._runs import train
from tests._seq2seq import seq2seq_recipe


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [float(m["loss"]) for m in lines if "loss" in m]


def _check_run_dir(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["objective"] == "seq2seq"
    assert (run_dir / "final").is_dir() and (run_dir / "recipe.yaml").is_file()


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_lora_learns_a_batch_changes_only_lora_and_reloads(arch: str, seq2seq_models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    result, snap = train(seq2seq_recipe(tmp_path, seq2seq_models[arch]), log=lambda *_: None)
    losses = _losses(result.run_dir)
    assert len(losses) == 6 and losses[-1] < losses[0] * 0.9, losses
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.changed() == snap.trainable  # every LoRA matrix moved, nothing frozen did
    _check_run_dir(result.run_dir)
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"

    model, tok = load_trained(result.run_dir)  # the kind comes from the adapter's task type
    assert type(model.get_base_model()).__name__.endswith("ForConditionalGeneration")
    trained = dict(snap.model.named_parameters())
    reloaded = dict(model.named_parameters())
    name = min(snap.trainable)
    assert torch.equal(reloaded[name], trained[name].detach())  # the saved adapter is the trained one
    text = generate(model.eval(), tok, [{"role": "user", "content": "translate English to German: Thank you."}],
                    max_new_tokens=5)
    assert isinstance(text, str)


def test_generate_decodes_only_the_decoder_output(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    """Greedy decoding equals the model's own generate on the training source; no prompt to strip."""
    from data_templates.masking import prompt_ids

    result, _ = train(seq2seq_recipe(tmp_path, seq2seq_models["t5"], steps=2), log=lambda *_: None)
    model, tok = load_for_generation(result.run_dir)
    messages = [{"role": "user", "content": "summarize: LoRA trains small low-rank update matrices."}]
    ids = torch.tensor([prompt_ids(tok, messages, encoder=True)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert generate(model, tok, messages, max_new_tokens=6) == tok.decode(out[0], skip_special_tokens=True).strip()


def test_full_fine_tune_of_bart_trains_every_parameter_and_reloads(seq2seq_models: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    result, snap = train(seq2seq_recipe(tmp_path, seq2seq_models["bart"], adapter="none", lr=1e-3),
                         log=lambda *_: None)
    losses = _losses(result.run_dir)
    assert losses[-1] < losses[0], losses
    assert snap.trainable == set(snap.before) and len(snap.changed()) > 0.9 * len(snap.before)
    _check_run_dir(result.run_dir)
    model, tok = load_trained(result.run_dir)  # a whole model: its config says encoder-decoder
    assert type(model).__name__ == "BartForConditionalGeneration"
    assert torch.equal(model.get_input_embeddings().weight, snap.model.get_input_embeddings().weight.detach())
    assert isinstance(generate(model.eval(), tok, [{"role": "user", "content": "Hello"}], max_new_tokens=3), str)


def test_messages_data_trains(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    from tests._seq2seq import CHAT_DATA

    result, snap = train(seq2seq_recipe(tmp_path, seq2seq_models["t5"], data=CHAT_DATA, fmt="messages", steps=4),
                         log=lambda *_: None)
    losses = _losses(result.run_dir)
    assert losses[-1] < losses[0] and snap.changed() == snap.trainable


@pytest.mark.slow  # 1-20 s: bitsandbytes' first 4-bit load varies with the machine's load
def test_qlora_t5_trains_and_reloads(seq2seq_models: dict[str, Path], tmp_path: Path) -> None:
    result, snap = train(seq2seq_recipe(tmp_path, seq2seq_models["t5"], adapter="qlora", steps=3),
                         log=lambda *_: None)
    assert any(p.__class__.__name__ == "Params4bit" for p in snap.model.parameters())
    assert snap.trainable and snap.changed() == snap.trainable
    model, tok = load_trained(result.run_dir)  # on the unquantized base
    assert not any(p.__class__.__name__ == "Params4bit" for p in model.parameters())
    assert isinstance(generate(model.eval(), tok, [{"role": "user", "content": "Hello"}], max_new_tokens=3), str)


def test_merged_export_is_a_plain_seq2seq_model_that_answers_as_the_adapter(seq2seq_models: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    from finetune.export.targets import run_export

    result, _ = train(seq2seq_recipe(tmp_path, seq2seq_models["t5"], steps=3), log=lambda *_: None)
    exported = run_export(result.run_dir, "merged", dtype="float32")
    merged = AutoModelForSeq2SeqLM.from_pretrained(exported.out).eval()
    adapter, tok = load_trained(result.run_dir)
    batch = tok(["translate English to German: Thank you."], return_tensors="pt")
    labels = tok(text_target=["Vielen Dank."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = merged(**batch, labels=labels).logits, adapter.eval()(**batch, labels=labels).logits
    # Folding the update into the weights changes float32 rounding only (these tiny models' logits reach ~1e3).
    assert (a - b).abs().max() <= 1e-3 * a.abs().max() and torch.equal(a.argmax(-1), b.argmax(-1))
    assert "AutoModelForSeq2SeqLM" in exported.command and "pipeline(" not in exported.command

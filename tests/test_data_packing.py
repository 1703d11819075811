"""Packing: the run says what it does to attention, the pipeline prints the data report before
training, and the claim in data.packing's description holds: with TRL's padding-free packing and
eager or sdpa attention, transformers' built-in models keep packed examples apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data_templates.packing import packing_note
from finetune.recipe.schema import ModelSection
from tests._data import chats, section, spec, write_jsonl, write_recipe


def test_no_packing_no_note() -> None:
    assert packing_note(section(spec("d.jsonl")), ModelSection(name_or_path="m")) is None


@pytest.mark.parametrize("attn, remote, starts, says", [
    ("flash_attention_2", False, "packing:", "flash_attention_2 keeps each example's attention within itself"),
    ("kernels-community/flash-attn3", True, "packing:", "keeps each example's attention within itself"),
    (None, False, "warning: packing:", "Attention is sdpa, not flash attention"),
    ("eager", False, "warning: packing:", "built-in decoder models derive a per-example mask"),
    ("sdpa", True, "warning: packing:", "packed examples may attend to each other (cross-contamination)"),
])
def test_packing_note_says_what_packing_does_to_attention(attn: str | None, remote: bool, starts: str,
                                                          says: str) -> None:
    note = packing_note(section(spec("d.jsonl"), packing=True, max_length=2048),
                        ModelSection(name_or_path="m", attn_implementation=attn, trust_remote_code=remote))
    assert note is not None and note.startswith(starts) and says in note
    assert "rows of up to 2,048 tokens, padding-free" in note
    assert ("cross-contamination" in note) == starts.startswith("warning")


def test_the_pipeline_reports_truncation_and_packing_before_training(tmp_path: Path, chat_model: Path) -> None:
    from finetune.pipeline import run
    from finetune.recipe.loader import load_recipe

    rows = chats(5) + [{"messages": [{"role": "user", "content": "Story?"},
                                     {"role": "assistant", "content": "Once upon a time " * 20}]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = write_recipe(tmp_path, chat_model, f"""
        train: [{{path: {data}}}]
        max_length: 40
        packing: true
        """)
    log: list[str] = []
    result = run(load_recipe(recipe), log=log.append)
    assert log[0].startswith(f"train[0] {data}: 6 rows; 1 of 6 rows truncated, 0 dropped; tokens min ")
    assert log[0].endswith("train: 6 examples; validation: none")
    assert log[1].startswith("warning: packing: examples are packed into rows of up to 40 tokens")
    assert result.manifest["data_stats"][0]["truncated"] == 1


def _packed_batch(chat_model: Path, tmp_path: Path, attn: str) -> tuple[Any, dict[str, Any]]:
    """The model and the first batch SFTTrainer feeds it with data.packing on."""
    from transformers import AutoModelForCausalLM

    from finetune.hardware import detect
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data, setup_template
    from finetune.quiet import quiet_library_noise
    from finetune.recipe.loader import load_recipe
    from finetune.registry import get_objective
    from finetune.run_parts import RunParts
    from finetune.sft import build_sft_trainer

    quiet_library_noise()
    data = write_jsonl(tmp_path / "d.jsonl", chats(4))
    recipe = load_recipe(write_recipe(tmp_path, chat_model, f"""
        train: [{{path: {data}}}]
        max_length: 128
        packing: true
        """), [f"model.attn_implementation={attn}", "training.batch_size=4"])
    tokenizer = load_tokenizer(recipe.model)
    setup_template(tokenizer, recipe, get_objective("sft"))
    prepared = load_data(recipe, tokenizer, get_objective("sft"))
    model = AutoModelForCausalLM.from_pretrained(chat_model, attn_implementation=attn)
    parts = RunParts(recipe=recipe, hardware=detect("cpu"), run_dir=tmp_path / "run", tokenizer=tokenizer,
                     model=model, train_dataset=prepared.train, eval_dataset=None)
    trainer = build_sft_trainer(parts)
    return model, next(iter(trainer.get_train_dataloader()))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_examples_do_not_attend_to_each_other(chat_model: Path, tmp_path: Path, attn: str) -> None:
    import torch

    model, batch = _packed_batch(chat_model, tmp_path, attn)
    assert "attention_mask" not in batch, "TRL's bfd packing is padding-free"
    positions = batch["position_ids"][0]
    starts = [i for i in range(len(positions)) if positions[i] == 0]
    assert len(starts) > 1, "several examples share the packed row"
    model.eval()
    with torch.no_grad():
        # As TRL's compute_loss calls it: no cache, no mask, position ids restarting per example.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for start, end in zip(starts, starts[1:] + [len(positions)]):
            alone = model(input_ids=batch["input_ids"][:, start:end], use_cache=False).logits[0]
            assert torch.allclose(packed[start:end], alone, atol=1e-5), f"example at {start} saw its neighbours"

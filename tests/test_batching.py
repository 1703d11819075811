"""Batching: length grouping covers every example once per epoch, deterministically, with similar
lengths per batch and disjoint batches per rank; padding-free batches give the same per-example
losses as padded ones; the run names the batching mode in a notice and the manifest."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from finetune.batching import LengthGroupedSampler, grouped_indices
from tests._data import chats, write_jsonl, write_recipe

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(27, 600) for _ in range(1003)]  # not a multiple of the batch


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_every_example_once_per_epoch_deterministic_and_new_each_epoch() -> None:
    first = grouped_indices(LENGTHS, 8, seed=1, epoch=0)
    assert sorted(first) == list(range(len(LENGTHS)))
    assert grouped_indices(LENGTHS, 8, seed=1, epoch=0) == first
    assert grouped_indices(LENGTHS, 8, seed=1, epoch=1) != first
    assert grouped_indices(LENGTHS, 8, seed=2, epoch=0) != first
    sampler = LengthGroupedSampler(LENGTHS, 8, seed=1)
    assert list(sampler) == first and list(sampler) == grouped_indices(LENGTHS, 8, seed=1, epoch=1)
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_batches_have_similar_lengths_and_no_length_trend() -> None:
    order = grouped_indices(LENGTHS, 8, seed=3, epoch=0)
    batches = _batches(order, 8)
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == len(LENGTHS) % 8
    padded = sum(8 * max(LENGTHS[i] for i in b) for b in batches[:-1])
    shuffled = list(range(len(LENGTHS)))
    random.Random(3).shuffle(shuffled)
    padded_random = sum(8 * max(LENGTHS[i] for i in b) for b in _batches(shuffled, 8)[:-1])
    real = sum(LENGTHS[i] for b in batches[:-1] for i in b)
    assert padded < 1.05 * real and padded_random > 1.5 * real, "grouped batches pad little, random ones a lot"
    # Batches are shuffled: within the first mega-batch order, the longest-first trend is gone.
    maxima = [max(LENGTHS[i] for i in b) for b in batches[:50]]
    assert maxima != sorted(maxima, reverse=True)


def test_ranks_get_disjoint_batches_covering_the_epoch() -> None:
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    per_rank = []
    for rank in range(2):
        batches = BatchSampler(LengthGroupedSampler(LENGTHS, 8, seed=5), 8, drop_last=False)
        per_rank.append([i for b in BatchSamplerShard(batches, num_processes=2, process_index=rank,
                                                      even_batches=False) for i in b])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(len(LENGTHS)))


def _example_losses(logits: Any, labels: Any) -> list[float]:
    """Mean next-token cross-entropy over each example's supervised tokens, from logits (T, V)."""
    import torch.nn.functional as F

    targets = labels[1:]
    keep = targets != -100
    return F.cross_entropy(logits[:-1][keep], targets[keep], reduction="sum").item() / keep.sum().item()


def _trainer(chat_model: Path, tmp_path: Path, batching: str) -> Any:
    from finetune.hardware import detect
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data, setup_template
    from finetune.quiet import quiet_library_noise
    from finetune.recipe.loader import load_recipe
    from finetune.registry import get_objective
    from finetune.run_parts import RunParts
    from finetune.sft import build_sft_trainer
    from transformers import AutoModelForCausalLM

    quiet_library_noise()
    data = write_jsonl(tmp_path / "d.jsonl", chats(4))
    recipe = load_recipe(write_recipe(tmp_path, chat_model, f"""
        train: [{{path: {data}}}]
        batching: {batching}
        """), ["model.attn_implementation=sdpa", "training.batch_size=4"])
    tokenizer = load_tokenizer(recipe.model)
    setup_template(tokenizer, recipe, get_objective("sft"))
    prepared = load_data(recipe, tokenizer, get_objective("sft"))
    model = AutoModelForCausalLM.from_pretrained(chat_model, attn_implementation="sdpa", dtype="float32")
    parts = RunParts(recipe=recipe, hardware=detect("cpu"), run_dir=tmp_path / "run", tokenizer=tokenizer,
                     model=model, train_dataset=prepared.train, eval_dataset=None)
    return build_sft_trainer(parts)


def test_padding_free_batch_gives_the_padded_batch_per_example_losses(chat_model: Path, tmp_path: Path) -> None:
    import torch

    free = _trainer(chat_model, tmp_path / "free", "padding_free")
    padded = _trainer(chat_model, tmp_path / "padded", "random")
    examples = [free.train_dataset[i] for i in range(4)]
    assert len({len(e["input_ids"]) for e in examples}) > 1, "lengths differ, so the padded batch has padding"
    flat, pad = free.data_collator(examples), padded.data_collator(examples)
    assert "attention_mask" not in flat and flat["input_ids"].shape[0] == 1
    assert pad["attention_mask"].eq(0).any()
    model = free.model.eval()
    with torch.no_grad():  # as TRL calls the model in padding-free training: no mask, no cache
        flat_logits = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits[0]
        pad_logits = model(input_ids=pad["input_ids"], attention_mask=pad["attention_mask"], use_cache=False).logits
    positions = flat["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    for row, (start, end) in enumerate(zip(starts, starts[1:])):
        width = end - start
        packed_loss = _example_losses(flat_logits[start:end], flat["labels"][0, start:end])
        padded_loss = _example_losses(pad_logits[row, :width], pad["labels"][row, :width])
        assert abs(packed_loss - padded_loss) < 1e-5, (row, packed_loss, padded_loss)
    # The mean over all supervised tokens (TRL's loss) is the same too.
    assert abs(free.compute_loss(model, flat).item() - padded.compute_loss(model, pad).item()) < 1e-5


@pytest.mark.parametrize("batching", ["length", "padding_free"])
def test_the_run_names_its_batching_mode(chat_model: Path, tmp_path: Path, batching: str) -> None:
    from finetune.pipeline import run
    from finetune.recipe.loader import load_recipe

    data = write_jsonl(tmp_path / "d.jsonl", chats(6))
    recipe = write_recipe(tmp_path, chat_model, f"""
        train: [{{path: {data}}}]
        batching: {batching}
        """)
    log: list[str] = []
    result = run(load_recipe(recipe), log=log.append)
    assert any(line.startswith(f"batching: {batching} (") for line in log)
    assert result.manifest["batching"]["mode"] == batching
    throughput = result.manifest["throughput"]
    assert throughput["tokens"] > 0 and throughput["tokens_per_s"] > 0
    assert throughput["mfu"] is None and "MFU needs the device's peak" in throughput["mfu_note"]


def test_padding_free_is_refused_for_dpo_and_liger_on_cpu(chat_model: Path, tmp_path: Path) -> None:
    from finetune.batching import problems
    from finetune.errors import ConfigError
    from finetune.hardware import Hardware
    from finetune.recipe.errors import RecipeError
    from finetune.recipe.loader import load_recipe
    from finetune.throughput import check_hardware

    data = write_jsonl(tmp_path / "d.jsonl", chats(2))
    path = write_recipe(tmp_path, chat_model, f"train: [{{path: {data}}}]")
    with pytest.raises(RecipeError, match="training.liger: Liger kernels are not installed; pip install"):
        load_recipe(path, ["training.liger=true"])  # ft validate: the extra is missing (and it is GPU only)
    recipe = load_recipe(path, ["data.batching=padding_free"])
    liger = recipe.model_copy(update={"training": recipe.training.model_copy(update={"liger": True})})
    assert problems(recipe) == []  # sft supports it
    from types import SimpleNamespace

    dpo = SimpleNamespace(objective=SimpleNamespace(kind="dpo"), data=recipe.data)
    [(path, message)] = problems(dpo)
    assert path == ("data", "batching") and "not dpo; use length" in message
    with pytest.raises(ConfigError, match="Liger kernels are Triton GPU kernels and this run is on CPU"):
        check_hardware(liger, Hardware("cpu", "fp32", "cpu (2 threads)"))


def test_mfu_from_a_known_peak() -> None:
    from types import SimpleNamespace

    from finetune.throughput import report

    config = SimpleNamespace(num_hidden_layers=2, hidden_size=64)
    out = report(tokens=100_000_000, train_seconds=1.0, examples=1_000_000, parameters=(100, 1_000_000), config=config,
                 hardware_name="NVIDIA H100 80GB HBM3", device="cuda", precision="bf16")
    per_token = 4 * 1_000_000 + 2 * 100 + 12 * 2 * 64 * 100
    assert out["flops_per_token"] == per_token
    assert out["mfu"] == round(per_token * 1e8 / 989e12, 4) and 0.1 < out["mfu"] < 1


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_preference_trainers_get_length_grouping(kind: str, align_model: Path, align_data: dict[str, Path],
                                                 tmp_path: Path) -> None:
    from finetune.pipeline import run
    from finetune.recipe.loader import load_recipe
    from tests._runs import write_recipe as write_run_recipe

    path = write_run_recipe(tmp_path, align_model, data=align_data["pairs"], fmt="preference", objective=kind)
    log: list[str] = []
    result = run(load_recipe(path, ["training.max_steps=2", "data.max_length=64"]), log=log.append)
    assert result.manifest["batching"]["mode"] == "length"
    assert any(line.startswith("batching: length (") for line in log)

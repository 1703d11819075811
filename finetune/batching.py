"""How training examples are put into batches: length grouping, padding-free or random.

On data of variable length, a random batch pads every row to the batch's longest example: on chat
data with lengths 27-600 (median ~109) about 55% of the token slots of a batch of 8 are padding.
Two remedies, chosen by `data.batching` (see the schema for the user-facing text):

- `length` (default when not packing): `LengthGroupedSampler` below. transformers' own
  `group_by_length` was checked and is not enough: its sampler draws from torch's global RNG
  (which dropout also consumes, so ranks and resumed runs drift apart), and it leaves the batches
  of each mega-batch in descending length order (a saw-tooth in the loss curve). Ours permutes
  with its own generator seeded from (seed, epoch), sorts within mega-batches of 50 batches, and
  then shuffles the batches themselves, so lengths are similar within a batch while the order of
  batches carries no length trend. Under `--nproc N` every rank builds the same sequence and
  accelerate's batch sharding hands rank r batches r, r+N, ... (disjoint, DistributedSampler
  semantics).
- `padding_free` (sft and pretrain): TRL's collator concatenates a batch into one row with
  position ids restarting at each example and no attention mask; transformers' decoder models
  build a block-diagonal causal mask from those position ids (masking_utils.
  find_packed_sequence_indices), and flash attention uses them as sequence boundaries. The loss
  is the same mean over supervised tokens as in the padded batch (tests/test_batching.py checks
  per-example losses within 1e-5).

`choose` decides the mode for a recipe and says why; `install` puts the sampler on a built trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune.recipe.schema import RecipeBase

MEGA_BATCH = 50  # batches per mega-batch sorted together, as in transformers' group_by_length
PADDING_FREE_OBJECTIVES = ("sft", "pretrain")  # TRL 1.12: SFTTrainer only (DPO's padding_free is disabled)


@dataclass(frozen=True)
class Batching:
    mode: str  # packing | padding_free | length | random
    reason: str

    def notice(self) -> str:
        return f"batching: {self.mode} ({self.reason})"

    def to_manifest(self) -> dict[str, str]:
        return {"mode": self.mode, "reason": self.reason}


def problems(recipe: RecipeBase) -> list[tuple[tuple[str, ...], str]]:
    """(key path, message) for a batching mode the objective cannot honour (shown by ft validate)."""
    kind = recipe.objective.kind
    if recipe.data.batching == "padding_free" and kind not in PADDING_FREE_OBJECTIVES:
        return [(("data", "batching"), f"padding_free is supported for {', '.join(PADDING_FREE_OBJECTIVES)} only "
                 f"(TRL 1.12 has disabled it for preference trainers), not {kind}; use length (the default)")]
    return []


def choose(recipe: RecipeBase) -> Batching:
    """The batching mode of a run and the reason, for the start notice and the manifest."""
    data = recipe.data
    if data.packing:
        return Batching("packing", "data.packing: examples packed best-fit-decreasing, trained padding-free")
    if data.batching == "padding_free":
        return Batching("padding_free", "data.batching: each batch is one row without padding; position ids keep "
                        "the examples apart in attention; the loss is the same per-token mean")
    if data.batching == "random":
        return Batching("random", "data.batching: random order; batches pad to their longest example")
    return Batching("length", f"data.batching default: batches of similar length (sorted within shuffled "
                    f"mega-batches of {MEGA_BATCH} batches, batch order shuffled), so a batch pads to its own "
                    "longest row")


def grouped_indices(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[int]:
    """Every index once: similar lengths within each run of `batch_size`, batches in random order.

    Deterministic for (seed, epoch). Only the last batch may be short, so a DataLoader that chunks
    the sequence by `batch_size` sees exactly these batches.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = MEGA_BATCH * batch_size
    ordered: list[int] = []
    for start in range(0, len(order), mega):
        ordered += sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [i for batch in shuffled + tail for i in batch]


class LengthGroupedSampler:
    """A torch Sampler over `lengths` (see module doc); a new order each epoch, the same on every rank."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int,
                 epoch_of: Callable[[], int] | None = None) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.epoch = 0
        self._explicit = False
        # Where the training loop is (the Trainer's state): a resumed run's first, partly skipped
        # epoch is iterated through Accelerate's skip wrapper, which does not pass set_epoch on under
        # several processes, and a fresh process would otherwise start counting at 0.
        self._epoch_of = epoch_of

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit = epoch, True

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not self._explicit and self._epoch_of is not None:
            self.epoch = self._epoch_of()
        indices = grouped_indices(self.lengths, self.batch_size, self.seed, self.epoch)
        if not self._explicit:  # no set_epoch from the trainer: count passes, identically on every rank
            self.epoch += 1
        self._explicit = False
        return iter(indices)


# Columns whose lengths make up a training example's padded size, per trainer's tokenized form.
LENGTH_COLUMNS = ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids", "completion_ids",
                  "chosen_input_ids", "rejected_input_ids")


def example_lengths(dataset: Any) -> list[int] | None:
    """Tokens per example from the tokenized columns present (pyarrow, no row decoding); None if none."""
    import pyarrow.compute as pc

    names = [c for c in LENGTH_COLUMNS if c in getattr(dataset, "column_names", [])]
    if not names:
        return None
    # Through the indices mapping: a trainer that filtered rows (RewardTrainer drops long pairs) keeps
    # the whole table underneath, and `.data` would count the dropped rows too.
    table = dataset.select_columns(names).with_format("arrow")[:]
    columns = [pc.list_value_length(table.column(n)).to_pylist() for n in names]
    return [sum(values) for values in zip(*columns)]


def install(trainer: Any, recipe: RecipeBase, choice: Batching) -> Batching:
    """Give the trainer the length-grouped sampler when the mode asks for it; returns the mode used."""
    from transformers import Trainer

    if choice.mode != "length":
        return choice
    if type(trainer)._get_train_sampler is not Trainer._get_train_sampler:
        return Batching("random", f"{type(trainer).__name__} orders its training data itself (GRPO repeats each "
                        "prompt for its group, KTO pairs rows for its KL term); ft leaves that order alone")
    lengths = example_lengths(trainer.train_dataset)
    if lengths is None:
        return Batching("random", "length grouping needs tokenized data, and this objective tokenizes "
                        "while training")
    # Grouped by the global batch: Accelerate hands each rank consecutive per-device slices of one
    # global batch, so N processes train on exactly the batches one process would (same losses).
    global_batch = trainer.args.per_device_train_batch_size * max(trainer.args.world_size, 1)
    # trainer.state.epoch is a float (2.4: 40% into epoch 2) that can end an epoch a hair below n.
    sampler = LengthGroupedSampler(lengths, global_batch, recipe.seed,
                                   epoch_of=lambda: int((trainer.state.epoch or 0) + 1e-6))
    trainer._get_train_sampler = lambda *_args, **_kwargs: sampler  # the one hook every Trainer calls
    return choice

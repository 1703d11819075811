"""Assemble the train and validation sets from per-dataset parts: hold out, then mix by weight.

Everything here picks row indices (cheap, and the tokenized data stays memory-mapped), with
random choices seeded by the recipe seed, so the same recipe always gives the same sets.

Order matters: the validation rows are held out *before* mixing, so a row repeated by a large
weight can never appear in both sets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from finetune.errors import FtError


class MixError(FtError, ValueError):
    """Weights that cannot be applied; the message says which dataset and why."""


def holdout_indices(sizes: Sequence[int], fraction: float, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(kept, held) row indices per dataset: `fraction` of all rows (at least one) held out at random.

    The rows of every dataset are pooled and shuffled together, so each dataset gives about its
    share; indices stay in file order within each list.
    """
    pool = [(d, i) for d, size in enumerate(sizes) for i in range(size)]
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    held = {pool[k] for k in order[: max(1, round(len(pool) * fraction))]}
    kept_idx: list[list[int]] = [[] for _ in sizes]
    held_idx: list[list[int]] = [[] for _ in sizes]
    for d, i in pool:
        (held_idx if (d, i) in held else kept_idx)[d].append(i)
    return kept_idx, held_idx


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights`, rounded so the parts add up to `total` exactly
    (largest remainder; ties go to the earlier dataset)."""
    exact = [total * w / sum(weights) for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def mix_indices(sizes: Sequence[int], weights: Sequence[float], seed: int,
                names: Sequence[str] = ()) -> list[list[int]]:
    """Row indices each dataset contributes to the mix (see `DatasetSpec.weight` for the rule).

    The mix has sum(sizes) examples; dataset i gets its weight's share of them. A share up to its
    size is a random subset without replacement; a larger one repeats every row share // size
    times and adds a random subset for the rest, so rows repeat as evenly as possible.
    """
    picks = []
    for i, (size, share) in enumerate(zip(sizes, shares(sum(sizes), weights))):
        if size == 0 and share > 0:
            name = names[i] if i < len(names) else f"train[{i}]"
            raise MixError(f"{name}: has no rows left to sample (after bad rows, truncation and the validation "
                           "split), but its weight asks for some")
        # A string seed is hashed deterministically (sha512), unlike hash() of a tuple across runs.
        rng = random.Random(f"{seed}:mix:{i}")
        copies, rest = divmod(share, size) if size else (0, 0)
        picks.append(list(range(size)) * copies + sorted(rng.sample(range(size), rest)))
    return picks


def describe_mix(names: Sequence[str], sizes: Sequence[int], weights: Sequence[float],
                 picks: Sequence[Sequence[int]]) -> str:
    """One line: what each dataset contributed to the mix, and how."""
    parts = []
    for name, size, weight, pick in zip(names, sizes, weights, picks):
        n = len(pick)
        how = ("every row once" if n == size else f"{n / size:.2f}x its rows, repeated" if n > size
               else "a random subset")
        parts.append(f"{name} weight {weight:g} -> {n:,} of {size:,} rows ({how})")
    return "mixed by weight: " + "; ".join(parts)


def select(dataset: Any, indices: Sequence[int]) -> Any:
    """`dataset` restricted to `indices` (a no-op when they are every row in order)."""
    if list(indices) == list(range(len(dataset))):
        return dataset
    return dataset.select(list(indices))

"""Tokenizing many rows on several cores.

Chat templating and offset-mapped masking are Python-heavy (~1-2 ms a row), so 50,000 rows take a
minute on one core. Above `PARALLEL_MIN_ROWS` rows the work is split into contiguous chunks over
forked worker processes (the tokenizer is inherited by fork, not pickled); results come back in
row order, so the tokens, the bad-row report and the cache entry are identical to a serial run.
Small data stays in-process: starting workers costs more than it saves. `FT_DATA_PROC` overrides
the number of processes (1 turns parallelism off).

`datasets.map(num_proc=...)` was the first choice; it pickles the tokenizer and the function into
every worker and writes Arrow shards to a cache directory, and the per-row bad-row messages ft
reports would have to travel as extra columns. A fork pool over lists does the same work with
none of that.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

PARALLEL_MIN_ROWS = 2_000
MAX_PROC = 8  # tokenizing scales to about this many workers before memory bandwidth and IPC dominate
_STATE: dict[str, Any] = {}  # (tokenizer, loss_on, tokenize) for forked workers
# One canonical example -> its tokens: data_templates.prepare.tokenize_example, or the data form's own.
Tokenize = Callable[[Any, dict[str, Any], str], dict[str, list[int]]]


def default_num_proc(rows: int) -> int:
    env = os.environ.get("FT_DATA_PROC")
    if env:
        return max(1, int(env))
    if rows <= PARALLEL_MIN_ROWS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    # Under --nproc the main process tokenizes first while the other ranks wait (pipeline.load_data), then
    # they load its cache entry: the main process may use every core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_PROC))


def _tokenize_one(tokenizer: Any, row: dict[str, Any], loss_on: str,
                  tokenize: Tokenize | None = None) -> dict[str, list[int]] | str:
    """Tokens, or the reason the row cannot be tokenized (a bad row)."""
    from data_templates.prepare import tokenize_example

    try:
        return (tokenize or tokenize_example)(tokenizer, row, loss_on)
    except ValueError as err:
        return str(err)


def _chunk(rows: list[dict[str, Any]]) -> list[dict[str, list[int]] | str]:
    tokenizer, loss_on, tokenize = _STATE["tokenizer"], _STATE["loss_on"], _STATE["tokenize"]
    return [_tokenize_one(tokenizer, row, loss_on, tokenize) for row in rows]


def tokenize_all(tokenizer: Any, rows: list[dict[str, Any]], loss_on: str,
                 num_proc: int | None = None, tokenize: Tokenize | None = None) -> list[dict[str, list[int]] | str]:
    """Each row's tokens or bad-row reason, in row order; on `num_proc` processes (default: see above).
    `tokenize`: the data form's example tokenizer (default: prepare.tokenize_example)."""
    procs = num_proc or default_num_proc(len(rows))
    if procs <= 1:
        return [_tokenize_one(tokenizer, row, loss_on, tokenize) for row in rows]
    _STATE.update(tokenizer=tokenizer, loss_on=loss_on, tokenize=tokenize)
    size = -(-len(rows) // (procs * 4))  # a few chunks per worker evens out uneven row lengths
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    # Fast (Rust) tokenizers warn and fall back to one thread after a fork; the workers are the parallelism.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            results = pool.map(_chunk, chunks)
    finally:
        _STATE.clear()
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    return [tokens for chunk in results for tokens in chunk]

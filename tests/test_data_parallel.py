"""Parallel tokenizing gives exactly the serial result, bad rows included, and is used only for many rows."""

from __future__ import annotations

import pytest

from data_templates import parallel
from tests._data import chats, chatml_tokenizer


def test_parallel_tokens_equal_serial_in_row_order() -> None:
    tokenizer = chatml_tokenizer()
    rows = [r for r in chats(40)]
    rows[7] = {"messages": [{"role": "user", "content": "only a question"}]}  # nothing to train on: a bad row
    serial = parallel.tokenize_all(tokenizer, rows, "assistant", num_proc=1)
    assert isinstance(serial[7], str) and not isinstance(serial[8], str)
    assert parallel.tokenize_all(tokenizer, rows, "assistant", num_proc=2) == serial


def test_small_data_stays_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FT_DATA_PROC", raising=False)
    assert parallel.default_num_proc(parallel.PARALLEL_MIN_ROWS) == 1
    assert 1 <= parallel.default_num_proc(50_000) <= parallel.MAX_PROC
    monkeypatch.setenv("FT_DATA_PROC", "3")
    assert parallel.default_num_proc(10) == 3

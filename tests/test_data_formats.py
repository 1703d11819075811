"""Every dataset format converts a row to its exact canonical form; a row that does not fit is
reported with file and row number, or skipped and counted."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from data_templates.formats import FORMATS
from data_templates.prepare import DataError, DatasetStats, canonical_rows
from tests._data import spec, write_jsonl

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello!"}
S = {"role": "system", "content": "Be brief."}

# format -> (raw row, canonical row)
GOLDEN: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text": ({"text": "Once upon a time."}, {"text": "Once upon a time."}),
    "messages": ({"messages": [S, U, A], "id": 7}, {"messages": [S, U, A]}),
    "prompt_completion": ({"prompt": "2+2=", "completion": "4"}, {"prompt": "2+2=", "completion": "4"}),
    "alpaca": (
        {"instruction": "Add.", "input": "2 and 2", "output": "4", "system": "Be brief.",
         "history": [["Hi", "Hello!"]]},
        {"messages": [S, U, A, {"role": "user", "content": "Add.\n\n2 and 2"},
                      {"role": "assistant", "content": "4"}]},
    ),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
         "system": "Be brief."},
        {"messages": [S, U, A]},
    ),
    "preference": ({"prompt": "2+2=", "chosen": "4", "rejected": "5"},
                   {"prompt": "2+2=", "chosen": "4", "rejected": "5"}),
    "unpaired_preference": ({"prompt": "2+2=", "completion": "5", "label": "false"},
                            {"prompt": "2+2=", "completion": "5", "label": False}),
    "prompt_only": ({"prompt": "2+2=", "reference": 4}, {"prompt": "2+2=", "reference": "4"}),
    "classification": ({"text": "Great film.", "label": "positive", "id": 3},
                       {"text": "Great film.", "text_pair": None, "label": "positive"}),
    "vision_messages": (
        {"messages": [S, {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"text": "What?"},
                                                      {"url": "https://x.org/b.jpg"}]}, A]},
        {"messages": [S, {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                      {"type": "text", "text": "What?"},
                                                      {"type": "image", "image": "https://x.org/b.jpg"}]}, A]},
    ),
}


def _canonical(tmp_path: Path, rows: list[Any], fmt: str, bad_rows: str = "fail",
               **kw: Any) -> tuple[list[Any], DatasetStats]:
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    stats = DatasetStats("train[0]")
    out = canonical_rows(spec(path, format=fmt, **kw), bad_rows, stats)
    return [row for _, row in out], stats


def test_every_format_has_a_golden_row() -> None:
    assert set(GOLDEN) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(GOLDEN))
def test_format_converts_to_its_canonical_form(tmp_path: Path, fmt: str) -> None:
    raw, canonical = GOLDEN[fmt]
    assert _canonical(tmp_path, [raw], fmt)[0] == [canonical]


def test_conversational_preference_answers_become_assistant_messages(tmp_path: Path) -> None:
    no = {"role": "assistant", "content": "Go away."}
    rows, _ = _canonical(tmp_path, [{"prompt": [U], "chosen": "Hello!", "rejected": [no]}], "preference")
    assert rows == [{"prompt": [U], "chosen": [A], "rejected": [no]}]


def test_a_pair_whose_chosen_equals_rejected_is_a_bad_row(tmp_path: Path) -> None:
    same = {"prompt": "2+2=", "chosen": "4", "rejected": "4"}
    good = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    with pytest.raises(DataError, match=r"data.jsonl:2: 'chosen' and 'rejected' are identical"):
        _canonical(tmp_path, [good, same], "preference")
    rows, stats = _canonical(tmp_path, [good, same, same], "preference", bad_rows="skip")
    assert rows == [good] and stats.skipped == 2


def test_prompt_completion_as_messages_is_one_conversation(tmp_path: Path) -> None:
    rows, _ = _canonical(tmp_path, [{"prompt": [S, U], "completion": [A]}], "prompt_completion")
    assert rows == [{"messages": [S, U, A]}]


def test_column_mapping_reads_the_users_columns(tmp_path: Path) -> None:
    raw = {"question": "2+2=", "answer": "4"}
    rows, _ = _canonical(tmp_path, [raw], "prompt_completion", columns={"prompt": "question", "completion": "answer"})
    assert rows == [{"prompt": "2+2=", "completion": "4"}]


def test_a_mapped_column_that_is_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.jsonl:1: missing column 'question' \(mapped to 'prompt'\)"):
        _canonical(tmp_path, [{"q": "2+2=", "completion": "4"}], "prompt_completion", columns={"prompt": "question"})


GOOD = {"messages": [U, A]}
# (row, the reason the error must give)
BAD_ROWS = {
    "missing field": ({"msgs": [U, A]}, "field 'messages' must be a list of messages, got NoneType"),
    "wrong type": ({"messages": "Hi"}, "field 'messages' must be a list of messages, got str"),
    "unknown role": ({"messages": [{"role": "robot", "content": "Hi"}, A]}, "messages[0] has unknown role 'robot'"),
    "empty conversation": ({"messages": []}, "field 'messages' is an empty conversation"),
    "no assistant turn": ({"messages": [U]}, "field 'messages' has no assistant turn"),
    "content not text": ({"messages": [U, {"role": "assistant", "content": 4}]}, "messages[1].content must be text"),
    "not an object": (["Hi", "Hello"], "expected an object with fields, got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_fails_with_file_and_row(tmp_path: Path, case: str) -> None:
    bad, reason = BAD_ROWS[case]
    with pytest.raises(DataError, match=re.escape(f"data.jsonl:3: {reason}")):
        _canonical(tmp_path, [GOOD, GOOD, bad, GOOD], "messages")


@pytest.mark.parametrize("case", sorted(set(BAD_ROWS) - {"not an object"}))
def test_bad_rows_skip_counts_them_and_names_the_first(tmp_path: Path, case: str) -> None:
    bad, reason = BAD_ROWS[case]
    rows, stats = _canonical(tmp_path, [GOOD, bad, GOOD, bad], "messages", bad_rows="skip")
    assert rows == [GOOD, GOOD]
    assert (stats.rows, stats.skipped) == (2, 2)
    assert stats.first_bad is not None and f"data.jsonl:2: {reason}" in stats.first_bad


def test_every_row_bad_is_an_error_that_names_the_first(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"every row was bad \(2 skipped\); the first: .*data.jsonl:1: field"):
        _canonical(tmp_path, [{"messages": []}, {"messages": [U]}], "messages", bad_rows="skip")


@pytest.mark.parametrize("fmt, row, reason", [
    ("alpaca", {"instruction": "Add."}, "missing field 'output'"),
    ("alpaca", {"instruction": "Add.", "output": "4", "history": [["only one"]]},
     "history[0] must be a [user, assistant] pair"),
    ("sharegpt", {"conversations": [{"from": "alien", "value": "Hi"}]}, "conversations[0] has unknown role 'alien'"),
    ("prompt_completion", {"prompt": "2+2=", "completion": 4}, "field 'completion' must be text, got int"),
    ("preference", {"prompt": "2+2=", "chosen": "4"}, "field 'rejected' must be non-empty text"),
    ("unpaired_preference", {"prompt": "2+2=", "completion": "4", "label": "maybe"},
     "field 'label' must be true or false"),
    ("text", {"text": "   "}, "field 'text' is empty"),
])
def test_each_format_reports_what_is_wrong(tmp_path: Path, fmt: str, row: dict[str, Any], reason: str) -> None:
    with pytest.raises(DataError, match=re.escape(f"data.jsonl:1: {reason}")):
        _canonical(tmp_path, [row], fmt)

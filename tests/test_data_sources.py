"""Every source type reads the same rows with file:row origins; unreadable sources say why, and a
Hub dataset fails at once, naming it, when there is no network."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from data_templates.prepare import DataError, DatasetStats, canonical_rows
from data_templates.sources import DataSourceError, read_rows
from tests._data import spec, write_jsonl

ROWS = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "Capital of France?", "completion": "Paris,\nof course."}]


def _read(path: Path, **kw: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(str(origin), row) for origin, row in read_rows(spec(path, format="prompt_completion", **kw))]


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    assert _read(path) == [(f"{path}:1", ROWS[0]), (f"{path}:3", ROWS[1])]  # line numbers, blank lines skipped


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    row = {"prompt": "a\u2028b\x1cc", "completion": "d"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert _read(path) == [(f"{path}:1", row)]


def test_json_list_wrapped_list_and_json_lines_named_json(tmp_path: Path) -> None:
    plain, wrapped, lines = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    plain.write_text(json.dumps(ROWS), encoding="utf-8")
    wrapped.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    write_jsonl(lines, ROWS)
    for path in (plain, wrapped, lines):
        assert _read(path) == [(f"{path}:1", ROWS[0]), (f"{path}:2", ROWS[1])]


def test_csv_with_a_multiline_cell_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    text = 'prompt,completion\n2+2=,4\nCapital of France?,"Paris,\nof course."\n'
    path.write_bytes("\ufeff".encode() + text.encode())
    # Origins are the line each record starts on; the header is line 1.
    assert _read(path) == [(f"{path}:2", ROWS[0]), (f"{path}:3", ROWS[1])]


def test_csv_row_with_too_many_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"d.csv:3: 3 cells, but the header names 2 columns"):
        _read(path)


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert _read(path) == [(f"{path}:1", ROWS[0]), (f"{path}:2", ROWS[1])]


def test_parquet_with_nested_messages(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    out = canonical_rows(spec(path, format="messages"), "fail", DatasetStats("t"))
    assert [r for _, r in out] == [row]


def test_folder_reads_its_data_files_in_path_order_and_skips_hidden_ones(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_jsonl(folder / "b" / "2.jsonl", [ROWS[1]])
    write_jsonl(folder / "a.jsonl", [ROWS[0]])
    write_jsonl(folder / ".ipynb_checkpoints" / "a-checkpoint.jsonl", [ROWS[0]])
    (folder / "README.md").write_text("not data")
    assert _read(folder) == [(f"{folder / 'a.jsonl'}:1", ROWS[0]), (f"{folder / 'b' / '2.jsonl'}:1", ROWS[1])]


def test_max_rows_reads_only_the_first_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS * 3)
    assert [origin for origin, _ in _read(path, max_rows=4)] == [f"{path}:{i}" for i in range(1, 5)]


@pytest.mark.parametrize("name, content, message", [
    ("latin1.jsonl", '{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"),
     r"latin1.jsonl:1: not UTF-8 text \(byte 0xe9 at offset 15"),
    ("empty.jsonl", b"  \n\n", "the file is empty"),
    ("empty.csv", b"", "the file is empty"),
    ("broken.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": \n', r"broken.jsonl:2: invalid JSON"),
    ("object.json", b'{"prompt": "a", "completion": "b"}', "expected a list of rows"),
    ("bad.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("notes.txt", b"hello", "unsupported file type '.txt'"),
])
def test_unreadable_files_say_why(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        canonical_rows(spec(path, format="prompt_completion"), "fail", DatasetStats("t"))


def test_a_csv_with_only_a_header_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        canonical_rows(spec(path, format="prompt_completion"), "fail", DatasetStats("t"))


def test_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="folder has no .jsonl, .json, .csv, .parquet files"):
        canonical_rows(spec(tmp_path / "data"), "fail", DatasetStats("t"))


@pytest.fixture
def restore_offline_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub code switches these on; put them back after the test."""
    import datasets.config
    import huggingface_hub.constants

    for module, name in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, name, getattr(module, name))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def _hub_error(**kw: Any) -> str:
    hub = spec("ft-tests/no-such-dataset", format="prompt_completion", **kw)
    started = time.monotonic()
    with pytest.raises(DataError) as err:
        canonical_rows(hub, "fail", DatasetStats("t"))
    assert time.monotonic() - started < 10, "offline, a Hub dataset must fail at once, not after retries"
    return str(err.value)


def test_hub_dataset_offline_fails_fast_naming_it(restore_offline_flags: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _hub_error(name="main", split="test", revision="abc123")
    assert message.startswith("dataset ft-tests/no-such-dataset(main)[test]@abc123: 'ft-tests/no-such-dataset' is "
                              "not a local file or folder, and the Hugging Face Hub cannot be reached (offline)")


def test_hub_unreachable_is_detected_by_a_probe_and_goes_offline(restore_offline_flags: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config

    probes: list[Any] = []

    def unreachable(address: Any, timeout: float = 0) -> Any:
        probes.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    if datasets.config.HF_HUB_OFFLINE:  # CI exports HF_HUB_OFFLINE=1 before `datasets` is imported
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    message = _hub_error()
    assert probes == [("huggingface.co", 443)]
    assert "ft-tests/no-such-dataset[train]" in message and "cannot be reached (offline)" in message
    assert datasets.config.HF_HUB_OFFLINE

"""Read raw rows from local files (JSON, JSON Lines, CSV, Parquet, a folder of them) or the Hub.

Rows keep where they came from (`Origin`), so a bad row is reported as `file:row`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.recipe.schema import DatasetSpec


class DataSourceError(ValueError):
    """A data file or dataset could not be read; the message names it and says why."""


@dataclass(frozen=True)
class Origin:
    source: str  # file path or hub id
    row: int  # 1-based: the line in JSON Lines and CSV (after the header), the index + 1 elsewhere

    def __str__(self) -> str:
        return f"{self.source}:{self.row}"


Rows = Iterator[tuple[Origin, dict[str, Any]]]


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataSourceError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); "
                              f"re-save it as UTF-8") from None
    if not text.strip():
        raise DataSourceError(f"{path}: the file is empty")
    return text


def _jsonl(path: Path) -> Rows:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
        yield Origin(str(path), number), row


def _json(path: Path) -> Rows:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # a .json file that is really JSON Lines
            yield from _jsonl(path)
            return
        raise DataSourceError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style
    if not isinstance(data, list):
        raise DataSourceError(f"{path}: expected a list of rows (or JSON Lines)")
    for index, row in enumerate(data):
        yield Origin(str(path), index + 1), row


def _csv(path: Path) -> Rows:
    reader = csv.DictReader(_read_text(path).splitlines())
    for number, row in enumerate(reader, start=2):  # line 1 is the header
        yield Origin(str(path), number), dict(row)


def _parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataSourceError(f"{path}: not a readable Parquet file ({err})") from None
    for index, row in enumerate(table.to_pylist()):
        yield Origin(str(path), index + 1), row


READERS: dict[str, Callable[[Path], Rows]] = {
    ".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet,
}


def _local(path: Path) -> Rows:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in READERS and p.is_file())
        if not files:
            raise DataSourceError(f"{path}: folder has no {', '.join(READERS)} files")
        for file in files:
            yield from READERS[file.suffix](file)
        return
    reader = READERS.get(path.suffix)
    if reader is None:
        raise DataSourceError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(READERS)}")
    yield from reader(path)


def _hub(spec: DatasetSpec) -> Rows:
    import datasets

    try:
        ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
        raise DataSourceError(
            f"could not load dataset {spec.path!r} (config {spec.name!r}, split {spec.split!r}): it is not a "
            f"local path, and the Hugging Face Hub could not provide it (offline, or not a valid id). "
            f"Download it where you have a network, or point data path at local files.\n  cause: {err}"
        ) from None
    for index, row in enumerate(ds):
        yield Origin(f"{spec.path}[{spec.split}]", index + 1), row


def read_rows(spec: DatasetSpec) -> Rows:
    """Every raw row of the dataset, with its origin, up to `max_rows`."""
    path = Path(spec.path).expanduser()
    rows = _local(path) if path.exists() else _hub(spec)
    for count, item in enumerate(rows):
        if spec.max_rows is not None and count >= spec.max_rows:
            return
        if not isinstance(item[1], dict):
            raise DataSourceError(f"{item[0]}: expected an object with fields, got {type(item[1]).__name__}")
        yield item

"""Read raw rows from local files (JSON, JSON Lines, CSV, Parquet, a folder of them) or the Hub.

Rows keep where they came from (`Origin`), so a bad row is reported as `file:row`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FtError
from finetune.recipe.schema import DatasetSpec


class DataSourceError(FtError, ValueError):
    """A data file or dataset could not be read; the message names it and says why."""


@dataclass(frozen=True)
class Origin:
    source: str  # file path or hub id
    row: int  # 1-based: the line in JSON Lines and CSV (after the header), the index + 1 elsewhere

    def __str__(self) -> str:
        return f"{self.source}:{self.row}"


Rows = Iterator[tuple[Origin, dict[str, Any]]]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark, which is not part of the data.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataSourceError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: "
                              f"{err.reason}); re-save the file as UTF-8") from None
    if not text.strip():
        raise DataSourceError(f"{path}: the file is empty")
    return text


_TOO_DEEP = "the JSON is nested too deeply to read (a row is a conversation, not a tree thousands of levels deep)"


def _jsonl(path: Path) -> Rows:
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters that
    # splitlines() treats as line breaks; a trailing "\r" is whitespace to json.loads.
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise DataSourceError(f"{path}:{number}: {_TOO_DEEP}") from None
        yield Origin(str(path), number), row


def _json(path: Path) -> Rows:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataSourceError(f"{path}: {_TOO_DEEP}") from None
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
    # newline="" lets quoted cells span lines with their newlines kept (splitlines would drop them).
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    start = 2  # line 1 is the header
    for row in reader:
        if None in row:  # DictReader files surplus cells under the key None
            raise DataSourceError(f"{path}:{start}: {len(reader.fieldnames or []) + len(row[None])} cells, "
                                  f"but the header names {len(reader.fieldnames or [])} columns")
        yield Origin(str(path), start), dict(row)
        start = reader.line_num + 1


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


def data_files(path: Path) -> list[Path]:
    """The files a local dataset reads, in reading order: the file itself, or a folder's data files
    sorted by path. Hidden files and folders (.git, .ipynb_checkpoints) are not data."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in READERS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _local(path: Path) -> Rows:
    files = data_files(path)
    if not files:
        raise DataSourceError(f"{path}: folder has no {', '.join(READERS)} files")
    for file in files:
        reader = READERS.get(file.suffix)
        if reader is None:
            raise DataSourceError(f"{file}: unsupported file type {file.suffix!r}; use {', '.join(READERS)}")
        yield from reader(file)


def hub_label(spec: DatasetSpec) -> str:
    """How a Hub dataset is named in messages: id, config and split, and the revision when pinned."""
    label = spec.path + (f"({spec.name})" if spec.name else "") + f"[{spec.split}]"
    return label + (f"@{spec.revision}" if spec.revision else "")


def _hub(spec: DatasetSpec) -> Rows:
    import datasets
    from datasets.exceptions import DatasetsError

    from finetune.hub import hub_offline

    offline = hub_offline()
    label = hub_label(spec)
    try:
        ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision)
    except (OSError, ValueError, DatasetsError) as err:
        why = ("the Hugging Face Hub cannot be reached (offline) and the dataset is not in the local datasets "
               "cache" if offline else "the Hugging Face Hub could not provide it (check the id, config name "
               "and split)")
        cause = str(err).splitlines()[0] if str(err) else ""
        raise DataSourceError(
            f"dataset {label}: {spec.path!r} is not a local file or folder, and {why}. Download it where you "
            f"have a network (`hf download --repo-type dataset {spec.path}`), or point the data path at local "
            f"files.\n  cause: {type(err).__name__}: {cause}"
        ) from None
    for index, row in enumerate(ds):
        yield Origin(label, index + 1), row


def is_local(spec: DatasetSpec) -> bool:
    """An existing file or folder is read locally; anything else is taken as a Hub dataset id."""
    return Path(spec.path).expanduser().exists()


def read_rows(spec: DatasetSpec) -> Rows:
    """Every raw row of the dataset with its origin; only the first `max_rows` rows when that is set."""
    rows = _local(Path(spec.path).expanduser()) if is_local(spec) else _hub(spec)
    for count, item in enumerate(rows):
        if spec.max_rows is not None and count >= spec.max_rows:
            return
        if not isinstance(item[1], dict):
            raise DataSourceError(f"{item[0]}: expected an object with fields, got {type(item[1]).__name__}")
        yield item

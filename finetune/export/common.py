"""What every export target shares: the run it reads, the output folder it fills atomically, the result."""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import FtError
from finetune.outputs import save_dir_atomic, write_json

MARKER = "ft_export.json"  # written into every export folder: only these may be overwritten


class ExportError(FtError):
    """The run cannot be exported as asked (not a run, unknown target, out dir taken, disk full, ...)."""


@dataclass
class ExportResult:
    target: str
    out: Path
    command: str  # the exact command that serves or loads the result
    notes: list[str] = field(default_factory=list)

    def to_manifest(self) -> dict[str, Any]:
        return {"to": self.target, "path": str(self.out), "command": self.command}


def run_recipe(run_dir: Path) -> dict[str, Any]:
    """The run's resolved recipe as plain data ({} when the run has none, e.g. a bare model dir)."""
    path = run_dir / "recipe.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.is_file() else {}


def run_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a taken folder; with overwrite, replace only a folder an earlier `ft export` wrote."""
    if not out.exists():
        return
    if not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it, or --out <new dir>")
    if not (out / MARKER).is_file():
        raise ExportError(f"{out} exists and was not written by ft export (no {MARKER}); refusing to "
                          f"overwrite it. Choose another --out.")


def write_out_dir(out: Path, fill: Callable[[Path], None], info: dict[str, Any]) -> None:
    """Fill a temporary folder next to `out`, then rename it to `out`: never half-written.

    A full disk (or any write error) removes the temporary folder and says so.
    """
    def fill_and_mark(tmp: Path) -> None:
        fill(tmp)
        write_json(tmp / MARKER, info)

    try:
        save_dir_atomic(out, fill_and_mark)
    except OSError as err:
        shutil.rmtree(out.with_name(f".{out.name}.tmp"), ignore_errors=True)
        why = "no space left on the device" if err.errno == errno.ENOSPC else f"{type(err).__name__}: {err}"
        raise ExportError(f"could not write {out}: {why}; nothing was written. Free space or pass "
                          f"--out on another disk.") from None

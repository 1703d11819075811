"""A table of bad inputs run through the real `ft` CLI: each must exit non-zero, print no traceback,
and name the file:line, key or path. Extend a suite by appending `Case`s to its table.

Placeholders in `files`, `args`, `expect` and `keep`: {tmp} (the case's own temporary directory,
also the working directory and $HOME's parent), {root} (the repository) and {base} (a valid minimal
single recipe, 9 lines, writing to {tmp}/out).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASE = """model:
  name_or_path: {root}/examples/models/tiny-chat
data:
  train:
    - path: {root}/examples/data/quickstart.jsonl
      format: messages
objective:
  kind: sft
output_dir: {tmp}/out
"""


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # after `ft`, e.g. ["validate", "{tmp}/r.yaml", "seed=-1"]
    expect: list[str]  # substrings the output must contain (file:line, key, path)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text ("" makes an empty file)
    dirs: list[str] = field(default_factory=list)  # empty directories to create
    keep: list[str] = field(default_factory=list)  # paths that must still exist afterwards (data loss)
    subprocess: bool = False  # run the installed entry point in a child process, not CliRunner


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{base}", BASE).replace("{root}", str(ROOT)).replace("{tmp}", str(tmp))


def prepare(case: Case, tmp: Path) -> list[str]:
    """Create the case's files under `tmp`; the arguments with placeholders filled in."""
    (tmp / "home").mkdir(exist_ok=True)
    for rel in case.dirs:
        (tmp / _fill(rel, tmp)).mkdir(parents=True, exist_ok=True)
    for rel, text in case.files.items():
        path = tmp / _fill(rel, tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_fill(text, tmp))
    return [_fill(a, tmp) for a in case.args]


def run_case(case: Case, tmp: Path, monkeypatch) -> tuple[int, str]:
    """(exit code, stdout+stderr) of `ft ARGS` with cwd=tmp and HOME=tmp/home."""
    args = prepare(case, tmp)
    env = {**os.environ, "HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if case.subprocess:
        done = subprocess.run([str(Path(sys.executable).parent / "ft"), *args], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout + done.stderr
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.chdir(tmp)
    monkeypatch.setenv("HOME", str(tmp / "home"))
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an unhandled exception is a failure of the case, with its traceback
    return result.exit_code, result.output


def check_case(case: Case, tmp: Path, monkeypatch) -> None:
    code, output = run_case(case, tmp, monkeypatch)
    assert code != 0, f"{case.id}: exit 0\n{output}"
    assert "Traceback" not in output, output
    for text in case.expect:
        assert _fill(text, tmp) in output, f"{case.id}: {_fill(text, tmp)!r} not in:\n{output}"
    for rel in case.keep:
        assert (tmp / _fill(rel, tmp)).exists(), f"{case.id}: {rel} was deleted\n{output}"

"""The run directory: atomic writes, the manifest, metrics as JSON lines and the loss plot.

Layout: final/ (weights or adapter + tokenizer with its chat template), recipe.yaml,
manifest.json, metrics.jsonl, loss.png, checkpoints/. Every file is written to a temporary
name and renamed, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from finetune.errors import FtError

PACKAGES = ("ft-toolkit", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets")


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes the run directory."""
    return int(os.environ.get("RANK", "0")) == 0


class OutputDirError(FtError):
    """The output directory holds a previous run and the user did not ask to overwrite or resume."""


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_dir_atomic(target: Path, save: Callable[[Path], None]) -> None:
    """Let `save(tmp_dir)` fill a temporary directory, then swap it in for `target`."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(tmp)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


RUN_MARKER = ".ft-run"  # written into every directory ft creates for a run or a pipeline
# Files only ft writes: a directory holding one of them is a run (or pipeline) made by ft,
# including runs made before the marker existed.
_FT_FILES = (RUN_MARKER, "manifest.json", "recipe.yaml", "pipeline.yaml", "metrics.jsonl")


def check_output_path(path: Path) -> None:
    """An output_dir that is a file, or lies under one, cannot be written: say so before anything loads."""
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
            raise OutputDirError(f"output_dir {path} {where}; set output_dir=<a directory path>")


def check_replaceable(path: Path, protect: tuple[Path, ...] = ()) -> None:
    """Raise unless `--overwrite` may delete `path`: an empty directory or one that ft wrote, which
    contains neither the current directory, the home directory nor any path in `protect` (the recipe)."""
    path = path.expanduser().resolve()
    check_output_path(path)
    if not path.exists():
        return
    guarded = [(Path.cwd().resolve(), "the current directory"), (Path.home().resolve(), "your home directory")]
    guarded += [(p.expanduser().resolve(), str(p)) for p in protect]
    for inside, what in guarded:
        if inside == path or path in inside.parents:
            raise OutputDirError(f"--overwrite refuses to delete output_dir {path}: it contains {what}. "
                                 f"Set output_dir=<a new directory>.")
    if any(path.iterdir()) and not any((path / name).exists() for name in _FT_FILES):
        raise OutputDirError(f"--overwrite refuses to delete output_dir {path}: it is not a run directory ft "
                             f"wrote (no {RUN_MARKER} or manifest.json in it), so it may hold other work. "
                             f"Set output_dir=<a new directory>, or move its contents away yourself.")


def replace_dir(path: Path, protect: tuple[Path, ...] = ()) -> None:
    """Delete `path` for --overwrite, only after `check_replaceable` agreed."""
    check_replaceable(path, protect)
    if path.exists():
        shutil.rmtree(path)


def mark_ft_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    marker = path / RUN_MARKER
    if not marker.exists():
        write_atomic(marker, "This directory was written by ft; ft run --overwrite may replace it.\n")


def prepare_output_dir(path: Path, *, overwrite: bool, resume: bool, protect: tuple[Path, ...] = ()) -> None:
    """Refuse to mix a new run into an old one unless asked to overwrite or resume; overwrite only
    what ft wrote (see `check_replaceable`)."""
    check_output_path(path)
    # Only the marker: a directory the launching parent prepared for its ranks, still empty.
    if path.exists() and any(p.name != RUN_MARKER for p in path.iterdir()):
        if resume:
            mark_ft_dir(path)
            return
        if not overwrite:
            raise OutputDirError(
                f"output_dir {path} already holds a run. Use --overwrite to replace it, --resume to continue "
                f"from its last checkpoint, or set output_dir=<new dir>."
            )
        replace_dir(path, protect)
    mark_ft_dir(path)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    # One write() per line with O_APPEND: a crash can lose the last line, never corrupt earlier ones.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=float) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Write the training (and validation) loss curve; False when there is nothing to plot."""
    # Most trainers log `loss`; PPO logs its parts (`loss/policy_avg`, `loss/value_avg`) instead.
    names = ["loss"] if any("loss" in m for m in metrics) else sorted(
        {k for m in metrics for k in m if k.startswith("loss/")})
    series = {name: [(m["step"], m[name]) for m in metrics if name in m] for name in names}
    series["validation"] = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    series = {("train" if name == "loss" else name): points for name, points in series.items() if points}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, points in series.items():
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True

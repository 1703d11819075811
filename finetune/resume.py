"""Checked resume: which checkpoint `ft run --resume` continues from, and whether it may.

Every checkpoint carries `ft_run.json`: the resolved recipe, the training data's fingerprints and
the world size it was trained with. Before anything loads, `--resume`
1. picks the newest *complete* checkpoint: one whose trainer_state.json (written last by the
   Trainer), torch files and safetensors files read back whole. A truncated or garbage one is
   skipped with a notice naming the file, and the previous complete checkpoint is used (it is left
   in place, not deleted: delete it yourself once you no longer need it);
2. compares the recipe given now with the checkpoint's: a change that alters training (model, data,
   objective, learning rate, batch size, sequence length, adapter, seed, ...) is refused with every
   differing key (old -> new); harmless ones (logging, saving, evaluation, trackers, the progress
   bar, more steps or epochs) are allowed and reported;
3. refuses a different world size: it changes the effective batch and how the data is sharded, so
   the resumed run would not continue the interrupted one.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import FtError
from finetune.notices import notice
from finetune.outputs import is_main_process, write_json

if TYPE_CHECKING:
    from finetune.recipe.schema import RecipeBase

STAMP = "ft_run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Keys whose change does not alter what is trained or in which order.
HARMLESS = ("description", "output_dir", "data.validation", "data.cache", "training.logging_steps",
            "training.save_steps", "training.save_total_limit", "training.eval_steps", "training.report_to",
            "training.progress_bar", "training.nproc")  # nproc: the actual world size is compared below
# Keys that may grow (train longer) but not shrink or switch between None and a number.
MAY_GROW = ("training.max_steps", "training.epochs")


class ResumeError(FtError):
    """`--resume` cannot continue this run as it is (changed recipe, corrupt checkpoints)."""


def stamp(recipe: RecipeBase, world_size: int | None = None) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it (world size: this process's, by default)."""
    from data_templates.cache import content_fingerprint

    return {"recipe": recipe.model_dump(mode="json"),
            "data": [{"path": s.path, "fingerprint": content_fingerprint(s)} for s in recipe.data.train],
            "world_size": world_size or int(os.environ.get("WORLD_SIZE", "1"))}


def stamp_callback(recipe: RecipeBase) -> Any:
    """A TrainerCallback writing `ft_run.json` into each checkpoint right after the Trainer saves it."""
    from transformers import TrainerCallback

    record = stamp(recipe)

    class StampCheckpoint(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if is_main_process() and folder.is_dir():
                write_json(folder / STAMP, record)

    return StampCheckpoint()


# ----------------------------------------------------------------------------- which checkpoint
def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first."""
    found = [(int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("checkpoint-*")
             if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_to_resume(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (None when there is none at all); corrupt ones are reported."""
    found = checkpoints(run_dir)
    if not found:
        notice(f"no checkpoint under {run_dir / 'checkpoints'}; starting from the beginning")
        return None
    problems = []
    for folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            if problems:
                notice(f"resuming from {folder.name} instead: {'; '.join(problems)}. The broken checkpoint "
                       f"is left in place; delete it when you no longer need it.")
            return folder
        problems.append(f"{folder.name} is incomplete or corrupt ({problem})")
    raise ResumeError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}: {'; '.join(problems)}. "
                      f"Delete the broken checkpoint folders to start over with --resume, or use --overwrite.")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (naming the file), or None when every file reads back."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return f"{state} is missing: the save did not finish"
    for path in sorted(folder.iterdir()):
        check = _CHECKS.get(path.suffix)
        problem = check(path) if check and path.is_file() else None
        if problem:
            return f"{path}: {problem}"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return f"not valid JSON ({err})"
    return None


def _torch_problem(path: Path) -> str | None:
    # torch.save writes a zip archive; testzip reads every member and checks its CRC.
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"truncated or not a torch file ({err})"
    return f"member {bad} is damaged" if bad else None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size:
                return "garbage header"
            header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        return f"garbage header ({err})"
    try:
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError):
        return "garbage header (no tensor offsets)"
    return None if 8 + length + end == size else f"truncated ({size} bytes, the header says {8 + length + end})"


_CHECKS = {".json": _json_problem, ".pt": _torch_problem, ".pth": _torch_problem, ".bin": _torch_problem,
           ".safetensors": _safetensors_problem}


# ----------------------------------------------------------------------------------- may it
def check_unchanged(checkpoint: Path, recipe: RecipeBase, world_size: int | None = None) -> None:
    """Refuse to resume when the recipe or data changed in a way that alters training. `world_size`:
    the processes about to train (default: this process's WORLD_SIZE)."""
    path = checkpoint / STAMP
    if not path.is_file():
        notice(f"{checkpoint.name} has no {STAMP} (written by an older ft): the recipe cannot be compared "
               f"with the one that trained it; resuming unchecked")
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    now = stamp(recipe, world_size)
    refused, allowed = compare(old["recipe"], now["recipe"])
    refused += [f"data.train[{i}] ({new['path']}): the file's content changed since the checkpoint"
                for i, (was, new) in enumerate(zip(old["data"], now["data"]))
                if was["fingerprint"] != new["fingerprint"]]
    if old.get("world_size", 1) != now["world_size"]:
        refused.append(f"world size: {old.get('world_size', 1)} -> {now['world_size']} processes (it changes the "
                       f"effective batch and how the data is split between processes, so the resumed run would "
                       f"not continue the interrupted one; resume with --nproc {old.get('world_size', 1)})")
    if refused:
        raise ResumeError(f"--resume: {checkpoint} was trained with a different recipe; these changes alter "
                          f"training:\n  " + "\n  ".join(refused) + "\nUndo them to resume, or start a new run "
                          "(--overwrite, or another output_dir).")
    if allowed:
        notice(f"resuming {checkpoint.name} with changes that do not alter training: {'; '.join(allowed)}")
    grew = [line for line in allowed if line.startswith(MAY_GROW)]
    if grew and not recipe.training.lr_scheduler.startswith("constant"):
        # Trainer rebuilds the scheduler for the new total: the rate at the resumed step is the longer
        # schedule's, not the one the checkpoint was on (a step up for a decaying schedule).
        notice(f"{'; '.join(grew)}: the {recipe.training.lr_scheduler} learning-rate schedule is recomputed for the "
               f"new length, so from {checkpoint.name} on the rate follows the longer schedule, not the one the "
               f"interrupted run was on (use lr_scheduler: constant to extend a run without that jump)")


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between two dumped recipes, each as 'key: old -> new'."""
    a, b = _flatten(old), _flatten(new)
    refused, allowed = [], []
    for key in sorted(set(a) | set(b)):
        was, now = a.get(key), b.get(key)
        if was == now:
            continue
        line = f"{key}: {json.dumps(was)} -> {json.dumps(now)}"
        harmless = key.startswith(tuple(f"{h}." for h in HARMLESS)) or key in HARMLESS
        grows = key in MAY_GROW and was is not None and now is not None and now >= was
        (allowed if harmless or grows else refused).append(line)
    return refused, allowed


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for mappings; lists of datasets are compared whole under their own key."""
    if isinstance(node, dict) and (node or not prefix):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


# ------------------------------------------------------------------------- how to continue
COMMAND_ENV = "FT_COMMAND"  # set by `ft run --nproc N` for its children: the command the user typed


def resume_command(recipe: RecipeBase) -> str:
    """The `ft run ... --resume` command that continues this run: the user's own command line when
    it was `ft run` (kept as typed, --overwrite dropped), else one built from the output directory."""
    import shlex
    import sys

    typed = os.environ.get(COMMAND_ENV)
    argv = shlex.split(typed) if typed else ["ft", *sys.argv[1:]] if Path(sys.argv[0]).name == "ft" else None
    if not argv or len(argv) < 2 or argv[1] != "run":
        return f"ft run {Path(recipe.output_dir) / 'recipe.yaml'} --resume"
    kept = [a for a in argv if a != "--overwrite"]
    return shlex.join(kept if "--resume" in kept else [*kept, "--resume"])

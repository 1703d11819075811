"""`ft eval --lm-eval TASKS`: lm-evaluation-harness tasks on the run's merged model (optional extra `eval`).

The merged model is written to a temporary folder next to the run and loaded by lm-eval's `hf`
model; TASKS are task names, or paths of local task YAML files / folders (offline use).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from finetune.errors import FtError


class LmEvalError(FtError):
    """lm-evaluation-harness is missing or its run failed."""


def run_lm_eval(run_dir: Path, tasks: str, *, limit: int | None = None) -> dict[str, Any]:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LmEvalError("--lm-eval needs lm-evaluation-harness: pip install -e '.[eval]'") from None
    from finetune.export.merged import default_dtype, load_merged, save_merged

    names, paths = [], []
    for task in (t.strip() for t in tasks.split(",") if t.strip()):
        path = Path(task).expanduser()
        if path.exists():
            paths.append(str(path.resolve().parent if path.is_file() else path.resolve()))
            names.append(_task_name(path) if path.is_file() else task)
        else:
            names.append(task)
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".lm-eval-") as tmp:
        model, tokenizer = load_merged(run_dir, default_dtype(run_dir))
        save_merged(model, tokenizer, Path(tmp))
        try:
            out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp},dtype=float32", tasks=names,
                                          task_manager=TaskManager(include_path=paths or None), limit=limit,
                                          device="cpu", batch_size=1)
        except (KeyError, ValueError, OSError) as err:
            raise LmEvalError(f"lm-eval failed on tasks {names}: {err}") from None
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in out["results"].items()}


def _task_name(path: Path) -> str:
    """The `task:` a local task YAML declares (lm-eval finds it by that name in its include path)."""
    import yaml

    try:
        return str(yaml.safe_load(path.read_text(encoding="utf-8"))["task"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise LmEvalError(f"--lm-eval {path}: not a task YAML with a `task:` name ({err})") from None

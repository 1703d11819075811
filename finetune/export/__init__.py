"""After training: turn a run into what a serving stack loads (merged model, vLLM, LMDeploy, GGUF, Ollama, Hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export(run_dir: str | Path, to: str, **options: Any) -> Any:
    """Export `run_dir` to target `to` (see `finetune.export.targets.TARGETS`); returns an ExportResult."""
    from finetune.export.targets import run_export

    return run_export(Path(run_dir), to, **options)

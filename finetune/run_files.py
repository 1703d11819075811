"""What a run writes besides checkpoints: metrics.jsonl, final/, manifest.json, loss.png.

Only the main process writes; every write is atomic (see `finetune.outputs`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.distributed import strategy
from finetune.outputs import (
    append_jsonl,
    git_commit,
    is_main_process,
    package_versions,
    plot_loss,
    read_jsonl,
    save_dir_atomic,
    write_atomic,
    write_json,
)

if TYPE_CHECKING:
    from data_templates.chat_templates import ResolvedTemplate
    from data_templates.prepare import PreparedData
    from finetune.hardware import Hardware
    from finetune.recipe.schema import RecipeBase

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _metrics_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsCallback(_metrics_callback_base()):  # type: ignore[misc]
    """Appends one JSON object per logging step to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, resume_from: Path | None = None) -> None:
        self.path = path
        if resume_from is not None and is_main_process():
            # Steps logged after the checkpoint by the interrupted run will be trained again.
            step = int(_CHECKPOINT.match(resume_from.name).group(1))  # type: ignore[union-attr]
            kept = [m for m in read_jsonl(path) if m.get("step", 0) <= step]
            write_atomic(path, "".join(json.dumps(m) + "\n" for m in kept))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        if logs and state.is_world_process_zero:
            append_jsonl(self.path, {"step": state.global_step, "epoch": state.epoch, **logs})


def save_final(trainer: Any, tokenizer: Any, run_dir: Path, image_processor: Any = None) -> Path:
    """final/: the adapter or full weights plus the tokenizer with its chat template (and a
    vision-language model's image processor)."""
    final = run_dir / "final"
    staging = run_dir / ".final.staging"
    # Every rank calls save_model (sharded strategies gather there); only the main process writes.
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if is_main_process():
        def fill(tmp: Path) -> None:
            for item in staging.iterdir():
                os.replace(item, tmp / item.name)
            staging.rmdir()
            tokenizer.save_pretrained(tmp)
            if image_processor is not None:
                image_processor.save_pretrained(tmp)

        save_dir_atomic(final, fill)
    trainer.accelerator.wait_for_everyone()
    return final


def write_manifest(run_dir: Path, recipe: RecipeBase, hardware: Hardware, model: Any, data: PreparedData,
                   template: ResolvedTemplate | None, started: float,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from data_templates.cache import content_fingerprint
    from finetune.adapters import count_parameters

    trainable, total = count_parameters(model)
    manifest = {
        "versions": package_versions(),
        "git_commit": git_commit(Path.cwd()),
        "seed": recipe.seed,
        "objective": recipe.objective.kind,
        "adapter": recipe.adapter.kind,
        "base_model": recipe.model.name_or_path,
        # A LoRA run named as the model is trained on its merged weights, written to base/.
        "merged_base": str(run_dir / "base") if (run_dir / "base" / "config.json").is_file() else None,
        "chat_template": template.source if template is not None else None,
        "data": [{"path": s.path, "format": s.format, "fingerprint": content_fingerprint(s)}
                 for s in [*recipe.data.train, *recipe.data.validation]],
        "data_stats": [{"name": s.name, "rows": s.rows, "skipped": s.skipped, "truncated": s.truncated,
                        "dropped": s.dropped} for s in data.stats],
        "device": hardware.device,
        "hardware": hardware.name,
        "precision": hardware.precision,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "strategy": strategy(recipe.training),
        "wall_time_s": round(time.time() - started, 2),
        "parameters": {"trainable": trainable, "total": total},
        **(extra or {}),  # batching mode and throughput (finetune/batching.py, finetune/throughput.py)
    }
    if is_main_process():
        write_json(run_dir / "manifest.json", manifest)
    return manifest


def finish_metrics(run_dir: Path, recipe: RecipeBase) -> list[dict[str, Any]]:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if is_main_process():
        plot_loss(metrics, run_dir / "loss.png", f"{recipe.objective.kind}: {Path(recipe.model.name_or_path).name}")
    return metrics

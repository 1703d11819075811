"""`hub`: the folder pushed to the Hugging Face Hub (merged model, or the adapter) with its model card."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from finetune.export import merged
from finetune.export.card import model_card
from finetune.export.common import ExportError


def fill_hub_folder(job: Any, tmp: Path) -> None:
    """The weights (merged, or the adapter with --adapter-only), README.md and the loss plot."""
    from finetune.models import is_adapter_dir

    if job.adapter_only:
        if not is_adapter_dir(job.final):
            raise ExportError(f"--adapter-only: {job.run_dir} is a full fine-tune, it has no adapter to push")
        for item in job.final.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
    else:
        merged.export_merged(job.run_dir, tmp, job.dtype)
    if (job.run_dir / "loss.png").is_file():
        shutil.copy2(job.run_dir / "loss.png", tmp / "loss.png")
    (tmp / "README.md").write_text(model_card(job.run_dir, job.name, adapter=job.adapter_only), encoding="utf-8")


def upload(folder: Path, repo_id: str) -> str:
    """Create the repository (private by default) and upload the folder; Hub errors become ft errors."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="ft export")
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ExportError(f"pushing to {repo_id} failed: {err}. Log in with `hf auth login` and check the "
                          f"repository name.") from None
    return f"https://huggingface.co/{repo_id}"

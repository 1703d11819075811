"""The export targets in one table: name -> function that fills the output folder.

`run_export` checks the run and the output folder up front, lets the target fill a temporary
folder, renames it into place and returns the exact command that serves or loads the result.
"""

from __future__ import annotations

import importlib
import importlib.util
import shlex
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FtError
from finetune.export import merged, serving
from finetune.export.common import (
    ExportError,
    ExportResult,
    check_out_dir,
    write_out_dir,
)
from finetune.notices import notice

# The GGUF writer and the Ollama Modelfile live in their own modules (finetune.export.gguf / .ollama).
GGUF_WRITER = "finetune.export.gguf:write_gguf"
MODELFILE_WRITER = "finetune.export.ollama:write_modelfile"


@dataclass(frozen=True)
class ExportJob:
    run_dir: Path
    final: Path
    out: Path
    dtype: str | None
    type: str
    name: str
    adapter_only: bool
    dry_run: bool


Fill = Callable[[ExportJob, Path], tuple[str, list[str]]]  # (job, tmp dir) -> (command, notes)


def _merged(job: ExportJob, tmp: Path) -> tuple[str, list[str]]:
    merged.export_merged(job.run_dir, tmp, job.dtype)
    return merged.transformers_command(job.out, tmp), []


def _engine(engine: str) -> Fill:
    def fill(job: ExportJob, tmp: Path) -> tuple[str, list[str]]:
        why = serving.why_merged(engine, job.final)
        notes: list[str] = []
        if why is None:
            serving.copy_adapter(job.final, tmp / "adapter")
            base, adapter = serving.base_of(job.final), job.out / "adapter"
            _write_generation_config(job, tmp)
        else:
            notes.append(f"{engine}: exporting the merged model because {why}")
            merged.export_merged(job.run_dir, tmp / "model", job.dtype)
            base, adapter = str(job.out / "model"), None
        command = _COMMANDS[engine](job, base, adapter)
        script = tmp / "serve.sh"
        script.write_text(serving.serve_script(command), encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return command, notes
    return fill


def _write_generation_config(job: ExportJob, tmp: Path) -> None:
    """The eos list the base's own generation config lacks when the run changed its chat template."""
    from transformers import AutoTokenizer, GenerationConfig

    from data_templates.chat_templates import end_of_turn_ids

    tokenizer = AutoTokenizer.from_pretrained(job.final)
    GenerationConfig(eos_token_id=end_of_turn_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id).save_pretrained(tmp)


def _adapter_rank(job: ExportJob) -> int:
    return int(serving.adapter_facts(job.final).config.get("r", 16))


_COMMANDS: dict[str, Callable[[ExportJob, str, Path | None], str]] = {
    "vllm": lambda job, base, adapter: serving.vllm_command(
        base, job.name, adapter, _adapter_rank(job) if adapter else 0, job.out,
        chat_template=adapter is not None and (job.final / "chat_template.jinja").is_file()),
    "lmdeploy": lambda job, base, adapter: serving.lmdeploy_command(base, job.name, adapter),
}


def _writer(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ExportError(f"this installation has no GGUF writer ({module}: {err}); install ft with the "
                          f"gguf extra: pip install -e '.[gguf]'") from None


def _gguf_file(job: ExportJob, tmp: Path, merged_dir: Path) -> tuple[Path, list[str]]:
    """The merged model (float32 unless --dtype says otherwise) written as one GGUF file in `tmp`."""
    writer = _writer(GGUF_WRITER)
    # A type only llama-quantize makes is written as f16 first; the file is named for what it holds.
    needs_quantize = job.type in getattr(importlib.import_module(writer.__module__), "LLAMA_QUANTIZE_TYPES", ())
    gguf_file = tmp / f"{job.name}-{'f16' if needs_quantize else job.type}.gguf"
    merged.export_merged(job.run_dir, merged_dir, job.dtype or "float32")
    result = writer(merged_dir, gguf_file, job.type, name=job.name)
    quantize = getattr(result, "quantize_command", None)
    written = Path(getattr(result, "path", gguf_file))
    # The command names the final location, not the temporary folder it was written in.
    steps = [quantize.replace(str(tmp), str(job.out))] if quantize else []
    return written, steps


def _gguf(job: ExportJob, tmp: Path) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory(dir=job.out.parent, prefix=".merged-") as merged_dir:
        gguf_file, steps = _gguf_file(job, tmp, Path(merged_dir) / "model")
    # After `llama-quantize IN OUT TYPE`, the file to run is OUT.
    run_file = shlex.split(steps[0])[2] if steps else str(job.out / gguf_file.name)
    return " && ".join([*steps, f"llama-cli -m {run_file} -cnv"]), []


def _ollama(job: ExportJob, tmp: Path) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory(dir=job.out.parent, prefix=".merged-") as merged_dir:
        model_dir = Path(merged_dir) / "model"
        gguf_file, steps = _gguf_file(job, tmp, model_dir)
        _writer(MODELFILE_WRITER)(gguf_file, model_dir, tmp, name=job.name)
    return " && ".join([*steps, f"cd {job.out}", f"ollama create {job.name} -f Modelfile",
                        f"ollama run {job.name}"]), []


def _hub(job: ExportJob, tmp: Path) -> tuple[str, list[str]]:
    from finetune.export.hub import fill_hub_folder, upload

    fill_hub_folder(job, tmp)
    if job.dry_run:
        return f"hf upload {job.name} {job.out} .", [f"dry run: nothing uploaded; the folder is {job.out}"]
    url = upload(tmp, job.name)
    return f"python -c \"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{job.name}')\"", [f"uploaded to {url}"]


TARGETS: dict[str, Fill] = {
    "merged": _merged,
    "vllm": _engine("vllm"),
    "lmdeploy": _engine("lmdeploy"),
    "gguf": _gguf,
    "ollama": _ollama,
    "hub": _hub,
}


def run_export(run_dir: Path, to: str, *, out: Path | None = None, dtype: str | None = None, type: str = "f16",
               name: str | None = None, adapter_only: bool = False, dry_run: bool = False,
               overwrite: bool = False) -> ExportResult:
    """Export the run to target `to`; every check happens before anything is written."""
    from finetune.models import RunNotFoundError, final_dir

    if to not in TARGETS:
        raise ExportError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    run_dir = run_dir.expanduser().resolve()
    try:
        final = final_dir(run_dir)
    except RunNotFoundError as err:
        stages = sorted(p.name for p in run_dir.iterdir() if (p / "final").is_dir()) if run_dir.is_dir() else []
        hint = f"; this looks like a pipeline: export one of its stages ({', '.join(stages)})" if stages else ""
        raise ExportError(f"{err}{hint}") from None
    if dtype is not None:
        merged.check_dtype(dtype)
    _check_type(to, type)
    if to == "hub":
        _check_hub(name, dry_run)
    out = (out or run_dir / "export" / to).expanduser().resolve()
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    job = ExportJob(run_dir, final, out, dtype, type, name or _default_name(run_dir), adapter_only, dry_run)
    result: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        result["command"], result["notes"] = TARGETS[to](job, tmp)

    write_out_dir(out, fill, {"target": to, "run_dir": str(run_dir), "dtype": dtype, "type": type})
    for note in result["notes"]:
        notice(note)
    return ExportResult(to, out, result["command"], result["notes"])


def _default_name(run_dir: Path) -> str:
    name = run_dir.name if run_dir.name != "final" else run_dir.parent.name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lower() or "ft-model"


def _check_type(to: str, type: str) -> None:
    """A GGUF type the writer cannot produce is refused before any merge starts."""
    if to not in ("gguf", "ollama"):
        return
    known = _gguf_types()
    if type not in known:
        raise ExportError(f"--type {type!r} is not a GGUF type ft can write; choose one of {', '.join(known)}")


def _gguf_types() -> list[str]:
    """What the installed GGUF writer can produce; the schema's list of names when it cannot say."""
    from typing import get_args

    from finetune.recipe.schema import GgufType

    if not _has_gguf():
        return list(get_args(GgufType))
    try:
        return list(importlib.import_module("finetune.export.gguf").supported_types())
    except FtError:  # the gguf package is missing: the writer says so when it runs
        return list(get_args(GgufType))


def _has_gguf() -> bool:
    return importlib.util.find_spec("finetune.export.gguf") is not None


def _check_hub(name: str | None, dry_run: bool) -> None:
    if not name:
        raise ExportError("--to hub needs --name OWNER/REPO (the Hub repository to push to)")
    if dry_run:
        return
    from finetune.hub import hub_offline

    if hub_offline():
        raise ExportError("the Hugging Face Hub cannot be reached (offline, or HF_HUB_OFFLINE is set); nothing "
                          "was pushed. Run with --dry-run to write the folder and card locally, then push it "
                          "later with `hf upload`.")




def run_recipe_exports(run_dir: Path, specs: list[Any]) -> list[dict[str, Any]]:
    """The recipe's `export:` list, after training: each target in order; what was written, for the manifest."""
    done = []
    for spec in specs:
        options = spec.model_dump(exclude={"to", "out"}, exclude_none=True)
        out = Path(spec.out) if spec.out else None
        result = run_export(run_dir, spec.to, out=out, overwrite=True, **options)
        notice(f"export {spec.to}: {result.out}\n  run it with: {result.command}")
        done.append(result.to_manifest())
    return done

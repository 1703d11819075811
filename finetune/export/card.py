"""The model card (README.md) of a pushed model: base, recipe, data fingerprints, metrics, how to serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.export.common import run_manifest, run_recipe
from finetune.outputs import read_jsonl


def _metrics(run_dir: Path) -> list[str]:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    rows = []
    last_loss = next((m["loss"] for m in reversed(metrics) if "loss" in m), None)
    last_eval = next((m["eval_loss"] for m in reversed(metrics) if "eval_loss" in m), None)
    steps = max((m.get("step", 0) for m in metrics), default=0)
    if last_loss is not None:
        rows.append(f"| final train loss | {last_loss:.4f} |")
    if last_eval is not None:
        rows.append(f"| final validation loss | {last_eval:.4f} |")
    rows.append(f"| steps | {steps} |")
    evaluation = run_dir / "eval.json"
    if evaluation.is_file():
        for name, values in json.loads(evaluation.read_text()).get("datasets", {}).items():
            rows.append(f"| {name} perplexity (ft eval) | {values.get('perplexity', float('nan')):.4f} |")
    return ["| metric | value |", "| --- | --- |", *rows]


def _data(manifest: dict[str, Any]) -> list[str]:
    data = manifest.get("data") or []
    if not data:
        return ["(not recorded)"]
    return ["| path | format | fingerprint |", "| --- | --- | --- |",
            *(f"| {d.get('path')} | {d.get('format')} | `{d.get('fingerprint')}` |" for d in data)]


def _serve(repo: str, adapter: bool, base: str) -> list[str]:
    if adapter:
        return ["```sh", f"vllm serve {base} --enable-lora --lora-modules adapter={repo}", "```",
                "```python", "from peft import AutoPeftModelForCausalLM",
                f"model = AutoPeftModelForCausalLM.from_pretrained('{repo}')", "```"]
    return [
        "vLLM:", "```sh", f"vllm serve {repo}", "```",
        "LMDeploy:", "```sh", f"lmdeploy serve api_server {repo}", "```",
        "llama.cpp / Ollama (with ft):", "```sh", "ft export RUN_DIR --to gguf --type q8_0",
        "ft export RUN_DIR --to ollama", "```",
        "transformers:", "```python", "from transformers import pipeline",
        f"chat = pipeline('text-generation', model='{repo}')",
        "print(chat([{'role': 'user', 'content': 'Hello'}]))", "```",
    ]


def model_card(run_dir: Path, repo: str, *, adapter: bool) -> str:
    recipe, manifest = run_recipe(run_dir), run_manifest(run_dir)
    base = manifest.get("base_model") or (recipe.get("model") or {}).get("name_or_path", "unknown")
    objective = manifest.get("objective") or (recipe.get("objective") or {}).get("kind", "unknown")
    recipe_text = (run_dir / "recipe.yaml").read_text(encoding="utf-8") if (run_dir / "recipe.yaml").is_file() else ""
    front = ["---", f"base_model: {base}", "library_name: " + ("peft" if adapter else "transformers"),
             "tags:", "- ft", f"- {objective}", "---"]
    body = [
        f"# {repo}", "",
        f"{'A LoRA adapter for' if adapter else 'A fine-tune of'} `{base}`, trained with ft ({objective}, "
        f"adapter {manifest.get('adapter', (recipe.get('adapter') or {}).get('kind', '?'))}).", "",
        "## Metrics", *_metrics(run_dir), "",
        *(["![loss](loss.png)", ""] if (run_dir / "loss.png").is_file() else []),
        "## Data", *_data(manifest), "",
        "## How to run it", *_serve(repo, adapter, base), "",
        "## Recipe", "```yaml", recipe_text.rstrip(), "```", "",
        "## Versions", "```json", json.dumps(manifest.get("versions", {}), indent=2, sort_keys=True), "```",
    ]
    return "\n".join(front + body) + "\n"

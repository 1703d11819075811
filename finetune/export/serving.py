"""`vllm` and `lmdeploy`: keep the adapter separate when the engine can load it, else serve merged.

Each engine's LoRA loader refuses some adapters (DoRA, LoRA bias, modules_to_save, embeddings
resized for template-added tokens, ...). The rules are data: a table of (check, reason) per engine;
the first rule an adapter breaks is the reason it is exported merged instead.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.export.common import ExportError

# vLLM's --max-lora-rank accepts only these (vllm/config/lora.py).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Linear layers of the supported decoder families (Llama, Mistral, Qwen2/3, Gemma, Phi-3): the
# names vLLM and LMDeploy's PyTorch engine put LoRA on.
LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                          "qkv_proj", "gate_up_proj", "dense", "fc1", "fc2", "query_key_value", "dense_h_to_4h",
                          "dense_4h_to_h", "c_attn", "c_proj", "c_fc", "w1", "w2", "w3"})


@dataclass(frozen=True)
class AdapterFacts:
    """What the rules read from a run's final/ (an adapter) and its base."""
    config: dict[str, Any]
    tokenizer_size: int | None
    base_vocab: int | None
    modules: frozenset[str] = frozenset()  # module paths that carry LoRA weights


Rule = tuple[Callable[[AdapterFacts], bool], str]  # (adapter breaks it?, why)

_COMMON: list[Rule] = [
    (lambda f: f.config.get("peft_type") != "LORA", "the adapter is not a LoRA adapter in PEFT format"),
    (lambda f: f.tokenizer_size is not None and f.base_vocab is not None and f.tokenizer_size > f.base_vocab,
     "the chat template added tokens, so the embeddings were resized"),
    (lambda f: bool(f.config.get("use_dora")), "the adapter uses DoRA"),
    (lambda f: f.config.get("bias", "none") != "none", "the adapter trains LoRA biases"),
    (lambda f: bool(f.config.get("modules_to_save")), "the adapter saves whole modules (modules_to_save)"),
    (lambda f: bool(f.config.get("trainable_token_indices")), "the adapter trains token embeddings"),
    (lambda f: bool(f.config.get("target_parameters")),
     "the adapter puts LoRA on fused mixture-of-experts weights (PEFT target_parameters), which the engine's "
     "LoRA loader does not read"),
    (lambda f: not _targets(f) or not _targets(f) <= LORA_MODULES,
     "the adapter targets modules the engine cannot put LoRA on"),
    (lambda f: f.config.get("task_type") not in (None, "CAUSAL_LM"), "the adapter is not a causal LM adapter"),
]

RULES: dict[str, list[Rule]] = {
    "vllm": [*_COMMON, (lambda f: int(f.config.get("r", 0)) > VLLM_RANKS[-1],
                        f"the rank is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")],
    # LMDeploy serves adapters only with its PyTorch engine (TurboMind has no LoRA).
    "lmdeploy": list(_COMMON),
}


def _targets(facts: AdapterFacts) -> set[str]:
    """Module names (last path part) LoRA sits on: what the engines match their supported list against."""
    return {name.rsplit(".", 1)[-1] for name in facts.modules}


def adapter_facts(final: Path) -> AdapterFacts:
    config = json.loads((final / "adapter_config.json").read_text(encoding="utf-8"))
    base_config = Path(str(config.get("base_model_name_or_path", ""))) / "config.json"
    base_vocab = json.loads(base_config.read_text()).get("vocab_size") if base_config.is_file() else None
    return AdapterFacts(config, _tokenizer_size(final), base_vocab, _lora_modules(final, config))


def _lora_modules(final: Path, config: dict[str, Any]) -> frozenset[str]:
    """Read from the saved weights (a regex target_modules names nothing by itself)."""
    weights = final / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:
            return frozenset(key.split(".lora_")[0] for key in handle.keys() if ".lora_" in key)
    targets = config.get("target_modules") or []
    return frozenset([targets] if isinstance(targets, str) else targets)


def _tokenizer_size(final: Path) -> int | None:
    if not (final / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(final))


def why_merged(engine: str, final: Path) -> str | None:
    """None when `engine` can load the run's adapter as it is; else the reason it must be merged."""
    from finetune.models import is_adapter_dir

    if not is_adapter_dir(final):
        return "the run is a full fine-tune (there is no adapter to keep separate)"
    facts = adapter_facts(final)
    return next((why for broken, why in RULES[engine] if broken(facts)), None)


def max_lora_rank(r: int) -> int:
    return next(rank for rank in VLLM_RANKS if rank >= r)


def copy_adapter(final: Path, dest: Path) -> None:
    """The adapter's own files (weights, config, tokenizer) — not checkpoints or optimizer state."""
    dest.mkdir(parents=True)
    for item in final.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)


def vllm_command(base: str, name: str, adapter: Path | None, r: int, out: Path, chat_template: bool) -> str:
    args = ["vllm", "serve", base]
    if adapter is None:
        args += ["--served-model-name", name]
    else:
        args += ["--enable-lora", "--lora-modules", f"{name}={adapter}", "--max-lora-rank", str(max_lora_rank(r)),
                 "--generation-config", str(out)]
        if chat_template:
            args += ["--chat-template", str(adapter / "chat_template.jinja")]
    return shlex.join(args)


def lmdeploy_command(base: str, name: str, adapter: Path | None) -> str:
    args = ["lmdeploy", "serve", "api_server", base]
    if adapter is None:
        return shlex.join([*args, "--model-name", name])
    return shlex.join([*args, "--backend", "pytorch", "--adapters", f"{name}={adapter}"])


def base_of(final: Path) -> str:
    config = json.loads((final / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{final}/adapter_config.json names no base model; cannot serve the adapter")
    return str(base)


def serve_script(command: str) -> str:
    return f"#!/bin/sh\n# written by ft export\nexec {command} \"$@\"\n"

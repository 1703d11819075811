"""`write_modelfile`: an Ollama Modelfile for a GGUF written by `write_gguf`.

The Modelfile names the GGUF (FROM), the chat format in Ollama's Go-template syntax (TEMPLATE),
the template's default system prompt (SYSTEM) and every end-of-turn token (PARAMETER stop), so
`ollama run` answers in the format the model was trained on and stops where its turns end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from data_templates.chat_templates import TEMPLATES
from finetune.errors import FtError
from finetune.export.ollama_templates import GO_TEMPLATES, match_template
from finetune.export.turns import chat_template_of, end_of_turn_tokens
from finetune.notices import notice
from finetune.outputs import write_atomic


@dataclass(frozen=True)
class OllamaResult:
    """The Modelfile written and how to create the Ollama model from it."""

    modelfile: Path
    create_command: str  # `ollama create NAME -f PATH`
    template: str | None  # the shipped template the TEMPLATE reproduces; None: GGUF metadata's
    template_text: str | None  # the Go TEMPLATE, as written
    system: str | None  # the default SYSTEM
    stops: list[str]


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise FtError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def _writes_bos(source: str) -> bool:
    return "bos_token" in source


def go_template(name: str, tokenizer: object, source: str) -> str:
    """The Go TEMPLATE for shipped template `name` with this tokenizer's bos/eos text.

    The bos text is written only when the template writes bos and the tokenizer does not add it
    itself: llama.cpp prepends bos when the GGUF says add_bos_token, which write_gguf sets from
    the same tokenizer.
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos_id is not None and tokenizer.encode("a")[:1] == [bos_id]  # type: ignore[attr-defined]
    bos = str(tokenizer.bos_token or "") if _writes_bos(source) and not adds_bos else ""  # type: ignore[attr-defined]
    return GO_TEMPLATES[name](bos, str(tokenizer.eos_token or ""))  # type: ignore[attr-defined]


def _resolve_source(template: str | None, tokenizer: object, model_dir: Path) -> str:
    """The Jinja chat template: a shipped name, Jinja text, or (None) the model's own."""
    if template is None:
        own = chat_template_of(tokenizer)
        if own is None:
            raise FtError(f"{model_dir} has no chat template; name one of {', '.join(sorted(TEMPLATES))}")
        return own
    return TEMPLATES[template].source if template in TEMPLATES else template


def write_modelfile(gguf_file: Path, model_dir: Path, out_dir: Path, template: str | None = None,
                    name: str | None = None) -> OllamaResult:
    """Write `out_dir/Modelfile` for `gguf_file`, the GGUF of the model in `model_dir`.

    `template` is a shipped template name, Jinja source, or None for the model's own template.
    The TEMPLATE is written when that template renders like a shipped one on test
    conversations; otherwise the Modelfile says so and Ollama uses the GGUF's template metadata.
    """
    from transformers import AutoTokenizer

    gguf_file, model_dir, out_dir = Path(gguf_file), Path(model_dir), Path(out_dir)
    if not gguf_file.is_file():
        raise FtError(f"{gguf_file} does not exist; write the GGUF first")
    if not (model_dir / "config.json").is_file():
        raise FtError(f"{model_dir} is not a model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    source = _resolve_source(template, tokenizer, model_dir)
    shipped, system = match_template(tokenizer, source)
    stops = end_of_turn_tokens(tokenizer, model_dir, source)
    rel = os.path.relpath(gguf_file.resolve(), out_dir.resolve())
    lines = [f"FROM ./{rel}" if not rel.startswith("..") else f"FROM {gguf_file.resolve()}"]
    text = None
    if shipped is not None:
        text = go_template(shipped, tokenizer, TEMPLATES[shipped].source)
        lines.append(f"# chat format: ft's {shipped!r} template, in Ollama's Go-template syntax")
        lines.append(f"TEMPLATE {_quoted(text, 'template')}")
        if system:
            lines.append(f"SYSTEM {_quoted(system, 'default system prompt')}")
    else:
        lines.append("# The chat template renders like none of ft's shipped templates (chatml, llama3, mistral,")
        lines.append("# gemma, phi3, alpaca, completion), so no TEMPLATE is written: Ollama uses the Jinja")
        lines.append("# template stored in the GGUF metadata (tokenizer.chat_template).")
        notice("Ollama Modelfile: the chat template matches no shipped template; relying on the GGUF's own")
    lines.extend(f"PARAMETER stop {json.dumps(stop)}" for stop in stops)
    out_dir.mkdir(parents=True, exist_ok=True)
    modelfile = out_dir / "Modelfile"
    write_atomic(modelfile, "\n".join(lines) + "\n")
    model_name = name or gguf_file.stem
    command = f"ollama create {model_name} -f {modelfile}"
    return OllamaResult(modelfile, command, shipped, text, system, stops)

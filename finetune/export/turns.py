"""The tokens that end an assistant turn, read from a model directory.

Serving stacks stop generating on these. They come from three places, which a merged export
keeps in step: `generation_config.json`'s eos list, the tokenizer's eos, and the chat template's
turn-closing tokens (`data_templates.chat_templates.end_of_turn_ids`, the one finder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_templates.chat_templates import end_of_turn_ids


def chat_template_of(tokenizer: Any) -> str | None:
    """The tokenizer's chat template as one string (the default of a named set)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return str(template) if template else None


def end_of_turn_tokens(tokenizer: Any, model_dir: Path, chat_template: str | None = None) -> list[str]:
    """Every end-of-turn token string, eos first when it is one, without duplicates."""
    found: list[str] = []
    gen_path = Path(model_dir) / "generation_config.json"
    if gen_path.is_file():
        ids = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        for token_id in ids if isinstance(ids, list) else ([ids] if ids is not None else []):
            found.append(tokenizer.convert_ids_to_tokens(int(token_id)))
    if tokenizer.eos_token is not None:
        found.insert(0, str(tokenizer.eos_token))
    template = chat_template if chat_template is not None else chat_template_of(tokenizer)
    if template:
        found.extend(tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer, template))
    return list(dict.fromkeys(t for t in found if t))

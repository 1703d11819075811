"""Greedy generation from a run's final/ directory, with the chat template it was trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.errors import FtError


class RunNotFoundError(FtError, FileNotFoundError):
    """The path is not a run directory (or a final/ directory) ft can load."""


def final_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    for candidate in (path / "final", path):
        if (candidate / "adapter_config.json").exists() or (candidate / "config.json").exists():
            return candidate
    raise RunNotFoundError(f"{path}: no trained model here (expected final/ with config.json or "
                           f"adapter_config.json); pass a run directory written by `ft run`")


def load_for_generation(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a run directory; an adapter is loaded onto its base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.quiet import quiet_library_noise

    quiet_library_noise()
    final = final_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(final)
    if (final / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # A base model without a template: the plain completion format it was trained with.
    return "\n".join(m["content"] for m in messages)


def generate(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 128) -> str:
    """The greedy completion of the conversation's next assistant turn."""
    import torch

    text = render_prompt(tokenizer, messages)
    # The rendered template already holds any bos token it needs.
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template).to(model.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=_stop_ids(tokenizer))
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _stop_ids(tokenizer: Any) -> list[int]:
    """eos plus the end-of-turn tokens of common templates that the vocabulary has."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)

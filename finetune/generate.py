"""Greedy generation from a run's final/ directory, with the chat template it was trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.models import RunNotFoundError, final_dir

__all__ = ["RunNotFoundError", "final_dir", "generate", "load_for_generation", "stop_ids"]


def load_for_generation(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a run directory in fp32, on the GPU when there is one."""
    import torch

    from finetune.models import load_trained

    model, tokenizer = load_trained(path, dtype="float32")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def _prompt(tokenizer: Any, messages: list[dict[str, str]], encoder: bool) -> Any:
    """The conversation, or for a base model without a template the plain text it was trained on. An
    encoder-decoder's source renders the conversation itself (data_templates.masking.encoder_text)."""
    if encoder or getattr(tokenizer, "chat_template", None):
        return messages
    return "\n".join(m["content"] for m in messages)


def generate(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 128) -> str:
    """The greedy completion of the conversation's next assistant turn. An encoder-decoder (T5, BART)
    reads the conversation as its encoder input, as in training, and its output holds no prompt."""
    import torch

    from data_templates.masking import prompt_ids
    from finetune.model_kinds import kind_of_config

    encoder = kind_of_config(model.config.to_dict()).encoder_decoder
    ids = torch.tensor([prompt_ids(tokenizer, _prompt(tokenizer, messages, encoder), encoder=encoder)],
                       device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(tokenizer))
    return tokenizer.decode(out[0, 0 if encoder else ids.shape[1]:], skip_special_tokens=True).strip()


def stop_ids(tokenizer: Any) -> list[int]:
    """eos and the chat template's end-of-turn tokens (data_templates.chat_templates.end_of_turn_ids)."""
    from data_templates.chat_templates import end_of_turn_ids

    return end_of_turn_ids(tokenizer)

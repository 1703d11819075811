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


def generate(model: Any, tokenizer: Any, messages: list[dict[str, Any]], max_new_tokens: int = 128,
             vision: Any = None) -> str:
    """The greedy completion of the conversation's next assistant turn. An encoder-decoder (T5, BART)
    reads the conversation as its encoder input, as in training, and its output holds no prompt.
    Messages may hold image parts ({type: image, image: PATH}) for a vision-language model; `vision`
    is then its image processor (`load_vision_for_generation`)."""
    import torch

    from data_templates.masking import prompt_ids
    from finetune.model_kinds import kind_of_config

    encoder = kind_of_config(model.config.to_dict()).encoder_decoder
    if any(isinstance(m["content"], list) for m in messages):
        if vision is None:
            from finetune.errors import ConfigError

            raise ConfigError("the prompt has images, but the model is not a vision-language model ft trained")
        from data_templates.vision import vision_prompt

        inputs = {k: v.to(model.device) for k, v in vision_prompt(tokenizer, vision, messages).items()}
    else:
        ids = torch.tensor([prompt_ids(tokenizer, _prompt(tokenizer, messages, encoder), encoder=encoder)],
                           device=model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(tokenizer))
    return tokenizer.decode(out[0, 0 if encoder else inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def load_vision_for_generation(path: str | Path, model: Any) -> Any:
    """The image processor a vision-language run saved in final/ with `model`'s image token
    (data_templates.vision.VisionProcessor); None for a text model."""
    from data_templates.vision import VisionProcessor
    from finetune.model_kinds import MODEL_KINDS

    final = final_dir(path)
    token = getattr(model.config, "image_token_id", None)
    if token is None or not (final / "preprocessor_config.json").is_file():
        return None
    return VisionProcessor(MODEL_KINDS["vision_causal_lm"].image_processor_class().from_pretrained(final), int(token))


def stop_ids(tokenizer: Any) -> list[int]:
    """eos and the chat template's end-of-turn tokens (data_templates.chat_templates.end_of_turn_ids)."""
    from data_templates.chat_templates import end_of_turn_ids

    return end_of_turn_ids(tokenizer)

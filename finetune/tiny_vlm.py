"""A tiny random Qwen2-VL, built offline in a second: tests, the example and `ft smoke` use it.

The tokenizer is a tiny byte-level BPE with Qwen2-VL's special tokens (vision start/end, image and
video pads, ChatML turns) and Qwen2-VL's own chat template; the image processor is Qwen2-VL's with
its real settings but a small `max_pixels`, so an image is a handful of tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Qwen/Qwen2-VL-2B-Instruct's chat template (chat_template.json), as published.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2-VL's added special tokens, in id order (151643...).
QWEN2_VL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                     "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                     "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen/Qwen2-VL-2B-Instruct's preprocessor_config.json, as published.
QWEN2_VL_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
}
# At most 16 image tokens per image (28 x 28 pixels each) in tiny models.
TINY_MAX_PIXELS = 28 * 28 * 16
CORPUS = ["What is in this picture? A red square.", "Describe the image.", "It is a blue circle on white.",
          "What colour is the shape? Green.", "You are a helpful assistant."] * 4


def build_vlm_tokenizer(corpus: list[str] = CORPUS) -> Any:
    """Byte-level BPE with Qwen2-VL's special tokens and chat template; eos <|im_end|>, no bos."""
    from finetune.tiny import build_tokenizer

    return build_tokenizer(corpus, vocab_size=400, chat_template=QWEN2_VL_TEMPLATE,
                           special_tokens=QWEN2_VL_SPECIALS, bos_token=None, eos_token="<|im_end|>",
                           pad_token="<|endoftext|>", unk_token="<unk>")


def special_ids(tokenizer: Any) -> dict[str, int]:
    """The config.json token ids of a Qwen2-VL with this tokenizer."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("vision_token_id", "<|vision_pad|>"), ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"), ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"))}
    return {**ids, "pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}


def write_preprocessor(out: Path, max_pixels: int = TINY_MAX_PIXELS) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocessor_config.json").write_text(json.dumps({**QWEN2_VL_PREPROCESSOR, "max_pixels": max_pixels},
                                                             indent=2))


# The vision tower of each supported family, tiny: Qwen2-VL's `hidden_size` is what its merger hands the
# language model; Qwen2.5-VL has its own width and `out_hidden_size` for that.
_VISION: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2_vl": ("Qwen2VLConfig", {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2}),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                                        "window_size": 56, "fullatt_block_indexes": [1]}),
}


def build_tiny_vlm(out: Path, *, arch: str = "qwen2_vl", seed: int = 0, hidden_size: int = 64, layers: int = 2,
                   initializer_range: float = 0.02) -> Path:
    """Save a random Qwen2-VL (or `arch` qwen2_5_vl: Qwen2.5-VL), 2 text layers and 2 vision blocks, with
    its tokenizer and image processor. `initializer_range`: the std of the random weights; as for
    `finetune.tiny.build_tiny_model`, a larger one lets LoRA (the output layer frozen) fit a batch far
    below log(vocab)."""
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText

    tokenizer = build_vlm_tokenizer()
    ids = special_ids(tokenizer)
    heads = 4
    half_head = hidden_size // heads // 2  # mrope splits each head's rotary half into t/h/w sections
    text = {"vocab_size": ids["vocab_size"], "hidden_size": hidden_size, "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 2,
            "max_position_embeddings": 2048, "tie_word_embeddings": True, "initializer_range": initializer_range,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [half_head - 2 * (half_head // 3), half_head // 3, half_head // 3]},
            **{k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    config_class, tower = _VISION[arch]
    width = {"hidden_size" if arch == "qwen2_vl" else "out_hidden_size": hidden_size}  # what the LM reads
    vision = {**width, **tower, "initializer_range": initializer_range, "in_channels": 3, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    tokens = {k: v for k, v in ids.items() if k.endswith("token_id") and k.split("_")[0] in ("vision", "image", "video")}
    config = getattr(transformers, config_class)(text_config=text, vision_config=vision, tie_word_embeddings=True,
                                                 initializer_range=initializer_range, **tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_preprocessor(out)
    return out

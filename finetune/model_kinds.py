"""What a model kind needs, in one table: every loader, adapter, merge and generation path reads it.

A kind is what the weights are loaded as (a causal LM, a sequence classifier). A new family
(seq2seq, masked LM, a vision-language model) adds a row here rather than a branch elsewhere.
Importing this module imports neither torch nor transformers: classes are named as "module:Name"
and imported when used.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from finetune.errors import ConfigError


@dataclass(frozen=True)
class ModelKind:
    name: str
    auto_class: str  # the transformers Auto class the weights load with
    # LoraConfig.task_type, and what a saved adapter's config records; None: PEFT has no task for the
    # head (a masked LM), so the adapter is a plain PeftModel and the head's weights stay as loaded.
    peft_task_type: str | None
    peft_auto_class: str  # the PEFT Auto class that loads a saved adapter with its base
    processor: str  # what turns raw inputs into ids
    generates: bool  # `ft generate` / `ft chat` / export with a generation config make sense
    # Blocks are named `...layers.<i>.` (Llama, Qwen, Mistral, Gemma, Phi-3) or `...h.<i>.` (GPT-2
    # style); the index is what `trainable_layers` and `adapter.layers` refer to.
    layer_pattern: re.Pattern[str]
    # The weights are an encoder and a decoder (T5, BART): the prompt is the encoder's input and the
    # generated ids hold no copy of it. A whole saved model's config says which (`is_encoder_decoder`).
    encoder_decoder: bool = False
    # Vision-language kinds: the image processor (loaded next to the tokenizer; transformers' composite
    # AutoProcessor of Qwen2-VL also wants a video processor, which needs torchvision), and the module
    # prefix of the language model, to which LoRA is restricted unless adapter.train_vision.
    image_processor: str | None = None
    language_model: str | None = None

    def auto(self) -> Any:
        return _attr(self.auto_class)

    def peft_auto(self) -> Any:
        return _attr(self.peft_auto_class)

    def image_processor_class(self) -> Any:
        return _attr(self.image_processor) if self.image_processor else None


# `encoder.layer.<i>.` for BERT-style encoders.
_DECODER_LAYERS = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
# T5's `encoder.block.<i>.` / `decoder.block.<i>.` (whose `layer.<j>.` are sub-layers, not blocks) and
# BART's `encoder.layers.<i>.` / `decoder.layers.<i>.`: index i is block i of the encoder and of the decoder.
_SEQ2SEQ_BLOCKS = re.compile(r"\.(?:block|layers)\.(\d+)\.")
# A vision-language model's decoder layers (transformers 5 names its text model `language_model`); the
# vision tower's `blocks.<i>` are not what trainable_layers / adapter.layers count.
_LANGUAGE_MODEL_LAYERS = re.compile(r"\.language_model\.(?:layers|h)\.(\d+)\.")

MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("causal_lm", "transformers:AutoModelForCausalLM", "CAUSAL_LM", "peft:AutoPeftModelForCausalLM",
                  "transformers:AutoTokenizer", generates=True, layer_pattern=_DECODER_LAYERS),
        ModelKind("sequence_classification", "transformers:AutoModelForSequenceClassification", "SEQ_CLS",
                  "peft:AutoPeftModelForSequenceClassification", "transformers:AutoTokenizer", generates=False,
                  layer_pattern=_DECODER_LAYERS),
        # Masked-LM runs end merged (finetune.mlm), so a saved adapter of this kind is never looked up.
        ModelKind("masked_lm", "transformers:AutoModelForMaskedLM", None, "peft:AutoPeftModel",
                  "transformers:AutoTokenizer", generates=False, layer_pattern=_DECODER_LAYERS),
        ModelKind("seq2seq_lm", "transformers:AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", "peft:AutoPeftModelForSeq2SeqLM",
                  "transformers:AutoTokenizer", generates=True, layer_pattern=_SEQ2SEQ_BLOCKS, encoder_decoder=True),
        # Qwen2-VL / Qwen2.5-VL style: a causal LM reading image patches. PEFT has no task type of its
        # own for it; a saved adapter records CAUSAL_LM and `kind_of_config` tells it apart by its base.
        # AutoPeftModelForCausalLM would load the base as a text causal LM: the adapter goes on the base
        # loaded with auto_class (finetune.models.attach_adapter, PeftModel.from_pretrained).
        ModelKind("vision_causal_lm", "transformers:AutoModelForImageTextToText", "CAUSAL_LM", "peft:PeftModel",
                  "transformers:AutoTokenizer", generates=True,
                  layer_pattern=_LANGUAGE_MODEL_LAYERS, image_processor="transformers:AutoImageProcessor",
                  language_model="model.language_model."),
    )
}


def model_kind(name: str) -> ModelKind:
    if name not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {name!r}; known: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def kind_of_task_type(task_type: str | None) -> ModelKind:
    """The kind a saved PEFT adapter was trained as (its adapter_config.json `task_type`)."""
    for kind in MODEL_KINDS.values():
        if kind.peft_task_type is not None and kind.peft_task_type == task_type:
            return kind
    return MODEL_KINDS["causal_lm"]  # PEFT leaves task_type empty for plain causal-LM adapters at times


def kind_of_config(config: dict[str, Any]) -> ModelKind:
    """The generating kind a whole saved model loads as, from its config.json: a model with a vision
    tower (`vision_config`) as vision_causal_lm, an encoder-decoder (T5, BART) as seq2seq_lm, anything
    else as causal_lm. A CAUSAL_LM adapter is told apart by its base's config the same way."""
    if "vision_config" in config:
        return MODEL_KINDS["vision_causal_lm"]
    wanted = bool(config.get("is_encoder_decoder"))
    return next(k for k in MODEL_KINDS.values()
                if k.generates and k.encoder_decoder == wanted and k.image_processor is None)


def head_mismatch(kind: ModelKind, config: dict[str, Any]) -> str | None:
    """Why a model whose config.json is `config` cannot be trained as `kind`, or None. Only the
    generating kinds are told apart here: a decoder-only config has no seq2seq head and an
    encoder-decoder config no causal one (transformers would fail later with "Unrecognized
    configuration class")."""
    if not kind.generates or not config:
        return None
    is_ed = bool(config.get("is_encoder_decoder"))
    if is_ed == kind.encoder_decoder:
        return None
    archs = ", ".join(config.get("architectures") or []) or str(config.get("model_type", "unknown"))
    return (f"an encoder-decoder model ({archs})" if is_ed else f"a decoder-only model ({archs})")


def _attr(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)

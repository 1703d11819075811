"""Encoder-decoder SFT (T5 / Flan-T5 / BART) on prompt/completion pairs, instructions or conversations.

The data layer tokenizes each example itself (data_templates.masking.tokenize_seq2seq): the source
(a prompt, an alpaca instruction with its input, or a conversation up to its last assistant reply)
is the encoder's input, rendered by the same function `ft generate` / `ft chat` use
(`prompt_ids(encoder=True)`); the target (the completion or reply) is the labels, every token
trained, with the special tokens the tokenizer adds to a target (T5: `</s>`; BART: `<s> ... </s>`).
A multi-turn conversation gives one example: its last reply is the target and the turns before it,
earlier replies included, are the source. The model derives the decoder inputs from the labels
(shifted right behind its decoder start token); transformers' DataCollatorForSeq2Seq pads the
sources with the pad token and the labels with -100. Training uses transformers' Seq2SeqTrainer:
TRL's SFTTrainer handles decoder-only models only. LoRA runs save the adapter (PEFT task type
SEQ_2_SEQ_LM), which `load_trained` puts back on its base.
"""

from __future__ import annotations

from typing import Any, Literal

from finetune.recipe.schema import ObjectiveSection
from finetune.registry import objective
from finetune.run_parts import RunParts


class Seq2SeqSection(ObjectiveSection):
    """No settings of its own: the whole target is trained. A decoder-only model is refused at
    `ft validate` (local config) or at run start (finetune.preflight.head_problems)."""

    kind: Literal["seq2seq"] = "seq2seq"


@objective("seq2seq", section=Seq2SeqSection, data_form="seq2seq",
           config_class="transformers:Seq2SeqTrainingArguments", model_head="seq2seq_lm",
           description="Encoder-decoder SFT (T5, Flan-T5, BART): source -> target, loss on the target only.")
def build(parts: RunParts) -> Any:
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    from data_templates.masking import IGNORE_INDEX

    args = parts.trainer_config(Seq2SeqTrainingArguments)
    # With `model`, the collator also writes decoder_input_ids from the padded labels, the way the
    # model itself derives them (prepare_decoder_input_ids_from_labels).
    collator = DataCollatorForSeq2Seq(parts.tokenizer, model=parts.model, label_pad_token_id=IGNORE_INDEX)
    return Seq2SeqTrainer(args=args, data_collator=collator, **parts.trainer_inputs())

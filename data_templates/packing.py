"""What packing does to attention, said at the start of a run.

With `data.packing`, TRL 1.12's SFTTrainer packs tokenized examples best-fit-decreasing ("bfd")
into rows of up to max_length tokens and trains padding-free: a batch is one flat sequence with
no attention mask, and position_ids restart at 0 at each example. Whether examples can see each
other then depends on the attention code, not on TRL:

- flash attention (flash_attention_2/3 and the kernels-community variants) turns the restarting
  position_ids into per-example sequence boundaries: examples are apart, exactly;
- eager and sdpa in transformers' own decoder models (Llama, Qwen2, Mistral, Phi-3, Gemma, ...):
  `masking_utils.create_causal_mask` finds the restarts in position_ids and builds a
  block-diagonal causal mask, because TRL calls the model with use_cache=False and no mask.
  Examples are apart too (tests/test_data_packing.py checks it token by token);
- a model with its own modelling code (trust_remote_code), or a recurrent one (Mamba, RWKV),
  may ignore position_ids: then each example attends to the ones packed before it
  (cross-contamination).

TRL warns about cross-contamination for every non-flash implementation; `packing_note` says
which case a recipe is in, before training starts.
"""

from __future__ import annotations

from finetune.recipe.schema import DataSection, ModelSection


def is_flash(attn_implementation: str | None) -> bool:
    """flash_attention_2/3 and hub kernels such as kernels-community/flash-attn3."""
    return attn_implementation is not None and "flash" in attn_implementation


def packing_note(data: DataSection, model: ModelSection, form: str = "sft") -> str | None:
    """One line about packing's effect on attention for this recipe; None without packing. A data
    form with a note of its own (mlm's joined texts) says that instead."""
    from data_templates.forms import data_form

    if data_form(form).note is not None:
        return data_form(form).note
    if not data.packing:
        return None
    attn = model.attn_implementation or "sdpa"  # transformers' default where torch has sdpa
    head = (f"packing: examples are packed into rows of up to {data.max_length:,} tokens, padding-free (no "
            f"attention mask; position ids restart at each example)")
    if is_flash(model.attn_implementation):
        return f"{head}; {attn} keeps each example's attention within itself."
    if model.trust_remote_code:
        return (f"warning: {head}. With custom modelling code (trust_remote_code) and {attn} attention, packed "
                "examples may attend to each other (cross-contamination) unless that code builds per-example "
                "masks from position ids. Use model.attn_implementation: flash_attention_2, or data.packing: "
                "false.")
    return (f"warning: {head}. Attention is {attn}, not flash attention: transformers' built-in decoder models "
            "derive a per-example mask from the position ids, so examples stay apart, but a recurrent model "
            "(Mamba, RWKV) or one that ignores position ids lets packed examples attend to each other "
            "(cross-contamination, which TRL's own warning is about). For a guarantee use model.attn_implementation: "
            "flash_attention_2 (GPU), or data.packing: false.")

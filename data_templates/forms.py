"""What a data form is, in one table: the data layer, validation and preview read it.

A data form is the canonical example an objective consumes (see `data_templates.formats`: every
dataset format converts its rows to one form). A new objective family (classification, image-text
conversations) adds a row here rather than a comparison of strings elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataForm:
    name: str
    accepts: tuple[str, ...]  # the canonical forms of the dataset formats an objective of this form reads
    tokenized: bool  # ft tokenizes it itself with exact loss masks (else the TRL trainer tokenizes)
    packs: bool  # data.packing applies
    chat: bool  # rendered with a chat template (raw text is not, unless the recipe names one)
    preview: str  # how `ft data preview` shows a row: tokens | pair | unpaired | prompt
    description: str
    # What the run start and `ft data preview` say about this form's rows and packing, in place of
    # the notes written for token-level SFT packing and TRL-tokenized pairs; None: those notes.
    note: str | None = None
    # How ft tokenizes an example of a tokenized form (data_templates.prepare.EXAMPLE_TOKENIZERS):
    # "decoder" one sequence with a loss mask; "seq2seq" an encoder source and a decoder target.
    example: str = "decoder"
    # Rows name image files: ft reads them with the model's image processor (tokenization expands each
    # into its image tokens; the collator makes pixel values), and `ft validate` checks they exist.
    images: bool = False


DATA_FORMS: dict[str, DataForm] = {
    form.name: form
    for form in (
        DataForm("sft", ("sft", "text"), tokenized=True, packs=True, chat=True, preview="tokens",
                 description="conversations or prompt/completion pairs; SFT also trains on raw text"),
        # Encoder-decoder SFT (T5, BART): the prompt (the conversation before the last reply) is the
        # encoder's source, the reply is the decoder's target and every target token is trained.
        DataForm("seq2seq", ("sft",), tokenized=True, packs=False, chat=False, preview="source_target",
                 description="a source and its target: prompt/completion pairs, instructions, or conversations "
                 "(the turns before the last reply -> the reply)", example="seq2seq",
                 note="seq2seq: the source is the encoder's input (never trained), the target the decoder's "
                 "labels (every token trained); data.max_length applies to each."),
        DataForm("text", ("text",), tokenized=True, packs=True, chat=False, preview="tokens",
                 description="raw documents, every token trained"),
        DataForm("preference", ("preference",), tokenized=False, packs=False, chat=True, preview="pair",
                 description="prompt + chosen + rejected answers"),
        DataForm("unpaired_preference", ("unpaired_preference",), tokenized=False, packs=False, chat=True,
                 preview="unpaired", description="prompt + completion + desirable or not"),
        DataForm("prompt_only", ("prompt_only",), tokenized=False, packs=False, chat=True, preview="prompt",
                 description="prompts whose answers are generated during training"),
        DataForm("classification", ("classification",), tokenized=False, packs=False, chat=False,
                 preview="classification", description="a text (or text pair) and its label"),
        # Masked-LM text: the objective tokenizes it with the tokenizer's own special tokens ([CLS] ...
        # [SEP]) and the collator picks the masked tokens anew in every batch.
        DataForm("masked_text", ("text",), tokenized=False, packs=True, chat=False, preview="masked",
                 description="raw documents; a random share of the tokens is masked and predicted",
                 note="mlm: shown as tokenized with the tokenizer's special tokens; every highlighted token may "
                 "be masked, and a fresh objective.mlm_probability share of them is masked in each batch. With "
                 "data.packing the texts are joined and cut into rows of max_length tokens, with full attention "
                 "across the joined texts (as in BERT-style pre-training)."),
        # Tokenized rows hold image paths, not pixels: the data cache (keyed on the data file, not the
        # images) is not used for them, so an edited image is never trained with stale token counts.
        DataForm("vision_sft", ("vision_sft",), tokenized=True, packs=False, chat=True, preview="vision",
                 description="conversations whose user turns hold text and images", images=True),
    )
}


def data_form(name: str) -> DataForm:
    if name not in DATA_FORMS:
        raise ValueError(f"unknown data form {name!r}; known: {', '.join(DATA_FORMS)}")
    return DATA_FORMS[name]

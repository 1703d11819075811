"""Tiny encoder-decoder models (T5, BART) and tokenizers with their special tokens, built offline.

The tokenizers are byte-level BPEs trained on a small corpus with the real models' special tokens
at the real ids and the real post-processing: T5 appends `</s>` to every text (ids: <pad> 0,
</s> 1, <unk> 2), BART wraps it as `<s> ... </s>` (ids: <s> 0, <pad> 1, </s> 2, <unk> 3). The
models are randomly initialised T5ForConditionalGeneration / BartForConditionalGeneration with the
decoder start tokens their families use (T5: pad; BART: `</s>`), dropout off for repeatable tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import (
        PretrainedConfig,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

# style -> (special tokens in id order, post-processing template, the named special tokens)
_STYLES: dict[str, tuple[list[str], str, dict[str, str]]] = {
    "t5": (["<pad>", "</s>", "<unk>"], "$A </s>", {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "bart": (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
             {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}),
}


def build_seq2seq_tokenizer(corpus: Iterable[str], style: str = "t5", *, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE with T5's or BART's special tokens and post-processing (see module doc)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if style not in _STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; known: {', '.join(_STYLES)}")
    specials, template, named = _STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(corpus), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    used = [t for t in specials if t in template]
    tok.post_processor = processors.TemplateProcessing(
        single=template, pair=f"{template} $B:1 </s>:1", special_tokens=[(t, specials.index(t)) for t in used])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **named)


def _t5(tokenizer: PreTrainedTokenizerBase, hidden: int, layers: int, heads: int, std: float) -> PretrainedConfig:
    from transformers import T5Config

    # Flan-T5's shape: gated-GELU feed-forward, untied output layer; the decoder starts from pad.
    return T5Config(vocab_size=len(tokenizer), d_model=hidden, d_ff=2 * hidden, d_kv=hidden // heads,
                    num_layers=layers, num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, dropout_rate=0.0, initializer_factor=std / 0.02,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id)


def _bart(tokenizer: PreTrainedTokenizerBase, hidden: int, layers: int, heads: int, std: float) -> PretrainedConfig:
    from transformers import BartConfig

    # BART starts decoding from </s> and forces <s> as the first generated token, as facebook/bart-* do.
    return BartConfig(vocab_size=len(tokenizer), d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                      encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * hidden,
                      decoder_ffn_dim=2 * hidden, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0,
                      activation_dropout=0.0, init_std=std, bos_token_id=tokenizer.bos_token_id,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=tokenizer.bos_token_id)


SEQ2SEQ_ARCHITECTURES: dict[str, Callable[..., Any]] = {"t5": _t5, "bart": _bart}


def build_tiny_seq2seq(arch: str, tokenizer: PreTrainedTokenizerBase, out_dir: Path, *, hidden_size: int = 64,
                       num_layers: int = 2, num_heads: int = 4, initializer_range: float = 0.02,
                       seed: int = 0) -> Path:
    """Save a randomly initialised `arch` (t5 | bart) encoder-decoder and `tokenizer` to `out_dir`:
    it loads offline with AutoModelForSeq2SeqLM / AutoTokenizer."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    builder = SEQ2SEQ_ARCHITECTURES.get(arch)
    if builder is None:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(SEQ2SEQ_ARCHITECTURES)}")
    config = builder(tokenizer, hidden_size, num_layers, num_heads, initializer_range)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

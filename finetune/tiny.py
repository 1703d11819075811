"""Tiny tokenizers and randomly initialised causal LMs, built offline in milliseconds.

Tests use these to exercise the real training loop on CPU without downloading anything, the
quickstart ships one, and smoke mode shrinks a recipe's model to one of these. Everything here is
deterministic for a given corpus and seed, so a tiny model built twice is byte-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay lazy: the CLI imports this module on every invocation
    from transformers import (
        PretrainedConfig,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

# Bytes (256) plus a handful of specials is the floor for a byte-level BPE vocabulary.
_MIN_VOCAB = 256 + 16


def build_tokenizer(
    corpus: Iterable[str],
    *,
    vocab_size: int = 512,
    chat_template: str | None = None,
    special_tokens: Sequence[str] = (),
    bos_token: str | None = "<s>",
    eos_token: str = "</s>",
    pad_token: str | None = "<pad>",
    unk_token: str = "<unk>",
    add_bos_token: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` in memory.

    Byte-level means every string round-trips through encode/decode, whatever the corpus was, and
    offsets map back to characters of the input. The special tokens get the first ids, in the
    order pad, bos, eos, unk, then `special_tokens`, so they are stable across corpora.

    The defaults make a Llama-like tokenizer; the keywords reproduce the variations real models
    ship, which is what the code under test must cope with: `eos_token` may name one of
    `special_tokens` (a ChatML model stops on `<|im_end|>`, as Qwen's instruct models do);
    `bos_token=None` gives no bos (Qwen); `pad_token=None` gives no pad (Llama, Mistral);
    `add_bos_token` prepends bos on every encode (Llama 2, Mistral), the case where a template
    that also writes bos doubles it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {_MIN_VOCAB} for a byte-level BPE, got {vocab_size}")
    if add_bos_token and bos_token is None:
        raise ValueError("add_bos_token=True needs a bos_token")
    named = [t for t in (pad_token, bos_token, eos_token, unk_token) if t is not None]
    # dict.fromkeys dedupes (eos may also be listed in special_tokens) and keeps the order.
    specials = list(dict.fromkeys([*named, *special_tokens]))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        extra_special_tokens=[t for t in specials if t not in named],
        # transformers turns this into a TemplateProcessing post-processor saved in
        # tokenizer.json, which is what makes a reloaded tokenizer prepend bos too.
        add_bos_token=add_bos_token,
        model_max_length=1024,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


@dataclass(frozen=True)
class _Dims:
    """The shape of a tiny model, validated once so each builder can trust it."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _common(tokenizer: PreTrainedTokenizerBase, dims: _Dims) -> dict[str, Any]:
    """Config fields every architecture shares: sizes and the tokenizer's special ids."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": dims.hidden_size,
        "intermediate_size": dims.intermediate_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        # Small, so the rotary cache is tiny; far longer than any test sequence.
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _llama(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(**kw)


def _qwen2(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import Qwen2Config

    return Qwen2Config(**kw)


def _mistral(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import MistralConfig

    return MistralConfig(**kw, head_dim=dims.head_dim)


def _phi3(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import Phi3Config

    # Phi-3 fuses q/k/v and gate/up into single Linear layers: the case LoRA target names trip on.
    return Phi3Config(**kw)


def _gemma(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import GemmaConfig

    # Gemma's head_dim defaults to 256 whatever the hidden size; a tiny model must set it.
    return GemmaConfig(**kw, head_dim=dims.head_dim)


def _qwen3(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import Qwen3Config

    # Qwen3 decouples head_dim from hidden_size; every released Qwen3 uses 128, and transformers'
    # GGUF loader assumes the default (it reads no key_length for qwen3), so the tiny one does too.
    return Qwen3Config(**kw, head_dim=128)


def _gemma2(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import Gemma2Config

    # Gemma 2 ties the output layer to the input embeddings (the case where rows that a chat template
    # adds must be trained once for both) and soft-caps attention and final logits. It scales queries
    # by query_pre_attn_scalar (default 256) and llama.cpp by 1/sqrt(head_dim), which agree for the
    # 2B/9B models. GGUF has no key for the scalar, so transformers' GGUF loader takes the default:
    # head_dim 256 keeps all three the same model (q/k/v are 64 -> 1024 here).
    return Gemma2Config(**kw, head_dim=256, query_pre_attn_scalar=256, tie_word_embeddings=True)


def _qwen2_moe(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import Qwen2MoeConfig

    # A mixture of experts: 4 experts, 2 per token, a shared expert with its gate; every layer sparse.
    # transformers 5 keeps the experts as fused 3D parameters (experts.gate_up_proj, experts.down_proj)
    # and the router (mlp.gate) as its own module, not nn.Linear.
    return Qwen2MoeConfig(**kw, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=dims.intermediate_size // 2,
                          shared_expert_intermediate_size=dims.intermediate_size, decoder_sparse_step=1,
                          router_aux_loss_coef=0.01)


def _mixtral(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import MixtralConfig

    # Mixtral: 4 routed experts (no shared expert), the router at block_sparse_moe/mlp.gate.
    return MixtralConfig(**kw, head_dim=dims.head_dim, num_local_experts=4, num_experts_per_tok=2,
                         router_aux_loss_coef=0.02)


def _olmoe(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import OlmoeConfig

    # OLMoE: 4 routed experts, top-2 without renormalising the top-k probabilities.
    return OlmoeConfig(**kw, num_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.03)


def _qwen3_moe(kw: dict[str, Any], dims: _Dims) -> PretrainedConfig:
    from transformers import Qwen3MoeConfig

    # Qwen3-MoE: 4 routed experts, top-2, no shared expert; head_dim as the dense Qwen3 builder keeps it.
    return Qwen3MoeConfig(**kw, head_dim=dims.head_dim, num_experts=4, num_experts_per_tok=2,
                          moe_intermediate_size=dims.intermediate_size // 2, router_aux_loss_coef=0.04)


ARCHITECTURES: dict[str, Callable[[dict[str, Any], _Dims], PretrainedConfig]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "phi3": _phi3,
    "gemma": _gemma,
    "qwen3": _qwen3,
    "gemma2": _gemma2,
    "qwen2_moe": _qwen2_moe,
    "mixtral": _mixtral,
    "olmoe": _olmoe,
    "qwen3_moe": _qwen3_moe,
}


def tiny_config(
    arch: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    initializer_range: float = 0.02,
) -> PretrainedConfig:
    """The transformers config of a tiny `arch` model sized to `tokenizer`'s vocabulary."""
    builder = ARCHITECTURES.get(arch)
    if builder is None:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    dims = _Dims(hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size or 2 * hidden_size)
    return builder({**_common(tokenizer, dims), "initializer_range": initializer_range}, dims)


def build_tiny_model(
    arch: str,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised `arch` causal LM and `tokenizer` to `out_dir`; return it.

    The directory loads offline with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`.
    Unknown architectures raise ValueError naming the known ones (see `ARCHITECTURES`).
    `initializer_range` is the std of the random weights. At the usual 0.02 a tiny model's
    logits stay within a few units, so if its output layer is frozen (LoRA) the loss cannot get
    far below log(vocab) even once every greedy prediction is right; a larger value lets it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(
        arch,
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        initializer_range=initializer_range,
    )
    # A private generator state, so building a model neither depends on nor disturbs the
    # caller's global RNG (tests seed it for their own reasons).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = config.bos_token_id, config.eos_token_id, config.pad_token_id

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_encoder(tokenizer: PreTrainedTokenizerBase, out_dir: Path, *, hidden_size: int = 64,
                       num_layers: int = 2, num_heads: int = 4, seed: int = 0,
                       initializer_range: float = 0.02) -> Path:
    """Save a randomly initialised BERT-style encoder (with its masked-LM head) and `tokenizer` to
    `out_dir`: it loads as AutoModelForSequenceClassification (a new head) or AutoModelForMaskedLM.
    A larger `initializer_range` gives the (tied, LoRA-frozen) output embeddings the scale a trained
    model has, so a LoRA run can shape the token distribution within a few steps."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                        initializer_range=initializer_range,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # deterministic tests
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForPreTraining(config)  # MLM head and the pooler a classifier reads
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_wordpiece_tokenizer(corpus: Iterable[str], *, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer trained on `corpus` in memory: lower-cased WordPiece, [CLS] text [SEP],
    with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4. Offsets are those of the words' characters, so
    whole-word masking finds word boundaries as with a real BERT tokenizer."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(list(corpus), trainer=trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[(t, i) for i, t in
                                                                               enumerate(specials) if i in (2, 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)

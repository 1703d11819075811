"""The tokenizer half of a GGUF file: vocabulary, merges, token types, special ids, template.

ft describes only tokenizers it can describe exactly. A byte-level BPE (GPT-2, Llama 3, Qwen 2,
and ft's tiny models) is stored as llama.cpp's `gpt2` model, with the pre-tokenizer named by
`tokenizer.ggml.pre`. The name is chosen from what `tokenizer.json` actually does (its split
regex), never guessed from a hash table: the names used are ones both llama.cpp and
transformers' GGUF loader implement with that regex. A SentencePiece-style BPE (Llama 2,
Mistral: `▁` for spaces, `<0xXX>` byte fallback) is stored as llama.cpp's `llama` model with a
score per token that reproduces the merge order. Anything else is refused before a file is opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FtError

# llama.cpp token types (gguf.TokenType): the values, so this module imports without gguf.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SUPPORTED = (
    "byte-level BPE with the GPT-2 split (pre 'gpt-2'), the Llama 3 split (pre 'llama-bpe') "
    "or the Qwen 2 split (pre 'qwen2'), and SentencePiece-style BPE with byte fallback (Llama 2, Mistral)"
)
_SPACE = "\u2581"


@dataclass(frozen=True)
class GgufVocab:
    """Everything `write_tokenizer` puts in the file."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    scores: list[float] | None
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos / eos / unk / pad -> id
    eot_id: int | None
    add_bos: bool
    chat_template: str | None


def _known_splits() -> dict[str, str]:
    """Split regex -> GGUF pre name, for the names llama.cpp and transformers both implement."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_PRE_TOKENIZER_SPLITS as splits,
    )

    return {splits["llama-bpe"]: "llama-bpe", splits["qwen2"]: "qwen2"}


def _is_sentencepiece(tok_json: dict[str, Any]) -> bool:
    """Llama 2 / Mistral layout: byte fallback, `▁` prepended to the first word, no other splitting."""
    model, pre = tok_json.get("model", {}), tok_json.get("pre_tokenizer") or {}
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback")) and tok_json.get("normalizer") is None
            and pre.get("type") == "Metaspace" and pre.get("replacement") == _SPACE
            and pre.get("prepend_scheme") == "first" and not pre.get("split", True))


def _pre_name(tok_json: dict[str, Any]) -> str:
    """The `tokenizer.ggml.pre` that reproduces this tokenizer.json's pre-tokenizer, or FtError."""
    if _is_sentencepiece(tok_json):
        return "default"
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        name = _known_splits().get(regex)
        if name is not None and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space"):
            return name
    raise FtError(f"GGUF export cannot describe this tokenizer's pre-tokenizer {json.dumps(pre)[:200]}; "
                  f"ft converts {SUPPORTED}")


def check_tokenizer(model_dir: Path) -> dict[str, Any]:
    """Read tokenizer.json and refuse what ft cannot store; return it."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise FtError(f"{model_dir} has no tokenizer.json; GGUF export converts {SUPPORTED}")
    tok_json = json.loads(path.read_text(encoding="utf-8"))
    model = tok_json.get("model", {})
    if _is_sentencepiece(tok_json):
        return tok_json
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise FtError(f"{path}: a {model.get('type')} tokenizer (byte_fallback={model.get('byte_fallback')}) "
                      f"is not supported by ft's GGUF export; ft converts {SUPPORTED}")
    norm = tok_json.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":
        raise FtError(f"{path}: normalizer {norm.get('type')} is not supported; ft converts {SUPPORTED}")
    _pre_name(tok_json)
    return tok_json


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _sentencepiece_scores(tok_json: dict[str, Any], tokens: list[str]) -> list[float]:
    """llama.cpp's SentencePiece tokenizer merges the pair whose result scores highest, so a token
    made by merge r scores -r: the merge order transformers applies."""
    rank = {"".join(m if isinstance(m, list) else m.split(" ")): -float(r)
            for r, m in reversed(list(enumerate(tok_json["model"].get("merges", []))))}
    return [rank.get(t, 0.0) for t in tokens]


def build_vocab(model_dir: Path, tokenizer: Any, vocab_size: int, eot: list[str], template: str | None) -> GgufVocab:
    """The GGUF vocabulary of `tokenizer`, padded to the model's embedding rows like llama.cpp does."""
    tok_json = check_tokenizer(model_dir)
    by_id = {i: t for t, i in tok_json["model"]["vocab"].items()}
    types = {i: NORMAL for i in by_id}
    for added in tok_json.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if max(by_id) >= vocab_size:
        raise FtError(f"{model_dir}: the tokenizer has id {max(by_id)} but the model only {vocab_size} embeddings")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, UNUSED) for i in range(vocab_size)]
    spm = _is_sentencepiece(tok_json)
    if spm:  # byte-fallback pieces and unk get their own types, as in a SentencePiece model
        unk = tok_json["model"].get("unk_token")
        token_types = [BYTE if len(t) == 6 and t.startswith("<0x") and t.endswith(">") and k == NORMAL
                       else UNKNOWN if t == unk else k for t, k in zip(tokens, token_types)]
    special = {
        name: getattr(tokenizer, f"{name}_token_id")
        for name in ("bos", "eos", "unk", "pad")
        if getattr(tokenizer, f"{name}_token_id", None) is not None
    }
    eot_ids = [tokenizer.convert_tokens_to_ids(t) for t in eot if t != tokenizer.eos_token]
    probe = tokenizer.encode("a")
    add_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    return GgufVocab(
        model="llama" if spm else "gpt2", scores=_sentencepiece_scores(tok_json, tokens) if spm else None,
        pre=_pre_name(tok_json), tokens=tokens, types=token_types, merges=_merges(tok_json["model"]),
        special_ids=special, eot_id=eot_ids[0] if eot_ids else special.get("eos"), add_bos=add_bos,
        chat_template=template,
    )


def write_tokenizer(writer: Any, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(True)  # Metaspace prepend_scheme "first"
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for name, token_id in vocab.special_ids.items():
        adders[name](int(token_id))
    if vocab.eot_id is not None:
        writer.add_eot_token_id(int(vocab.eot_id))
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)

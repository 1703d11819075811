"""The tokenizer half of a GGUF file: vocabulary, merges, token types, special ids, template.

ft describes only tokenizers it can describe exactly. A byte-level BPE (GPT-2, Llama 3, Qwen 2,
and ft's tiny models) is stored as llama.cpp's `gpt2` model, with the pre-tokenizer named by
`tokenizer.ggml.pre`. The name is chosen from what `tokenizer.json` actually does (its split
regex), never guessed from a hash table: the names used are ones both llama.cpp and
transformers' GGUF loader implement with that regex. Anything else is refused before a file is
opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FtError

# llama.cpp token types (gguf.TokenType): the values, so this module imports without gguf.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

SUPPORTED = (
    "byte-level BPE with the GPT-2 split (pre 'gpt-2'), the Llama 3 split (pre 'llama-bpe') "
    "or the Qwen 2 split (pre 'qwen2')"
)


@dataclass(frozen=True)
class GgufVocab:
    """Everything `write_tokenizer` puts in the file."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos / eos / unk / pad -> id
    eot_id: int | None
    add_bos: bool
    chat_template: str | None


def _known_splits() -> dict[str, str]:
    """Split regex -> GGUF pre name, for the names llama.cpp and transformers both implement."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits

    return {splits["llama-bpe"]: "llama-bpe", splits["qwen2"]: "qwen2"}


def _pre_name(tok_json: dict[str, Any]) -> str:
    """The `tokenizer.ggml.pre` that reproduces this tokenizer.json's pre-tokenizer, or FtError."""
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
    special = {
        name: getattr(tokenizer, f"{name}_token_id")
        for name in ("bos", "eos", "unk", "pad")
        if getattr(tokenizer, f"{name}_token_id", None) is not None
    }
    eot_ids = [tokenizer.convert_tokens_to_ids(t) for t in eot if t != tokenizer.eos_token]
    probe = tokenizer.encode("a")
    add_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    return GgufVocab(
        pre=_pre_name(tok_json), tokens=tokens, types=token_types, merges=_merges(tok_json["model"]),
        special_ids=special, eot_id=eot_ids[0] if eot_ids else special.get("eos"), add_bos=add_bos,
        chat_template=template,
    )


def write_tokenizer(writer: Any, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
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

"""The preprocessing cache: a tokenized dataset is stored once and loaded by later runs.

One entry per dataset of a recipe, so changing one dataset re-tokenizes only that one. The key
is a hash of everything that changes the tokens: the data's content (a Hub dataset: id, config,
split, revision), the tokenizer (vocabulary, merges, normalisation, special tokens, whether it
adds bos), the chat template, the options that shape an example (format, columns, max_rows,
max_length, truncation, bad_rows, loss_on), and the code and library versions that tokenize.
What is applied after loading (the validation split, weights, seed) is not in the key: changing
it reuses the entry and gives a different mix, as it should.

Entries live in `$FT_CACHE`, else `~/.cache/ft/data`, one folder per key, written under a
temporary name and renamed, so a crash or a concurrent writer never leaves a half entry.
Deleting the folder at any time is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_templates.sources import data_files, is_local
from finetune.notices import notice
from finetune.recipe.schema import DataSection, DatasetSpec

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

CACHE_ENV = "FT_CACHE"
DEFAULT_CACHE = "~/.cache/ft/data"
# Bump when the stored layout changes; code changes are caught by the source hash below.
CACHE_VERSION = 1
# The modules whose code decides the tokens of an example.
_CODE = ("formats.py", "sources.py", "prepare.py", "masking.py", "cache.py", "parallel.py")
_META = "meta.json"


def cache_dir() -> Path:
    """Where entries are stored: $FT_CACHE, else ~/.cache/ft/data."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def content_fingerprint(spec: DatasetSpec) -> str:
    """sha256 of a local dataset's bytes (a folder's files in reading order, with their paths
    inside it); for a Hub dataset, its id, config, split and revision."""
    if not is_local(spec):
        return "hub:" + json.dumps([spec.path, spec.name, spec.split, spec.revision])
    root = Path(spec.path).expanduser()
    digest = hashlib.sha256()
    for file in data_files(root):
        # A single file is known by its suffix only (which reader parses it), so a renamed or moved
        # file is still a hit; inside a folder the relative path orders and separates the files.
        name = file.relative_to(root).as_posix() if root.is_dir() else file.suffix
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of everything in a tokenizer that decides ids: the Rust tokenizer's full state
    (vocabulary, merges, normaliser, pre-tokenizer, post-processor, added tokens), the special
    tokens and the chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Padding and truncation are per-call settings transformers leaves on the backend.
        state.pop("padding", None)
        state.pop("truncation", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "added": {str(i): str(t) for i, t in tokenizer.added_tokens_decoder.items()},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    import datasets
    import tokenizers
    import transformers

    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _CODE:
        digest.update((here / name).read_bytes())
    digest.update(f"{transformers.__version__} {tokenizers.__version__} {datasets.__version__}".encode())
    return digest.hexdigest()


def cache_key(spec: DatasetSpec, data: DataSection, tokenizer: PreTrainedTokenizerBase, *, form: str,
              loss_on: str) -> str:
    """The key of one dataset's tokenized form; see the module docstring for what goes in."""
    parts: dict[str, Any] = {
        "version": CACHE_VERSION,
        "code": _code_fingerprint(),
        "content": content_fingerprint(spec),
        # The path is left out for local data: a moved or renamed file with the same bytes is the same data.
        "spec": spec.model_dump(include={"format", "columns", "name", "split", "revision", "max_rows"}),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": getattr(tokenizer, "chat_template", None),
        "form": form,
        "loss_on": loss_on,
        "data": data.model_dump(include={"max_length", "truncation", "bad_rows"}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bar for saving: a run's first lines are its data report."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def load(key: str) -> tuple[Dataset, dict[str, Any]] | None:
    """The dataset and metadata stored under `key`, or None (absent, or unreadable: then re-tokenize)."""
    from datasets import load_from_disk

    entry = cache_dir() / key
    if not (entry / _META).is_file():
        return None
    try:
        meta = json.loads((entry / _META).read_text(encoding="utf-8"))
        return load_from_disk(str(entry / "data")), meta
    except (OSError, ValueError) as err:
        notice(f"data cache entry {entry} is unreadable ({err}); tokenizing again")
        return None


def store(key: str, dataset: Dataset, meta: dict[str, Any]) -> Dataset:
    """Write an entry atomically and return the dataset as loaded from it (memory-mapped, so a
    large dataset does not stay in memory, and a first run trains on exactly what later runs load).

    A cache that cannot be written is not worth failing a run for: the dataset is returned as is.
    """
    from datasets import load_from_disk

    root = cache_dir()
    entry = root / key
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=root))
        with _quiet():
            dataset.save_to_disk(str(tmp / "data"))
        (tmp / _META).write_text(json.dumps(meta), encoding="utf-8")  # written last: marks the entry whole
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / _META).is_file():
                raise
            # Another process stored the same key first; its entry is as good as ours.
        return load_from_disk(str(entry / "data"))
    except OSError as err:
        notice(f"could not write the data cache under {root} ({err}); continuing without it. "
               f"Set {CACHE_ENV} to a writable folder, or data.cache: false")
        return dataset
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

"""The preprocessing cache: a second run with the same inputs skips tokenization; any change to
what decides the tokens tokenizes again; what is applied after loading does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import data_templates.prepare as prepare
from data_templates import cache
from data_templates.chat_templates import resolve_chat_template
from data_templates.prepare import prepare_data
from tests._data import chatml_tokenizer, chats, section, spec, write_jsonl
from tests._tokenizers import make_tokenizer


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call to tokenize_example, the per-row tokenizer."""
    seen: list[Any] = []
    real = prepare.tokenize_example

    def counting(*args: Any, **kw: Any) -> Any:
        seen.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(prepare, "tokenize_example", counting)
    return seen


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "d.jsonl", chats(5))


def _rows(prepared: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in prepared.train]


def test_second_run_loads_from_the_cache(data_file: Path, calls: list[Any], data_cache: Path) -> None:
    tokenizer = chatml_tokenizer()
    data = section(spec(data_file), max_length=64)
    first = prepare_data(data, tokenizer, "sft")
    assert len(calls) == 5 and not first.stats[0].cached
    second = prepare_data(data, chatml_tokenizer(), "sft")  # a fresh tokenizer object, same content
    assert len(calls) == 5, "tokenization must be skipped on a cache hit"
    assert second.stats[0].cached and "loaded from the data cache" in second.summary()
    assert _rows(second) == _rows(first)
    assert second.stats[0].summary().startswith(first.stats[0].summary())  # counts and lengths come back too
    entries = list(data_cache.iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert not [p for p in data_cache.iterdir() if p.name.startswith(".tmp")], "no temporary leftovers"


def _retokenizes(data_file: Path, calls: list[Any], change: Any) -> bool:
    """Run once, apply `change` to (data section, tokenizer, loss_on), run again: did it tokenize?"""
    data, tokenizer, loss_on = section(spec(data_file), max_length=64), chatml_tokenizer(), "assistant"
    prepare_data(data, tokenizer, "sft", loss_on=loss_on)
    before = len(calls)
    data, tokenizer, loss_on = change(data, tokenizer, loss_on)
    prepare_data(data, tokenizer, "sft", loss_on=loss_on)
    return len(calls) > before


def _edit_data(data_file: Path) -> Any:
    def change(data: Any, tokenizer: Any, loss_on: str) -> Any:
        write_jsonl(data_file, chats(5, prefix="changed"))
        return data, tokenizer, loss_on
    return change


def _other_tokenizer(data: Any, tokenizer: Any, loss_on: str) -> Any:
    other = make_tokenizer(bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                           specials=("<|im_start|>", "<|im_end|>", "<x>"))
    resolve_chat_template(other, "chatml")
    return data, other, loss_on


def _other_template(data: Any, tokenizer: Any, loss_on: str) -> Any:
    tokenizer.chat_template = tokenizer.chat_template.replace("'\\n'", "'\\n\\n'", 1)
    return data, tokenizer, loss_on


def _with_spec(data: Any, **update: Any) -> Any:
    return data.model_copy(update={"train": [data.train[0].model_copy(update=update)]})


@pytest.mark.parametrize("what, change", [
    ("data content", None),
    ("tokenizer", _other_tokenizer),
    ("chat template", _other_template),
    ("max_length", lambda d, t, l: (d.model_copy(update={"max_length": 27}), t, l)),
    ("truncation", lambda d, t, l: (d.model_copy(update={"truncation": "keep_end"}), t, l)),
    ("loss_on", lambda d, t, l: (d, t, "all")),
    ("format", lambda d, t, l: (_with_spec(d, format="sharegpt").model_copy(update={"bad_rows": "skip"}), t, l)),
    ("max_rows", lambda d, t, l: (_with_spec(d, max_rows=2), t, l)),
])
def test_any_change_that_decides_the_tokens_tokenizes_again(data_file: Path, calls: list[Any], what: str,
                                                            change: Any) -> None:
    if what == "format":  # every row is bad as sharegpt: tokenization is not reached; check the key instead
        data = section(spec(data_file))
        other = change(data, None, "assistant")[0]
        tokenizer = chatml_tokenizer()
        assert (cache.cache_key(data.train[0], data, tokenizer, form="sft", loss_on="assistant")
                != cache.cache_key(other.train[0], other, tokenizer, form="sft", loss_on="assistant"))
        return
    assert _retokenizes(data_file, calls, change or _edit_data(data_file)), f"a changed {what} must re-tokenize"


def test_the_template_changes_the_key_even_with_an_identical_vocabulary() -> None:
    tokenizer = chatml_tokenizer()
    before = cache.tokenizer_fingerprint(tokenizer)
    _other_template(None, tokenizer, "assistant")
    assert cache.tokenizer_fingerprint(tokenizer) != before


def test_split_weights_and_seed_reuse_the_cache_and_still_change_the_mix(tmp_path: Path, calls: list[Any]) -> None:
    a, b = write_jsonl(tmp_path / "a.jsonl", chats(6, "a")), write_jsonl(tmp_path / "b.jsonl", chats(3, "b"))
    tokenizer = chatml_tokenizer()
    plain = prepare_data(section(spec(a), spec(b)), tokenizer, "sft")
    tokenized = len(calls)
    mixed = prepare_data(section(spec(a, weight=1), spec(b, weight=2), validation_fraction=0.2), tokenizer, "sft",
                         seed=7)
    assert len(calls) == tokenized
    assert all(s.cached for s in mixed.stats)
    assert len(mixed.eval) == 2 and _rows(mixed) != _rows(plain)


def test_a_moved_file_with_the_same_bytes_is_a_hit(tmp_path: Path, data_file: Path, calls: list[Any]) -> None:
    tokenizer = chatml_tokenizer()
    prepare_data(section(spec(data_file)), tokenizer, "sft")
    moved = data_file.rename(tmp_path / "moved.jsonl")
    again = prepare_data(section(spec(moved)), tokenizer, "sft")
    assert again.stats[0].cached and again.stats[0].name == f"train[0] {moved}"


def test_cache_false_writes_nothing(data_file: Path, calls: list[Any], data_cache: Path) -> None:
    data = section(spec(data_file), cache=False)
    prepare_data(data, chatml_tokenizer(), "sft")
    prepare_data(data, chatml_tokenizer(), "sft")
    assert len(calls) == 10 and not data_cache.exists()


def test_ft_cache_chooses_the_folder(tmp_path: Path, data_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "elsewhere"))
    prepare_data(section(spec(data_file)), chatml_tokenizer(), "sft")
    assert len(list((tmp_path / "elsewhere").iterdir())) == 1
    monkeypatch.delenv("FT_CACHE")
    assert cache.cache_dir() == Path("~/.cache/ft/data").expanduser()


def test_an_unwritable_cache_warns_and_the_run_goes_on(tmp_path: Path, data_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch, notices: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FT_CACHE", str(blocker / "cache"))  # a folder inside a file cannot be made
    prepared = prepare_data(section(spec(data_file)), chatml_tokenizer(), "sft")
    assert any("could not write the data cache" in message for message in notices)
    assert len(prepared.train) == 5


def test_a_hub_dataset_is_keyed_on_id_config_split_and_revision() -> None:
    base = spec("org/data", name="en", split="train", revision="abc")
    keys = {cache.content_fingerprint(s) for s in (base, base.model_copy(update={"name": "de"}),
                                                   base.model_copy(update={"split": "test"}),
                                                   base.model_copy(update={"revision": "def"}))}
    assert len(keys) == 4 and all(k.startswith("hub:") for k in keys)

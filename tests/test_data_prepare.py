"""prepare_data: several datasets with their own formats, truncation counts and the exact report,
bad rows at tokenization, the validation split and weighted mixing, and the recipe checks."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from data_templates.prepare import DataError, DatasetStats, prepare_data, tokenize_example
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from tests._data import chat, chatml_tokenizer, chats, section, spec, write_jsonl

TOKENIZER = chatml_tokenizer()


def _prepare(data: Any, form: str = "sft", **kw: Any) -> Any:
    return prepare_data(data, TOKENIZER, form, **kw)


def _rows(dataset: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in dataset]


# ---- several datasets, each with its own format -------------------------------------------------

def test_several_datasets_each_with_its_own_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = write_jsonl(tmp_path / "chat.jsonl", chats(3))
    alpaca = tmp_path / "alpaca.csv"
    with open(alpaca, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows([{"instruction": "Add.", "input": "2 and 2", "output": "4"},
                          {"instruction": "Greet.", "input": "", "output": "Hello!"}])
    sharegpt = tmp_path / "share.json"
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]
    sharegpt.write_text(json.dumps([{"conversations": turns}]))
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "2+2=", "a": "4"}]), pairs)
    data = section(spec(messages), spec(alpaca, format="alpaca"), spec(sharegpt, format="sharegpt"),
                   spec(pairs, format="prompt_completion", columns={"prompt": "q", "completion": "a"}))
    prepared = _prepare(data)
    assert [s.rows for s in prepared.stats] == [3, 2, 1, 1]
    expected = [tokenize_example(TOKENIZER, row, "assistant") for row in (
        *chats(3),
        {"messages": [{"role": "user", "content": "Add.\n\n2 and 2"}, {"role": "assistant", "content": "4"}]},
        chat("Greet.", "Hello!"), chat("Hi", "Hey"), {"prompt": "2+2=", "completion": "4"})]
    assert _rows(prepared.train) == expected


# ---- truncation: counts and the exact report -----------------------------------------------------

def _long_answer_rows() -> list[dict[str, Any]]:
    return chats(4) + [chat("Tell me a story.", "Once upon a time " * 20)]


def _max_short(rows: list[dict[str, Any]]) -> int:
    return max(len(tokenize_example(TOKENIZER, r, "assistant")["input_ids"]) for r in rows[:-1])


@pytest.mark.parametrize("policy, truncated, dropped", [("keep_start", 1, 0), ("keep_end", 1, 0), ("drop", 0, 1)])
def test_truncation_is_counted_and_reported_exactly(tmp_path: Path, policy: str, truncated: int, dropped: int) -> None:
    rows = _long_answer_rows()
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    limit = _max_short(rows)
    prepared = _prepare(section(spec(path), max_length=limit, truncation=policy))
    stats = prepared.stats[0]
    assert (stats.rows, stats.truncated, stats.dropped) == (5, truncated, dropped)
    assert all(len(ids) <= limit for ids in prepared.train["input_ids"])
    assert len(prepared.train) == 5 - dropped
    report = f"train[0] {path}: 5 rows; {truncated} of 5 rows truncated, {dropped} dropped; tokens min"
    assert report in prepared.summary()


def test_truncation_keeps_the_start_or_the_end(tmp_path: Path) -> None:
    rows = _long_answer_rows()
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    full = tokenize_example(TOKENIZER, rows[-1], "assistant")
    limit = _max_short(rows)
    start = _prepare(section(spec(path), max_length=limit, truncation="keep_start")).train[4]
    end = _prepare(section(spec(path), max_length=limit, truncation="keep_end")).train[4]
    assert start == {k: v[:limit] for k, v in full.items()}
    assert end == {k: v[-limit:] for k, v in full.items()}


def test_a_row_cut_down_to_its_prompt_is_dropped(tmp_path: Path) -> None:
    rows = chats(2) + [chat("Tell me a long story please, " * 10, "No.")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = _prepare(section(spec(path), max_length=_max_short(rows)))
    assert (prepared.stats[0].truncated, prepared.stats[0].dropped, len(prepared.train)) == (0, 1, 2)


def test_every_row_dropped_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", chats(2))
    with pytest.raises(DataError, match=r"all 2 rows were dropped at data.max_length=3 .*raise data.max_length"):
        _prepare(section(spec(path), max_length=3))


def test_report_wording_with_thousands() -> None:
    stats = DatasetStats("train[0] big.jsonl", rows=5000, truncated=12, tokenized=True, lengths=[10, 20, 1024])
    assert stats.summary() == ("train[0] big.jsonl: 5,000 rows; 12 of 5,000 rows truncated, 0 dropped; "
                               "tokens min 10, median 20, max 1,024")


# ---- bad rows found while tokenizing ---------------------------------------------------------------

def test_a_row_the_template_cannot_render_is_reported_with_file_and_row(tmp_path: Path) -> None:
    # Mistral's template knows no tool role (ChatML renders it): that row cannot be trained on.
    from data_templates.chat_templates import resolve_chat_template
    from tests._tokenizers import make_tokenizer

    mistral = make_tokenizer()
    resolve_chat_template(mistral, "mistral")
    tool = {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"},
                         {"role": "assistant", "content": "Done"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [*chats(2), tool])
    with pytest.raises(DataError, match=r"d.jsonl:3: the chat template cannot render .*tool"):
        prepare_data(section(spec(path)), mistral, "sft")
    prepared = prepare_data(section(spec(path), bad_rows="skip"), mistral, "sft")
    assert (prepared.stats[0].rows, prepared.stats[0].skipped, len(prepared.train)) == (2, 1, 2)
    assert f"2 rows, 1 bad rows skipped (first: {path}:3: the chat template cannot render" in prepared.summary()


def test_conversations_without_a_chat_template_are_one_clear_error(tmp_path: Path) -> None:
    from tests._tokenizers import make_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", chats(2))
    with pytest.raises(DataError, match="the rows are conversations, but the tokenizer has no chat template"):
        prepare_data(section(spec(path), bad_rows="skip"), make_tokenizer(), "sft")


# ---- validation: given, or carved with a fixed seed -------------------------------------------------

def test_validation_fraction_holds_out_rows_with_a_fixed_seed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", chats(10))
    data = section(spec(path), validation_fraction=0.2)
    first, again, other = _prepare(data, seed=1), _prepare(data, seed=1), _prepare(data, seed=2)
    assert (len(first.train), len(first.eval)) == (8, 2)
    assert _rows(first.eval) == _rows(again.eval) and _rows(first.train) == _rows(again.train)
    assert _rows(first.eval) != _rows(other.eval)
    everything = [tokenize_example(TOKENIZER, r, "assistant") for r in chats(10)]
    assert sorted(map(str, _rows(first.train) + _rows(first.eval))) == sorted(map(str, everything))
    assert "validation: 2 train rows held out at random (validation_fraction 0.2, seed 1)" in first.summary()


def test_validation_datasets_are_used_as_given(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chats(4))
    held = write_jsonl(tmp_path / "val.jsonl", chats(2, prefix="v"))
    prepared = _prepare(section(spec(train), validation=[spec(held)]))
    assert _rows(prepared.eval) == [tokenize_example(TOKENIZER, r, "assistant") for r in chats(2, prefix="v")]
    assert [s.name for s in prepared.stats] == [f"train[0] {train}", f"validation[0] {held}"]


def test_no_training_rows_left_after_the_split(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", chats(1))
    with pytest.raises(DataError, match="no training rows left after the validation split"):
        _prepare(section(spec(path), validation_fraction=0.5))


# ---- weights and max_rows ---------------------------------------------------------------------------

def _two(tmp_path: Path, big: int = 6, small: int = 2) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "big.jsonl", chats(big, "b")),
            write_jsonl(tmp_path / "small.jsonl", chats(small, "s")))


def _sources(prepared: Any) -> list[str]:
    """Which dataset each train example came from, by its decoded text."""
    return ["b" if "<|im_start|>user\nb " in TOKENIZER.decode(ids) else "s" for ids in prepared.train["input_ids"]]


def test_equal_weights_give_equal_shares(tmp_path: Path) -> None:
    big, small = _two(tmp_path)
    prepared = _prepare(section(spec(big, weight=1), spec(small, weight=1)), seed=3)
    assert len(prepared.train) == 8  # the mix is as large as the datasets together
    assert _sources(prepared).count("b") == 4 and _sources(prepared).count("s") == 4
    big_rows = [str(r) for r in _rows(prepared.train)[:4]]
    assert len(set(big_rows)) == 4  # under its size: sampled without replacement
    small_rows = [str(r) for r in _rows(prepared.train)[4:]]
    assert len(set(small_rows)) == 2
    assert all(small_rows.count(r) == 2 for r in small_rows)  # over its size: every row repeated evenly
    assert [s.used for s in prepared.stats] == [4, 4]
    assert ("mixed by weight: train[0] " in prepared.summary()
            and "weight 1 -> 4 of 6 rows (a random subset)" in prepared.summary()
            and "weight 1 -> 4 of 2 rows (2.00x its rows, repeated)" in prepared.summary())


def test_mixing_is_deterministic_with_the_seed(tmp_path: Path) -> None:
    big, small = _two(tmp_path, big=20, small=5)
    data = section(spec(big, weight=1), spec(small, weight=1))
    assert _rows(_prepare(data, seed=0).train) == _rows(_prepare(data, seed=0).train)
    assert _rows(_prepare(data, seed=0).train) != _rows(_prepare(data, seed=1).train)


def test_weights_in_proportion_to_sizes_are_plain_concatenation(tmp_path: Path) -> None:
    big, small = _two(tmp_path)
    weighted = _prepare(section(spec(big, weight=3), spec(small, weight=1)))
    plain = _prepare(section(spec(big), spec(small)))
    assert _rows(weighted.train) == _rows(plain.train)


def test_held_out_rows_never_reach_training_even_when_repeated(tmp_path: Path) -> None:
    big, small = _two(tmp_path, big=10, small=3)
    prepared = _prepare(section(spec(big, weight=1), spec(small, weight=4), validation_fraction=0.3), seed=5)
    held = {str(r) for r in _rows(prepared.eval)}
    assert held and not held & {str(r) for r in _rows(prepared.train)}


def test_max_rows_takes_the_first_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", chats(10))
    prepared = _prepare(section(spec(path, max_rows=3)))
    assert _rows(prepared.train) == [tokenize_example(TOKENIZER, r, "assistant") for r in chats(3)]


def test_some_weights_missing_is_an_error(tmp_path: Path) -> None:
    big, small = _two(tmp_path)
    with pytest.raises(DataError, match="give every train dataset a weight, or none"):
        _prepare(section(spec(big, weight=1), spec(small)))


def test_text_rows_are_trained_on_every_token(tmp_path: Path) -> None:
    from data_templates.masking import tokenize_text

    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "Once upon a time."}, {"text": "The end."}])
    prepared = _prepare(section(spec(path, format="text")), form="text", loss_on="all")
    assert _rows(prepared.train) == [tokenize_text(TOKENIZER, t) for t in ("Once upon a time.", "The end.")]
    assert all(row["labels"] == row["input_ids"] for row in _rows(prepared.train))


# ---- forms the trainer tokenizes itself -------------------------------------------------------------

def test_preference_rows_reach_the_trainer_canonical(tmp_path: Path) -> None:
    rows = [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}, {"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    prepared = _prepare(section(spec(path, format="preference")), form="preference")
    assert _rows(prepared.train) == rows
    assert prepared.stats[0].summary() == f"train[0] {path}: 2 rows"


def test_mixing_text_and_conversational_prompts_is_a_clear_error(tmp_path: Path) -> None:
    text = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    chat_rows = write_jsonl(tmp_path / "b.jsonl", [{"prompt": [{"role": "user", "content": "2+2="}],
                                                   "chosen": "4", "rejected": "5"}])
    with pytest.raises(DataError, match="different fields or types"):
        _prepare(section(spec(text, format="preference"), spec(chat_rows, format="preference")), form="preference")


# ---- recipe checks -------------------------------------------------------------------------------

def _recipe(tmp_path: Path, data: str, objective: str = "sft", model: str = "") -> Path:
    """A recipe whose data section is `data` (YAML, any indentation) and model has `model` keys."""
    data_block = textwrap.indent(textwrap.dedent(data).strip(), "  ")
    model_block = textwrap.indent(model, "  ") if model else ""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model:\n  name_or_path: {tmp_path}\n{model_block}\ndata:\n{data_block}\n"
                    f"objective:\n  kind: {objective}\noutput_dir: {tmp_path / 'run'}\n")
    return path


def _problems(path: Path) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return str(err.value)


def test_recipe_checks_weights_local_hub_keys_and_packing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", chats(2))
    text = _problems(_recipe(tmp_path, f"""
        train:
          - {{path: {data}, weight: 2}}
          - {{path: {data}, split: test, revision: v1}}
        validation:
          - {{path: {data}, weight: 1}}
        """))
    assert "data.train: give every train dataset a weight, or none (train[1] has none)" in text
    assert "data.validation.0.weight: validation data is not mixed; remove weight" in text
    assert f"data.train.1.split: applies to Hub datasets only, and {data} is a local path; give the file" in text
    assert "data.train.1.revision: applies to Hub datasets only" in text
    packing = _problems(_recipe(tmp_path, f"""
        train:
          - {{path: {data}, format: preference}}
        packing: true
        """, objective="dpo"))
    assert "data.packing: objective 'dpo' does not pack examples; packing is for sft, pretrain and mlm" in packing


def test_a_template_that_is_not_jinja_is_a_clear_error(tmp_path: Path) -> None:
    from finetune.errors import ConfigError
    from finetune.pipeline import setup_template
    from finetune.registry import get_objective
    from tests._tokenizers import make_tokenizer

    data = write_jsonl(tmp_path / "d.jsonl", chats(2))
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for message in messages %}{{ message['content'] }}\n{% endfor")
    recipe = load_recipe(_recipe(tmp_path, f"train: [{{path: {data}}}]", model=f"chat_template: {bad}"))
    with pytest.raises(ConfigError, match=rf"model.chat_template: file {bad}: invalid Jinja at line 2"):
        setup_template(make_tokenizer(), recipe, get_objective("sft"))

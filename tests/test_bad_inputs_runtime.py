"""Bad inputs met at run time, tried as a new user would, through the real CLI (`cli.app`).

Data files and rows, chat templates, model directories, rewards and trained-run paths. Every case
must exit non-zero with no traceback and a message naming the file (and row or line) or the key.
Each case costs a tokenizer load at most: everything here fails before model weights are trained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from tests._runs import CHAT_DATA

Setup = Callable[[Path, dict[str, Path]], list[str]]  # (tmp dir, tiny models) -> CLI args


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup
    expect: tuple[str, ...]  # fragments the message must contain ("{tmp}" is replaced by the tmp dir)


def _recipe(tmp: Path, model: Path | str, *, data: Path | str = CHAT_DATA, fmt: str = "messages",
            objective: dict | None = None, model_keys: dict | None = None, data_keys: dict | None = None) -> Path:
    recipe = {
        "model": {"name_or_path": str(model), **(model_keys or {})},
        "adapter": {"kind": "lora"},
        "data": {"train": [{"path": str(data), "format": fmt}], **(data_keys or {})},
        "objective": objective or {"kind": "sft"},
        "training": {"max_steps": 1, "batch_size": 2, "progress_bar": False},
        "output_dir": str(tmp / "run"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _data(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def run_with_data(name: str, content: str | bytes, fmt: str = "messages", objective: dict | None = None,
                  model: str = "llama", data_keys: dict | None = None) -> Setup:
    def setup(tmp: Path, models: dict[str, Path]) -> list[str]:
        data = _data(tmp, name, content)
        return ["run", str(_recipe(tmp, models[model], data=data, fmt=fmt, objective=objective,
                                   data_keys=data_keys))]
    return setup


def run_with_model(make: Callable[[Path, dict[str, Path]], Path | str]) -> Setup:
    def setup(tmp: Path, models: dict[str, Path]) -> list[str]:
        return ["run", str(_recipe(tmp, make(tmp, models)))]
    return setup


def _copy_model(tmp: Path, models: dict[str, Path], name: str = "llama") -> Path:
    import shutil

    out = tmp / "model"
    shutil.copytree(models[name], out)
    return out


def _edit(change: Callable[[Path], None]) -> Callable[[Path, dict[str, Path]], Path]:
    def make(tmp: Path, models: dict[str, Path]) -> Path:
        model = _copy_model(tmp, models)
        change(model)
        return model
    return make


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _config(model: Path, **changes: object) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


GOOD = json.loads(CHAT_DATA.read_text().splitlines()[0])
PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}
DEEP = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}\n"

DATA_CASES = [
    Case("data-missing", lambda tmp, m: ["run", str(_recipe(tmp, m["llama"], data=tmp / "nope.jsonl"))],
         ("nope.jsonl",)),
    Case("data-empty-file", run_with_data("empty.jsonl", ""), ("empty.jsonl",)),
    Case("data-invalid-json", run_with_data("bad.jsonl", json.dumps(GOOD) + "\n{not json\n"), ("bad.jsonl", "2")),
    Case("data-deep-nesting", run_with_data("deep.jsonl", DEEP), ("deep.jsonl", "1")),
    Case("data-row-not-object", run_with_data("list.jsonl", "[1, 2, 3]\n"), ("list.jsonl", "1")),
    Case("data-no-messages", run_with_data("nomsg.jsonl", '{"text": "hi"}\n'), ("nomsg.jsonl", "messages")),
    Case("data-unknown-role", run_with_data("role.jsonl", json.dumps(
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}) + "\n"),
        ("role.jsonl", "wizard")),
    Case("data-content-not-text", run_with_data("content.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}) + "\n"),
        ("content.jsonl", "content")),
    Case("data-no-assistant", run_with_data("noasst.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "hi"}]}) + "\n"), ("noasst.jsonl", "assistant")),
    Case("data-binary-garbage", run_with_data("garbage.jsonl", bytes(range(256)) * 4), ("garbage.jsonl",)),
    Case("data-parquet-garbage", run_with_data("garbage.parquet", b"PAR1 this is not parquet"), ("garbage.parquet",)),
    Case("data-csv-missing-column", run_with_data("rows.csv", "question,answer\nhi,hello\n", fmt="prompt_completion"),
         ("rows.csv", "prompt")),
    Case("data-unknown-extension", run_with_data("rows.xlsx", "a"), ("rows.xlsx",)),
    Case("data-text-empty", run_with_data("text.jsonl", '{"text": "   "}\n', fmt="text"), ("text.jsonl", "empty")),
    Case("data-completion-missing", run_with_data("pc.jsonl", '{"prompt": "hi"}\n', fmt="prompt_completion"),
         ("pc.jsonl", "completion")),
    Case("data-chosen-equals-rejected", run_with_data("pairs.jsonl", json.dumps({**PAIR, "rejected": "Hi!"}) + "\n",
                                                      fmt="preference", objective={"kind": "dpo"}),
         ("pairs.jsonl", "identical")),
    Case("data-chosen-equals-rejected-reward", run_with_data(
        "pairs.jsonl", json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "rejected": "Hi!"}) + "\n",
        fmt="preference", objective={"kind": "reward"}), ("pairs.jsonl:2", "identical")),
    Case("data-kto-contradicting-labels", run_with_data(
        "kto.jsonl", '{"prompt": "a", "completion": "b", "label": true}\n'
        '{"prompt": "a", "completion": "b", "label": false}\n', fmt="unpaired_preference", objective={"kind": "kto"}),
        ("kto.jsonl:2", "labelled")),
    Case("data-kto-bad-label", run_with_data("kto.jsonl", '{"prompt": "a", "completion": "b", "label": "maybe"}\n',
                                             fmt="unpaired_preference", objective={"kind": "kto"}), ("kto.jsonl", "label")),
    Case("data-every-row-skipped", run_with_data("allbad.jsonl", '{"x": 1}\n{"x": 2}\n',
                                                 data_keys={"bad_rows": "skip"}), ("allbad.jsonl", "every row")),
    Case("data-wrong-format-for-objective", run_with_data("chat.jsonl", json.dumps(GOOD) + "\n",
                                                          objective={"kind": "dpo"}), ("data.train.0.format",)),
    Case("data-deep-nesting-json", run_with_data("deep.json", "[" + DEEP.strip() + "]"), ("deep.json",)),
    Case("data-empty-folder", lambda tmp, m: ["run", str(_recipe(tmp, m["llama"], data=(tmp / "folder").mkdir()
                                                                 or tmp / "folder"))], ("folder",)),
    Case("data-json-not-a-list", run_with_data("obj.json", '{"a": 1, "b": 2}'), ("obj.json",)),
    Case("data-messages-not-a-list", run_with_data("m.jsonl", '{"messages": "hello"}\n'), ("m.jsonl", "messages")),
    Case("data-preference-missing-rejected", run_with_data("p.jsonl", '{"prompt": "a", "chosen": "b"}\n',
                                                           fmt="preference", objective={"kind": "dpo"}),
         ("p.jsonl", "rejected")),
    Case("data-utf16-file", run_with_data("utf16.jsonl", (json.dumps(GOOD) + "\n").encode("utf-16")), ("utf16.jsonl",)),
]


def _template_file(text: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    def setup(tmp: Path, models: dict[str, Path]) -> list[str]:
        template = _data(tmp, "my.jinja", text)
        return ["run", str(_recipe(tmp, models["mistral"], model_keys={"chat_template": str(template)}))]
    return setup


TEMPLATE_CASES = [
    Case("template-empty-file", _template_file(""), ("my.jinja", "empty")),
    Case("template-syntax-error", _template_file("{% for m in messages %}{{ m.content }"), ("my.jinja",)),
    Case("template-raises", _template_file("{{ raise_exception('no system messages') }}"), ("my.jinja",)),
    Case("template-missing-file", lambda tmp, m: ["run", str(_recipe(
        tmp, m["mistral"], model_keys={"chat_template": str(tmp / "none.jinja")}))], ("none.jinja",)),
    Case("template-unknown-name", lambda tmp, m: ["run", str(_recipe(
        tmp, m["mistral"], model_keys={"chat_template": "vicuna"}))], ("chat_template", "vicuna")),
    Case("template-none-for-chats", lambda tmp, m: ["run", str(_recipe(tmp, m["mistral"]))], ("chat_template",)),
    Case("template-drops-content", _template_file("{% for m in messages %}x{% endfor %}"),
         ("quickstart.jsonl:1", "chat template")),
]

MODEL_CASES = [
    Case("model-path-is-a-file", run_with_model(lambda tmp, m: _data(tmp, "weights.bin", "x")),
         ("weights.bin", "file")),
    Case("model-missing-dir", run_with_model(lambda tmp, m: tmp / "no-model"), ("no-model",)),
    Case("model-no-config", run_with_model(_edit(lambda d: (d / "config.json").unlink())), ("config.json",)),
    Case("model-garbage-config", run_with_model(_edit(lambda d: (d / "config.json").write_text("{oops"))),
         ("config.json",)),
    Case("model-unknown-architecture", run_with_model(_edit(lambda d: _config(d, model_type="nonesuch"))),
         ("config.json", "nonesuch")),
    Case("model-truncated-weights", run_with_model(_edit(lambda d: _truncate(d / "model.safetensors"))),
         ("model.safetensors",)),
    Case("model-garbage-weights", run_with_model(_edit(lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64))),
         ("model.safetensors",)),
    Case("model-weights-mismatch-config", run_with_model(_edit(lambda d: _config(d, hidden_size=96))),
         ("model.safetensors",)),
    Case("model-no-weights", run_with_model(_edit(lambda d: (d / "model.safetensors").unlink())), ("model",)),
    Case("model-no-tokenizer", run_with_model(_edit(lambda d: [(d / f).unlink() for f in
                                                              ("tokenizer.json", "tokenizer_config.json")])),
         ("tokenizer",)),
    Case("model-garbage-tokenizer", run_with_model(_edit(lambda d: (d / "tokenizer.json").write_text("[1"))),
         ("tokenizer",)),
    Case("model-no-model-type", run_with_model(_edit(lambda d: _config(d, model_type=None))), ("config.json",)),
    Case("model-config-is-a-list", run_with_model(_edit(lambda d: (d / "config.json").write_text("[]"))),
         ("config.json",)),
    Case("model-adapter-without-base", run_with_model(lambda tmp, m: _data(
        (tmp / "adapter").mkdir() or tmp / "adapter", "adapter_config.json",
        json.dumps({"base_model_name_or_path": str(tmp / "gone"), "peft_type": "LORA"})).parent), ("gone",)),
    Case("model-empty-dir", run_with_model(lambda tmp, m: (tmp / "empty").mkdir() or tmp / "empty"), ("empty",)),
]


def _reward(file_text: str, function: str = "score") -> Setup:
    def setup(tmp: Path, models: dict[str, Path]) -> list[str]:
        _data(tmp, "rewards.py", file_text)
        data = _data(tmp, "prompts.jsonl", '{"prompt": "What is 2+2?", "reference": "4"}\n' * 4)
        objective = {"kind": "grpo", "allow_custom_code": True, "num_generations": 2,
                     "rewards": [{"kind": "custom", "function": f"{tmp / 'rewards.py'}:{function}"}]}
        return ["run", str(_recipe(tmp, models["llama"], data=data, fmt="prompt_only", objective=objective))]
    return setup


REWARD_CASES = [
    Case("reward-syntax-error", _reward("def score(completions, **kw):\n    return [1.0 for c in completions\n"),
         ("rewards.py", "2")),
    Case("reward-missing-function", _reward("def other(completions, **kw):\n    return []\n"), ("rewards.py", "score")),
    Case("reward-import-fails", _reward("import no_such_package_here\n"), ("rewards.py", "no_such_package_here")),
    Case("reward-not-callable", _reward("score = 3\n"), ("rewards.py", "score")),
    Case("reward-model-missing", lambda tmp, m: ["run", str(_recipe(
        tmp, m["llama"], data=_data(tmp, "p.jsonl", '{"prompt": "hi"}\n' * 4), fmt="prompt_only",
        objective={"kind": "grpo", "num_generations": 2, "rewards": [{"kind": "reward_model", "path": str(tmp / "rm")}]}))],
        ("rm",)),
]

RUN_DIR_CASES = [
    Case("generate-not-a-run", lambda tmp, m: ["generate", str(tmp), "--prompt", "hi"], ("{tmp}",)),
    Case("generate-a-file", lambda tmp, m: ["generate", str(_data(tmp, "f.txt", "x")), "--prompt", "hi"], ("f.txt",)),
    Case("generate-missing", lambda tmp, m: ["generate", str(tmp / "nope"), "--prompt", "hi"], ("nope",)),
    Case("generate-broken-final", lambda tmp, m: ["generate", str(
        (tmp / "run" / "final").mkdir(parents=True) or _data(tmp / "run" / "final", "config.json", "{}").parent.parent),
        "--prompt", "hi"], ("final",)),
    Case("chat-not-a-run", lambda tmp, m: ["chat", str(tmp)], ("{tmp}",)),
    Case("preview-bad-data", lambda tmp, m: ["data", "preview", str(_recipe(
        tmp, m["llama"], data=_data(tmp, "bad.jsonl", "{nope\n")))], ("bad.jsonl",)),
]

CASES = DATA_CASES + TEMPLATE_CASES + MODEL_CASES + REWARD_CASES + RUN_DIR_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_message(case: Case, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    args = case.setup(tmp_path, tiny_models)
    result = CliRunner().invoke(app, args)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {type(result.exception).__name__}: {result.exception}\n{output[-2000:]}")
    assert result.exit_code != 0, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    for fragment in case.expect:
        assert fragment.replace("{tmp}", str(tmp_path)) in output, f"{fragment!r} not in:\n{output[-2000:]}"


def test_the_case_table_is_large_and_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 50

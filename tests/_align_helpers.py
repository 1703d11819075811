"""The tiny world of the alignment tests: a chat model, toy preference data, and a trainer spy.

The toy data is separable on purpose: every chosen answer starts with the marker word "Certainly",
no rejected one does, so a reward model can reach accuracy 1.0 and DPO's margin must grow.
`align_model` is a ChatML llama whose tokenizer knows that data and whose weights are large enough
to move in a few steps; the Qwen- and Mistral-shaped cases use conftest's `tiny_models`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from finetune import registry
from finetune.tiny import build_tiny_model, build_tokenizer

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TOPICS = [("a colour", "blue"), ("a fruit", "an apple"), ("a planet", "Mars"), ("an animal", "a fox"),
           ("a metal", "iron"), ("a river", "the Nile"), ("a tree", "an oak"), ("a city", "Paris"),
           ("a number", "seven"), ("a flower", "a rose"), ("a sport", "tennis"), ("a tool", "a hammer")]


def toy_pairs() -> list[dict[str, Any]]:
    """Preference rows: a conversational prompt, a polite correct answer, a curt refusal."""
    return [{"prompt": [{"role": "user", "content": f"Name {thing}."}],
             "chosen": f"Certainly, {answer}.",
             "rejected": "No."} for thing, answer in _TOPICS]


def toy_unpaired() -> list[dict[str, Any]]:
    """KTO rows: each prompt once, alternately with its good and its bad answer."""
    return [{"prompt": row["prompt"], "completion": row["chosen"] if i % 2 == 0 else row["rejected"],
             "label": i % 2 == 0} for i, row in enumerate(toy_pairs())]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_chat_model(out_dir: Path, arch: str = "llama") -> Path:
    """A tiny ChatML llama whose tokenizer was trained on the toy data."""
    corpus = ["system user assistant"] + [m["content"] for r in toy_pairs() for m in r["prompt"]]
    corpus += [r["chosen"] + " " + r["rejected"] for r in toy_pairs()]
    tokenizer = build_tokenizer(corpus, vocab_size=320, chat_template=CHATML,
                                special_tokens=["<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>")
    # initializer_range 0.1: at 0.02 a frozen output layer keeps log-probs too flat to move quickly.
    return build_tiny_model(arch, tokenizer, out_dir, hidden_size=32, num_heads=2, num_kv_heads=1,
                            initializer_range=0.1)


@pytest.fixture(scope="session")
def align_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("align") / "tiny-chat")


@pytest.fixture(scope="session")
def align_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("align-data")
    return {"pairs": write_jsonl(folder / "pairs.jsonl", toy_pairs()),
            "unpaired": write_jsonl(folder / "unpaired.jsonl", toy_unpaired())}


def spy_on_trainer(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[Any]:
    """Make objective `kind` record the trainer it builds; returns the (filled later) list."""
    built: list[Any] = []
    entry = registry.get_objective(kind)
    original: Callable[[Any], Any] = entry.build_trainer

    def build(parts: Any) -> Any:
        trainer = original(parts)
        built.append(trainer)
        return trainer

    monkeypatch.setitem(registry._REGISTRY, kind, replace(entry, build_trainer=build))
    return built


def metric(metrics: list[dict[str, Any]], key: str) -> list[float]:
    return [m[key] for m in metrics if key in m]

"""What the CLI prints around a run and how `ft chat` reads its input: presentation only, kept out
of cli.py so that file stays the list of commands and their arguments."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer


def finished_message(result: Any, spec: Any) -> str:
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    loss = f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; " if losses else ""
    return (
        f"\nDone in {result.manifest['wall_time_s']:.0f}s ({loss}{result.manifest['parameters']['trainable']:,} "
        f"trainable parameters).\nRun saved to {result.run_dir}\n"
        f"  final model:  {result.final_dir}\n  metrics:      {result.run_dir / 'metrics.jsonl'} (plot: loss.png)\n"
        + _try_it(result, spec)
    )


def _try_it(result: Any, spec: Any) -> str:
    from finetune.model_kinds import model_kind
    from finetune.registry import get_objective

    if not model_kind(get_objective(spec.objective.kind).model_head).generates:
        return (f"It is a reward model: final/ loads with AutoModelForSequenceClassification; use it as\n"
                f"  objective.reward_model={result.final_dir} in a ppo or grpo recipe")
    prompt, images = _example_prompt(spec)
    shown = "".join(f" --image {path}" for path in images)
    return (f"Try it:\n  ft generate {result.run_dir} --prompt {json.dumps(prompt)}{shown}\n"
            + ("" if images else f"  ft chat {result.run_dir}"))


def _example_prompt(spec: Any) -> tuple[str, list[str]]:
    """The first user message of the training data (its text and image files), so the suggested
    command shows what was learned."""
    from data_templates.formats import FORMATS, RowError
    from data_templates.prepare import map_columns
    from data_templates.sources import DataSourceError, read_rows

    first = spec.data.train[0]
    try:
        origin, row = next(read_rows(first))
        example = FORMATS[first.format].convert(map_columns(row, first.columns))
    except (StopIteration, RowError, DataSourceError):
        return "...", []
    prompt = example.get("prompt")
    users = [m["content"] for m in example.get("messages", prompt if isinstance(prompt, list) else [])
             if m["role"] == "user"]
    if users and isinstance(users[0], list):  # text and image parts (vision_messages)
        from data_templates.vision import resolve_image

        return ("".join(p["text"] for p in users[0] if p["type"] == "text") or "...",
                [resolve_image(p["image"], origin.source) for p in users[0] if p["type"] == "image"])
    return users[0] if users else prompt if isinstance(prompt, str) else "...", []


def chat_loop(answer: Callable[[list[dict[str, str]]], str], system: str | None) -> None:
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    typer.echo("Type a message; /reset clears the history, /exit quits.")
    for line in _input_lines():
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(start)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        reply = answer(history)
        history.append({"role": "assistant", "content": reply})
        typer.echo(f"ft> {reply}")


def _input_lines() -> Iterator[str]:
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:  # Ctrl-D ends the chat like /exit
            typer.echo()
            return

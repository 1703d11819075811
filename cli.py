"""The `ft` command. It parses arguments and calls library functions; torch, transformers and
trl are imported inside the commands that need them, so `ft --help` answers at once."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="ft",
    help="Fine-tune and align LLMs from one YAML recipe. Start with: ft run recipes/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect a recipe's data exactly as the trainer will see it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file (or the name of a shipped recipe).")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Overrides as dotted KEY=VALUE, e.g. training.max_steps=20 output_dir=/tmp/run.",
                   show_default=False),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Known user errors print their message (no traceback) and exit 2."""
    from finetune.errors import USER_ERRORS

    try:
        yield
    except USER_ERRORS as err:
        _fail(f"error: {err}" if not _is_recipe_error(err) else str(err))


def _is_recipe_error(err: Exception) -> bool:
    from finetune.recipe.errors import RecipeError

    return isinstance(err, RecipeError)


def _resolve_recipe(path: Path) -> Path:
    if path.exists() or path.suffix:
        return path
    shipped = RECIPES_DIR / f"{path}.yaml"
    return shipped if shipped.exists() else path


def _load(recipe: Path, overrides: list[str] | None) -> Any:
    from finetune.recipe.loader import load_recipe

    return load_recipe(_resolve_recipe(recipe), overrides or [])


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    nproc: Annotated[int | None, typer.Option(help="Processes to launch (default: training.nproc).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in output_dir.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in output_dir.")] = False,
) -> None:
    """Validate RECIPE, train, and write the run directory."""
    with _user_errors():
        spec = _load(recipe, overrides)
        from finetune.launch import in_distributed_child, launch

        processes = nproc or spec.training.nproc
        if processes > 1 and not in_distributed_child():
            from finetune.outputs import prepare_output_dir

            prepare_output_dir(Path(spec.output_dir).expanduser().resolve(), overwrite=overwrite, resume=resume)
            args = ["run", str(_resolve_recipe(recipe)), *(overrides or [])] + (["--resume"] if resume else [])
            raise typer.Exit(launch(processes, args))
        from finetune.pipeline import run as run_pipeline

        result = run_pipeline(spec, overwrite=overwrite, resume=resume, log=typer.echo)
        from finetune.pipeline import is_main_process

        if is_main_process():
            typer.echo(_finished_message(result, spec))


def _finished_message(result: Any, spec: Any) -> str:
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    loss = f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; " if losses else ""
    return (
        f"\nDone in {result.manifest['wall_time_s']:.0f}s ({loss}{result.manifest['parameters']['trainable']:,} "
        f"trainable parameters).\nRun saved to {result.run_dir}\n"
        f"  final model:  {result.final_dir}\n  metrics:      {result.run_dir / 'metrics.jsonl'} (plot: loss.png)\n"
        f"Try it:\n  ft generate {result.run_dir} --prompt \"...\"\n  ft chat {result.run_dir}"
    )


@app.command()
def validate(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    print_: Annotated[bool, typer.Option("--print", help="Print the fully resolved recipe.")] = False,
) -> None:
    """Check RECIPE without loading a model; exit 0 when valid, 2 otherwise."""
    with _user_errors():
        spec = _load(recipe, overrides)
        from finetune.registry import get_objective
        from finetune.run_parts import check_extra

        problems = check_extra(get_objective(spec.objective.kind).config_class, spec.training)
        if problems:
            _fail("\n".join(f"{recipe}  {p}" for p in problems))
        if print_:
            from finetune.recipe.loader import dump_recipe

            typer.echo(dump_recipe(spec))
        else:
            typer.echo(f"{recipe}: ok ({spec.objective.kind}, adapter {spec.adapter.kind}, model {spec.model.name_or_path})")


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its final/).")],
    prompt: Annotated[str, typer.Option(help="The user message.")],
    system: Annotated[str | None, typer.Option(help="An optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum tokens to generate.")] = 128,
) -> None:
    """Print the trained model's greedy answer to one prompt (chat template applied)."""
    with _user_errors():
        from finetune.generate import generate as gen
        from finetune.generate import load_for_generation

        model, tokenizer = load_for_generation(run_dir)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        typer.echo(gen(model, tokenizer, messages, max_new_tokens))


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its final/).")],
    system: Annotated[str | None, typer.Option(help="An optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum tokens per answer.")] = 256,
) -> None:
    """Chat with a trained model. /reset clears the history, /exit (or Ctrl-D) quits."""
    with _user_errors():
        from finetune.generate import generate as gen
        from finetune.generate import load_for_generation

        model, tokenizer = load_for_generation(run_dir)
        _chat_loop(lambda msgs: gen(model, tokenizer, msgs, max_new_tokens), system)


def _chat_loop(answer: Callable[[list[dict[str, str]]], str], system: str | None) -> None:
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


@app.command("recipes")
def list_recipes() -> None:
    """List the shipped recipes with a one-line description each."""
    import yaml

    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        typer.echo(f"{path.stem:<18} {description}")


@app.command()
def schema() -> None:
    """Print the recipe's JSON schema (for editor completion)."""
    from finetune.recipe.loader import recipe_model

    typer.echo(json.dumps(recipe_model().model_json_schema(), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The `ft` command. It parses arguments and calls library functions; torch, transformers and
trl are imported inside the commands that need them, so `ft --help` answers at once."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
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
    """User errors (every `FtError`) print their message, no traceback, and exit with its code."""
    from finetune.errors import FtError

    try:
        yield
    except FtError as err:
        _fail(f"error: {err}" if not _is_recipe_error(err) else str(err), err.exit_code)


def _is_recipe_error(err: Exception) -> bool:
    from finetune.recipe.errors import RecipeError

    return isinstance(err, RecipeError)


def _resolve_recipe(path: Path) -> Path:
    if path.exists() or path.suffix:
        return path
    shipped = RECIPES_DIR / f"{path}.yaml"
    return shipped if shipped.exists() else path


def _stage_or_recipe(recipe: Path, overrides: list[str] | None, stage: str | None) -> Any:
    """The recipe in RECIPE, or for a pipeline the recipe of stage `stage`."""
    from finetune.errors import ConfigError
    from finetune.stages import Pipeline, load

    spec = load(_resolve_recipe(recipe), overrides or [])
    if not isinstance(spec, Pipeline):
        if stage is not None:
            raise ConfigError(f"--stage {stage}: {recipe} is a single recipe, not a pipeline")
        return spec
    names = [s.name for s in spec.stages]
    if stage not in names:
        raise ConfigError(f"{recipe} is a pipeline: choose a stage with --stage ({', '.join(names)})")
    chosen = spec.stages[names.index(stage)]
    earlier = {str(s.run_dir / "final"): s.name for s in spec.stages}
    source = earlier.get(chosen.recipe.model.name_or_path)
    if source is not None and not Path(chosen.recipe.model.name_or_path).exists():
        raise ConfigError(f"stage {stage} starts from stage {source}'s output, which does not exist yet (its "
                          f"tokenizer decides the tokens): run the pipeline first, or preview with another "
                          f"model: stages.{stage}.model.name_or_path=PATH")
    return chosen.recipe


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    nproc: Annotated[int | None, typer.Option(help="Processes to launch (default: training.nproc).")] = None,
    nnodes: Annotated[int | None, typer.Option(help="Multi-node: machines taking part (training.nnodes).")] = None,
    node_rank: Annotated[int | None, typer.Option(help="Multi-node: this machine's rank, 0 is the master.")] = None,
    master_addr: Annotated[str | None, typer.Option(help="Multi-node: address of node 0.")] = None,
    master_port: Annotated[int | None, typer.Option(help="Multi-node: rendezvous port on node 0.")] = None,
    rdzv_timeout: Annotated[int | None, typer.Option(help="Multi-node: seconds to wait for every node.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in output_dir.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in output_dir.")] = False,
    rerun: Annotated[list[str] | None, typer.Option(
        help="Pipelines: run this finished stage again (repeatable; 'all' for every stage).")] = None,
) -> None:
    """Validate RECIPE (a recipe or a pipeline of stages), train, and write the run directory."""
    with _user_errors():
        from finetune.launch import (
            flag_overrides,
            in_distributed_child,
            launch,
            refuse_before_launch,
        )
        from finetune.preflight import check_arguments, check_run_start
        from finetune.stages import Pipeline, load

        check_arguments(overwrite=overwrite, resume=resume, nproc=nproc)

        overrides = [*(overrides or []), *flag_overrides(nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                                                         master_addr=master_addr, master_port=master_port,
                                                         rdzv_timeout=rdzv_timeout)]
        spec = load(_resolve_recipe(recipe), overrides)
        recipes = [s.recipe for s in spec.stages] if isinstance(spec, Pipeline) else [spec]
        check_run_start(spec, recipes, _resolve_recipe(recipe), overwrite=overwrite)
        processes = max(r.training.nproc for r in recipes)
        if (processes > 1 or recipes[0].training.nnodes > 1) and not in_distributed_child():
            refuse_before_launch(recipes)
            raise typer.Exit(launch(processes, _child_args(recipe, overrides, spec, overwrite, resume, rerun,
                                                           processes), recipes[0].training))
        from finetune.api import run as run_api
        from finetune.cli_text import finished_message
        from finetune.outputs import is_main_process

        results = run_api(spec, overwrite=overwrite, resume=resume, rerun=rerun or [], log=typer.echo)
        if isinstance(spec, Pipeline):
            done = [(stage, result) for stage, result in zip(spec.stages, results) if result is not None]
        else:
            done = [(None, results)]
        if is_main_process():
            for stage, result in done:
                typer.echo(finished_message(result, stage.recipe if stage else spec))


def _child_args(recipe: Path, overrides: list[str] | None, spec: Any, overwrite: bool, resume: bool,
                rerun: list[str] | None, processes: int) -> list[str]:
    """The `ft run` arguments for launched processes; the parent checks the output directory (and a
    resume's checkpoint) first, so a refusal is one message, not one per process."""
    from finetune.outputs import prepare_output_dir
    from finetune.stages import Pipeline

    if isinstance(spec, Pipeline):
        if overwrite:
            from finetune.outputs import replace_dir

            replace_dir(spec.output_dir, (_resolve_recipe(recipe),))
        return ["run", str(_resolve_recipe(recipe)), *(overrides or []), *[f"--rerun={r}" for r in rerun or []]]
    run_dir = Path(spec.output_dir).expanduser().resolve()
    if spec.training.node_rank == 0:  # other nodes share node 0's output directory; it alone prepares it
        prepare_output_dir(run_dir, overwrite=overwrite, resume=resume, protect=(_resolve_recipe(recipe),))
        if resume:
            from finetune.pipeline import resume_checkpoint

            resume_checkpoint(run_dir, spec, world_size=processes)
    return ["run", str(_resolve_recipe(recipe)), *(overrides or [])] + (["--resume"] if resume else [])


@app.command("launch-script")
def launch_script(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    slurm: Annotated[bool, typer.Option(help="Write a Slurm sbatch script (the only scheduler supported).")] = False,
    nodes: Annotated[int, typer.Option(help="Nodes to run on.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(help="Processes (GPUs) per node.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the script here (default: print it).")] = None,
) -> None:
    """Write a cluster job script that runs RECIPE on several nodes (one launcher per node)."""
    with _user_errors():
        from finetune.errors import ConfigError
        from finetune.slurm import write_sbatch_script

        if not slurm:
            raise ConfigError("launch-script: say which scheduler: --slurm")
        text = write_sbatch_script(_resolve_recipe(recipe), nodes, gpus_per_node, overrides or [], out)
        typer.echo(f"Wrote {out}; submit it with: sbatch {out}" if out else text, nl=out is not None)


@app.command()
def smoke(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per stage.")] = 3,
    rows: Annotated[int, typer.Option(min=1, help="Rows read from every dataset.")] = 32,
    junit: Annotated[Path | None, typer.Option(help="Also write a JUnit XML report here (for CI).")] = None,
    prefetch: Annotated[bool, typer.Option(help="Only download the models' config and tokenizer files (never "
                                           "weights) into the Hugging Face cache, for offline smoke runs.")] = False,
    work_dir: Annotated[Path | None, typer.Option(help="Where the shrunk models and runs go (default: a temp dir).")
                        ] = None,
) -> None:
    """Run RECIPE (or every stage of a pipeline) shrunk to a tiny random model of the same architecture,
    with its real tokenizer, data and masks, on a few rows for a few steps; print a pass/fail line per
    check. Exit 0 when every check passes, 1 when one fails, 2 for an invalid recipe."""
    with _user_errors():
        from finetune.api import smoke as run_smoke
        from finetune.smoke.runner import prefetch_recipe

        if prefetch:
            for line in prefetch_recipe(_resolve_recipe(recipe), overrides or []):
                typer.echo(f"cached {line}")
            return
        report = run_smoke(_resolve_recipe(recipe), overrides or [], steps=steps, rows=rows, work_dir=work_dir)
        typer.echo(report.render())
        if junit is not None:
            report.write_junit(junit)
        raise typer.Exit(report.exit_code)


@app.command()
def validate(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    print_: Annotated[bool, typer.Option("--print", help="Print the fully resolved recipe.")] = False,
) -> None:
    """Check RECIPE (or a pipeline's every stage) without loading a model; exit 0 when valid, 2 otherwise."""
    with _user_errors():
        from finetune.recipe.loader import dump_recipe
        from finetune.registry import get_objective
        from finetune.run_parts import check_extra
        from finetune.stages import Pipeline, load

        spec = load(_resolve_recipe(recipe), overrides or [])
        named = [(s.name, s.recipe) for s in spec.stages] if isinstance(spec, Pipeline) else [(None, spec)]
        problems = [f"{recipe}  {'stages.' + name + '.' if name else ''}{problem}"
                    for name, r in named for problem in check_extra(get_objective(r.objective.kind).config_class,
                                                                    r.training)]
        if problems:
            _fail("\n".join(problems))
        for name, r in named:
            if print_:
                typer.echo(f"# stage {name}\n{dump_recipe(r)}" if name else dump_recipe(r))
            else:
                where = f"stage {name}: " if name else ""
                typer.echo(f"{recipe}: {where}ok ({r.objective.kind}, adapter {r.adapter.kind}, "
                           f"model {r.model.name_or_path})")


@app.command()
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    gpu_memory: Annotated[str | None, typer.Option("--gpu-memory", help="Memory per GPU: 24GiB, 80GB, 24 (GiB).")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the run shards over.")] = 1,
    strategy: Annotated[str | None, typer.Option("--strategy", help="ddp, fsdp, zero2, zero3 (default: the recipe's).")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="For a pipeline: the stage to plan.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Estimate parameters and memory per GPU of RECIPE from the model's config.json (no weights, no torch)."""
    with _user_errors():
        from finetune.plan_report import as_json as to_json
        from finetune.plan_report import as_table
        from finetune.plan_report import plan as make_plan

        result = make_plan(_stage_or_recipe(recipe, overrides, stage), gpu_memory, gpus, strategy)
        typer.echo(json.dumps(to_json(result), indent=2) if as_json else as_table(result))


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its final/).")],
    prompt: Annotated[str, typer.Option(help="The user message.")],
    system: Annotated[str | None, typer.Option(help="An optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum tokens to generate.")] = 128,
    image: Annotated[list[Path] | None, typer.Option(help="An image file shown before the prompt (vision-language "
                                                      "runs); repeat for several.")] = None,
) -> None:
    """Print the trained model's greedy answer to one prompt (chat template applied)."""
    with _user_errors():
        from finetune.api import generate as generate_api

        typer.echo(generate_api(run_dir, prompt, system=system, max_new_tokens=max_new_tokens, images=image or []))


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or a pipeline stage's).")],
    to: Annotated[str, typer.Option("--to", help="merged, vllm, lmdeploy, gguf, ollama or hub.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN_DIR/export/TARGET).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float16, bfloat16 or float32 (default: the training dtype).")] = None,
    type_: Annotated[str, typer.Option("--type", help="GGUF type: f32, f16, bf16, q8_0, ...")] = "f16",
    name: Annotated[str | None, typer.Option(help="Served model name; for --to hub the repository OWNER/NAME.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in the output folder.")] = False,
    adapter_only: Annotated[bool, typer.Option(help="hub: push the adapter, not the merged model.")] = False,
    dry_run: Annotated[bool, typer.Option(help="hub: write the folder and card locally, push nothing.")] = False,
) -> None:
    """Export a run for a serving stack and print the command that serves it."""
    with _user_errors():
        from finetune.export import export

        result = export(run_dir, to, out=out, dtype=dtype, type=type_, name=name, overwrite=overwrite,
                        adapter_only=adapter_only, dry_run=dry_run)
        typer.echo(f"exported {to} to {result.out}\nrun it with:\n  {result.command}")


@app.command("eval")
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    data: Annotated[Path | None, typer.Option(help="Data file (default: the recipe's validation data).")] = None,
    format_: Annotated[str | None, typer.Option("--format", help="Format of --data (default: guessed).")] = None,
    compare: Annotated[str | None, typer.Option(help="A base model or another run to evaluate side by side.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per greedy answer (generation metrics).")] = 64,
    lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="lm-evaluation-harness tasks, comma-separated.")] = None,
) -> None:
    """Loss, perplexity, generation and preference metrics on held-out data; writes RUN_DIR/eval.json."""
    with _user_errors():
        from finetune.evaluate import evaluate, format_table

        results = evaluate(run_dir, data=data, fmt=format_, compare=compare, max_new_tokens=max_new_tokens,
                           lm_eval=lm_eval)
        typer.echo(json.dumps(results, indent=2, sort_keys=True) if json_ else format_table(results))


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
        from finetune.cli_text import chat_loop

        chat_loop(lambda msgs: gen(model, tokenizer, msgs, max_new_tokens), system)


@app.command("recipes")
def list_recipes() -> None:
    """List the shipped recipes with a one-line description each."""
    import yaml

    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        typer.echo(f"{path.stem:<18} {description}")


@app.command("objectives")
def list_objectives() -> None:
    """List the objectives (objective.kind), the data formats each reads and the model kind it trains."""
    from data_templates.formats import formats_for
    from finetune.registry import objectives

    for kind, spec in objectives().items():
        typer.echo(f"{kind:<10} {spec.description}\n{'':<10} data: {', '.join(formats_for(spec.data_form))}; "
                   f"model: {spec.model_head}")


@app.command()
def schema() -> None:
    """Print the recipe's JSON schema (for editor completion)."""
    from finetune.recipe.loader import recipe_model

    typer.echo(json.dumps(recipe_model().model_json_schema(), indent=2))


@data_app.command("preview")
def data_preview(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="How many training examples to show.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per example, exactly as fed to "
                                          "the trainer (input_ids, labels with -100 where no loss, text); the "
                                          "dataset counts go to stderr.")] = False,
    stage: Annotated[str | None, typer.Option(help="For a pipeline: the stage whose data to show.")] = None,
) -> None:
    """Show the first N training examples as the model sees them (trained tokens highlighted), with
    per-dataset counts and lengths. Loads the tokenizer, not the model."""
    with _user_errors():
        spec = _stage_or_recipe(recipe, overrides, stage)
        from data_templates.preview import build_preview, print_json, print_rich

        preview = build_preview(spec, n)
        if as_json:
            print_json(preview, sys.stdout)
            typer.echo(preview.data.summary(), err=True)
        else:
            print_rich(preview)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

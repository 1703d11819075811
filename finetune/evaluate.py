"""`ft eval RUN_DIR`: how good is the trained model, on held-out data, next to its base if asked.

Per dataset: loss and perplexity with exactly the training masks (through the data layer, with
the run's recipe.yaml), generation metrics on prompt/reference data with the greedy answers saved
for a person to read, and preference accuracy on chosen/rejected pairs (reward accuracy for a
reward model). Results go to RUN_DIR/eval.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from finetune import eval_metrics
from finetune.errors import FtError
from finetune.outputs import write_atomic, write_json


class EvalError(FtError):
    """Nothing to evaluate on, or a run that cannot be evaluated."""


def _recipe(run_dir: Path) -> Any:
    from finetune.recipe.loader import load_recipe

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise EvalError(f"{run_dir}: no recipe.yaml; pass a run directory written by `ft run`")
    return load_recipe(path)


def _specs(recipe: Any, data: Path | None, fmt: str | None) -> list[tuple[str, Any]]:
    """(name, DatasetSpec) to evaluate: --data, else the recipe's validation data."""
    from finetune.recipe.schema import DatasetSpec

    if data is not None:
        return [(data.name, DatasetSpec(path=str(data), format=fmt or _guess_format(data)))]
    specs = [(f"validation[{i}] {Path(s.path).name}", s) for i, s in enumerate(recipe.data.validation)]
    if not specs and recipe.data.validation_fraction <= 0:
        raise EvalError("the recipe has no validation data (data.validation or data.validation_fraction); "
                        "pass --data FILE")
    return specs or [("held-out", None)]


def _guess_format(path: Path) -> str:
    """The format of a jsonl file from its first row's keys (--format overrides)."""
    from data_templates.formats import FORMATS

    try:
        first = json.loads(next(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()))
    except (OSError, StopIteration, json.JSONDecodeError) as err:
        raise EvalError(f"--data {path}: cannot read a first JSON row ({err}); pass --format") from None
    keys = set(first)
    fits = [f for f in FORMATS.values() if set(f.fields) <= keys]
    if not fits:
        raise EvalError(f"--data {path}: no format has the fields {sorted(keys)}; pass --format")
    return max(fits, key=lambda f: len(f.fields)).name  # the most specific format that fits


def _rows(spec: Any, recipe: Any) -> list[dict[str, Any]]:
    from data_templates.prepare import DatasetStats, canonical_rows

    return [row for _, row in canonical_rows(spec, recipe.data.bad_rows, DatasetStats(spec.path))]


def _tokenized(spec: Any, recipe: Any, tokenizer: Any, form: str) -> Any:
    """The dataset tokenized by the same function and masks as training (held-out rows: the same split)."""
    from data_templates.prepare import load_one, prepare_data

    loss_on = recipe.objective.loss_policy()
    if spec is None:
        return prepare_data(recipe.data, tokenizer, form, loss_on=loss_on, seed=recipe.seed).eval
    return load_one(spec, spec.path, recipe.data, tokenizer, form, loss_on)[0]


def _references(rows: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    """(prompt, reference): prompt_only rows with a reference, or chats ending in an assistant turn."""
    pairs = []
    for row in rows:
        if "reference" in row:
            pairs.append((row["prompt"], row["reference"]))
        elif row.get("messages") and row["messages"][-1]["role"] == "assistant":
            pairs.append((row["messages"][:-1], row["messages"][-1]["content"]))
    return pairs


def _held_out_rows(recipe: Any, tokenizer: Any, form: str) -> list[dict[str, Any]]:
    """The rows `validation_fraction` held out, canonical (forms ft does not tokenize, e.g. preference)."""
    if form in ("sft", "text"):
        return []  # scored from the tokenized split; their canonical rows are not kept
    from data_templates.prepare import prepare_data

    held = prepare_data(recipe.data, tokenizer, form, loss_on=recipe.objective.loss_policy(), seed=recipe.seed).eval
    return [dict(row) for row in held]


def evaluate_model(model: Any, tokenizer: Any, recipe: Any, specs: list[tuple[str, Any]], *, reward: bool,
                   max_new_tokens: int, data_form: str = "sft") -> dict[str, dict[str, Any]]:
    """Every metric that fits each dataset's form; also the greedy outputs under the key `outputs`.
    A spec of None is the recipe's held-out split, in the objective's `data_form`."""
    from data_templates.formats import FORMATS

    results: dict[str, dict[str, Any]] = {}
    for name, spec in specs:
        form = FORMATS[spec.format].form if spec is not None else data_form
        rows = _rows(spec, recipe) if spec is not None else _held_out_rows(recipe, tokenizer, form)
        metrics: dict[str, Any] = {}
        if form == "preference":
            scorer = eval_metrics.reward_metrics if reward else eval_metrics.preference_metrics
            metrics.update(scorer(model, tokenizer, rows))
        elif form in ("sft", "text"):
            metrics.update(eval_metrics.loss_metrics(model, _tokenized(spec, recipe, tokenizer, form)))
        pairs = _references(rows) if not reward else []
        if pairs:
            generated, outputs = eval_metrics.generation_metrics(model, tokenizer, pairs, max_new_tokens)
            metrics.update(generated, outputs=outputs)
        if not metrics:
            raise EvalError(f"{name}: format {spec.format if spec else form} has nothing to evaluate "
                            f"(prompt_only rows need a `reference`)")
        results[name] = metrics
    return results


def _load(path: str | Path, reward: bool) -> tuple[Any, Any]:
    from finetune.generate import load_for_generation
    from finetune.models import load_trained

    if reward:
        return load_trained(path, kind="sequence_classification", num_labels=1)
    return load_for_generation(path)


def evaluate(run_dir: str | Path, *, data: Path | None = None, fmt: str | None = None, compare: str | None = None,
             max_new_tokens: int = 64, lm_eval: str | None = None) -> dict[str, Any]:
    """Evaluate the run (and `compare`, on the same data and masks); write RUN_DIR/eval.json."""
    from finetune.registry import get_objective

    run_dir = Path(run_dir).expanduser().resolve()
    recipe = _recipe(run_dir)
    objective = get_objective(recipe.objective.kind)
    reward = objective.model_head == "sequence_classification"
    specs = _specs(recipe, data, fmt)
    model, tokenizer = _load(run_dir, reward)
    results: dict[str, Any] = {"run": str(run_dir), "objective": recipe.objective.kind,
                               "datasets": evaluate_model(model, tokenizer, recipe, specs, reward=reward,
                                                          max_new_tokens=max_new_tokens,
                                                          data_form=objective.data_form)}
    if compare:
        other, other_tok = _load(compare, reward)
        # The same token ids and masks when the other model can read them (a base under the run's template).
        if other.get_input_embeddings().weight.shape[0] >= len(tokenizer):
            other_tok = tokenizer
        results["compare"] = {"model": compare, "datasets": evaluate_model(
            other, other_tok, recipe, specs, reward=reward, max_new_tokens=max_new_tokens,
            data_form=objective.data_form)}
    if lm_eval:
        from finetune.lm_eval_tasks import run_lm_eval

        results["lm_eval"] = run_lm_eval(run_dir, lm_eval)
    _save_outputs(run_dir, results)
    write_json(run_dir / "eval.json", results)
    return results


def _save_outputs(run_dir: Path, results: dict[str, Any]) -> None:
    """Greedy outputs to RUN_DIR/eval_outputs/<dataset>.jsonl (compare: <dataset>.compare.jsonl)."""
    sections = [("", results["datasets"]), (".compare", results.get("compare", {}).get("datasets", {}))]
    for suffix, datasets in sections:
        for name, metrics in datasets.items():
            outputs = metrics.pop("outputs", None)
            if outputs:
                path = run_dir / "eval_outputs" / f"{_slug(name)}{suffix}.jsonl"
                write_atomic(path, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs))
                metrics["outputs_file"] = str(path)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


_SHOWN = ("loss", "perplexity", "tokens", "exact_match", "token_f1", "mean_length", "preference_accuracy",
          "reward_accuracy", "mean_margin")


def format_table(results: dict[str, Any]) -> str:
    """One row per dataset and metric: the run's value, and the compared model's beside it."""
    other = results.get("compare", {}).get("datasets", {})
    head = f"{'dataset':<32} {'metric':<20} {'run':>12}" + (f" {'compare':>12}" if other else "")
    lines = [head, "-" * len(head)]
    for name, metrics in results["datasets"].items():
        for key in (k for k in _SHOWN if k in metrics):
            row = f"{name[:32]:<32} {key:<20} {_fmt(metrics[key]):>12}"
            if other:
                row += f" {_fmt(other.get(name, {}).get(key)):>12}"
            lines.append(row)
    lines.append(f"\nwritten to {results['run']}/eval.json")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)

"""ft eval: loss and perplexity against a hand computation, generation and preference metrics, compare, lm-eval."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from finetune.eval_metrics import token_f1
from finetune.evaluate import EvalError, evaluate
from tests._runs import CHAT_DATA, train, write_recipe

ROWS = [json.loads(line) for line in CHAT_DATA.read_text().splitlines()[:2]]


@pytest.fixture(scope="module")
def run_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-run")
    return train(write_recipe(root, tiny_models["llama"]), "training.max_steps=4",
                 "data.validation_fraction=0.3")[0].run_dir


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_perplexity_equals_exp_of_the_mean_token_loss_by_hand(run_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_templates.masking import tokenize_conversation

    data = _jsonl(tmp_path / "two.jsonl", ROWS)
    out = CliRunner().invoke(app, ["eval", str(run_dir), "--data", str(data), "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)["datasets"]["two.jsonl"]
    # By hand: the adapter on its base, transformers' own loss per example, weighted by trained tokens.
    config = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run_dir / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    total, tokens = 0.0, 0
    for row in ROWS:
        example = tokenize_conversation(tokenizer, row["messages"], "assistant")
        labels = torch.tensor([example["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([example["input_ids"]]), labels=labels).loss.item()
        total, tokens = total + loss * n, tokens + n
    assert got["tokens"] == tokens and got["examples"] == 2
    assert got["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["datasets"]["two.jsonl"]["loss"] == got["loss"]
    # The chats' last assistant turns are references: greedy outputs are saved for a person to read.
    outputs = [json.loads(x) for x in Path(got["outputs_file"]).read_text().splitlines()]
    assert len(outputs) == 2 and outputs[0]["reference"] == ROWS[0]["messages"][-1]["content"]
    assert got["exact_match"] == sum(o["exact_match"] for o in outputs) / 2
    assert got["token_f1"] == pytest.approx(sum(o["token_f1"] for o in outputs) / 2)


def test_default_is_the_recipes_validation_data_and_compare_uses_the_same_masks(run_dir: Path,
                                                                              tiny_models: dict[str, Path]) -> None:
    results = evaluate(run_dir, compare=str(tiny_models["llama"]), max_new_tokens=4)
    run, base = results["datasets"]["held-out"], results["compare"]["datasets"]["held-out"]
    assert run["examples"] == 3 and run["tokens"] == base["tokens"] > 0
    assert run["loss"] != base["loss"]
    assert run["loss"] < base["loss"]  # 4 steps at lr 1e-2 on the same conversations lower the loss


def test_token_f1_and_generation_on_prompt_only_references(run_dir: Path, tmp_path: Path) -> None:
    assert token_f1("The cat sat", "the cat") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("dog", "cat") == 0.0
    data = _jsonl(tmp_path / "ref.jsonl", [{"prompt": "What is ft?", "reference": "A toolkit."}])
    got = evaluate(run_dir, data=data, max_new_tokens=4)["datasets"]["ref.jsonl"]
    assert set(got) >= {"exact_match", "token_f1", "mean_length", "generated"} and "loss" not in got
    assert 0 < got["mean_length"] <= 4 and got["generated"] == 1


def test_preference_accuracy_counts_pairs_the_model_prefers(run_dir: Path, tmp_path: Path) -> None:
    a, b = "Fine-tuning adapts a pretrained model.", "Purple elephants sing loudly."
    data = _jsonl(tmp_path / "pref.jsonl", [{"prompt": "What is fine-tuning?", "chosen": a, "rejected": b},
                                            {"prompt": "What is fine-tuning?", "chosen": b, "rejected": a}])
    got = evaluate(run_dir, data=data, fmt="preference")["datasets"]["pref.jsonl"]
    assert got["preference_accuracy"] == 0.5 and got["mean_margin"] == pytest.approx(0.0, abs=1e-4)
    assert got["tokens"] > 0 and got["examples"] == 2


def test_eval_of_something_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no recipe.yaml"):
        evaluate(tmp_path)
    out = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert out.exit_code == 2 and "no recipe.yaml" in out.output


@pytest.mark.slow
def test_lm_eval_runs_a_local_task_on_the_merged_model(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    data = _jsonl(tmp_path / "mc.jsonl", [{"question": "What is ft?", "choices": ["A toolkit.", "A fish."], "label": 0},
                                          {"question": "What does packing do?", "choices": ["Sings.", "Joins examples."],
                                           "label": 1}])
    task = tmp_path / "ft_tiny.yaml"
    task.write_text(textwrap.dedent(f"""
        task: ft_tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        metric_list:
          - metric: acc
        """))
    results = evaluate(run_dir, data=_jsonl(tmp_path / "two.jsonl", ROWS), lm_eval=str(task), max_new_tokens=2)
    acc = results["lm_eval"]["ft_tiny_mc"]["acc,none"]
    assert acc in (0.0, 0.5, 1.0)
    assert json.loads((run_dir / "eval.json").read_text())["lm_eval"]["ft_tiny_mc"]["acc,none"] == acc


@pytest.mark.slow
def test_reward_and_dpo_runs_report_preference_accuracy(align_model: Path, align_data: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from tests._align_helpers import toy_pairs
    from tests.test_align_reward import FAST, scores

    (tmp_path / "reward").mkdir()
    reward = train(write_recipe(tmp_path / "reward", align_model, data=align_data["pairs"], fmt="preference",
                                objective="reward"), *FAST)[0]
    got = evaluate(reward.run_dir, data=align_data["pairs"])["datasets"]["pairs.jsonl"]
    chosen, rejected = scores(reward.final_dir, toy_pairs())
    assert got["reward_accuracy"] == float((chosen > rejected).float().mean()) and got["examples"] == 12
    (tmp_path / "dpo").mkdir()
    dpo = train(write_recipe(tmp_path / "dpo", align_model, data=align_data["pairs"], fmt="preference",
                             objective="dpo"), *FAST)[0]
    held = evaluate(dpo.run_dir)["datasets"]["held-out"]  # the recipe's validation_fraction rows
    assert held["examples"] == 3 and 0 <= held["preference_accuracy"] <= 1 and held["tokens"] > 0

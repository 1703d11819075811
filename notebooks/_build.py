"""Writes the notebooks from these cell lists (edit here, then `python notebooks/_build.py`), so
their code stays reviewable as plain Python. Cells tagged `parameters` are what the test suite
(tests/test_notebooks.py) and papermill override."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO = "OWNER/REPO"  # placeholder: the GitHub owner/name this repository is published under

INSTALL = f'''# Install ft (skipped when it is already importable, e.g. in the test suite).
import importlib.util, subprocess, sys
if importlib.util.find_spec("finetune") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "ft-toolkit @ git+https://github.com/{REPO}"])'''

CHAT_DATA = '''# A handful of conversations, written to a file the recipe reads (use your own dataset here).
import json, pathlib
rows = [
    {"messages": [{"role": "user", "content": "What is ft?"},
                  {"role": "assistant", "content": "ft fine-tunes language models from one YAML recipe."}]},
    {"messages": [{"role": "user", "content": "How do I start a run?"},
                  {"role": "assistant", "content": "Write a recipe, then call run(recipe)."}]},
    {"messages": [{"role": "user", "content": "Does ft need a GPU?"},
                  {"role": "assistant", "content": "No: small runs work on a CPU; a GPU is faster."}]},
    {"messages": [{"role": "user", "content": "Where do results go?"},
                  {"role": "assistant", "content": "Into the run directory: final/, metrics and a loss plot."}]},
] * 4
pathlib.Path(OUTPUT).mkdir(parents=True, exist_ok=True)
chat_file = pathlib.Path(OUTPUT) / "chat.jsonl"
chat_file.write_text("\\n".join(json.dumps(r) for r in rows))
len(rows)'''


def badge(name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb)")


def params(**values: object) -> nbformat.NotebookNode:
    cell = new_code_cell("# Parameters (the test suite replaces this cell with a tiny offline model on CPU).\n"
                         + "\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.metadata["tags"] = ["parameters"]
    return cell


QUICKSTART = [
    new_markdown_cell(f"# ft quickstart: LoRA fine-tune, then chat\n{badge('quickstart')}\n\n"
                      "Runs on Colab's free T4 GPU (Runtime > Change runtime type > T4). Times below are "
                      "**estimates** for a T4 with Qwen2.5-0.5B-Instruct, not measurements: install ~1-2 min, "
                      "model download ~30 s, 60 LoRA steps ~1-2 min, chat a few seconds."),
    new_code_cell(INSTALL),
    params(MODEL="Qwen/Qwen2.5-0.5B-Instruct", MAX_STEPS=60, OUTPUT="runs/nb-quickstart"),
    new_code_cell(CHAT_DATA),
    new_markdown_cell("## The recipe, built in a cell (the same keys and checks as a YAML file)"),
    new_code_cell('''from finetune import Recipe, run, generate
recipe = Recipe.from_dict({
    "model": {"name_or_path": MODEL},
    "adapter": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
    "data": {"train": [{"path": str(chat_file), "format": "messages"}], "max_length": 256},
    "objective": {"kind": "sft"},
    "training": {"max_steps": MAX_STEPS, "batch_size": 4, "learning_rate": 2e-3, "logging_steps": 1},
    "output_dir": OUTPUT + "/sft",
})
recipe.objective.kind'''),
    new_markdown_cell("## Train (a progress bar shows in the notebook; ~1-2 min on a T4, estimate)"),
    new_code_cell('''result = run(recipe, overwrite=True)
losses = [m["loss"] for m in result.metrics if "loss" in m]
assert losses and all(l == l for l in losses), losses  # logged, and finite
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; final model in {result.final_dir}")'''),
    new_code_cell("result.plot()"),
    new_markdown_cell("## Chat with the result"),
    new_code_cell('''answer = generate(result.run_dir, "What is ft?", max_new_tokens=32)
assert isinstance(answer, str)
print(answer)'''),
]

ALIGNMENT = [
    new_markdown_cell(f"# Alignment: SFT, then DPO from the SFT model\n{badge('alignment')}\n\n"
                      "A pipeline of two stages in one recipe: the DPO stage starts from the SFT stage's output. "
                      "On a Colab T4 with Qwen2.5-0.5B-Instruct (**estimates**, not measured): install ~1-2 min, "
                      "SFT 60 steps ~1-2 min, DPO 60 steps ~2-4 min."),
    new_code_cell(INSTALL),
    params(MODEL="Qwen/Qwen2.5-0.5B-Instruct", MAX_STEPS=60, OUTPUT="runs/nb-alignment"),
    new_code_cell(CHAT_DATA),
    new_code_cell('''# Preference pairs: the same prompts, a preferred and a rejected answer.
pairs = [{"prompt": r["messages"][0]["content"], "chosen": r["messages"][1]["content"], "rejected": "I don't know."}
         for r in rows]
pref_file = pathlib.Path(OUTPUT) / "pairs.jsonl"
pref_file.write_text("\\n".join(json.dumps(p) for p in pairs))
len(pairs)'''),
    new_code_cell('''from finetune import Recipe, run, generate
training = {"max_steps": MAX_STEPS, "batch_size": 4, "logging_steps": 1}
pipeline = Recipe.from_dict({
    "model": {"name_or_path": MODEL},
    "output_dir": OUTPUT + "/pipeline",
    "stages": {
        "sft": {"data": {"train": [{"path": str(chat_file), "format": "messages"}], "max_length": 256},
                "objective": {"kind": "sft"}, "training": {**training, "learning_rate": 2e-3}},
        "dpo": {"model": {"name_or_path": "${stages.sft.output}"},
                "data": {"train": [{"path": str(pref_file), "format": "preference"}], "max_length": 256},
                "objective": {"kind": "dpo", "beta": 0.1}, "training": {**training, "learning_rate": 5e-5}},
    },
})
[s.name for s in pipeline.stages]'''),
    new_code_cell('''sft_result, dpo_result = run(pipeline, overwrite=True)
assert dpo_result.manifest["objective"] == "dpo"
assert dpo_result.manifest["base_model"] == str(sft_result.final_dir)  # DPO started from the SFT model
dpo_result.plot()'''),
    new_code_cell('''answer = generate(dpo_result.run_dir, "Does ft need a GPU?", max_new_tokens=32)
assert isinstance(answer, str)
print(answer)'''),
]

POST_TRAINING = [
    new_markdown_cell(f"# After training: export (Ollama/GGUF, vLLM) and evaluate\n{badge('post_training')}\n\n"
                      "On a Colab T4 with "
                      "Qwen2.5-0.5B-Instruct (**estimates**): training ~1-2 min, merge + GGUF export ~1-2 min, "
                      "evaluation on 50 prompts ~1 min."),
    new_code_cell(INSTALL),
    params(MODEL="Qwen/Qwen2.5-0.5B-Instruct", MAX_STEPS=60, OUTPUT="runs/nb-post"),
    new_code_cell(CHAT_DATA),
    new_code_cell('''from finetune import Recipe, run
recipe = Recipe.from_dict({
    "model": {"name_or_path": MODEL},
    "data": {"train": [{"path": str(chat_file), "format": "messages"}], "max_length": 256},
    "objective": {"kind": "sft"},
    "training": {"max_steps": MAX_STEPS, "batch_size": 4, "learning_rate": 2e-3, "logging_steps": 1},
    "output_dir": OUTPUT + "/sft",
})
result = run(recipe, overwrite=True)
result.final_dir'''),
    new_code_cell('''from finetune import export
# GGUF for llama.cpp / Ollama (written by ft itself, no llama.cpp build), then the Ollama Modelfile,
# then what vLLM needs; each result holds the folder and the exact command that serves it.
gguf = export(result.run_dir, "gguf", type="q8_0")
ollama = export(result.run_dir, "ollama", name="my-model")
vllm = export(result.run_dir, "vllm", name="my-model")
for done in (gguf, ollama, vllm):
    print(done.target, done.out, "\\n   ", done.command)
assert any(gguf.out.glob("*.gguf")) and (ollama.out / "Modelfile").is_file() and (vllm.out / "serve.sh").is_file()'''),
    new_code_cell('''from finetune import evaluate
# Did fine-tuning help? Loss and perplexity with the training masks, the run against its base model.
scores = evaluate(result.run_dir, data=chat_file, compare=MODEL)
tuned, base = (next(iter(r["datasets"].values())) for r in (scores, scores["compare"]))
print(f"perplexity: base {base['perplexity']:.2f} -> fine-tuned {tuned['perplexity']:.2f}")
assert tuned["loss"] < base["loss"]'''),
]


def main() -> None:
    for name, cells in (("quickstart", QUICKSTART), ("alignment", ALIGNMENT), ("post_training", POST_TRAINING)):
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"},
                                                 "accelerator": "GPU", "colab": {"gpuType": "T4"}})
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()

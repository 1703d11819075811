"""ft's overhead over a plain TRL script, as a ratio, measured in one process.

Both sides train the same model (examples/models/tiny-chat, or --model) with the same LoRA, data,
steps, batch size and learning rate on the same device; the plain side is what a user would write
with TRL alone (SFTTrainer on the messages column). The runs alternate, so drift in the machine's
speed hits both. Reported: the median wall time of each side and their ratio (ft / TRL), for the
whole run (load, data, train, save) and for `trainer.train()` alone.

    python benchmarks/sft_overhead.py --repeats 3 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plain_trl(model_dir: str, data: Path, out: Path, steps: int, batch: int) -> tuple[float, float]:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=str(data), split="train")
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-3,
                     lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to="none",
                     use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True, max_length=256)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    train_time = trainer.train().metrics["train_runtime"]  # the same clock ft's metrics.jsonl reports
    trainer.save_model(str(out / "final"))
    return time.perf_counter() - start, train_time


def ft_run(model_dir: str, data: Path, out: Path, steps: int, batch: int) -> tuple[float, float]:
    from finetune.pipeline import run
    from finetune.recipe.loader import load_recipe

    start = time.perf_counter()
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"model.name_or_path={model_dir}", f"data.train.0.path={data}", f"output_dir={out}",
        f"training.max_steps={steps}", f"training.batch_size={batch}", "training.learning_rate=2e-3",
        "training.progress_bar=false", "training.precision=fp32", "data.cache=false"])
    result = run(recipe, log=lambda *_: None)
    train_time = next(m["train_runtime"] for m in result.metrics if "train_runtime" in m)
    return time.perf_counter() - start, train_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "examples" / "models" / "tiny-chat"))
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data" / "quickstart.jsonl")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    times: dict[str, list[tuple[float, float]]] = {"trl": [], "ft": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, fn in (("trl", plain_trl), ("ft", ft_run))[:: 1 if i % 2 == 0 else -1]:
                times[name].append(fn(args.model, args.data, Path(tmp) / f"{name}{i}", args.steps, args.batch))
    median = {name: tuple(statistics.median(t[k] for t in runs) for k in (0, 1)) for name, runs in times.items()}
    report = {
        "model": args.model, "steps": args.steps, "batch": args.batch, "repeats": args.repeats,
        "trl_s": {"total": median["trl"][0], "train": median["trl"][1]},
        "ft_s": {"total": median["ft"][0], "train": median["ft"][1]},
        "ratio_ft_over_trl": {"total": median["ft"][0] / median["trl"][0],
                              "train": median["ft"][1] / median["trl"][1]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

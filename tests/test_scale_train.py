"""Strategies and multi-node on CPU (torchrun + gloo): 2 processes train the quickstart tiny model to
the per-step losses of one process with the same global batch (4 = 1 x 4 = 2 x 2), and final/ loads
with plain transformers/PEFT. Each run is 2 steps on the tiny model to keep CI time down.

Tolerance: 1e-5 absolute on the logged loss. The processes see the same 4 examples per step as the
single process; the loss is normalised by the global token count in both, so only the order of
floating-point sums differs (measured differences are at most 1e-6)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests._runs import ROOT, write_recipe

pytestmark = pytest.mark.slow
FT = str(Path(sys.executable).with_name("ft"))
TOLERANCE = 1e-5
SHORT = ["training.max_steps=2", "training.save_steps=1000", "data.max_length=64"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _ft_run(recipe: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FT, "run", str(recipe), *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def _train(tmp_path: Path, model: Path, adapter: str, *args: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(tmp_path, model, adapter=adapter)
    # LoRA dropout draws per-process random masks, which no number of processes can reproduce.
    no_dropout = ["adapter.dropout=0"] if adapter == "lora" else []
    proc = _ft_run(recipe, *SHORT, *no_dropout, *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp_path / "run"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lora_baseline(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    run = _train(tmp_path_factory.mktemp("one"), tiny_models["llama"], "lora", "training.batch_size=4")
    return _losses(run)


def _assert_lora_final_loads(run_dir: Path, base: Path) -> None:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run_dir / "final")
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained), "lora_B starts at zero; training moved it"


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_processes_match_one(strategy: str, lora_baseline: list[float], tiny_models: dict[str, Path],
                                 tmp_path: Path) -> None:
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    run = _train(tmp_path, tiny_models["llama"], "lora", "training.batch_size=2", "--nproc", "2",
                 f"training.distributed={strategy}")
    assert len(lora_baseline) == 2
    assert _losses(run) == pytest.approx(lora_baseline, abs=TOLERANCE)
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["strategy"], manifest["world_size"]) == (strategy, 2)
    _assert_lora_final_loads(run, tiny_models["llama"])
    if strategy == "zero2":
        generated = json.loads((run / "deepspeed.json").read_text())
        assert generated["zero_optimization"]["stage"] == 2


def test_zero3_full_weights_match_one_process_and_save_a_plain_model(tiny_models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """Full fine-tuning, so ZeRO-3 really partitions the trained weights; final/ must still be one
    ordinary model.safetensors (gathered on save), equal to the single-process result."""
    pytest.importorskip("deepspeed")
    one = _train(tmp_path / "one", tiny_models["llama"], "none", "training.batch_size=4",
                 "training.learning_rate=1.0e-3")
    three = _train(tmp_path / "zero3", tiny_models["llama"], "none", "training.batch_size=2", "--nproc", "2",
                   "training.distributed=zero3", "training.learning_rate=1.0e-3")
    assert _losses(three) == pytest.approx(_losses(one), abs=TOLERANCE)
    assert (three / "final" / "model.safetensors").is_file()
    a = AutoModelForCausalLM.from_pretrained(one / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(three / "final").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), "ZeRO-3's gathered weights equal one process's"
    assert json.loads((three / "manifest.json").read_text())["strategy"] == "zero3"


def test_two_nodes_of_one_process_match_one_node_of_two(lora_baseline: list[float], tiny_models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    port = _free_port()
    args = [*SHORT, "adapter.dropout=0", "training.batch_size=2", "--nproc", "1", "--nnodes", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(port), "--rdzv-timeout", "120"]
    nodes = [subprocess.Popen([FT, "run", str(recipe), *args, "--node-rank", str(rank)], env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[1][-3000:] for o in outputs)
    run = tmp_path / "run"
    assert _losses(run) == pytest.approx(lora_baseline, abs=TOLERANCE)
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["strategy"], manifest["world_size"]) == ("ddp", 2)
    assert sum(o[0].count("Run saved to") for o in outputs) == 1, "node 0's rank 0 alone writes the run"
    _assert_lora_final_loads(run, tiny_models["llama"])

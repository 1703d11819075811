"""Two processes on CPU (torchrun + gloo): world size 2, each rank trains on its own shard, both
end with identical weights, and only rank 0 writes the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests._runs import CHAT_DATA, ROOT, write_recipe

pytestmark = pytest.mark.slow  # two processes each load torch and train

OVERRIDES = ["training.max_steps=null", "training.epochs=1", "training.batch_size=1", "data.max_length=256"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_two_ranks_see_disjoint_shards_and_end_identical(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    pad = AutoTokenizer.from_pretrained(tiny_models["llama"]).pad_token_id
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_worker.py"), str(recipe), str(tmp_path), str(pad), *OVERRIDES]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [{tuple(s) for s in r["seen"]} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1], "each rank trains on its own shard"
    n_rows = len(CHAT_DATA.read_text().splitlines())
    assert len(seen[0] | seen[1]) == n_rows, "together the ranks cover the data once"
    assert ranks[0]["digest"] == ranks[1]["digest"], "gradients are averaged, so weights stay identical"


def test_ft_run_nproc_2_writes_one_complete_run(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    cmd = [str(Path(sys.executable).with_name("ft")), "run", str(recipe), "--nproc", "2", *OVERRIDES]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    n_rows = len(CHAT_DATA.read_text().splitlines())
    assert steps == list(range(1, n_rows // 2 + 1)), "one line per step: rank 0 alone writes metrics"
    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    assert proc.stdout.count("Run saved to") == 1

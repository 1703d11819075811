"""training.distributed and multi-node, the parts that need no training: generated engine configs,
validate-time refusals, FSDP refused on CPU, rendezvous errors, and the Slurm script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.distributed import deepspeed_config, engine_arguments, fsdp_config, strategy
from finetune.hardware import Hardware
from finetune.models import quantization_config
from finetune.recipe.errors import RecipeError
from finetune.recipe.schema import QLoraAdapter, TrainingSection
from finetune.rendezvous import explain
from finetune.slurm import sbatch_script
from finetune.stages import load
from tests._runs import ROOT, write_recipe

FT = str(Path(sys.executable).with_name("ft"))
DATA = Path(__file__).parent / "data"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _problems(tmp_path: Path, model: Path, *overrides: str, adapter: str = "lora") -> str:
    with pytest.raises(RecipeError) as caught:
        load(write_recipe(tmp_path, model, adapter=adapter), list(overrides))
    return str(caught.value)


def test_zero3_config_gathers_weights_on_save_and_leaves_precision_to_transformers() -> None:
    config = deepspeed_config(TrainingSection(distributed="zero3", nproc=2, offload_optimizer=True,
                                              offload_params=True))
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert config["bf16"] == {"enabled": "auto"} and config["fp16"] == {"enabled": "auto"}
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    zero2 = deepspeed_config(TrainingSection(distributed="zero2", nproc=2))["zero_optimization"]
    assert zero2["stage"] == 2 and "offload_optimizer" not in zero2
    assert "stage3_gather_16bit_weights_on_model_save" not in zero2


def test_fsdp_config_wraps_the_models_decoder_layer(tiny_models: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the config is checked here, not run
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    t = TrainingSection(distributed="fsdp", nproc=2, gradient_checkpointing=True, offload_optimizer=True)
    args = engine_arguments(t, model, tmp_path)
    assert args["fsdp"] is True and args["gradient_checkpointing"] is False
    config = args["fsdp_config"]
    assert config == fsdp_config(t, ["LlamaDecoderLayer"])
    assert (config["version"], config["reshard_after_forward"], config["state_dict_type"]) == (
        2, True, "FULL_STATE_DICT")
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["activation_checkpointing"] is True and config["cpu_offload"] is True
    assert (tmp_path / "fsdp.json").is_file(), "the generated config is kept in the run dir"
    # transformers accepts it as it is (FSDP2 through Accelerate).
    from transformers import TrainingArguments

    monkeypatch.undo()  # TrainingArguments would try to use the pretended GPU

    parsed = TrainingArguments(output_dir=str(tmp_path / "o"), fsdp=True, fsdp_config=config, report_to="none")
    assert parsed.fsdp_config["version"] == 2


def test_fsdp_engine_arguments_refuse_a_cpu_only_process(tiny_models: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started by hand (torchrun ft run ...) cannot slip past the check into silent DDP."""
    from finetune.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="fsdp needs GPUs"):
        engine_arguments(TrainingSection(distributed="fsdp", nproc=2), object(), tmp_path)


def test_strategy_defaults_to_ddp_for_several_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert strategy(TrainingSection()) == "none"
    assert strategy(TrainingSection(nproc=2)) == "ddp"
    assert strategy(TrainingSection(nnodes=2)) == "ddp"


@pytest.mark.parametrize(("overrides", "adapter", "expected"), [
    (["training.distributed=fsdp"], "lora", "training.distributed: fsdp shards the model across processes"),
    (["training.distributed=zero3", "training.nproc=2"], "qlora", "ZeRO-3 cannot partition 4-bit"),
    (["training.distributed=zero2", "training.nproc=2", "training.deepspeed_config=/nowhere/ds.json"], "lora",
     "training.deepspeed_config: file not found"),
    (["training.accelerate_config=/nowhere/acc.yaml"], "lora", "training.accelerate_config: file not found"),
    (["training.nnodes=2", "training.node_rank=2"], "lora", "training.node_rank: must be below nnodes"),
    (["training.distributed=zero2", "training.nproc=2", "training.offload_params=true"], "lora",
     "parameter offload is a ZeRO-3 feature"),
])
def test_validate_refuses_combinations_that_cannot_work(overrides: list[str], adapter: str, expected: str,
                                                        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    assert expected in _problems(tmp_path, tiny_models["llama"], *overrides, adapter=adapter)


def test_qlora_under_fsdp_validates_and_stores_4bit_weights_in_the_compute_dtype(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    load(write_recipe(tmp_path, tiny_models["llama"], adapter="qlora"),
         ["training.distributed=fsdp", "training.nproc=2"])
    hardware = Hardware("cuda", "bf16", "test")
    fsdp = quantization_config(QLoraAdapter(), hardware, for_fsdp=True)
    assert fsdp.bnb_4bit_quant_storage == fsdp.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(QLoraAdapter(), hardware).bnb_4bit_quant_storage == torch.uint8


def test_fsdp_on_cpu_is_refused_before_anything_starts(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Accelerate would silently run DDP; ft stops at the start of `ft run` and says why."""
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    proc = subprocess.run([FT, "run", str(recipe), "--nproc", "2", "training.distributed=fsdp"], env=_env(),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    message = proc.stdout + proc.stderr
    assert "fsdp needs GPUs" in message and "silently train plain DDP" in message and "zero3" in message
    assert "Traceback" not in message
    assert not (tmp_path / "run").exists(), "nothing was started"


def test_unknown_master_address_is_reported_without_a_traceback(tiny_models: dict[str, Path],
                                                                tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    proc = subprocess.run([FT, "run", str(recipe), "--nnodes", "2", "--node-rank", "1", "--master-addr",
                           "no-such-host.invalid"], env=_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert "master address 'no-such-host.invalid' cannot be resolved" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_rendezvous_timeout_is_reported_without_a_traceback(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Node 0 of 2 started alone: after --rdzv-timeout the run stops with what to do."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recipe = write_recipe(tmp_path, tiny_models["llama"])
    proc = subprocess.run([FT, "run", str(recipe), "--nnodes", "2", "--node-rank", "0", "--master-addr",
                           "127.0.0.1", "--master-port", str(port), "--rdzv-timeout", "3"], env=_env(),
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "not every node joined within training.rdzv_timeout (3 s)" in output, output[-3000:]
    assert "Traceback" not in output


def test_rendezvous_causes_are_recognised() -> None:
    t = TrainingSection(nnodes=2, master_addr="10.0.0.1", master_port=1234)
    assert "cannot be reached" in explain("ConnectionRefusedError: Connection refused", t)
    assert "already in use" in explain("RuntimeError: EADDRINUSE: address already in use", t)
    assert explain("ValueError: something else", t) is None


def test_slurm_script_matches_the_recorded_example(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "quickstart.yaml"
    text = sbatch_script(recipe, 2, 4, ["training.distributed=zero3"], script_name="quickstart.sbatch")
    expected = (DATA / "slurm_quickstart.sbatch").read_text().replace("{ROOT}", str(ROOT))
    assert text == expected
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, "valid bash"


def test_launch_script_command_writes_the_script(tmp_path: Path) -> None:
    out = tmp_path / "job.sbatch"
    proc = subprocess.run([FT, "launch-script", str(ROOT / "recipes" / "quickstart.yaml"), "--slurm", "--nodes",
                           "2", "--gpus-per-node", "4", "--out", str(out)], env=_env(), capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--nnodes 2" in out.read_text() and "#SBATCH --nodes=2" in out.read_text()
    assert os.access(out, os.X_OK)


def test_launch_commands_carry_the_node_settings() -> None:
    from finetune.launch import launch_command

    t = TrainingSection(nproc=4, nnodes=2, node_rank=1, master_addr="node0", master_port=1234, rdzv_timeout=5)
    cpu = launch_command(4, ["run", "r.yaml"], False, t)
    assert cpu[cpu.index("--nnodes") + 1] == "2" and cpu[cpu.index("--node-rank") + 1] == "1"
    assert cpu[cpu.index("--master-addr") + 1] == "node0" and cpu[cpu.index("--master-port") + 1] == "1234"
    assert cpu[cpu.index("--rdzv-conf") + 1] == "timeout=5" and "--standalone" not in cpu
    gpu = launch_command(4, ["run", "r.yaml"], True, t)
    assert gpu[gpu.index("--num_processes") + 1] == "8", "accelerate counts processes over all machines"
    assert gpu[gpu.index("--machine_rank") + 1] == "1" and gpu[gpu.index("--main_process_ip") + 1] == "node0"
    assert gpu[-2:] == ["run", "r.yaml"]
    single = launch_command(2, ["run"], False, TrainingSection(nproc=2))
    assert "--standalone" in single

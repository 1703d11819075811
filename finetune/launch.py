"""`ft run --nproc N`: start N training processes, one per GPU (or N on the CPU).

GPUs go through Accelerate's launcher; on CPU, Accelerate's multi-CPU path wants MPI or oneCCL,
so ft uses torchrun with the gloo backend, which needs nothing beyond torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.rendezvous import check_master_address, run_watching_rendezvous

if TYPE_CHECKING:
    from finetune.recipe.schema import RecipeBase, TrainingSection

LAUNCHED_ENV = "FT_LAUNCHED"  # set for the children of `ft run --nproc N`, so they do not launch again


def in_distributed_child() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get(LAUNCHED_ENV) == "1"


def ft_executable() -> str:
    """The installed `ft` entry point of this environment. Children run it, never `python -m cli`,
    which would run whatever `cli.py` happens to sit in the current directory."""
    import shutil

    beside = Path(sys.executable).with_name("ft")
    found = str(beside) if beside.is_file() else shutil.which("ft")
    if found is None:
        from finetune.errors import ConfigError

        raise ConfigError("--nproc: the `ft` command is not installed in this environment "
                          f"({sys.executable}); install ft with pip (`pip install -e .`) to launch processes")
    return found


def launch_command(nproc: int, cli_args: list[str], use_gpu: bool, t: TrainingSection) -> list[str]:
    """The command that reruns `ft <cli_args>` in `nproc` processes on this node (of `t.nnodes`)."""
    ft = ft_executable()
    if use_gpu:
        config = ["--config_file", str(Path(t.accelerate_config).expanduser())] if t.accelerate_config else []
        return [sys.executable, "-m", "accelerate.commands.launch", *config, "--num_processes",
                str(nproc * t.nnodes), "--num_machines", str(t.nnodes), "--machine_rank", str(t.node_rank),
                "--main_process_ip", t.master_addr, "--main_process_port", str(t.master_port),
                "--rdzv_conf", f"timeout={t.rdzv_timeout}", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--no_python", ft, *cli_args]
    where = (["--standalone"] if t.nnodes == 1 else
             ["--nnodes", str(t.nnodes), "--node-rank", str(t.node_rank), "--master-addr", t.master_addr,
              "--master-port", str(t.master_port), "--rdzv-conf", f"timeout={t.rdzv_timeout}"])
    return [sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(nproc),
            "--no-python", ft, *cli_args]


def flag_overrides(**flags: object) -> list[str]:
    """`ft run --nnodes 2 ...` flags as recipe overrides (training.nnodes=2), so the recipe keys and
    the flags are one setting, validated together, and the launched children see the same values."""
    return [f"training.{key}={value}" for key, value in flags.items() if value is not None]


def gpus_for(nproc: int) -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() >= nproc


def refuse_before_launch(recipes: list[RecipeBase]) -> None:
    """Strategy checks that need the machine, before the output directory or any process is touched."""
    from finetune.distributed import refuse_unrunnable

    for recipe in recipes:
        refuse_unrunnable(recipe.training, has_gpu=gpus_for(recipe.training.nproc))


def launch(nproc: int, cli_args: list[str], t: TrainingSection) -> int:
    """Run the children to completion; their exit code is ours. On one node SIGTERM/SIGINT reach the
    workers, which save a checkpoint and stop (finetune.signal_forwarding); rendezvous failures of a
    multi-node run become one clear error instead of the launcher's tracebacks."""
    import shlex

    from finetune.resume import COMMAND_ENV
    from finetune.signal_forwarding import run_forwarding_signals

    use_gpu = gpus_for(nproc)
    env = {**os.environ, LAUNCHED_ENV: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           COMMAND_ENV: shlex.join(["ft", *sys.argv[1:]])}  # what the workers tell the user to run to resume
    command = launch_command(nproc, cli_args, use_gpu, t)
    if t.nnodes == 1:
        return run_forwarding_signals(command, env)
    check_master_address(t)
    return run_watching_rendezvous(command, env, t)

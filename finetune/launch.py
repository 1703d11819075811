"""`ft run --nproc N`: start N training processes, one per GPU (or N on the CPU).

GPUs go through Accelerate's launcher; on CPU, Accelerate's multi-CPU path wants MPI or oneCCL,
so ft uses torchrun with the gloo backend, which needs nothing beyond torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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


def launch_command(nproc: int, cli_args: list[str], use_gpu: bool) -> list[str]:
    """The command that reruns `ft <cli_args>` in `nproc` processes."""
    ft = ft_executable()
    if use_gpu:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--no_python", ft, *cli_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "--no-python", ft, *cli_args]


def launch(nproc: int, cli_args: list[str]) -> int:
    """Run the children to completion; their exit code is ours."""
    import torch

    use_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= nproc
    import shlex

    from finetune.resume import COMMAND_ENV
    from finetune.signal_forwarding import run_forwarding_signals

    env = {**os.environ, LAUNCHED_ENV: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           COMMAND_ENV: shlex.join(["ft", *sys.argv[1:]])}  # what the workers tell the user to run to resume
    # SIGTERM/SIGINT reach the workers, which save a checkpoint and stop (see finetune.signal_forwarding).
    return run_forwarding_signals(launch_command(nproc, cli_args, use_gpu), env)

"""`ft launch-script RECIPE --slurm`: an sbatch script that runs one recipe on N nodes.

One `ft run` per node through `srun --ntasks-per-node=1`; each starts its node's processes with the
launcher (torchrun or Accelerate). Node 0 of the allocation is the master; each task reads its node
rank from SLURM_NODEID, so the same script works for any allocation of N nodes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from finetune.errors import ConfigError

_TEMPLATE = """#!/bin/bash
# Written by `ft launch-script {recipe_name} --slurm --nodes {nodes} --gpus-per-node {gpus}`.
# Submit with: sbatch {script_name}
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --output={job_name}-%j.out
set -euo pipefail

# Node 0 of the allocation hosts the rendezvous.
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_PORT={port}

# One ft run per node; each task expands its own SLURM_NODEID (0..{last}) as its node rank.
srun --ntasks-per-node=1 bash -c {command}
"""


def sbatch_script(recipe: Path, nodes: int, gpus_per_node: int, overrides: list[str], *,
                  port: int = 29500, script_name: str = "ft-job.sbatch") -> str:
    """The script text; the recipe path is made absolute so the job may start in any directory."""
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"launch-script: --nodes and --gpus-per-node must be >= 1, got {nodes} and {gpus_per_node}")
    run = shlex.join(["ft", "run", str(recipe.resolve()), *overrides, "--nproc", str(gpus_per_node),
                      "--nnodes", str(nodes)])
    command = f'{run} --node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"'
    return _TEMPLATE.format(recipe_name=recipe.name, nodes=nodes, gpus=gpus_per_node, last=nodes - 1, port=port,
                            command=shlex.quote(command), job_name=f"ft-{recipe.stem}", script_name=script_name)


def write_sbatch_script(recipe: Path, nodes: int, gpus_per_node: int, overrides: list[str],
                        out: Path | None) -> str:
    """Check the recipe, then write the script to `out` (or return it for stdout)."""
    from finetune.outputs import write_atomic
    from finetune.stages import load

    # A broken recipe fails here, not on the cluster; checked with the world size the job will have.
    spec = load(recipe, [*overrides, f"training.nproc={gpus_per_node}", f"training.nnodes={nodes}"])
    port = getattr(getattr(spec, "training", None), "master_port", 29500)
    text = sbatch_script(recipe, nodes, gpus_per_node, overrides, port=port,
                         script_name=out.name if out else "ft-job.sbatch")
    if out is not None:
        write_atomic(out, text)
        out.chmod(0o755)
    return text

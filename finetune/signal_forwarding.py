"""`ft run --nproc N`'s parent: run the launcher and hand SIGTERM/SIGINT to the training processes.

The launcher (torchrun, accelerate) is started in a session of its own, so a Ctrl-C in the
terminal reaches only this parent, which passes the signal to every worker directly. Each worker
then saves at the end of the current step (see `finetune.guards.StopOnSignal`) and exits 0; the
launcher, which never saw the signal, does not kill them after its shutdown timeout, and this
parent returns 75 (interrupted, resumable). A launcher that receives the signal itself (Slurm
signals every process of a job step) forwards it too; workers treat the repeat as one request.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from finetune.guards import INTERRUPTED_EXIT_CODE

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_forwarding_signals(command: list[str], env: dict[str, str]) -> int:
    """Run `command` to completion; a signal to us goes to its workers. Returns its exit code, or 75
    when it stopped cleanly after a signal."""
    import psutil  # a dependency of accelerate

    launcher = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        workers = psutil.Process(launcher.pid).children()
        for proc in workers or [launcher]:  # before the workers start, the launcher stops them
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                continue

    previous = {sig: signal.signal(sig, forward) for sig in _SIGNALS}
    try:
        code = launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return INTERRUPTED_EXIT_CODE if received and code == 0 else code

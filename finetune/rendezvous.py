"""Multi-node rendezvous: check node 0's address before launching, and turn the launcher's
rendezvous tracebacks (timeout, unreachable or unknown address) into one FtError that says what to do."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from finetune.errors import FtError

if TYPE_CHECKING:
    from finetune.recipe.schema import TrainingSection


class RendezvousError(FtError):
    """The nodes of a multi-node run did not meet."""

    exit_code = 1


# What the launcher's traceback says -> what went wrong, in words the user can act on.
_CAUSES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"timed out|Timed out|TimeoutError|DistStoreError.*timeout|wait timeout", re.I),
     "not every node joined within training.rdzv_timeout ({timeout} s): check that {addr}:{port} is node 0's "
     "address and port as seen from every node, start `ft run` on all {nnodes} nodes (node ranks 0..{last}) "
     "with the same --master-addr/--master-port, or raise --rdzv-timeout"),
    (re.compile(r"gaierror|Name or service not known|failed to resolve|nodename nor servname", re.I),
     "the master address {addr} cannot be resolved: pass node 0's hostname or IP as --master-addr"),
    (re.compile(r"Connection refused|No route to host|Network is unreachable|EADDRNOTAVAIL|"
                r"Cannot assign requested address", re.I),
     "node 0 at {addr}:{port} cannot be reached: check --master-addr/--master-port and that node 0 runs "
     "`ft run ... --node-rank 0`"),
    (re.compile(r"Address already in use|EADDRINUSE", re.I),
     "port {port} on {addr} is already in use: pick another --master-port (the same on every node)"),
]


def check_master_address(t: TrainingSection) -> None:
    """A name that does not resolve is a wrong address: say so before any process starts."""
    try:
        socket.getaddrinfo(t.master_addr, t.master_port)
    except OSError as err:
        raise RendezvousError(f"multi-node: master address {t.master_addr!r} cannot be resolved ({err}): "
                              "pass node 0's hostname or IP as --master-addr (training.master_addr)") from err


def explain(output: str, t: TrainingSection) -> str | None:
    """The cause of a failed rendezvous read from the launcher's output, or None when it is not one."""
    for pattern, message in _CAUSES:
        if pattern.search(output):
            return "multi-node rendezvous failed: " + message.format(
                timeout=t.rdzv_timeout, nnodes=t.nnodes, last=t.nnodes - 1, addr=t.master_addr, port=t.master_port)
    return None


def run_watching_rendezvous(command: list[str], env: dict[str, str], t: TrainingSection) -> int:
    """Run the launcher, passing its stderr through live until a traceback starts; tracebacks are
    held back and shown only when they are not a rendezvous failure (which gets a clear message)."""
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    held: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if held or line.startswith("Traceback") or "Traceback (most recent call last)" in line:
                held.append(line)
            else:
                sys.stderr.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    code = proc.wait()
    reader.join()
    if code == 0:
        return 0
    cause = explain("".join(held), t)
    if cause is not None:
        raise RendezvousError(cause)
    sys.stderr.write("".join(held))
    return code

"""The one channel for notices to the user: dropped rows, truncation, an unwritable cache, how the
reference model is handled. Library code calls `notice(...)`; whoever runs it (the CLI, a notebook,
a test) decides where notices go with `notices_to(...)`. Never `warnings.warn` for these: Python's
warning filters hide repeats and other libraries' filters, and a notebook shows them as red noise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Sink = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_sink: Sink = _stderr


def notice(message: str) -> None:
    """Tell the user something they should know but that does not stop the run. Only the main
    process speaks, so N processes do not print the same line N times."""
    if int(os.environ.get("RANK", "0")) == 0:
        _sink(message)


@contextmanager
def notices_to(sink: Sink) -> Iterator[None]:
    """Send notices to `sink` for the duration of the block (restored afterwards, also on error)."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous

# Loaded by Python at start-up when benchmarks/_probe is on PYTHONPATH (see benchmarks/_probe.py).
import os
import sys

if os.environ.get("PEERS_STATS"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import _probe  # noqa: F401  (patches transformers.Trainer)

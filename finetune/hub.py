"""Is the Hugging Face Hub usable? One short probe instead of a minute of retries.

Without a network, huggingface_hub and datasets retry for about a minute before failing. ft
probes once, briefly; when the Hub cannot be reached it switches every library to offline mode,
so cached models and datasets still load and missing ones fail at once with ft's own message.
"""

from __future__ import annotations

import os
import socket
import sys

_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when the Hub cannot be used; then the libraries are switched to offline mode."""
    import huggingface_hub.constants as hub_constants

    # datasets reads the flag when it is imported; if it already was, its config must change too.
    datasets_config = sys.modules.get("datasets.config")
    offline = (any(_truthy(os.environ.get(flag)) for flag in _FLAGS) or bool(hub_constants.HF_HUB_OFFLINE)
               or bool(getattr(datasets_config, "HF_HUB_OFFLINE", False)))
    if not offline:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            offline = True
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub_constants.HF_HUB_OFFLINE = True
        if datasets_config is not None:
            datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True
    return offline

"""Silence library chatter that says nothing about the user's recipe or data."""

from __future__ import annotations

import warnings


def quiet_library_noise() -> None:
    """TRL 1.12 sets `gradient_checkpointing`, which transformers 5 renamed, and transformers draws a
    progress bar for loading even a 2 MB checkpoint; neither tells a user anything they can act on."""
    for name in ("gradient_checkpointing", "is_gradient_checkpointing", "gradient_checkpointing_enable"):
        warnings.filterwarnings("ignore", message=f"`{name}` is deprecated", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

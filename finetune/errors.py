"""The one base class of every error ft reports to a user as a message, never as a traceback.

This module imports nothing, so the lowest layers (the recipe, the data layer) can raise these and
the CLI can catch `FtError` without importing the modules that raise them. Library exceptions that
reach the user are translated where they happen, into a subclass with the context (file, key, row)
that only that place knows.
"""

from __future__ import annotations


class FtError(Exception):
    """A problem the user can fix. `str(err)` is the whole message; the CLI prints it and exits with
    `exit_code`. The Python API raises it unchanged."""

    exit_code = 2


class ConfigError(FtError, ValueError):
    """The recipe is valid but asks for something this data, model, machine or library cannot do."""


class TrainingError(FtError):
    """Training went wrong in a way the recipe or data can fix (a non-finite loss, say)."""

    exit_code = 1

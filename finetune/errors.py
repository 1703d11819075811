"""The errors ft reports to users as a message (exit code 2), never as a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """The recipe is valid but asks for something this data, model, machine or library cannot do."""


def _user_errors() -> tuple[type[Exception], ...]:
    from data_templates.prepare import DataError
    from finetune.generate import RunNotFoundError
    from finetune.models import ModelNotFoundError
    from finetune.outputs import OutputDirError
    from finetune.recipe.errors import RecipeError

    return (RecipeError, ModelNotFoundError, DataError, OutputDirError, RunNotFoundError, ConfigError)


USER_ERRORS = _user_errors()

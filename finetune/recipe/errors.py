"""Recipe problems, reported all at once as `FILE:LINE  key.path: what is wrong`."""

from __future__ import annotations

from dataclasses import dataclass

from finetune.errors import FtError


@dataclass(frozen=True)
class Source:
    """Where a value came from: a recipe file and line, or a command-line override."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Problem:
    source: Source
    path: str  # dotted key path, e.g. training.learning_rate or data.train.0.path
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}  {where}{self.message}"


class RecipeError(FtError):
    """One or more problems with a recipe. `str()` lists every problem, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def join_path(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)

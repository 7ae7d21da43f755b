"""User-facing errors: the CLI prints these as one clear line and exits non-zero."""

from __future__ import annotations


class VlalignError(Exception):
    """An error caused by the user's input (recipe, data, paths), not by a bug."""


class RecipeError(VlalignError):
    """A recipe is invalid. Holds every problem found, each naming the file and key path."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid recipe {file}:\n{lines}")


class DataError(VlalignError):
    """Bad data: a shard, sample or manifest that cannot be used. Names shard and key."""

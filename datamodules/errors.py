"""Errors shared by the data modules."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where the user said it is.

    Args:
        name: human-readable name of the data set, e.g. ``"Word50"``.
        path: where we looked.
        remedy: what the user can do about it (how to generate or where to get the data).
    """

    def __init__(self, name: str, path: str | Path, remedy: str) -> None:
        self.path = Path(path)
        super().__init__(f"{name} not found at '{self.path}'. {remedy}")

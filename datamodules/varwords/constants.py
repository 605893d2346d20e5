"""Fixed vocabulary and file-format constants of VarWords."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from datamodules.word50.constants import ALPHABET, IMAGE_SIZE, NUM_CLASSES, SPLITS

__all__ = [
    "ALPHABET",
    "DEFAULT_FILENAME",
    "FORMAT_NAME",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "NUM_CLASSES",
    "SPLITS",
    "WORD_LIST_FILE",
    "english_words",
]

MIN_LENGTH = 2
"""Shortest word of the default vocabulary."""

MAX_LENGTH = 14
"""Longest word of the default vocabulary: the models' number of positions ``N_max``."""

FORMAT_NAME = "structlight-varwords"
"""Value of the ``format`` attribute that marks an HDF5 file as written by this generator."""

GENERATOR_VERSION = 1
"""Bumped whenever the same seed would give different images."""

DEFAULT_FILENAME = "varwords.h5"

WORD_LIST_FILE = "english_words.txt"
"""The shipped word list, next to this module (SCOWL; its licence is in the file's header)."""


@lru_cache(maxsize=1)
def english_words() -> tuple[str, ...]:
    """The default vocabulary: 3,194 common English words of 2 to 14 letters a-z.

    Read from :data:`WORD_LIST_FILE`, which ships with the package: a selection from SCOWL
    (Spell Checker Oriented Word Lists, Kevin Atkinson), levels 10 and 20, at most 300 words
    per length. SCOWL's copyright and permission notice (a permissive licence) is in the file's
    header and must stay with every copy.

    Raises:
        FileNotFoundError: the file is missing from the installation (a broken install).
    """
    source = resources.files("datamodules.varwords").joinpath(WORD_LIST_FILE)
    if not source.is_file():
        raise FileNotFoundError(
            f"The VarWords word list {WORD_LIST_FILE!r} is missing from the datamodules.varwords "
            "package; reinstall structlight (pip install -e .) or pass words= explicitly."
        )
    text = source.read_text(encoding="utf-8")
    return tuple(w for w in (ln.strip() for ln in text.splitlines()) if w and not w.startswith("#"))

"""Fixed vocabulary and file-format constants of Word50."""

from __future__ import annotations

__all__ = [
    "ALPHABET",
    "DEFAULT_FILENAME",
    "FORMAT_NAME",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "SPLITS",
    "WORD_LENGTH",
    "WORDS",
]

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
"""The 26 classes; a label ``k`` is the letter ``ALPHABET[k]``."""

NUM_CLASSES = len(ALPHABET)
WORD_LENGTH = 5
IMAGE_SIZE = 28
SPLITS = ("train", "val", "test")

WORDS: tuple[str, ...] = (
    # The six words the paper shows (Chen et al. 2015, Fig. 4) ...
    "banal", "julep", "resty", "drein", "yojan", "mothy",
    # ... and 44 more, chosen so that every letter occurs in at least four words.
    "quick", "zebra", "waltz", "vixen", "fjord", "gawky", "jumbo", "pixel", "hymns", "squad",
    "crowd", "blitz", "knave", "ochre", "plumb", "wheat", "glyph", "frown", "swamp", "tiger",
    "lemon", "daisy", "koala", "ivory", "nymph", "ruler", "candy", "mango", "quest", "viper",
    "flask", "brick", "dwarf", "haste", "oxide", "sugar", "tempo", "unzip", "yacht", "xenon",
    "cabin", "grove", "jolly", "equip",
)  # fmt: skip
"""The 50 five-letter words of the default data set (fixed: changing it changes the data)."""

FORMAT_NAME = "structlight-word50"
"""Value of the ``format`` attribute that marks an HDF5 file as written by this generator."""

GENERATOR_VERSION = 1
"""Bumped whenever the same seed would give different images."""

DEFAULT_FILENAME = "word50.h5"

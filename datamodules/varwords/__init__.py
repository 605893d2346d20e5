"""VarWords: English words of 2 to 14 letters rendered as 28x28 letter images, Word50-style.

A variable-size companion of Word50: the words come from a shipped English word list (3,194
common words from SCOWL, Kevin Atkinson's Spell Checker Oriented Word Lists, under its
permissive licence, quoted in the list's header), and every character is rendered with Word50's
glyph pipeline. :func:`generate_varwords` writes it to HDF5 (characters concatenated, word
offsets), :class:`VarWordsDataset` serves one split, :class:`VarWordsDataModule` does both for
Lightning with padded batches (:class:`structlight.batching.PadCollate`: ``length`` per word,
labels -100 at padding) and length-grouped training batches
(:class:`structlight.batching.LengthGroupedSampler`).

``python -m datamodules.varwords data/varwords`` generates the default data set from the shell.
"""

from datamodules.varwords.constants import (
    ALPHABET,
    MAX_LENGTH,
    MIN_LENGTH,
    NUM_CLASSES,
    english_words,
)
from datamodules.varwords.datamodule import VarWordsDataModule
from datamodules.varwords.dataset import VarWordsDataset
from datamodules.varwords.generate import generate_varwords, vocabulary
from datamodules.varwords.io import VarWordsFileError, read_attrs, read_hdf5

__all__ = [
    "ALPHABET",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "NUM_CLASSES",
    "VarWordsDataModule",
    "VarWordsDataset",
    "VarWordsFileError",
    "english_words",
    "generate_varwords",
    "read_attrs",
    "read_hdf5",
    "vocabulary",
]

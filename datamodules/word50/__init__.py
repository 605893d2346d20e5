"""Word50: five-letter words rendered as 28x28 letter images on natural-photo backgrounds.

A reproducible, offline stand-in for the Word50 data set of "Learning Deep Structured Models"
(Chen et al., ICML 2015): :func:`generate_word50` writes it to HDF5, :class:`Word50Dataset`
serves one split, :class:`Word50DataModule` does both for Lightning. :func:`read_folder` and
:func:`export_folder` handle the ``<root>/{train,val,test}/<i>/{0..4}.png + label.txt`` layout,
and ``chars74k_root=`` draws letters from Chars74K on disk instead of fonts.

``python -m datamodules.word50 data/word50`` generates the default data set from the shell.
"""

from datamodules.word50.backgrounds import DEFAULT_BACKGROUNDS
from datamodules.word50.constants import ALPHABET, NUM_CLASSES, WORD_LENGTH, WORDS
from datamodules.word50.datamodule import Word50DataModule
from datamodules.word50.dataset import Word50Dataset
from datamodules.word50.generate import Word50Difficulty, generate_word50
from datamodules.word50.glyphs import MATPLOTLIB_FONTS
from datamodules.word50.io import (
    Word50FileError,
    export_folder,
    read_attrs,
    read_folder,
    read_hdf5,
)

__all__ = [
    "ALPHABET",
    "DEFAULT_BACKGROUNDS",
    "MATPLOTLIB_FONTS",
    "NUM_CLASSES",
    "WORDS",
    "WORD_LENGTH",
    "Word50DataModule",
    "Word50Dataset",
    "Word50Difficulty",
    "Word50FileError",
    "export_folder",
    "generate_word50",
    "read_attrs",
    "read_folder",
    "read_hdf5",
]

"""LightningDataModules for structlight's data sets (Word50, VarWords, MIRFLICKR-25000).

Imports are lazy so that ``import datamodules`` stays cheap and a missing optional
dependency of one data set does not break the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Word50DataModule": "datamodules.word50",
    "Word50Dataset": "datamodules.word50",
    "generate_word50": "datamodules.word50",
    "VarWordsDataModule": "datamodules.varwords",
    "VarWordsDataset": "datamodules.varwords",
    "generate_varwords": "datamodules.varwords",
    "DatasetNotFoundError": "datamodules.errors",
    "MirFlickrDataModule": "datamodules.flickr",
    "MIRFLICKR_TAGS": "datamodules.flickr",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")

"""``Word50Dataset``: one split of Word50 as a torch ``Dataset`` of word images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from datamodules.word50.constants import IMAGE_SIZE, WORD_LENGTH
from datamodules.word50.io import check_labels, read_hdf5

__all__ = ["Word50Dataset"]

Batch = dict[str, torch.Tensor]


class _StackedBatch(Sequence):
    """What ``__getitems__`` returns: a whole batch already stacked.

    :meth:`Word50Dataset.collate` returns ``stacked`` as is (one copy per batch instead of one
    per example); any other collate function still sees a sequence of per-example dicts.
    """

    def __init__(self, stacked: Batch) -> None:
        self.stacked = stacked

    def __len__(self) -> int:
        return len(self.stacked["index"])

    def __getitem__(self, i: int) -> Batch:  # type: ignore[override]
        return {k: v[i] for k, v in self.stacked.items()}


class Word50Dataset(Dataset):
    """One split of Word50.

    An item is a dict with ``image`` float32 ``(5, 1, 28, 28)`` in [0, 1], ``label`` int64
    ``(5,)`` in 0..25 and ``index`` int64 ``()`` (the example's position in its split, the key
    of the message store). Use ``collate_fn=Word50Dataset.collate`` in a ``DataLoader`` to get
    batches ``image (B, 5, 1, 28, 28)``, ``label (B, 5)``, ``index (B,)`` built with one
    vectorised read per batch.

    Args:
        path: a Word50 HDF5 file (see :func:`~datamodules.word50.generate_word50`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        in_memory: read the split's images into memory now (fast; 39 MB for the full train
            split). ``False`` reads them from the file on demand, opening the file once per
            process (so each ``DataLoader`` worker has its own handle; none is shared across
            ``fork``). Labels are always read and checked up front.

    Raises:
        DatasetNotFoundError: if the file does not exist.
        Word50FileError: if it is truncated, foreign, or has bad shapes or labels.
    """

    def __init__(self, path: str | Path, split: str = "train", in_memory: bool = True) -> None:
        self.path: Path | None = Path(path)
        self.split = split
        self.in_memory = in_memory
        images, labels = read_hdf5(self.path, split, images=in_memory)
        self._images: np.ndarray | None = images
        self._labels = labels
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray, split: str = "train"
    ) -> Word50Dataset:
        """A dataset over arrays already in memory (e.g. from :func:`read_folder`).

        Args:
            images: ``(n, 5, 28, 28)`` uint8.
            labels: ``(n, 5)`` integers in 0..25.
            split: a name for messages.

        Raises:
            ValueError: on wrong shapes or dtypes, or labels out of range.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (WORD_LENGTH, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"Expected images uint8 (n, {WORD_LENGTH}, {IMAGE_SIZE}, {IMAGE_SIZE}). "
                f"Got {images.dtype} {images.shape}."
            )
        labels = check_labels(np.asarray(labels), f"{split} labels").astype(np.uint8)
        if len(labels) != len(images):
            raise ValueError(
                f"Expected as many labels as images. Got {len(labels)} and {len(images)}."
            )
        self = cls.__new__(cls)
        self.path, self.split, self.in_memory = None, split, True
        self._images, self._labels = images, labels
        self._file, self._pid = None, None
        return self

    @property
    def labels(self) -> np.ndarray:
        """``(n, 5)`` uint8 class indices."""
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None  # an open HDF5 handle never travels
        return state

    def _h5_images(self) -> h5py.Dataset:
        """This process's own handle on the images (reopened after a fork)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.split]["images"]

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """``(b, 5, 28, 28)`` uint8 images at ``idx`` (``(b,)`` int64, in range)."""
        if self._images is not None:
            return self._images[idx]
        unique, inverse = np.unique(idx, return_inverse=True)  # h5py wants increasing indices
        return self._h5_images()[unique.tolist()][inverse]

    def _batch(self, indices: Sequence[int]) -> Batch:
        n = len(self)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"Index out of range for a split of {n} examples: {indices!r}.")
        idx = np.where(idx < 0, idx + n, idx)
        # numpy, not torch, converts: single-threaded, so it does not fight the training threads
        images = torch.from_numpy(np.divide(self._read(idx), 255.0, dtype=np.float32)).unsqueeze(2)
        return {
            "image": images,
            "label": torch.from_numpy(self._labels[idx].astype(np.int64)),
            "index": torch.from_numpy(idx),
        }

    def __getitem__(self, i: int) -> Batch:
        """One word: ``image (5, 1, 28, 28)``, ``label (5,)``, ``index ()``."""
        batch = self._batch([int(i)])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> _StackedBatch:
        """A whole batch in one read (used by ``DataLoader`` with automatic batching)."""
        return _StackedBatch(self._batch(indices))

    @staticmethod
    def collate(batch: Sequence[Batch]) -> Batch:
        """Collate function: ``image (B, 5, 1, 28, 28)``, ``label (B, 5)``, ``index (B,)``."""
        if isinstance(batch, _StackedBatch):
            return batch.stacked
        return default_collate(list(batch))

"""``VarWordsDataset``: one split of VarWords as a torch ``Dataset`` of variable-length words."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.varwords.constants import IMAGE_SIZE
from datamodules.varwords.io import check_ragged, read_hdf5

__all__ = ["VarWordsDataset"]

Example = dict[str, torch.Tensor]


class VarWordsDataset(Dataset):
    """One split of VarWords: words of different lengths, one 28x28 image per letter.

    An item is a dict with ``image`` float32 ``(L, 1, 28, 28)`` in [0, 1], ``label`` int64
    ``(L,)`` in 0..25 and ``index`` int64 ``()`` (the word's position in its split, the key of
    the message store), ``L`` the word's length. Batch items with
    :class:`structlight.batching.PadCollate` (``image (B, N, 1, 28, 28)`` padded with 0,
    ``label (B, N)`` padded with -100, ``index (B,)``, ``length (B,)``); group similar lengths
    with :class:`structlight.batching.LengthGroupedSampler` and :attr:`lengths`.

    Args:
        path: a VarWords HDF5 file (see :func:`~datamodules.varwords.generate_varwords`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        in_memory: read the split's images into memory now (fast; about 6 MB per 1,000
            words). ``False`` reads them from the file on demand, opening the file once per
            process (each ``DataLoader`` worker has its own handle). Labels and offsets are
            always read and checked up front.

    Raises:
        DatasetNotFoundError: if the file does not exist.
        VarWordsFileError: if it is truncated, foreign, or has bad shapes, offsets or labels.
    """

    def __init__(self, path: str | Path, split: str = "train", in_memory: bool = True) -> None:
        self.path: Path | None = Path(path)
        self.split = split
        self.in_memory = in_memory
        images, labels, offsets = read_hdf5(self.path, split, images=in_memory)
        self._images: np.ndarray | None = images
        self._labels = labels
        self._offsets = offsets
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray, offsets: np.ndarray, split: str = "train"
    ) -> VarWordsDataset:
        """A dataset over ragged arrays already in memory.

        Args:
            images: ``(C, 28, 28)`` uint8, every word's characters one after another.
            labels: ``(C,)`` integers in 0..25.
            offsets: ``(n + 1,)`` integers: word ``i`` is characters ``offsets[i]:offsets[i+1]``.
            split: a name for messages.

        Raises:
            ValueError: on wrong shapes or dtypes, bad offsets, or labels out of range.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"Expected images uint8 (C, {IMAGE_SIZE}, {IMAGE_SIZE}). "
                f"Got {images.dtype} {images.shape}."
            )
        labels, offsets = np.asarray(labels), np.asarray(offsets)
        if len(labels) != len(images):
            raise ValueError(
                f"Expected one label per character image. Got {len(labels)} and {len(images)}."
            )
        check_ragged(labels, offsets, f"{split} arrays")
        self = cls.__new__(cls)
        self.path, self.split, self.in_memory = None, split, True
        self._images = images
        self._labels = labels.astype(np.uint8)
        self._offsets = offsets.astype(np.int64)
        self._file, self._pid = None, None
        return self

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` int64: every word's length."""
        return np.diff(self._offsets)

    @property
    def offsets(self) -> np.ndarray:
        """``(n + 1,)`` int64: word ``i`` is characters ``offsets[i]:offsets[i + 1]``."""
        return self._offsets

    @property
    def labels(self) -> np.ndarray:
        """``(C,)`` uint8: the class index of every character, words one after another."""
        return self._labels

    def word_labels(self, i: int) -> np.ndarray:
        """``(L,)`` uint8: the labels of word ``i``."""
        return self._labels[self._offsets[i] : self._offsets[i + 1]]

    def __len__(self) -> int:
        return len(self._offsets) - 1

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

    def __getitem__(self, i: int) -> Example:
        """One word: ``image (L, 1, 28, 28)``, ``label (L,)``, ``index ()``."""
        n = len(self)
        idx = int(i)
        if not -n <= idx < n:
            raise IndexError(f"Index {i} out of range for a split of {n} words.")
        idx = idx + n if idx < 0 else idx
        lo, hi = int(self._offsets[idx]), int(self._offsets[idx + 1])
        raw = self._images[lo:hi] if self._images is not None else self._h5_images()[lo:hi]
        # numpy, not torch, converts: single-threaded, so it does not fight the training threads
        image = torch.from_numpy(np.divide(raw, 255.0, dtype=np.float32)).unsqueeze(1)
        return {
            "image": image,
            "label": torch.from_numpy(self._labels[lo:hi].astype(np.int64)),
            "index": torch.tensor(idx, dtype=torch.int64),
        }

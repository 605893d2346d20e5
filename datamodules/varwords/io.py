"""Reading and checking VarWords HDF5 files (ragged: characters concatenated, word offsets).

Per split (``train``, ``val``, ``test``) a file holds ``images`` uint8 ``(C, 28, 28)`` and
``labels`` uint8 ``(C,)``: the ``C`` characters of all the split's words one after another, and
``offsets`` int64 ``(n + 1,)``: word ``i`` is characters ``offsets[i]:offsets[i + 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules._common import (
    check_split,
    decode_attrs,
    generate_hint,
    open_h5,
    truncated_error,
)
from datamodules.varwords.constants import FORMAT_NAME, IMAGE_SIZE, NUM_CLASSES, SPLITS

__all__ = ["VarWordsFileError", "check_ragged", "read_attrs", "read_hdf5"]

_GENERATE_HINT = generate_hint("VarWords", "varwords")


class VarWordsFileError(ValueError):
    """A VarWords file exists but is not usable (truncated, foreign or inconsistent)."""


def check_ragged(labels: np.ndarray, offsets: np.ndarray, where: str) -> None:
    """Check concatenated labels and word offsets.

    Args:
        labels: ``(C,)`` integer class indices.
        offsets: ``(n + 1,)`` integers: ``0``, strictly increasing, ``C`` last.
        where: what to name in the error message (a file and split).

    Raises:
        VarWordsFileError: on wrong shapes or dtypes, offsets that do not cut ``labels`` into
            non-empty words, or a label outside 0..25.
    """
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise VarWordsFileError(
            f"{where}: expected 1-D integer labels, got {labels.dtype} {labels.shape}."
        )
    if offsets.ndim != 1 or len(offsets) < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise VarWordsFileError(
            f"{where}: expected 1-D integer offsets (number of words + 1), got "
            f"{offsets.dtype} {offsets.shape}."
        )
    if offsets[0] != 0 or offsets[-1] != len(labels):
        raise VarWordsFileError(
            f"{where}: offsets must start at 0 and end at the number of characters "
            f"{len(labels)}; they run from {int(offsets[0])} to {int(offsets[-1])}."
        )
    steps = np.diff(offsets)
    if (steps < 1).any():
        i = int(np.argmax(steps < 1))
        raise VarWordsFileError(
            f"{where}: every word must have at least one character; word {i} has "
            f"{int(steps[i])} (offsets {int(offsets[i])} to {int(offsets[i + 1])})."
        )
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        j = int(np.argmax(bad))
        raise VarWordsFileError(
            f"{where}: labels must be class indices 0..{NUM_CLASSES - 1}; {int(bad.sum())} are "
            f"not, the first is {int(labels[j])} at character {j}."
        )


def _open(path: Path) -> h5py.File:
    """Open a VarWords HDF5 file read-only after checking it is one."""
    return open_h5(path, "VarWords", FORMAT_NAME, VarWordsFileError, _GENERATE_HINT)


def _split_datasets(f: h5py.File, path: Path, split: str) -> dict[str, h5py.Dataset]:
    """The ``images``, ``labels`` and ``offsets`` datasets of a split, shapes checked."""
    check_split(split)
    names = ("images", "labels", "offsets")
    if split not in f or any(n not in f[split] for n in names):
        raise VarWordsFileError(
            f"'{path}' has no '{split}/images', '{split}/labels' and '{split}/offsets' datasets."
        )
    out = {n: f[split][n] for n in names}
    images, labels = out["images"], out["labels"]
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise VarWordsFileError(
            f"'{path}' {split}/images: expected uint8 (C, {IMAGE_SIZE}, {IMAGE_SIZE}), got "
            f"{images.dtype} {images.shape}."
        )
    if labels.shape != (images.shape[0],):
        raise VarWordsFileError(
            f"'{path}' {split}/labels: expected shape ({images.shape[0]},) to match the images, "
            f"got {labels.shape}."
        )
    return out


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a VarWords file, decoded, plus ``words`` and ``sizes`` (words per split).

    Raises:
        DatasetNotFoundError: if the file does not exist.
        VarWordsFileError: if it is not a readable VarWords HDF5 file.
    """
    path = Path(path)
    with _open(path) as f:
        attrs = decode_attrs(f)
        attrs["sizes"] = {
            s: int(f[s]["offsets"].shape[0]) - 1 for s in SPLITS if s in f and "offsets" in f[s]
        }
    return attrs


def read_hdf5(
    path: str | Path, split: str, images: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Read one split of a VarWords HDF5 file into memory, checked.

    Args:
        path: the file written by :func:`~datamodules.varwords.generate_varwords`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        images: also read the images (``False``: ``None`` in their place).

    Returns:
        ``(images, labels, offsets)``: ``(C, 28, 28)`` uint8, ``(C,)`` uint8 in 0..25 and
        ``(n + 1,)`` int64 (word ``i`` is characters ``offsets[i]:offsets[i + 1]``).

    Raises:
        DatasetNotFoundError: if the file does not exist.
        VarWordsFileError: if the file is truncated, foreign, or has bad shapes, offsets or
            labels.
    """
    path = Path(path)
    with _open(path) as f:
        ds = _split_datasets(f, path, split)
        try:
            labels = ds["labels"][()]
            offsets = ds["offsets"][()]
            data = ds["images"][()] if images else None
        except OSError as err:
            raise truncated_error(VarWordsFileError, path, split, err) from err
    check_ragged(labels, offsets, f"'{path}' {split}")
    return data, labels, offsets.astype(np.int64)

"""Reading and checking Word50 files: the generator's HDF5 and the folder layout.

Folder layout (used by later work from the paper's group)::

    <root>/{train,val,test}/<i>/{0..4}.png   28x28 grey, one per character
    <root>/{train,val,test}/<i>/label.txt    five lines, one class index 0..25 per line

Examples are ordered by the integer ``<i>``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from datamodules._common import (
    check_split,
    decode_attrs,
    generate_hint,
    open_h5,
    truncated_error,
)
from datamodules.errors import DatasetNotFoundError
from datamodules.word50.constants import (
    ALPHABET,
    FORMAT_NAME,
    IMAGE_SIZE,
    NUM_CLASSES,
    SPLITS,
    WORD_LENGTH,
)

__all__ = [
    "Word50FileError",
    "check_labels",
    "export_folder",
    "read_attrs",
    "read_folder",
    "read_hdf5",
]

_GENERATE_HINT = generate_hint("Word50", "word50")


class Word50FileError(ValueError):
    """A Word50 file or folder exists but is not usable (truncated, foreign or inconsistent)."""


def check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Check labels are ``(n, 5)`` integers in 0..25.

    Args:
        labels: ``(n, 5)`` integer array.
        where: what to name in the error message (a file and split, a folder).

    Returns:
        ``labels`` unchanged.

    Raises:
        Word50FileError: on a wrong shape, dtype, or a value outside 0..25.
    """
    if labels.ndim != 2 or labels.shape[1] != WORD_LENGTH:
        raise Word50FileError(
            f"{where}: expected labels of shape (n, {WORD_LENGTH}), got {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise Word50FileError(f"{where}: expected integer labels, got dtype {labels.dtype}.")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise Word50FileError(
            f"{where}: labels must be class indices 0..{NUM_CLASSES - 1}; "
            f"{int(bad.sum())} are not, the first is {int(labels[i, j])} at [{i}, {j}]."
        )
    return labels


def _open(path: Path) -> h5py.File:
    """Open a Word50 HDF5 file read-only after checking it is one."""
    return open_h5(path, "Word50", FORMAT_NAME, Word50FileError, _GENERATE_HINT)


def _split_group(f: h5py.File, path: Path, split: str) -> tuple[h5py.Dataset, h5py.Dataset]:
    """The ``images`` and ``labels`` datasets of a split, with shapes and dtypes checked."""
    check_split(split)
    if split not in f or "images" not in f[split] or "labels" not in f[split]:
        raise Word50FileError(f"'{path}' has no '{split}/images' and '{split}/labels' datasets.")
    images, labels = f[split]["images"], f[split]["labels"]
    if images.dtype != np.uint8 or images.shape[1:] != (WORD_LENGTH, IMAGE_SIZE, IMAGE_SIZE):
        raise Word50FileError(
            f"'{path}' {split}/images: expected uint8 (n, {WORD_LENGTH}, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {images.shape}."
        )
    if labels.shape != (images.shape[0], WORD_LENGTH):
        raise Word50FileError(
            f"'{path}' {split}/labels: expected shape ({images.shape[0]}, {WORD_LENGTH}) to match the "
            f"images, got {labels.shape}."
        )
    return images, labels


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a Word50 file, decoded (JSON attributes parsed, arrays as lists).

    Raises:
        DatasetNotFoundError: if the file does not exist.
        Word50FileError: if it is not a readable Word50 HDF5 file.
    """
    path = Path(path)
    with _open(path) as f:
        attrs = decode_attrs(f)
        attrs["sizes"] = {
            s: int(f[s]["labels"].shape[0]) for s in SPLITS if s in f and "labels" in f[s]
        }
    return attrs


def read_hdf5(
    path: str | Path, split: str, images: bool = True
) -> tuple[np.ndarray | None, np.ndarray]:
    """Read one split of a Word50 HDF5 file into memory, checked.

    Args:
        path: the file written by :func:`~datamodules.word50.generate_word50`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        images: also read the images (``False``: labels only, ``None`` in their place).

    Returns:
        ``(images, labels)``: ``(n, 5, 28, 28)`` uint8 and ``(n, 5)`` uint8 in 0..25.

    Raises:
        DatasetNotFoundError: if the file does not exist.
        Word50FileError: if the file is truncated, foreign, or has bad shapes or labels.
    """
    path = Path(path)
    with _open(path) as f:
        ds_images, ds_labels = _split_group(f, path, split)
        try:
            labels = ds_labels[()]
            data = ds_images[()] if images else None
        except OSError as err:
            raise truncated_error(Word50FileError, path, split, err) from err
    check_labels(labels, f"'{path}' {split}/labels")
    return data, labels


def export_folder(
    h5_path: str | Path,
    root: str | Path,
    splits: Sequence[str] = SPLITS,
    progress: bool = False,
) -> Path:
    """Write a Word50 HDF5 file out in the folder layout (``<root>/<split>/<i>/{0..4}.png``).

    The folder is written under a temporary name next to ``root`` and renamed at the end.

    Args:
        h5_path: the HDF5 file.
        root: the folder to create; must not exist.
        splits: which splits to export.
        progress: show a progress bar.

    Returns:
        ``root``.

    Raises:
        FileExistsError: if ``root`` exists.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if root.exists():
        raise FileExistsError(f"'{root}' exists; export_folder writes a new folder.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    try:
        for split in splits:
            images, labels = read_hdf5(h5_path, split)
            for i in tqdm(range(len(labels)), desc=f"export {split}", disable=not progress):
                example = tmp / split / str(i)
                example.mkdir(parents=True)
                for j in range(WORD_LENGTH):
                    Image.fromarray(images[i, j], mode="L").save(example / f"{j}.png")
                (example / "label.txt").write_text("".join(f"{int(k)}\n" for k in labels[i]))
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _parse_label(line: str, where: Path) -> int:
    text = line.strip()
    if len(text) == 1 and text in ALPHABET:
        return ALPHABET.index(text)
    try:
        return int(text)
    except ValueError:
        raise Word50FileError(
            f"'{where}': expected one class index 0..{NUM_CLASSES - 1} (or a letter a-z) per line, "
            f"got {text!r}."
        ) from None


def _read_example(example: Path) -> tuple[np.ndarray, np.ndarray]:
    label_file = example / "label.txt"
    if not label_file.is_file():
        raise FileNotFoundError(
            f"Word50 folder example '{example}' has no label.txt (expected {WORD_LENGTH} lines, one "
            f"class index 0..{NUM_CLASSES - 1} each, next to 0.png..{WORD_LENGTH - 1}.png)."
        )
    lines = [ln for ln in label_file.read_text().splitlines() if ln.strip()]
    if len(lines) != WORD_LENGTH:
        raise Word50FileError(f"'{label_file}': expected {WORD_LENGTH} labels, got {len(lines)}.")
    labels = np.array([_parse_label(ln, label_file) for ln in lines], dtype=np.int64)
    images = np.empty((WORD_LENGTH, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for j in range(WORD_LENGTH):
        png = example / f"{j}.png"
        if not png.is_file():
            raise FileNotFoundError(f"Word50 folder example '{example}' has no {j}.png.")
        with Image.open(png) as im:
            arr = np.asarray(im.convert("L"))
        if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise Word50FileError(
                f"'{png}': expected a {IMAGE_SIZE}x{IMAGE_SIZE} image, got {arr.shape[1]}x{arr.shape[0]}."
            )
        images[j] = arr
    return images, labels


def read_folder(
    root: str | Path, splits: Sequence[str] = SPLITS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read Word50 in the folder layout.

    Args:
        root: the folder holding ``train/``, ``val/``, ``test/``.
        splits: the splits to read; each must exist.

    Returns:
        ``{split: (images, labels)}`` with ``(n, 5, 28, 28)`` uint8 and ``(n, 5)`` uint8.

    Raises:
        DatasetNotFoundError: if ``root`` or a requested split folder does not exist.
        FileNotFoundError: if an example lacks ``label.txt`` or a PNG.
        Word50FileError: on a non-integer example folder, bad labels or image sizes.
    """
    root = Path(root)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in splits:
        check_split(split)
        folder = root / split
        if not folder.is_dir():
            raise DatasetNotFoundError(
                "Word50 (folder layout)",
                folder,
                "Expected <root>/{train,val,test}/<i>/{0..4}.png + label.txt; "
                "export_folder(h5_path, root) writes one from a generated file.",
            )
        names = [p.name for p in folder.iterdir() if p.is_dir()]
        bad = [n for n in names if not n.isdigit()]
        if bad:
            raise Word50FileError(
                f"'{folder}': example folders must be named 0, 1, 2, ...; found {bad[:3]}."
            )
        examples = [_read_example(folder / n) for n in sorted(names, key=int)]
        images = (
            np.stack([e[0] for e in examples])
            if examples
            else np.zeros((0, WORD_LENGTH, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        )
        labels = (
            np.stack([e[1] for e in examples]) if examples else np.zeros((0, WORD_LENGTH), np.int64)
        )
        check_labels(labels, f"'{folder}'")
        out[split] = (images, labels.astype(np.uint8))
    return out

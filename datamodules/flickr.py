"""MIRFLICKR-25000 multi-label tagging (Huiskes and Lew 2008), as the paper's Flickr experiment.

Layout read (the two official zips unpacked side by side, or any folder of annotations)::

    <root>/im1.jpg .. im25000.jpg            (or <root>/mirflickr/im*.jpg, as the zip unpacks)
    <annotation_dir>/animals.txt ..          24 "potential" labels, 1-based image ids, one a line
    <annotation_dir>/baby_r1.txt ..          14 "relevant" labels, same format

``annotation_dir`` defaults to the first of ``<root>/annotations``,
``<root>/mirflickr25k_annotations_v080``, ``<root>`` and ``<image folder>/annotations`` that holds
an annotation file. The 38 binary variables are :data:`MIRFLICKR_TAGS`, in that order. The
paper's split is images 1-10,000 for training and 10,001-20,000 for testing; 20,001-25,000
serve for validation.

Every image is decoded once the same way (:func:`decode_image`: RGB, shorter side resized to
``resize`` (256) with bilinear filtering, centre ``resize`` x ``resize`` crop, uint8), then cropped
to ``image_size`` (224): a random crop plus a random horizontal flip for training, the centre
crop otherwise, and normalised with the ImageNet mean and std. With ``pack_hdf5=True`` the
decoded 256x256 images are written once to one HDF5 file and read from there, which spares
the JPEG decoding at every epoch; DataLoader workers prepare the next batches in the background.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.errors import DatasetNotFoundError
from datamodules.missing import HiddenLabels, MissingLabels
from structlight.sampling import EpochShuffleSampler

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIRFLICKR_POTENTIAL",
    "MIRFLICKR_RELEVANT",
    "MIRFLICKR_TAGS",
    "MirFlickrDataModule",
    "MirFlickrDataset",
    "SkippingCollate",
    "decode_image",
    "pack_mirflickr_hdf5",
    "read_mirflickr_labels",
]

#: The 24 "potential" labels: ``<name>.txt``.
MIRFLICKR_POTENTIAL: tuple[str, ...] = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
)  # fmt: skip
#: The 14 labels with a "relevant" annotation: ``<name>_r1.txt``.
MIRFLICKR_RELEVANT: tuple[str, ...] = (
    "baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
    "portrait", "river", "sea", "tree",
)  # fmt: skip
#: The 38 binary variables in the fixed column order of the label matrix: the 24 potential
#: labels, then the 14 relevant ones as ``<name>_r1``. Each name is its annotation file's stem.
MIRFLICKR_TAGS: tuple[str, ...] = MIRFLICKR_POTENTIAL + tuple(f"{t}_r1" for t in MIRFLICKR_RELEVANT)

#: ImageNet channel mean and standard deviation (RGB, pixel values in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
_NAME = "MIRFLICKR-25000"
_IMAGES_REMEDY = (
    "Download mirflickr25k.zip from https://press.liacs.nl/mirflickr/ and unzip it so that "
    "im1.jpg .. im25000.jpg lie in root (or in root/mirflickr), or pass the folder that holds "
    "them as root."
)
_ANNOTATIONS_REMEDY = (
    "They come in mirflickr25k_annotations_v080.zip from https://press.liacs.nl/mirflickr/; "
    "unzip it to root/annotations or pass its folder as annotation_dir."
)
_IMAGE_RE = re.compile(r"^im([1-9]\d*)\.jpg$")
#: Format tag written into packed HDF5 files; a file without it was not written by us.
_HDF5_FORMAT = "structlight-mirflickr-v1"
#: Ids shown in an error message that lists offending images.
_SHOW = 5


def _image_path(image_dir: Path, image_id: int) -> Path:
    return image_dir / f"im{image_id}.jpg"


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_SHOW])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


def _read_id_file(path: Path) -> list[tuple[int, int]]:
    """Read one annotation file: ``(line number, image id)`` for each non-blank line.

    Raises:
        ValueError: a line that is not a positive integer (file, line and content are named).
    """
    entries: list[tuple[int, int]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            if not text.isdigit() or int(text) < 1:
                raise ValueError(
                    f"MIRFLICKR annotation file '{path}', line {lineno}: expected a 1-based image "
                    f"id (a positive integer), got {text[:40]!r}"
                )
            entries.append((lineno, int(text)))
    return entries


def _read_annotations(annotation_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """Read all 38 annotation files; raise one error naming every missing file."""
    annotation_dir = Path(annotation_dir)
    if not annotation_dir.is_dir():
        raise DatasetNotFoundError(f"{_NAME} annotations", annotation_dir, _ANNOTATIONS_REMEDY)
    missing = [
        str(annotation_dir / f"{tag}.txt")
        for tag in MIRFLICKR_TAGS
        if not (annotation_dir / f"{tag}.txt").is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{_NAME}: {len(missing)} of the 38 annotation files are missing: {', '.join(missing)}"
            f". Expected the 24 potential-label files ({MIRFLICKR_POTENTIAL[0]}.txt .. "
            f"{MIRFLICKR_POTENTIAL[-1]}.txt) and the 14 relevant ones "
            f"({MIRFLICKR_RELEVANT[0]}_r1.txt .. {MIRFLICKR_RELEVANT[-1]}_r1.txt). "
            + _ANNOTATIONS_REMEDY
        )
    return {tag: _read_id_file(annotation_dir / f"{tag}.txt") for tag in MIRFLICKR_TAGS}


def read_mirflickr_labels(annotation_dir: str | Path, num_images: int = 25000) -> np.ndarray:
    """Read the 38-tag label matrix from the MIRFLICKR annotation files.

    Args:
        annotation_dir: folder holding ``<tag>.txt`` for every tag of :data:`MIRFLICKR_TAGS`
            (1-based image ids, one a line; blank lines are ignored).
        num_images: number of images; ids must lie in ``1..num_images``.

    Returns:
        ``(num_images, 38)`` uint8; row ``i`` is image ``im{i+1}.jpg``, column ``j`` is
        ``MIRFLICKR_TAGS[j]``.

    Raises:
        DatasetNotFoundError: ``annotation_dir`` does not exist.
        FileNotFoundError: annotation files are missing (all of them are named).
        ValueError: a line is not an id, or an id lies outside ``1..num_images``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    annotation_dir = Path(annotation_dir)
    labels = np.zeros((num_images, len(MIRFLICKR_TAGS)), dtype=np.uint8)
    for column, (tag, entries) in enumerate(_read_annotations(annotation_dir).items()):
        for lineno, image_id in entries:
            if image_id > num_images:
                raise ValueError(
                    f"MIRFLICKR annotation file '{annotation_dir / f'{tag}.txt'}', line {lineno}: "
                    f"image id {image_id} is outside 1..{num_images}"
                )
        ids = np.fromiter((i for _, i in entries), dtype=np.int64, count=len(entries))
        labels[ids - 1, column] = 1
    return labels


def decode_image(path: str | Path, resize: int = 256) -> Tensor:
    """Decode an image the way both the JPEG and the HDF5 path store it.

    RGB; the shorter side is resized to ``resize`` (bilinear, antialiased, the longer side
    ``int(resize * long / short)`` as torchvision's ``Resize``), then the centre
    ``resize`` x ``resize`` square is cropped (torchvision's ``CenterCrop`` rounding).

    Args:
        path: an image file PIL can read.
        resize: side of the square output.

    Returns:
        ``(3, resize, resize)`` uint8.

    Raises:
        OSError, ValueError, SyntaxError: PIL cannot read the file.
    """
    with Image.open(path) as img:
        img = img.convert("RGB")
    width, height = img.size
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - resize) / 2.0))
    top = int(round((size[1] - resize) / 2.0))
    img = img.crop((left, top, left + resize, top + resize))
    return torch.from_numpy(
        np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    )


def _crop_normalise(image: Tensor | np.ndarray, image_size: int, train: bool) -> Tensor:
    """Crop a decoded ``(3, R, R)`` uint8 image and normalise it.

    Train: a uniformly random ``image_size`` crop and a horizontal flip with probability 1/2
    (torch's RNG, so DataLoader workers draw independent crops). Otherwise the centre crop.
    The arithmetic runs in NumPy, single-threaded: per image, torch's intra-op threads cost
    far more than they save (badly so on a busy machine when ``num_workers=0``).

    Returns:
        ``(3, image_size, image_size)`` float32, ImageNet-normalised.
    """
    pixels = image.numpy() if isinstance(image, Tensor) else np.asarray(image)
    side = pixels.shape[-1]
    if train:
        top, left = (int(v) for v in torch.randint(0, side - image_size + 1, (2,)))
    else:
        top = left = int(round((side - image_size) / 2.0))
    crop = pixels[:, top : top + image_size, left : left + image_size]
    if train and bool(torch.rand(()) < 0.5):
        crop = crop[:, :, ::-1]
    out = crop.astype(np.float32)  # a fresh contiguous copy
    out /= 255.0
    out -= _MEAN
    out /= _STD
    return torch.from_numpy(out)


class MirFlickrDataset(Dataset):
    """Images and 38-tag labels of one MIRFLICKR split.

    Items are ``{"image": (3, image_size, image_size) float32, "label": (38,) int64,
    "index": () int64}``, where ``index`` is the item's position in this split (image id minus
    the split's first id for a contiguous split); the message store keys examples by it.

    Images come from ``hdf5_path`` when given (rows looked up by the file's ``ids`` data set;
    the handle is opened lazily in each worker process) and otherwise from the JPEG files. A
    JPEG that fails to decode gives ``{"skipped": path}`` instead of an item;
    :class:`SkippingCollate` drops it from the batch and reports it.

    Args:
        image_dir: folder of ``im<id>.jpg``.
        ids: ``(n,)`` 1-based image ids of the split.
        labels: ``(n, 38)`` label rows aligned with ``ids``.
        train: random crop and flip (otherwise the centre crop).
        image_size: side of the crops.
        resize: side of the decoded square (see :func:`decode_image`).
        hdf5_path: a file written by :func:`pack_mirflickr_hdf5` with the same ``resize``.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ids: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        *,
        train: bool = False,
        image_size: int = 224,
        resize: int = 256,
        hdf5_path: str | Path | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if self.ids.ndim != 1 or tuple(self.labels.shape) != (len(self.ids), len(MIRFLICKR_TAGS)):
            raise ValueError(
                f"MirFlickrDataset expects ids (n,) and labels (n, {len(MIRFLICKR_TAGS)}); got "
                f"ids {self.ids.shape} and labels {tuple(self.labels.shape)}"
            )
        if image_size > resize:
            raise ValueError(f"image_size ({image_size}) must not exceed resize ({resize})")
        self.train = train
        self.image_size = image_size
        self.resize = resize
        self.hdf5_path = None if hdf5_path is None else Path(hdf5_path)
        self._rows: np.ndarray | None = None
        if self.hdf5_path is not None:
            import h5py

            with h5py.File(self.hdf5_path, "r") as f:
                stored = np.asarray(f["ids"][:], dtype=np.int64)
            rows = np.searchsorted(stored, self.ids)
            rows = np.clip(rows, 0, max(len(stored) - 1, 0))
            absent = self.ids[stored[rows] != self.ids] if len(stored) else self.ids
            if len(absent):
                raise ValueError(
                    f"HDF5 file '{self.hdf5_path}' holds no image for ids {_listing(list(absent))}"
                    "; delete it to repack, or pass another hdf5_path"
                )
            self._rows = rows
        self._h5: Any = None
        self._h5_pid: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None  # h5py handles cannot cross processes; reopened lazily
        state["_h5_pid"] = None
        return state

    def _images(self) -> Any:
        """The HDF5 ``images`` data set, opened once per process (a forked worker reopens it)."""
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py

            self._h5 = h5py.File(self.hdf5_path, "r")
            self._h5_pid = os.getpid()
        return self._h5["images"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = int(self.ids[index])
        if self._rows is not None:
            image = self._images()[int(self._rows[index])]
        else:
            path = _image_path(self.image_dir, image_id)
            try:
                image = decode_image(path, self.resize)
            except Exception:  # any decode failure of one image: skip it, never crash a run
                return {"skipped": str(path)}
        return {
            "image": _crop_normalise(image, self.image_size, self.train),
            "label": self.labels[index],
            "index": torch.tensor(index, dtype=torch.long),
        }


class SkippingCollate:
    """Collate MIRFLICKR items, dropping the images that failed to decode.

    A batch is ``{"image": (B, 3, S, S), "label": (B, 38) long, "index": (B,) long}``; when
    items were dropped it also carries ``"skipped": list[str]`` (their paths), which
    :meth:`MirFlickrDataModule.on_before_batch_transfer` counts and removes. ``B`` may then be
    smaller than the batch size, even 0.

    Args:
        image_size: side of the images, for the shape of an all-skipped batch.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [item for item in items if "skipped" not in item]
        skipped = [item["skipped"] for item in items if "skipped" in item]
        if good:
            batch = default_collate(good)
        else:
            s = self.image_size
            batch = {
                "image": torch.empty(0, 3, s, s),
                "label": torch.empty(0, len(MIRFLICKR_TAGS), dtype=torch.long),
                "index": torch.empty(0, dtype=torch.long),
            }
        if skipped:
            batch["skipped"] = skipped
        return batch


def _check_images(paths: Iterable[Path], threads: int) -> list[tuple[Path, str]]:
    """Open every file's header with PIL (cheap: no pixel decoding); return the failures."""

    def probe(path: Path) -> tuple[Path, str] | None:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 -- the header parse is the check
        except Exception as err:  # report any unreadable file, whatever PIL says
            return path, f"{type(err).__name__}: {err}"
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return [r for r in pool.map(probe, paths, chunksize=64) if r is not None]


def pack_mirflickr_hdf5(
    image_dir: str | Path,
    ids: Sequence[int] | np.ndarray,
    hdf5_path: str | Path,
    resize: int = 256,
    threads: int = 1,
    progress: bool = True,
    block: int = 256,
) -> Path:
    """Decode, resize and crop images once into one HDF5 file.

    The file holds ``images``: ``(n, 3, resize, resize)`` uint8, one chunk per image, rows in
    the order of ``ids`` sorted; ``ids``: ``(n,)`` int64; attributes ``format`` and ``resize``.
    It is written to a temporary file next to ``hdf5_path`` and renamed when complete, so an
    interrupted run leaves no half-written file behind.

    Args:
        image_dir: folder of ``im<id>.jpg``.
        ids: 1-based image ids to pack.
        hdf5_path: the file to write.
        resize: side of the stored squares (see :func:`decode_image`).
        threads: decoding threads (PIL releases the GIL while decoding).
        progress: show a tqdm progress bar.
        block: images decoded per write.

    Returns:
        ``hdf5_path``.

    Raises:
        ValueError: an image cannot be decoded (the file and PIL's error are named).
    """
    import h5py
    from tqdm.auto import tqdm

    image_dir = Path(image_dir)
    hdf5_path = Path(hdf5_path)
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    hdf5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = hdf5_path.with_name(f"{hdf5_path.name}.tmp-{os.getpid()}")

    def load(image_id: int) -> Tensor:
        path = _image_path(image_dir, int(image_id))
        try:
            return decode_image(path, resize)
        except Exception as err:  # name the file, whatever PIL raised
            raise ValueError(
                f"{_NAME}: cannot decode image '{path}' while packing '{hdf5_path}' "
                f"({type(err).__name__}: {err}); replace or remove the file"
            ) from err

    try:
        with (
            h5py.File(tmp, "w") as f,
            ThreadPoolExecutor(max(1, threads)) as pool,
            tqdm(total=len(ids), desc=f"packing {hdf5_path.name}", disable=not progress) as bar,
        ):
            f.attrs["format"] = _HDF5_FORMAT
            f.attrs["resize"] = resize
            f.create_dataset("ids", data=ids)
            images = f.create_dataset(
                "images", shape=(len(ids), 3, resize, resize), dtype=np.uint8,
                chunks=(1, 3, resize, resize),
            )  # fmt: skip
            for start in range(0, len(ids), block):
                chunk = list(pool.map(load, ids[start : start + block]))
                images[start : start + len(chunk)] = torch.stack(chunk).numpy()
                bar.update(len(chunk))
        os.replace(tmp, hdf5_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return hdf5_path


def _check_hdf5(path: Path, resize: int, ids: np.ndarray) -> str | None:
    """Why a packed file cannot serve ``ids`` at ``resize`` (``None`` if it can)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != _HDF5_FORMAT or "images" not in f or "ids" not in f:
                return "it was not written by pack_mirflickr_hdf5"
            if int(f.attrs["resize"]) != resize:
                return f"it was packed with resize={int(f.attrs['resize'])}, not {resize}"
            absent = np.setdiff1d(ids, np.asarray(f["ids"][:]))
            if len(absent):
                return f"it holds no image for ids {_listing(list(absent))}"
    except OSError as err:
        return f"h5py cannot read it ({err})"
    return None


class MirFlickrDataModule(LightningDataModule):
    """MIRFLICKR-25000 with the 38 tags of :data:`MIRFLICKR_TAGS`, as the paper's Flickr task.

    Batches are ``{"image": (B, 3, image_size, image_size) float32 (ImageNet-normalised),
    "label": (B, 38) int64 in {0, 1}, "index": (B,) int64}`` with ``index`` the example's
    position in its split (image id minus the split's first id).

    The tree is checked in :meth:`prepare_data` (when packing) and :meth:`setup`, before any
    training step: a missing root or one without images raises :class:`DatasetNotFoundError`;
    a missing annotation file ``FileNotFoundError`` naming it; an annotation naming an id with
    no image, an id range beyond the images, or an image whose header PIL cannot read
    ``ValueError`` naming the file. A JPEG that still fails to decode during training is
    skipped, counted in :attr:`skipped_images` and reported with a warning.

    Args:
        root: folder of ``im1.jpg ..`` (or its parent, holding ``mirflickr/``).
        annotation_dir: folder of the 38 annotation files; ``None`` looks in
            ``root/annotations``, ``root/mirflickr25k_annotations_v080``, ``root`` and
            ``<image folder>/annotations``, in that order.
        batch_size: training batch size (the paper's 300).
        eval_batch_size: validation and test batch size; ``None`` uses ``batch_size``.
        num_workers: DataLoader worker processes, which decode the next batches while the
            model computes; also the number of threads that pack or check images.
        pack_hdf5: decode the images once into ``hdf5_path`` (in :meth:`prepare_data`, with a
            progress bar) and read them from there.
        hdf5_path: the packed file; ``None`` means ``root/mirflickr_<resize>.h5``. An existing
            file is reused if it was packed with the same ``resize`` and holds every split's
            ids; otherwise an error says so (delete it to repack).
        image_size: side of the crops fed to the network.
        resize: images are resized (shorter side) and centre-cropped to this square first.
        train_ids: ``(first, last)`` image ids of the training split, inclusive.
        val_ids: same for validation; ``None`` for no validation set.
        test_ids: same for the test split.
        num_images: use images ``1..num_images`` only (a limit for quick runs on the full
            tree); ``None`` takes the largest ``im<id>.jpg`` found. The label matrix has
            ``num_images`` rows; annotations of later ids are ignored, but every annotated id
            must still have its image.
        augment: random crops and flips for training (otherwise the centre crop).
        check_images: in :meth:`setup`, read every split image's header (cheap) so that an
            empty or non-image file fails before training rather than being skipped.
        pin_memory: page-locked batches for faster host-to-GPU copies; ``None``: if CUDA is
            available.
        prefetch_factor: batches each worker prepares ahead.
        shuffle_seed: base seed of the training order, a permutation per epoch seeded by
            ``shuffle_seed + epoch`` (:class:`structlight.sampling.EpochShuffleSampler`, so a
            resumed run sees the same batches); None: ``PL_GLOBAL_SEED`` (set by
            ``seed_everything``) when the training loader is made, else 0.
        missing_labels: hide some training tags (:class:`~datamodules.missing.MissingLabels`:
            as unobserved (-100), read as negatives, or discarding those images); None: every
            tag is present. Validation and test keep all tags.

    Raises:
        ValueError: bad arguments (sizes, id ranges that are empty or overlap the training
            split).
    """

    #: Number of binary output variables.
    num_labels: int = len(MIRFLICKR_TAGS)
    #: Names of the output variables, in column order.
    tags: tuple[str, ...] = MIRFLICKR_TAGS

    def __init__(
        self,
        root: str | Path,
        annotation_dir: str | Path | None = None,
        batch_size: int = 300,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pack_hdf5: bool = False,
        hdf5_path: str | Path | None = None,
        image_size: int = 224,
        resize: int = 256,
        train_ids: tuple[int, int] = (1, 10000),
        val_ids: tuple[int, int] | None = (20001, 25000),
        test_ids: tuple[int, int] = (10001, 20000),
        num_images: int | None = None,
        augment: bool = True,
        check_images: bool = True,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
        shuffle_seed: int | None = None,
        missing_labels: MissingLabels | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.missing_labels = missing_labels
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("image_size", image_size, 1),
            ("resize", resize, 1),
            ("prefetch_factor", prefetch_factor, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if eval_batch_size is not None and (
            isinstance(eval_batch_size, bool)
            or not isinstance(eval_batch_size, int)
            or eval_batch_size < 1
        ):
            raise ValueError(
                f"eval_batch_size must be None or an int >= 1, got {eval_batch_size!r}"
            )
        if shuffle_seed is not None and (
            isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)
        ):
            raise ValueError(f"shuffle_seed must be None or an int, got {shuffle_seed!r}")
        if image_size > resize:
            raise ValueError(f"image_size ({image_size}) must not exceed resize ({resize})")
        if num_images is not None and (
            isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1
        ):
            raise ValueError(f"num_images must be None or an int >= 1, got {num_images!r}")
        self.ranges: dict[str, tuple[int, int] | None] = {
            "train": self._check_range("train_ids", train_ids),
            "val": None if val_ids is None else self._check_range("val_ids", val_ids),
            "test": self._check_range("test_ids", test_ids),
        }
        train = self.ranges["train"]
        for split in ("val", "test"):
            other = self.ranges[split]
            if other is not None and other[0] <= train[1] and train[0] <= other[1]:
                raise ValueError(
                    f"{split}_ids={other} overlaps train_ids={train}: evaluation images must "
                    "not be trained on"
                )
        self.root = Path(os.path.expanduser(str(root)))
        self.annotation_dir = None if annotation_dir is None else Path(annotation_dir)
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.pack_hdf5 = pack_hdf5
        self.hdf5_path = (
            self.root / f"mirflickr_{resize}.h5" if hdf5_path is None else Path(hdf5_path)
        )
        self.image_size = image_size
        self.resize = resize
        self.num_images = num_images
        self.augment = augment
        self.check_images = check_images
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.shuffle_seed = shuffle_seed
        #: Images skipped during iteration because they failed to decode.
        self.skipped_images = 0
        #: Their paths, in the order met.
        self.skipped_paths: list[str] = []
        #: ``(num_images, 38)`` uint8 label matrix, set by :meth:`setup`.
        self.labels: np.ndarray | None = None
        self.image_dir: Path | None = None
        self.train_dataset: MirFlickrDataset | None = None
        self.val_dataset: MirFlickrDataset | None = None
        self.test_dataset: MirFlickrDataset | None = None
        self._images_checked = False

    @property
    def num_train_examples(self) -> int:
        """Size of the training split (known before :meth:`setup`; sizes the message store)."""
        first, last = self.ranges["train"]  # type: ignore[misc]
        n = last - first + 1
        if self.missing_labels is not None and self.missing_labels.handling == "discard":
            n -= int(self.missing_labels.draw(n, self.num_labels).any(1).sum())
        return n

    @property
    def has_missing_labels(self) -> bool:
        """Whether training tags include unobserved ones (-100): the model then keeps a second
        message store (``StructuredHead.missing_labels``)."""
        return self.missing_labels is not None and self.missing_labels.handling == "latent"

    @staticmethod
    def _check_range(name: str, value: Sequence[int]) -> tuple[int, int]:
        try:
            first, last = (int(v) for v in value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be a pair (first, last) of image ids, got {value!r}"
            ) from err
        if not 1 <= first <= last:
            raise ValueError(f"{name} must satisfy 1 <= first <= last, got {value!r}")
        return first, last

    # ------------------------------------------------------------------ checking the tree
    def _find_images(self) -> tuple[Path, set[int]]:
        """The folder of ``im<id>.jpg`` and the ids present in it."""
        if not self.root.is_dir():
            raise DatasetNotFoundError(_NAME, self.root, _IMAGES_REMEDY)
        for folder in (self.root, self.root / "mirflickr"):
            if not folder.is_dir():
                continue
            with os.scandir(folder) as entries:
                ids = {int(m.group(1)) for e in entries if (m := _IMAGE_RE.match(e.name))}
            if ids:
                return folder, ids
        raise DatasetNotFoundError(
            _NAME,
            self.root,
            f"It holds no im<id>.jpg files (nor does its mirflickr/). {_IMAGES_REMEDY}",
        )

    def _find_annotations(self, image_dir: Path) -> Path:
        if self.annotation_dir is not None:
            return self.annotation_dir  # _read_annotations names what is missing there
        candidates = [
            self.root / "annotations",
            self.root / "mirflickr25k_annotations_v080",
            self.root,
            image_dir / "annotations",
        ]
        for folder in candidates:
            if any((folder / f"{tag}.txt").is_file() for tag in MIRFLICKR_TAGS):
                return folder
        raise DatasetNotFoundError(
            f"{_NAME} annotations",
            self.root,
            f"No annotation files ({MIRFLICKR_TAGS[0]}.txt, ...) in any of "
            f"{', '.join(str(c) for c in dict.fromkeys(candidates))}. {_ANNOTATIONS_REMEDY}",
        )

    def _split_ids(self) -> dict[str, np.ndarray]:
        return {
            split: np.arange(r[0], r[1] + 1, dtype=np.int64)
            for split, r in self.ranges.items()
            if r is not None
        }

    def _scan(self) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
        """Check the whole tree; return the image folder, the label matrix and the split ids."""
        image_dir, present = self._find_images()
        annotation_dir = self._find_annotations(image_dir)
        annotations = _read_annotations(annotation_dir)
        num_images = max(present) if self.num_images is None else self.num_images
        for split, r in self.ranges.items():
            if r is not None and r[1] > num_images:
                raise ValueError(
                    f"{split}_ids={r} reaches beyond the {num_images} images of '{image_dir}' "
                    f"(im1.jpg .. im{num_images}.jpg); pass train_ids, val_ids and test_ids "
                    "that fit a smaller tree"
                )
        labels = np.zeros((num_images, len(MIRFLICKR_TAGS)), dtype=np.uint8)
        for column, (tag, entries) in enumerate(annotations.items()):
            for lineno, image_id in entries:
                if image_id not in present:
                    raise ValueError(
                        f"MIRFLICKR annotation file '{annotation_dir / f'{tag}.txt'}', line "
                        f"{lineno}, names image id {image_id}, but there is no image "
                        f"'{_image_path(image_dir, image_id)}'"
                    )
                if image_id <= num_images:  # beyond: an image the user left out
                    labels[image_id - 1, column] = 1
        splits = self._split_ids()
        used = np.unique(np.concatenate(list(splits.values())))
        absent = [str(_image_path(image_dir, int(i))) for i in used if int(i) not in present]
        if absent:
            raise FileNotFoundError(
                f"{_NAME}: {len(absent)} images of the splits are missing: {_listing(absent)}"
            )
        self.image_dir = image_dir
        self.labels = labels
        return image_dir, labels, splits

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Check the tree and, with ``pack_hdf5``, pack the images once (one process only)."""
        if not self.pack_hdf5:
            return
        image_dir, _, splits = self._scan()
        used = np.unique(np.concatenate(list(splits.values())))
        if self.hdf5_path.exists():
            reason = _check_hdf5(self.hdf5_path, self.resize, used)
            if reason is not None:
                raise ValueError(
                    f"HDF5 file '{self.hdf5_path}' cannot be used: {reason}. Delete it to repack, "
                    "or pass another hdf5_path"
                )
            return
        pack_mirflickr_hdf5(
            image_dir, used, self.hdf5_path, resize=self.resize, threads=self.num_workers
        )

    def setup(self, stage: str | None = None) -> None:
        """Check the tree, read the labels and build the split data sets.

        Args:
            stage: Lightning's stage (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``);
                every split is built regardless (cheap).
        """
        image_dir, labels, splits = self._scan()
        hdf5_path: Path | None = None
        if self.pack_hdf5:
            used = np.unique(np.concatenate(list(splits.values())))
            if not self.hdf5_path.exists():
                raise FileNotFoundError(
                    f"HDF5 file '{self.hdf5_path}' does not exist; call prepare_data() first "
                    "(the Trainer does), which packs it"
                )
            reason = _check_hdf5(self.hdf5_path, self.resize, used)
            if reason is not None:
                raise ValueError(f"HDF5 file '{self.hdf5_path}' cannot be used: {reason}")
            hdf5_path = self.hdf5_path
        elif self.check_images and not self._images_checked:
            used = np.unique(np.concatenate(list(splits.values())))
            bad = _check_images((_image_path(image_dir, int(i)) for i in used), self.num_workers)
            if bad:
                raise ValueError(
                    f"{_NAME}: {len(bad)} images cannot be read: "
                    + _listing([f"'{p}' ({why})" for p, why in bad])
                    + ". Replace or remove them (and their ids from the split ranges)"
                )
            self._images_checked = True  # setup("fit") then setup("test"): check once

        def dataset(split: str, train: bool) -> MirFlickrDataset:
            ids = splits[split]
            return MirFlickrDataset(
                image_dir, ids, labels[ids - 1], train=train, image_size=self.image_size,
                resize=self.resize, hdf5_path=hdf5_path,
            )  # fmt: skip

        self.train_dataset = dataset("train", self.augment)
        if self.missing_labels is not None:
            self.train_dataset = HiddenLabels(self.train_dataset, self.missing_labels)
        self.val_dataset = dataset("val", False) if "val" in splits else None
        self.test_dataset = dataset("test", False)

    def _loader(self, data: MirFlickrDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if data is None:
            raise RuntimeError("MirFlickrDataModule: call setup() before asking for a dataloader")
        workers = self.num_workers
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(data, self.shuffle_seed) if shuffle else None,
            num_workers=workers,
            collate_fn=SkippingCollate(self.image_size),
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (random crops and flips unless ``augment=False``)."""
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (centre crops); an empty list when ``val_ids`` is ``None``."""
        if self.ranges["val"] is None:
            return []
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches (centre crops)."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test batches."""
        return self.test_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count and report the images a batch skipped, and drop the ``skipped`` key.

        Lightning calls this in the main process for every batch (unless the LightningModule
        overrides the same hook); call it yourself when iterating the loaders by hand.
        """
        if isinstance(batch, dict) and "skipped" in batch:
            for path in batch.pop("skipped"):
                self.skipped_images += 1
                self.skipped_paths.append(path)
                warnings.warn(
                    f"{_NAME}: skipped unreadable image '{path}' ({self.skipped_images} skipped "
                    "so far)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return batch

    def iter_split(self, split: str = "train") -> Iterator[dict[str, Tensor]]:
        """Iterate one split's batches outside a Trainer, with skipped images counted.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.

        Yields:
            Batches as described in the class docstring.
        """
        loaders = {
            "train": self.train_dataloader,
            "val": self.val_dataloader,
            "test": self.test_dataloader,
        }
        if split not in loaders:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        for batch in loaders[split]():
            yield self.on_before_batch_transfer(batch, 0)

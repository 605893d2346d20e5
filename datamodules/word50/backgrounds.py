"""Natural photographs that ship inside packages, used as Word50 backgrounds (no downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_BACKGROUNDS", "Backgrounds", "load_backgrounds"]

DEFAULT_BACKGROUNDS: tuple[str, ...] = (
    "skimage:astronaut", "skimage:brick", "skimage:camera", "skimage:chelsea", "skimage:coffee",
    "skimage:coins", "skimage:grass", "skimage:gravel", "skimage:hubble_deep_field",
    "skimage:moon", "skimage:rocket",
)  # fmt: skip
"""Photographs bundled in scikit-image's wheel (a hard dependency, so every install has them).
Left out: images with text (``text``, ``page``), drawings and synthetic images. scikit-learn's
``sklearn:china`` and ``sklearn:flower`` can be added by name where scikit-learn is installed."""

_MIN_SIDE = 200  # photographs must be at least this big for the largest background zoom
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for RGB -> grey


@dataclass(frozen=True)
class Backgrounds:
    """Grey photographs stored flat so that a batch of patches is one gather.

    Attributes:
        flat: all photographs' pixels, row-major, one after another, float32 in [0, 1].
        offset: ``(P,)`` int64 start of each photograph in ``flat``.
        height: ``(P,)`` int64.
        width: ``(P,)`` int64.
        names: ``P`` names such as ``"skimage:camera"``.
    """

    flat: np.ndarray
    offset: np.ndarray
    height: np.ndarray
    width: np.ndarray
    names: tuple[str, ...]


def _load(name: str) -> np.ndarray:
    package, _, image = name.partition(":")
    if package == "skimage":
        import skimage.data

        loader = getattr(skimage.data, image, None)
        if loader is None or not callable(loader):
            raise ValueError(f"Unknown background {name!r}: skimage.data has no image {image!r}.")
        return np.asarray(loader())
    if package == "sklearn":
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as err:
            raise ImportError(
                f"Background {name!r} needs scikit-learn (pip install scikit-learn)."
            ) from err
        return np.asarray(load_sample_image(image if "." in image else f"{image}.jpg"))
    raise ValueError(
        f"Background {name!r} must be 'skimage:<name>' (scikit-image's bundled images) or "
        "'sklearn:<name>' (scikit-learn's sample images)."
    )


def _to_grey(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    if image.ndim == 3:
        image = image[..., :3]
        image = sum(w * image[..., c] for c, w in enumerate(_LUMA))
    if image.ndim != 2:
        raise ValueError(f"Expected a grey or RGB image, got shape {image.shape}.")
    return (image / 255.0).astype(np.float32)


def load_backgrounds(names: Sequence[str] | None = None) -> Backgrounds:
    """Load photographs as grey float images.

    Args:
        names: ``"skimage:<name>"`` or ``"sklearn:<name>"`` entries; ``None`` = the defaults.

    Returns:
        The photographs, in the order given.

    Raises:
        ValueError: on an unknown name or a photograph smaller than 200x200.
    """
    names = tuple(DEFAULT_BACKGROUNDS if names is None else names)
    if not names:
        raise ValueError("At least one background photograph is needed.")
    greys = []
    for name in names:
        grey = _to_grey(_load(name))
        if min(grey.shape) < _MIN_SIDE:
            raise ValueError(
                f"Background {name!r} is {grey.shape[0]}x{grey.shape[1]}; at least "
                f"{_MIN_SIDE}x{_MIN_SIDE} is needed."
            )
        greys.append(grey)
    sizes = np.array([g.size for g in greys], dtype=np.int64)
    return Backgrounds(
        flat=np.concatenate([g.ravel() for g in greys]),
        offset=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        height=np.array([g.shape[0] for g in greys], dtype=np.int64),
        width=np.array([g.shape[1] for g in greys], dtype=np.int64),
        names=names,
    )

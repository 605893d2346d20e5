#!/usr/bin/env python3
"""Write a tiny fake MIRFLICKR-25000 tree for tests (seeded, so it is the same every time).

Layout, as the real data set::

    <root>/im1.jpg .. im<N>.jpg         small random colour JPEGs of varied size and aspect
    <root>/annotations/<tag>.txt        the 38 annotation files, 1-based ids, one a line

Each image gets each of the 24 potential tags with probability 0.3; a relevant tag
``<name>_r1`` is given to half of the images that have ``<name>``, as in the real data, where
the relevant annotations are a subset of the potential ones. Image 1 always has ``animals``,
``dog`` and ``dog_r1`` and image 2 none of the 38 tags, so tests can check known ids.

Usage::

    python tests/data/mirflickr/make_fake.py OUT_DIR [--num-images 30] [--train-end 10]
        [--test-end 20] [--seed 0]

The split boundaries mirror MIRFLICKR's 1-10,000 / 10,001-20,000 / 20,001-25,000 in small:
train ``1..train_end``, test ``train_end+1..test_end``, validation ``test_end+1..num_images``;
:func:`make_fake_mirflickr` returns them ready for ``MirFlickrDataModule``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

POTENTIAL = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
)  # fmt: skip
RELEVANT = (
    "baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
    "portrait", "river", "sea", "tree",
)  # fmt: skip
TAGS = POTENTIAL + tuple(f"{t}_r1" for t in RELEVANT)


@dataclass
class FakeMirFlickr:
    """What :func:`make_fake_mirflickr` wrote.

    Attributes:
        root: the tree's root (holds the images).
        annotation_dir: ``root / "annotations"``.
        labels: ``(num_images, 38)`` uint8, the label matrix the annotation files encode.
        splits: ``{"train_ids": (first, last), "test_ids": ..., "val_ids": ...}``.
    """

    root: Path
    annotation_dir: Path
    labels: np.ndarray
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)


def make_fake_mirflickr(
    root: str | Path,
    num_images: int = 30,
    train_end: int = 10,
    test_end: int = 20,
    seed: int = 0,
    min_side: int = 24,
    max_side: int = 64,
    informative: bool = False,
) -> FakeMirFlickr:
    """Write the fake tree.

    Args:
        root: output folder (created).
        num_images: number of images, ``im1.jpg .. im<num_images>.jpg``.
        train_end: last training id.
        test_end: last test id; validation is ``test_end + 1 .. num_images``.
        seed: seed of everything random.
        min_side: smallest image side in pixels.
        max_side: largest image side in pixels.
        informative: draw each image's potential tags as bright cells of a 5 x 5 grid (48 x 48
            pixels, with noise), so that a model can learn the tags from the pixels (the
            relevant ``_r1`` tags stay invisible); False: smooth random colours.

    Returns:
        The paths, the label matrix and the split ranges.
    """
    if not 1 <= train_end < test_end < num_images:
        raise ValueError(
            f"need 1 <= train_end < test_end < num_images, got {train_end}, {test_end}, "
            f"{num_images}"
        )
    rng = np.random.default_rng(seed)
    root = Path(root)
    annotation_dir = root / "annotations"
    annotation_dir.mkdir(parents=True, exist_ok=True)

    potential = (rng.random((num_images, len(POTENTIAL))) < 0.3).astype(np.uint8)
    index = {t: i for i, t in enumerate(POTENTIAL)}
    relevant = np.stack(
        [potential[:, index[t]] & (rng.random(num_images) < 0.5) for t in RELEVANT], axis=1
    ).astype(np.uint8)
    labels = np.concatenate([potential, relevant], axis=1)
    labels[0] = 0
    labels[0, [TAGS.index("animals"), TAGS.index("dog"), TAGS.index("dog_r1")]] = 1
    labels[1] = 0

    for column, tag in enumerate(TAGS):
        ids = np.flatnonzero(labels[:, column]) + 1
        (annotation_dir / f"{tag}.txt").write_text("".join(f"{i}\n" for i in ids))

    for image_id in range(1, num_images + 1):
        if informative:
            cells = np.zeros(25)
            cells[: len(POTENTIAL)] = (
                potential[image_id - 1] if image_id > 2 else labels[image_id - 1, : len(POTENTIAL)]
            )
            grid = np.kron(cells.reshape(5, 5), np.ones((9, 9)))  # 45 x 45
            pixels = np.pad(grid, ((1, 2), (1, 2)))[..., None] * 160 + 40
            pixels = np.repeat(pixels, 3, axis=2) + rng.normal(0, 40, size=(48, 48, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / f"im{image_id}.jpg", quality=90)
            continue
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        # A smooth colour gradient plus noise: compresses like a photograph, not like noise.
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-200, 200, size=(2, 3))
        pixels = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        pixels = pixels + rng.normal(0, 20, size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(root / f"im{image_id}.jpg", quality=90)

    splits = {
        "train_ids": (1, train_end),
        "test_ids": (train_end + 1, test_end),
        "val_ids": (test_end + 1, num_images),
    }
    return FakeMirFlickr(root=root, annotation_dir=annotation_dir, labels=labels, splits=splits)


def main(args: list[str] | None = None) -> None:
    """Command-line entry point: write the tree into the folder given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--num-images", type=int, default=30)
    parser.add_argument("--train-end", type=int, default=10)
    parser.add_argument("--test-end", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(args)
    fake = make_fake_mirflickr(ns.root, ns.num_images, ns.train_end, ns.test_end, ns.seed)
    print(f"wrote {ns.num_images} images and 38 annotation files to {fake.root}; {fake.splits}")


if __name__ == "__main__":
    main()

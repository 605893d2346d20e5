"""The VarWords generator: English words of 2 to 14 letters, rendered like Word50's characters.

Each character goes through Word50's pipeline (:func:`datamodules.word50.generate.render_characters`:
a font glyph warped at random and alpha-matted onto a patch of a natural photograph, plus pixel
noise), so a VarWords character looks like a Word50 one; only the words differ: every word of
the vocabulary (by default the shipped English word list, see
:func:`~datamodules.varwords.constants.english_words`) occurs equally often in each split. All
random numbers come from one ``numpy.random.SeedSequence(seed)`` drawn in a fixed order, so the
same seed, vocabulary, fonts and photographs give byte-identical files.

Run ``python -m datamodules.varwords data/varwords`` to generate the default data set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules._common import atomic_h5, word_order, write_header
from datamodules.varwords.constants import (
    ALPHABET,
    FORMAT_NAME,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    MAX_LENGTH,
    MIN_LENGTH,
    SPLITS,
    english_words,
)
from datamodules.word50.backgrounds import load_backgrounds
from datamodules.word50.generate import Word50Difficulty, render_characters
from datamodules.word50.glyphs import font_glyph_bank, resolve_fonts

__all__ = ["generate_varwords", "generator_config", "vocabulary"]


def _check_length_range(min_length: int, max_length: int) -> None:
    for name, value in (("min_length", min_length), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1. Got {value!r}.")
    if min_length > max_length:
        raise ValueError(
            f"min_length must be <= max_length. Got min_length={min_length}, "
            f"max_length={max_length}."
        )


def vocabulary(
    words: Sequence[str] | None = None,
    min_length: int = MIN_LENGTH,
    max_length: int = MAX_LENGTH,
) -> tuple[str, ...]:
    """The words to generate, checked.

    Args:
        words: lower-case words a-z, distinct; None: the shipped English word list, restricted
            to ``min_length..max_length`` letters.
        min_length, max_length: the word lengths allowed (``max_length`` is the models'
            number of positions ``N_max``).

    Returns:
        The words, in the given (or the list's) order.

    Raises:
        ValueError: a bad length range, an empty vocabulary, a word that is not lower-case
            a-z, is outside the length range (explicit ``words`` only), or occurs twice.
    """
    _check_length_range(min_length, max_length)
    if words is None:
        chosen = tuple(w for w in english_words() if min_length <= len(w) <= max_length)
        if not chosen:
            raise ValueError(
                f"The English word list has no words of {min_length} to {max_length} letters."
            )
        return chosen
    chosen = tuple(words)
    if not chosen:
        raise ValueError("words must not be empty.")
    for w in chosen:
        if not isinstance(w, str) or not w or any(c not in ALPHABET for c in w):
            raise ValueError(f"Every word must be lower-case letters a-z. Got {w!r}.")
        if not min_length <= len(w) <= max_length:
            raise ValueError(
                f"Every word must have {min_length} to {max_length} letters (min_length, "
                f"max_length). Got {w!r} ({len(w)} letters)."
            )
    if len(set(chosen)) != len(chosen):
        seen: set[str] = set()
        dup = next(w for w in chosen if w in seen or seen.add(w))
        raise ValueError(f"words must be distinct. {dup!r} occurs more than once.")
    return chosen


def _digest(words: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()


def _check_counts(counts: dict[str, Any]) -> None:
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_{split} must be a non-negative integer. Got {n!r}.")
    if sum(counts.values()) == 0:
        raise ValueError("At least one of num_train, num_val, num_test must be positive.")


def generator_config(
    *,
    seed: int = 0,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    words: Sequence[str] | None = None,
    min_length: int = MIN_LENGTH,
    max_length: int = MAX_LENGTH,
    fonts: Sequence[str] | None = None,
    font_dir: str | Path | None = None,
    backgrounds: Sequence[str] | None = None,
    difficulty: Word50Difficulty | None = None,
) -> dict[str, Any]:
    """The generator's arguments in the canonical JSON form stored in the file's ``config``.

    The vocabulary is recorded by its size and SHA-256 (the words themselves are in the file's
    ``words`` dataset). Two calls with equal configs (and the same font files and photographs)
    give the same data.

    Raises:
        ValueError: bad counts, words, length range or seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Got {seed!r}.")
    _check_counts({"train": num_train, "val": num_val, "test": num_test})
    vocab = vocabulary(words, min_length, max_length)
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_words": len(vocab),
        "words_sha256": _digest(vocab),
        "min_length": min_length,
        "max_length": max_length,
        "fonts": None if fonts is None else [str(f) for f in fonts],
        "font_dir": None if font_dir is None else str(font_dir),
        "backgrounds": None if backgrounds is None else list(backgrounds),
        "difficulty": (difficulty or Word50Difficulty()).to_dict(),
    }


def generate_varwords(
    path: str | Path,
    *,
    seed: int = 0,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    words: Sequence[str] | None = None,
    min_length: int = MIN_LENGTH,
    max_length: int = MAX_LENGTH,
    fonts: Sequence[str] | None = None,
    font_dir: str | Path | None = None,
    backgrounds: Sequence[str] | None = None,
    difficulty: Word50Difficulty | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate VarWords and write it to one HDF5 file.

    The file holds, per split (``train``, ``val``, ``test``): ``images`` uint8
    ``(C, 28, 28)`` (0 = black) and ``labels`` uint8 ``(C,)`` in 0..25, the ``C`` characters of
    the split's words one after another; ``offsets`` int64 ``(n + 1,)`` (word ``i`` is
    characters ``offsets[i]:offsets[i + 1]``); ``word_ids`` uint32 ``(n,)`` and ``glyph_ids``
    uint32 ``(C,)`` (into ``glyph_sources``). At the top level: ``words`` and
    ``glyph_sources`` (strings) and the attributes ``format``, ``generator_version``,
    ``seed``, ``alphabet``, ``min_length``, ``max_length``, ``fonts``, ``font_sha256``,
    ``backgrounds``, ``difficulty`` and ``config`` (JSON). It is written to a temporary file in
    the same folder and renamed, so an interrupted run leaves nothing half-written.

    Args:
        path: the ``.h5`` file to write; missing parent folders are created.
        seed: the seed; same seed + same config + same font files = byte-identical data.
        num_train, num_val, num_test: words per split; every word of the vocabulary occurs
            equally often (``n // len(words)`` times, the first ``n % len(words)`` once more).
        words: lower-case words a-z; default the shipped English word list (3,194 words of
            2 to 14 letters, SCOWL), restricted to ``min_length..max_length`` letters.
        min_length, max_length: the word lengths (default 2 and 14).
        fonts: font files or matplotlib font names; default Word50's 22 matplotlib faces.
        font_dir: a folder of extra fonts to add.
        backgrounds: photograph names; default Word50's ``DEFAULT_BACKGROUNDS``.
        difficulty: perturbation ranges; default Word50's calibrated ``Word50Difficulty()``.
        progress: show a progress bar.
        overwrite: replace an existing file (otherwise an existing file is an error).

    Returns:
        The path written.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
        ValueError: on bad words, lengths, counts or difficulty.
    """
    path = Path(path)
    difficulty = difficulty or Word50Difficulty()
    config = generator_config(
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        words=words,
        min_length=min_length,
        max_length=max_length,
        fonts=fonts,
        font_dir=font_dir,
        backgrounds=backgrounds,
        difficulty=difficulty,
    )
    vocab = vocabulary(words, min_length, max_length)
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it.")
    bank = font_glyph_bank(resolve_fonts(fonts, font_dir), difficulty.stroke_steps)
    photos = load_backgrounds(backgrounds)
    letters = [np.array([ALPHABET.index(c) for c in w], dtype=np.int64) for w in vocab]
    word_lengths = np.array([len(w) for w in vocab], dtype=np.int64)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    split_seeds = np.random.SeedSequence(seed).spawn(len(SPLITS))

    # word ids first (cheap), so the progress bar knows the number of characters
    plans = {}
    for split, split_seed in zip(SPLITS, split_seeds, strict=True):
        param_seed, noise_seed = split_seed.spawn(2)
        rng = np.random.default_rng(param_seed)
        plans[split] = (rng, noise_seed, word_order(rng, counts[split], len(vocab)))
    total = sum(int(word_lengths[ids].sum()) for _, _, ids in plans.values())

    with atomic_h5(path, total, f"VarWords -> {path.name}", progress) as (f, bar):
        write_header(
            f, format_name=FORMAT_NAME, version=GENERATOR_VERSION, seed=seed, alphabet=ALPHABET,
            extra={"min_length": min_length, "max_length": max_length}, source="fonts",
            bank=bank, photos=photos, difficulty=difficulty, config=config, words=vocab,
        )  # fmt: skip
        for split in SPLITS:
            rng, noise_seed, word_ids = plans[split]
            labels = (
                np.concatenate([letters[i] for i in word_ids])
                if len(word_ids)
                else np.zeros(0, dtype=np.int64)
            )
            offsets = np.zeros(len(word_ids) + 1, dtype=np.int64)
            np.cumsum(word_lengths[word_ids], out=offsets[1:])
            images, glyphs = render_characters(
                labels, bank, photos, difficulty, rng, np.random.default_rng(noise_seed), bar
            )
            g = f.create_group(split)
            # contiguous, uncompressed: a batch is a few cheap reads (noise does not compress)
            g.create_dataset("images", data=images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE))
            g.create_dataset("labels", data=labels.astype(np.uint8))
            g.create_dataset("offsets", data=offsets)
            g.create_dataset("word_ids", data=word_ids.astype(np.uint32))
            g.create_dataset("glyph_ids", data=glyphs.astype(np.uint32))
    return path

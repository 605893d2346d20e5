"""The Word50 generator: renders word images and writes them to HDF5.

Each character is a letter glyph (a font face or a Chars74K image) warped at random (scale,
aspect, rotation, shear, translation and a smooth elastic field), alpha-matted with random
opacity onto a random patch (random position, zoom and angle) of a natural photograph, plus
Gaussian pixel noise. All random numbers come from one ``numpy.random.SeedSequence(seed)``, drawn
in a fixed order, and the image arithmetic avoids BLAS and vectorised transcendental functions,
so the same seed, fonts and photographs give byte-identical files.

Run ``python -m datamodules.word50 data/word50`` to generate the default data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from datamodules._common import atomic_h5, word_order, write_header
from datamodules.word50.backgrounds import Backgrounds, load_backgrounds
from datamodules.word50.constants import (
    ALPHABET,
    FORMAT_NAME,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    SPLITS,
    WORD_LENGTH,
    WORDS,
)
from datamodules.word50.glyphs import (
    GLYPH_CANVAS,
    GlyphBank,
    chars74k_glyph_bank,
    font_glyph_bank,
    resolve_fonts,
)

__all__ = ["Word50Difficulty", "generate_word50", "generator_config", "render_characters"]

_CENTRE = (IMAGE_SIZE - 1) / 2  # output pixel centres run 0..27 around 13.5
_HIRES = GLYPH_CANVAS / IMAGE_SIZE  # glyph-canvas pixels per output pixel
_PAD = 2  # zero border around every glyph mask, so samples outside the canvas read 0
_ELASTIC_GRID = 4  # control points per side of the smooth elastic displacement field
_CHUNK = 2048  # characters rendered per vectorised step
_MAX_ZOOM = 3.0  # background photo pixels per output pixel, upper bound (photos >= 200 px)


@dataclass(frozen=True)
class Word50Difficulty:
    """Ranges of the random perturbations; the defaults are calibrated (``docs/results.md``).

    A one-layer MLP (784-512-26) trained on single characters reaches about the paper's 65.69%
    test character accuracy on the default data set.

    Attributes:
        scale: glyph size relative to a 20-pixel box, uniform in ``(low, high)``.
        aspect: width / height stretch, log-uniform in ``(low, high)``.
        rotation: maximum absolute rotation in degrees (uniform).
        shear: maximum absolute horizontal shear (x += shear * y).
        translation: maximum absolute shift in output pixels, per axis (uniform).
        elastic: standard deviation, in output pixels, of a smooth random displacement field
            (4x4 control points, bilinear): wobbly, hand-drawn-looking strokes.
        stroke_steps: stroke-weight variants of every face: each dilates the glyph by that
            many half-pixels (0 = as drawn).
        opacity: ink opacity of the alpha matte, uniform in ``(low, high)``; below 1 the
            background shows through the letter.
        contrast: absolute difference between ink grey and the patch's mean grey, uniform;
            the ink is darker or lighter than the patch with equal probability.
        background_zoom: photo pixels per output pixel, log-uniform (at most 3).
        background_contrast: factor applied to the patch's deviations from its mean, uniform.
        noise: standard deviation of additive Gaussian pixel noise (grey levels in [0, 1]).
    """

    scale: tuple[float, float] = (0.75, 1.25)
    aspect: tuple[float, float] = (0.8, 1.25)
    rotation: float = 30.0
    shear: float = 0.25
    translation: float = 3.0
    elastic: float = 0.6
    stroke_steps: tuple[int, ...] = (0, 1, 2)
    opacity: tuple[float, float] = (0.75, 1.0)
    contrast: tuple[float, float] = (0.3, 0.7)
    background_zoom: tuple[float, float] = (0.5, 2.0)
    background_contrast: tuple[float, float] = (0.6, 1.4)
    noise: float = 0.04

    def __post_init__(self) -> None:
        ranges = {
            "scale": (1e-3, None),
            "aspect": (1e-3, None),
            "opacity": (0.0, 1.0),
            "contrast": (0.0, 1.0),
            "background_zoom": (1e-3, _MAX_ZOOM),
            "background_contrast": (0.0, None),
        }
        for name, (lo, hi) in ranges.items():
            value = tuple(float(v) for v in getattr(self, name))
            if (
                len(value) != 2
                or value[0] > value[1]
                or value[0] < lo
                or (hi is not None and value[1] > hi)
            ):
                bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(
                    f"Word50Difficulty.{name} must be a (low, high) pair with low <= high, "
                    f"both {bound}. Got {getattr(self, name)!r}."
                )
            object.__setattr__(self, name, value)
        for name in ("rotation", "shear", "translation", "elastic", "noise"):
            value = float(getattr(self, name))
            if not value >= 0.0:
                raise ValueError(f"Word50Difficulty.{name} must be >= 0. Got {value!r}.")
            object.__setattr__(self, name, value)
        steps = tuple(int(s) for s in self.stroke_steps)
        if not steps or min(steps) < 0:
            raise ValueError(
                f"Word50Difficulty.stroke_steps must be non-empty, non-negative. Got {steps!r}."
            )
        object.__setattr__(self, "stroke_steps", steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Word50Difficulty:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"Unknown Word50Difficulty fields {sorted(unknown)}; known: {sorted(known)}."
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin through libm, one by one: numpy's SIMD versions may differ across CPUs."""
    cos = np.array([math.cos(a) for a in angles.tolist()], dtype=np.float64)
    sin = np.array([math.sin(a) for a in angles.tolist()], dtype=np.float64)
    return cos, sin


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    u = rng.random(n)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return np.array([math.exp(lo + (hi - lo) * v) for v in u.tolist()], dtype=np.float64)


def _draw_params(
    rng: np.random.Generator,
    letters: np.ndarray,
    bank: GlyphBank,
    backgrounds: Backgrounds,
    d: Word50Difficulty,
) -> dict[str, np.ndarray]:
    """All per-character random choices, drawn in a fixed order. ``letters``: ``(M,)``."""
    m = len(letters)
    start, count = bank.letter_ranges()
    p: dict[str, np.ndarray] = {}
    p["glyph"] = start[letters] + rng.integers(0, count[letters])
    p["scale"] = rng.uniform(d.scale[0], d.scale[1], m)
    p["aspect"] = _log_uniform(rng, d.aspect, m)
    p["rot_cos"], p["rot_sin"] = _cos_sin(np.deg2rad(rng.uniform(-d.rotation, d.rotation, m)))
    p["shear"] = rng.uniform(-d.shear, d.shear, m)
    p["shift"] = rng.uniform(-d.translation, d.translation, (m, 2))
    p["elastic"] = rng.standard_normal((m, 2, _ELASTIC_GRID, _ELASTIC_GRID)) * d.elastic
    p["photo"] = rng.integers(0, len(backgrounds.names), m)
    p["zoom"] = _log_uniform(rng, d.background_zoom, m)
    p["bg_cos"], p["bg_sin"] = _cos_sin(rng.uniform(0.0, 2.0 * math.pi, m))
    p["bg_pos"] = rng.random((m, 2))
    p["bg_contrast"] = rng.uniform(d.background_contrast[0], d.background_contrast[1], m)
    p["opacity"] = rng.uniform(d.opacity[0], d.opacity[1], m)
    p["contrast"] = rng.uniform(d.contrast[0], d.contrast[1], m)
    p["polarity"] = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    return p


def _interp_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """``(n_out, n_ctrl)`` linear interpolation weights from control points spanning the image."""
    pos = np.arange(n_out) * (n_ctrl - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_ctrl - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_ctrl))
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _upsample(ctrl: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(K, 2, g, g)`` control values -> ``(K, 2, n, n)`` field; explicit sums, no BLAS."""
    g = ctrl.shape[-1]
    rows = sum(w[None, None, :, a, None] * ctrl[:, :, None, a, :] for a in range(g))  # (K, 2, n, g)
    return sum(rows[:, :, :, None, b] * w[None, None, None, :, b] for b in range(g))  # (K, 2, n, n)


def _bilinear(
    flat: np.ndarray,
    base: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
) -> np.ndarray:
    """Bilinear samples of images stored flat; coordinates are clamped to the image.

    Args:
        flat: all images' pixels, row-major, one after another.
        base, width, height: ``(K, 1, 1)`` start, width and height of each sample's image.
        y, x: ``(K, n, n)`` pixel coordinates.

    Returns:
        ``(K, n, n)`` float64.
    """
    x = np.clip(x, 0.0, width - 2.0)
    y = np.clip(y, 0.0, height - 2.0)
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    i = base + y0.astype(np.int64) * width + x0.astype(np.int64)
    top = flat[i] * (1.0 - fx) + flat[i + 1] * fx
    bottom = flat[i + width] * (1.0 - fx) + flat[i + width + 1] * fx
    return top * (1.0 - fy) + bottom * fy


def render_characters(
    letters: np.ndarray,
    bank: GlyphBank,
    backgrounds: Backgrounds,
    difficulty: Word50Difficulty,
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
    progress: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render characters onto photograph patches.

    Args:
        letters: ``(M,)`` int class indices in 0..25.
        bank: glyphs to draw from (uniformly among the letter's glyphs).
        backgrounds: photographs to cut patches from.
        difficulty: perturbation ranges.
        rng: draws every per-character parameter (all at once, so the result does not depend
            on the chunking).
        noise_rng: draws the pixel noise, chunk after chunk.
        progress: a tqdm bar updated by the number of characters done, or ``None``.

    Returns:
        ``(images, glyph_ids)``: ``(M, 28, 28)`` uint8 and ``(M,)`` int64 indices into ``bank``.
    """
    letters = np.asarray(letters, dtype=np.int64)
    m = len(letters)
    p = _draw_params(rng, letters, bank, backgrounds, difficulty)
    side = GLYPH_CANVAS + 2 * _PAD
    glyph_flat = np.pad(bank.alpha, ((0, 0), (_PAD, _PAD), (_PAD, _PAD))).astype(np.float64).ravel()
    grid = np.arange(IMAGE_SIZE, dtype=np.float64) - _CENTRE
    gx, gy = grid[None, None, :], grid[None, :, None]  # (1, 1, n), (1, n, 1)
    weights = _interp_matrix(IMAGE_SIZE, _ELASTIC_GRID)
    out = np.empty((m, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for lo in range(0, m, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, m))
        k = sl.stop - sl.start

        def col(name: str, _sl: slice = sl) -> np.ndarray:
            return p[name][_sl][:, None, None]

        # Glyph: output pixel -> glyph canvas, through the inverse of R(rot) Shear D(scale, aspect).
        disp = _upsample(p["elastic"][sl], weights)
        qx = gx + disp[:, 0] - p["shift"][sl, 0][:, None, None]
        qy = gy + disp[:, 1] - p["shift"][sl, 1][:, None, None]
        c, s = col("rot_cos"), col("rot_sin")
        rx, ry = c * qx + s * qy, -s * qx + c * qy
        rx = rx - col("shear") * ry
        sx, sy = col("scale") * np.sqrt(col("aspect")), col("scale") / np.sqrt(col("aspect"))
        u = rx / sx * _HIRES + (GLYPH_CANVAS - 1) / 2 + _PAD
        v = ry / sy * _HIRES + (GLYPH_CANVAS - 1) / 2 + _PAD
        base = col("glyph") * (side * side)
        side_arr = np.full((k, 1, 1), side, dtype=np.int64)
        ink_alpha = np.clip(_bilinear(glyph_flat, base, side_arr, side_arr, v, u), 0.0, 1.0)

        # Background: a rotated, zoomed patch of a photograph, kept inside the photograph.
        photo = p["photo"][sl]
        width = backgrounds.width[photo][:, None, None]
        height = backgrounds.height[photo][:, None, None]
        zoom = col("zoom")
        radius = zoom * _CENTRE * math.sqrt(2.0) + 1.0
        cx = radius + p["bg_pos"][sl, 0][:, None, None] * (width - 1 - 2 * radius)
        cy = radius + p["bg_pos"][sl, 1][:, None, None] * (height - 1 - 2 * radius)
        bc, bs = col("bg_cos"), col("bg_sin")
        bx = cx + zoom * (bc * gx - bs * gy)
        by = cy + zoom * (bs * gx + bc * gy)
        bg = _bilinear(
            backgrounds.flat, backgrounds.offset[photo][:, None, None], width, height, by, bx
        )
        mean = bg.mean(axis=(1, 2), keepdims=True)
        bg = np.clip(mean + col("bg_contrast") * (bg - mean), 0.0, 1.0)

        # Alpha matte: ink grey on the other side of the patch mean when it would leave [0, 1].
        ink = mean + col("polarity") * col("contrast")
        flipped = mean - col("polarity") * col("contrast")
        ink = np.clip(np.where((ink < 0.0) | (ink > 1.0), flipped, ink), 0.0, 1.0)
        alpha = col("opacity") * ink_alpha
        image = bg * (1.0 - alpha) + ink * alpha
        image = image + difficulty.noise * noise_rng.standard_normal((k, IMAGE_SIZE, IMAGE_SIZE))
        out[sl] = np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if progress is not None:
            progress.update(k)
    return out, p["glyph"]


def _check_words(words: Sequence[str]) -> tuple[str, ...]:
    words = tuple(words)
    if not words:
        raise ValueError("words must not be empty.")
    for w in words:
        if not isinstance(w, str) or len(w) != WORD_LENGTH or any(c not in ALPHABET for c in w):
            raise ValueError(f"Every word must be {WORD_LENGTH} lower-case letters a-z. Got {w!r}.")
    if len(set(words)) != len(words):
        raise ValueError(f"words must be distinct. Got {list(words)}.")
    return words


def generator_config(
    *,
    seed: int = 0,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    words: Sequence[str] | None = None,
    fonts: Sequence[str] | None = None,
    font_dir: str | Path | None = None,
    chars74k_root: str | Path | None = None,
    chars74k_subsets: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    difficulty: Word50Difficulty | None = None,
) -> dict[str, Any]:
    """The generator's arguments in the canonical JSON form stored in the file's ``config``.

    Two calls with equal configs (and the same font files and photographs) give the same data.
    """
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
        "words": list(_check_words(WORDS if words is None else words)),
        "fonts": None if fonts is None else [str(f) for f in fonts],
        "font_dir": None if font_dir is None else str(font_dir),
        "chars74k_root": None if chars74k_root is None else str(chars74k_root),
        "chars74k_subsets": None if chars74k_subsets is None else list(chars74k_subsets),
        "backgrounds": None if backgrounds is None else list(backgrounds),
        "difficulty": (difficulty or Word50Difficulty()).to_dict(),
    }


def generate_word50(
    path: str | Path,
    *,
    seed: int = 0,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    words: Sequence[str] | None = None,
    fonts: Sequence[str] | None = None,
    font_dir: str | Path | None = None,
    chars74k_root: str | Path | None = None,
    chars74k_subsets: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    difficulty: Word50Difficulty | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate Word50 and write it to one HDF5 file.

    The file holds, per split (``train``, ``val``, ``test``): ``images`` uint8
    ``(n, 5, 28, 28)`` (0 = black), ``labels`` uint8 ``(n, 5)`` in 0..25, ``word_ids`` uint16
    ``(n,)`` and ``glyph_ids`` uint32 ``(n, 5)`` (into ``glyph_sources``); at the top level
    ``words`` and ``glyph_sources`` (strings) and the attributes ``format``,
    ``generator_version``, ``seed``, ``alphabet``, ``fonts``, ``font_sha256``, ``backgrounds``,
    ``character_source``, ``difficulty`` and ``config`` (JSON). It is written to a temporary
    file in the same folder and renamed, so an interrupted run leaves nothing half-written.

    Args:
        path: the ``.h5`` file to write; missing parent folders are created.
        seed: the seed; same seed + same config + same font files = byte-identical data.
        num_train, num_val, num_test: word images per split; each word occurs equally often
            (``n // len(words)`` times, the first ``n % len(words)`` words once more).
        words: five-letter lower-case words; default ``WORDS`` (50 words).
        fonts: font files or matplotlib font names; default ``MATPLOTLIB_FONTS`` (see
            :func:`~datamodules.word50.glyphs.resolve_fonts`). Ignored with ``chars74k_root``.
        font_dir: a folder of extra fonts to add (every face with lower-case Latin letters).
        chars74k_root: use Chars74K's letters instead of fonts (a folder holding
            ``English/Fnt`` and/or ``English/Hnd``).
        chars74k_subsets: which Chars74K subsets (``"Fnt"``, ``"Hnd"``) to use; default
            those on disk.
        backgrounds: photograph names (``"skimage:<name>"``, ``"sklearn:<name>"``); default
            ``DEFAULT_BACKGROUNDS``.
        difficulty: perturbation ranges; default the calibrated ``Word50Difficulty()``.
        progress: show a progress bar.
        overwrite: replace an existing file (otherwise an existing file is an error).

    Returns:
        The path written.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
        ValueError: on bad words, counts or difficulty.
    """
    path = Path(path)
    difficulty = difficulty or Word50Difficulty()
    config = generator_config(
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        words=words,
        fonts=fonts,
        font_dir=font_dir,
        chars74k_root=chars74k_root,
        chars74k_subsets=chars74k_subsets,
        backgrounds=backgrounds,
        difficulty=difficulty,
    )
    words = tuple(config["words"])
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, n in counts.items():
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"num_{split} must be a non-negative integer. Got {n!r}.")
    if sum(counts.values()) == 0:
        raise ValueError("At least one of num_train, num_val, num_test must be positive.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it.")

    if chars74k_root is not None:
        bank = chars74k_glyph_bank(
            chars74k_root, chars74k_subsets, difficulty.stroke_steps, progress=progress
        )
        source = "chars74k"
    else:
        bank = font_glyph_bank(resolve_fonts(fonts, font_dir), difficulty.stroke_steps)
        source = "fonts"
    photos = load_backgrounds(backgrounds)
    word_letters = np.array([[ALPHABET.index(c) for c in w] for w in words], dtype=np.int64)

    split_seeds = np.random.SeedSequence(int(seed)).spawn(len(SPLITS))
    total = sum(counts.values()) * WORD_LENGTH
    with atomic_h5(path, total, f"Word50 -> {path.name}", progress) as (f, bar):
        write_header(
            f, format_name=FORMAT_NAME, version=GENERATOR_VERSION, seed=int(seed),
            alphabet=ALPHABET, extra={}, source=source, bank=bank, photos=photos,
            difficulty=difficulty, config=config, words=words,
        )  # fmt: skip
        for split, split_seed in zip(SPLITS, split_seeds, strict=True):
            n = int(counts[split])
            param_seed, noise_seed = split_seed.spawn(2)
            rng = np.random.default_rng(param_seed)
            word_ids = word_order(rng, n, len(words))
            labels = word_letters[word_ids]  # (n, 5)
            images, glyphs = render_characters(
                labels.ravel(),
                bank,
                photos,
                difficulty,
                rng,
                np.random.default_rng(noise_seed),
                progress=bar,
            )
            g = f.create_group(split)
            # contiguous, uncompressed: a random batch is one cheap read (noise does not compress)
            g.create_dataset("images", data=images.reshape(n, WORD_LENGTH, IMAGE_SIZE, IMAGE_SIZE))
            g.create_dataset("labels", data=labels.astype(np.uint8))
            g.create_dataset("word_ids", data=word_ids.astype(np.uint16))
            g.create_dataset("glyph_ids", data=glyphs.reshape(n, WORD_LENGTH).astype(np.uint32))
    return path

"""Letter glyphs for Word50: rendered from font files, or read from Chars74K.

A glyph bank holds one high-resolution alpha mask per (letter, source) pair, each fitted into
the same box on a ``GLYPH_CANVAS``-pixel square canvas, twice the output resolution. The
generator later warps these masks (scale, rotation, shear, elastic) down to 28x28.

The default font set is the faces matplotlib ships (so ``pip install -e .`` gives the same fonts
on every machine), whatever else is installed system-wide. Extra faces can come from a directory
(``font_dir``) or the Chars74K letters (``chars74k_root``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datamodules.errors import DatasetNotFoundError
from datamodules.word50.constants import ALPHABET

__all__ = [
    "CHARS74K_SUBSETS",
    "GLYPH_BOX",
    "GLYPH_CANVAS",
    "MATPLOTLIB_FONTS",
    "GlyphBank",
    "chars74k_glyph_bank",
    "font_glyph_bank",
    "matplotlib_font_dir",
    "resolve_fonts",
]

MATPLOTLIB_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmmi10.ttf", "cmss10.ttf", "cmtt10.ttf",
)  # fmt: skip
"""The default faces: every face matplotlib ships that has legible lower-case Latin letters (22
of them: DejaVu Sans / Sans Mono / Serif and STIX General in four styles each, and six Computer
Modern faces). Left out: the DejaVu "Display" subsets, STIX non-Unicode and size variants,
cmex10 / cmsy10 (symbols) and LastResort (placeholder boxes)."""

GLYPH_CANVAS = 56
"""Side of a glyph mask in pixels: twice the 28-pixel output, so warping down is anti-aliased."""

GLYPH_BOX = 40
"""The longer side of every glyph on the canvas before the random warp (20 px at 28x28, as MNIST)."""

RENDER_SIZE = 128
"""Font size in pixels used to rasterise a glyph before it is fitted into the box."""

CHARS74K_SUBSETS = ("Fnt", "Hnd")
"""Chars74K English subsets that hold lower-case letters: computer fonts and handwriting."""

_CHARS74K_FIRST_LOWER = 37  # Sample037 is 'a', ..., Sample062 is 'z' (Sample001-036: 0-9, A-Z)
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
_MISSING_CHAR = "\U0010fffd"  # a private-use code point: rasterises as the font's "missing" glyph
_BLUR_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0  # binomial, sigma ~1


@dataclass(frozen=True)
class GlyphBank:
    """Alpha masks of letters, sorted by letter.

    Attributes:
        alpha: ``(G, GLYPH_CANVAS, GLYPH_CANVAS)`` float32 in [0, 1], 1 = ink.
        letter: ``(G,)`` int64 class index of each glyph, non-decreasing.
        source: ``G`` strings naming where each glyph came from (font file and stroke, or image).
        fonts: the distinct sources (font file names or Chars74K subsets), for the file's
            attributes.
        digests: SHA-256 of each entry of ``fonts`` (a font file's bytes; empty for Chars74K).
    """

    alpha: np.ndarray
    letter: np.ndarray
    source: tuple[str, ...]
    fonts: tuple[str, ...]
    digests: tuple[str, ...]

    def letter_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """First glyph index and number of glyphs of each letter.

        Returns:
            ``(start, count)``, each ``(26,)`` int64.

        Raises:
            ValueError: if some letter has no glyph.
        """
        count = np.bincount(self.letter, minlength=len(ALPHABET)).astype(np.int64)
        if (count == 0).any():
            missing = "".join(ALPHABET[k] for k in np.flatnonzero(count == 0))
            raise ValueError(f"The glyph bank has no glyph for the letters {missing!r}.")
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        return start, count


def matplotlib_font_dir() -> Path:
    """The directory of the TrueType faces bundled with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rasterise(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    """Ink coverage of one character, ``(h, w)`` float32 in [0, 1] (empty if nothing is drawn)."""
    left, top, right, bottom = font.getbbox(char)
    width, height = max(right - left, 1) + 4, max(bottom - top, 1) + 4
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), char, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _glyph_names_are_letters(path: Path) -> bool:
    """Whether the font's cmap maps a-z to glyphs *named* as those letters (where it names them).

    Catches symbol fonts that put arrows or braces at the letters' code points (cmsy10, cmex10)
    and placeholder fonts (LastResort); fonts without glyph names pass.
    """
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(str(path))
    except (OSError, RuntimeError):
        return False
    for char in ALPHABET:
        index = font.get_char_index(ord(char))
        if index == 0:
            return False
        name = font.get_glyph_name(index)
        if name and not (
            name == char or name.startswith(char + ".") or name == f"uni{ord(char):04X}"
        ):
            return False
    return True


def _has_latin_lowercase(path: Path) -> bool:
    """Whether a font draws all 26 lower-case letters as real, distinct glyphs."""
    if not _glyph_names_are_letters(path):
        return False
    try:
        font = ImageFont.truetype(str(path), 48)
    except OSError:
        return False
    missing = _rasterise(font, _MISSING_CHAR)
    masks = [_rasterise(font, c) for c in ALPHABET]
    if any(m.max() < 0.5 for m in masks):
        return False
    if any(m.shape == missing.shape and np.array_equal(m, missing) for m in masks):
        return False
    return len({m.tobytes() for m in masks}) == len(ALPHABET)


def resolve_fonts(
    fonts: Sequence[str | Path] | None = None, font_dir: str | Path | None = None
) -> list[Path]:
    """The font files to render, in a fixed order.

    Args:
        fonts: font files, each a path or a bare file name looked up in matplotlib's font
            directory and then in ``font_dir``. ``None`` means ``MATPLOTLIB_FONTS`` when
            ``font_dir`` is not given, and none when it is.
        font_dir: a directory searched recursively; every ``.ttf``/``.otf``/``.ttc`` face in it
            that draws all 26 lower-case letters is added (sorted by relative path). Faces
            without Latin letters (symbols, CJK-only, placeholders) are skipped.

    Returns:
        Existing font paths, without duplicates (by file name).

    Raises:
        FileNotFoundError: if a named font or ``font_dir`` does not exist.
        ValueError: if a named font lacks lower-case Latin letters, or nothing is left.
    """
    mpl_dir = matplotlib_font_dir()
    search = [mpl_dir] + ([Path(font_dir)] if font_dir is not None else [])
    if fonts is None:
        fonts = MATPLOTLIB_FONTS if font_dir is None else ()
    paths: list[Path] = []
    for name in fonts:
        candidate = Path(name)
        found = candidate if candidate.is_file() else None
        if found is None and candidate.name == str(name):
            found = next((d / name for d in search if (d / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"Font {str(name)!r} not found: expected an existing file, or a file name in "
                f"{' or '.join(repr(str(d)) for d in search)}."
            )
        if not _has_latin_lowercase(found):
            raise ValueError(f"Font '{found}' does not draw all 26 lower-case Latin letters.")
        paths.append(found)
    if font_dir is not None:
        root = Path(font_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"font_dir '{root}' is not a directory.")
        extra = sorted(
            (p for p in root.rglob("*") if p.suffix.lower() in _FONT_SUFFIXES and p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        paths.extend(p for p in extra if _has_latin_lowercase(p))
    unique: dict[str, Path] = {}
    for p in paths:
        unique.setdefault(p.name, p)
    if not unique:
        raise ValueError(
            f"No usable fonts: fonts={fonts!r}, font_dir={font_dir!r} gave no face with lower-case "
            "Latin letters."
        )
    return list(unique.values())


def _fit(ink: np.ndarray) -> np.ndarray:
    """Crop a coverage image to its ink and fit it, centred, into ``GLYPH_BOX`` on the canvas.

    Args:
        ink: ``(h, w)`` float32, larger = more ink.

    Returns:
        ``(GLYPH_CANVAS, GLYPH_CANVAS)`` float32 in [0, 1].
    """
    low, high = float(ink.min()), float(ink.max())
    if high - low < 1e-3:
        raise ValueError("The glyph image is blank (no ink).")
    ink = (ink - low) / (high - low)
    rows = np.flatnonzero(ink.max(axis=1) > 0.05)
    cols = np.flatnonzero(ink.max(axis=0) > 0.05)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = ink.shape
    factor = GLYPH_BOX / max(h, w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(ink), mode="F").resize((nw, nh), Image.LANCZOS)
    )
    out = np.zeros((GLYPH_CANVAS, GLYPH_CANVAS), dtype=np.float32)
    top, left = (GLYPH_CANVAS - nh) // 2, (GLYPH_CANVAS - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(resized, 0.0, 1.0)
    return out


def _dilate(alpha: np.ndarray, steps: int) -> np.ndarray:
    """Grey dilation with a 3x3 cross, ``steps`` times (bolder strokes), on ``(..., H, W)``."""
    for _ in range(steps):
        p = np.pad(alpha, [(0, 0)] * (alpha.ndim - 2) + [(1, 1), (1, 1)])
        alpha = np.maximum.reduce(
            [
                p[..., 1:-1, 1:-1],
                p[..., :-2, 1:-1],
                p[..., 2:, 1:-1],
                p[..., 1:-1, :-2],
                p[..., 1:-1, 2:],
            ]
        )
    return alpha


def _blur(alpha: np.ndarray) -> np.ndarray:
    """Separable binomial blur on ``(..., H, W)``: removes aliasing when warped to half size."""
    k = _BLUR_KERNEL
    p = np.pad(alpha, [(0, 0)] * (alpha.ndim - 2) + [(2, 2), (0, 0)])
    n = alpha.shape[-2]
    alpha = sum(k[i] * p[..., i : i + n, :] for i in range(5))
    p = np.pad(alpha, [(0, 0)] * (alpha.ndim - 2) + [(0, 0), (2, 2)])
    n = alpha.shape[-1]
    return sum(k[i] * p[..., :, i : i + n] for i in range(5)).astype(np.float32)


def _finish(
    masks: list[np.ndarray], letters: list[int], sources: list[str], strokes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Add stroke variants, blur, and sort by letter (stable, so the order is fixed)."""
    if not strokes or any(int(s) < 0 for s in strokes):
        raise ValueError(f"stroke_steps must be non-negative integers, got {tuple(strokes)!r}.")
    base = np.stack(masks)
    alpha_parts, letter_parts, source_parts = [], [], []
    for step in strokes:
        alpha_parts.append(_blur(_dilate(base, int(step))))
        letter_parts.extend(letters)
        source_parts.extend(f"{s}+{int(step)}" for s in sources)
    alpha = np.concatenate(alpha_parts)
    letter = np.asarray(letter_parts, dtype=np.int64)
    order = np.argsort(letter, kind="stable")
    return alpha[order], letter[order], tuple(source_parts[i] for i in order)


def font_glyph_bank(fonts: Sequence[Path], stroke_steps: Sequence[int] = (0, 1, 2)) -> GlyphBank:
    """Render the 26 lower-case letters of every font.

    Args:
        fonts: font files (see :func:`resolve_fonts`).
        stroke_steps: stroke variants per face: each adds a copy dilated that many canvas
            pixels (half an output pixel each), so one face gives regular, bold, heavier.

    Returns:
        A bank of ``len(fonts) * 26 * len(stroke_steps)`` glyphs.
    """
    masks, letters, sources = [], [], []
    for path in fonts:
        font = ImageFont.truetype(str(path), RENDER_SIZE)
        for k, char in enumerate(ALPHABET):
            masks.append(_fit(_rasterise(font, char)))
            letters.append(k)
            sources.append(f"{path.name}:{char}")
    alpha, letter, source = _finish(masks, letters, sources, stroke_steps)
    return GlyphBank(
        alpha=alpha,
        letter=letter,
        source=source,
        fonts=tuple(p.name for p in fonts),
        digests=tuple(_sha256(p) for p in fonts),
    )


def _chars74k_base(root: Path) -> Path:
    for base in (root / "English", root):
        if any((base / sub).is_dir() for sub in CHARS74K_SUBSETS):
            return base
    raise DatasetNotFoundError(
        "Chars74K",
        root,
        "Expected 'English/Fnt/Sample037..062/*.png' and/or 'English/Hnd/Img/Sample037..062/*.png' "
        "under it (the EnglishFnt / EnglishHnd archives of Chars74K, unpacked).",
    )


def chars74k_glyph_bank(
    root: str | Path,
    subsets: Sequence[str] | None = None,
    stroke_steps: Sequence[int] = (0,),
    progress: bool = False,
) -> GlyphBank:
    """Read Chars74K's lower-case letters as glyphs.

    Args:
        root: a folder holding ``English/`` (or ``English`` itself), with
            ``Fnt/Sample037..062/*.png`` (computer fonts, dark ink on white) and/or
            ``Hnd/Img/Sample037..062/*.png`` (handwriting). Sample037 is 'a', Sample062 is 'z'.
        subsets: which of ``("Fnt", "Hnd")`` to use; a subset named here must be on disk.
            ``None``: those of the two that are on disk.
        stroke_steps: stroke variants, as in :func:`font_glyph_bank`.
        progress: show a progress bar while reading.

    Returns:
        A bank with one glyph per image (and stroke step), sources named by relative path.

    Raises:
        DatasetNotFoundError: if no Chars74K folder is found, or a requested subset is missing.
        ValueError: if a letter has no image in the requested subsets, or a subset is unknown.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    base = _chars74k_base(root)
    if subsets is None:
        subsets = [s for s in CHARS74K_SUBSETS if (base / s).is_dir()]
    unknown = set(subsets) - set(CHARS74K_SUBSETS)
    if unknown or not subsets:
        raise ValueError(
            f"subsets must be a non-empty subset of {CHARS74K_SUBSETS}, got {subsets!r}."
        )
    files: list[tuple[int, Path]] = []
    for sub in subsets:
        folder = base / sub / "Img" if sub == "Hnd" else base / sub
        if not folder.is_dir():
            raise DatasetNotFoundError(
                "Chars74K", folder, f"The '{sub}' subset was requested but is not on disk."
            )
        for k in range(len(ALPHABET)):
            sample = folder / f"Sample{_CHARS74K_FIRST_LOWER + k:03d}"
            found = sorted(sample.glob("*.png")) if sample.is_dir() else []
            files.extend((k, f) for f in found)
    present = {k for k, _ in files}
    if len(present) < len(ALPHABET):
        missing = "".join(c for k, c in enumerate(ALPHABET) if k not in present)
        raise ValueError(
            f"Chars74K under '{base}' has no PNG for the letters {missing!r} in {list(subsets)} "
            f"(looked in Sample{_CHARS74K_FIRST_LOWER:03d}..Sample{_CHARS74K_FIRST_LOWER + 25:03d})."
        )
    masks, letters, sources = [], [], []
    for k, f in tqdm(files, desc="Chars74K glyphs", unit="img", disable=not progress):
        with Image.open(f) as im:
            ink = 1.0 - np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        try:
            masks.append(_fit(ink))
        except ValueError as err:
            raise ValueError(f"Chars74K image '{f}': {err}") from err
        letters.append(k)
        sources.append(f.relative_to(base).as_posix())
    alpha, letter, source = _finish(masks, letters, sources, stroke_steps)
    return GlyphBank(
        alpha=alpha,
        letter=letter,
        source=source,
        fonts=tuple(f"chars74k:English/{s}" for s in subsets),
        digests=tuple("" for _ in subsets),
    )

"""Matplotlib figures of learned weights: pure functions of tensors, no pyplot state.

* :func:`unary_weight_figure`: the first layer's weights as image tiles (the paper's Fig. 5 left:
  a 784-H1 layer shown as H1 28x28 tiles, which come to resemble character strokes);
* :func:`pairwise_table_figure`: a ``K x K`` pairwise table as a heat map with state labels (the
  paper's Fig. 5 middle: distance-1 and distance-2 letter tables, darker = larger);
* :func:`pairwise_matrix_figure`: a variables x variables matrix of pairwise interactions with
  variable names (the paper's Fig. 8: the correlations a multi-label model learned between tags).

Reading the weights out of a model and logging the figures to TensorBoard is
:mod:`structlight.visualize`'s, which also exports these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["pairwise_matrix_figure", "pairwise_table_figure", "unary_weight_figure"]


def unary_weight_figure(
    weight: Tensor,
    image_shape: Sequence[int] | None = None,
    max_tiles: int = 100,
    ncols: int | None = None,
    title: str | None = "first-layer unary weights",
) -> Figure:
    """The rows of a first-layer weight matrix as image tiles (the paper's Fig. 5, left).

    Each tile is scaled symmetrically around zero on its own (grey = 0, dark = negative, light
    = positive), so strokes are visible whatever the row's norm.

    Args:
        weight: ``(H, D)`` weights of a ``Linear(D, H)``, ``D = prod(image_shape)``.
        image_shape: ``(height, width)`` of one tile; None: square (``D`` must be a square).
        max_tiles: show at most this many rows (the first ones).
        ncols: tiles per row of the grid; None: about square.
        title: figure title, or None.

    Returns:
        A matplotlib figure.

    Raises:
        ValueError: ``weight`` is not 2-D, or its rows do not fill ``image_shape``.
    """
    w = torch.as_tensor(weight).detach().float().cpu()
    if w.dim() != 2:
        raise ValueError(f"weight must be (H, D), got shape {tuple(w.shape)}")
    d = w.shape[1]
    if image_shape is None:
        side = math.isqrt(d)
        if side * side != d:
            raise ValueError(f"rows of {d} entries are not square images; pass image_shape")
        image_shape = (side, side)
    h_img, w_img = (int(s) for s in image_shape)
    if h_img * w_img != d:
        raise ValueError(f"image_shape {tuple(image_shape)} has {h_img * w_img} pixels, rows {d}")
    n = max(1, min(int(max_tiles), w.shape[0]))
    cols = ncols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tiles = w[:n].reshape(n, h_img, w_img)
    scale = tiles.abs().amax(dim=(1, 2)).clamp_min(1e-12)
    tiles = tiles / scale[:, None, None]
    # one canvas with a 1-pixel gap between tiles (gap = 0 = grey)
    canvas = torch.zeros(rows * (h_img + 1) - 1, cols * (w_img + 1) - 1)
    for k in range(n):
        r, c = divmod(k, cols)
        y0, x0 = r * (h_img + 1), c * (w_img + 1)
        canvas[y0 : y0 + h_img, x0 : x0 + w_img] = tiles[k]
    fig = Figure(figsize=(0.55 * cols + 0.4, 0.55 * rows + (0.6 if title else 0.2)))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(canvas.numpy(), cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(f"{title} ({n} of {w.shape[0]})", fontsize=9)
    fig.tight_layout()
    return fig


def pairwise_table_figure(
    table: Tensor,
    labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    xlabel: str = "y_j",
    ylabel: str = "y_i",
) -> Figure:
    """A pairwise table ``W[m, n]`` as a heat map, darker = larger (the paper's Fig. 5, middle).

    Args:
        table: ``(K_i, K_j)``.
        labels: names of the row states (e.g. ``"abc...z"``); None: indices.
        col_labels: names of the column states; None: ``labels``.
        title: figure title.
        xlabel: column axis label.
        ylabel: row axis label.

    Returns:
        A matplotlib figure with a colour bar.

    Raises:
        ValueError: ``table`` is not 2-D or the labels do not match its shape.
    """
    t = torch.as_tensor(table).detach().float().cpu()
    if t.dim() != 2:
        raise ValueError(f"table must be (K_i, K_j), got shape {tuple(t.shape)}")
    rows = [str(s) for s in (labels if labels is not None else range(t.shape[0]))]
    cols = [str(s) for s in (col_labels if col_labels is not None else rows)]
    if col_labels is None and labels is None:
        cols = [str(s) for s in range(t.shape[1])]
    if len(rows) != t.shape[0] or len(cols) != t.shape[1]:
        raise ValueError(
            f"table of shape {tuple(t.shape)} needs {t.shape[0]} row and {t.shape[1]} column "
            f"labels, got {len(rows)} and {len(cols)}"
        )
    size = 1.2 + 0.22 * max(t.shape)
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(t.numpy(), cmap="Greys", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def pairwise_matrix_figure(
    matrix: Tensor,
    names: Sequence[str] | None = None,
    title: str | None = "learned pairwise interactions",
) -> Figure:
    """A symmetric variables x variables matrix with variable names (the paper's Fig. 8).

    Args:
        matrix: ``(N, N)``, e.g. :func:`structlight.visualize.interaction_matrix` of a multi-label model.
        names: the N variable names (tags); None: indices.
        title: figure title.

    Returns:
        A matplotlib figure, red = positive (co-occur), blue = negative, centred on zero.

    Raises:
        ValueError: ``matrix`` is not square or the names do not match.
    """
    m = torch.as_tensor(matrix).detach().float().cpu()
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be (N, N), got shape {tuple(m.shape)}")
    labels = [str(s) for s in (names if names is not None else range(m.shape[0]))]
    if len(labels) != m.shape[0]:
        raise ValueError(f"matrix has {m.shape[0]} variables, got {len(labels)} names")
    vmax = float(m.abs().max().clamp_min(1e-12))
    size = 2.0 + 0.2 * m.shape[0]
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig

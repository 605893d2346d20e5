"""Pictures of what a deep structured model learned, for TensorBoard and notebooks.

Pure functions turn weights into matplotlib figures (no pyplot state, no TensorBoard needed):

* :func:`unary_weight_figure`: the first layer's weights as image tiles (the paper's Fig. 5 left:
  a 784-H1 layer shown as H1 28x28 tiles, which come to resemble character strokes);
* :func:`pairwise_table_figure`: a ``K x K`` pairwise table as a heat map with state labels (the
  paper's Fig. 5 middle: distance-1 and distance-2 letter tables, darker = larger);
* :func:`pairwise_matrix_figure`: a variables x variables matrix of pairwise interactions with
  variable names (the paper's Fig. 8: the correlations a multi-label model learned between tags).

:func:`first_layer_weight`, :func:`pairwise_tables` and :func:`interaction_matrix` read those
weights out of a model, :func:`model_figures` makes every figure that applies, and
:class:`StructuredVisualizer` is the Lightning callback that logs them to TensorBoard at the end
of validation (the ``structlight`` command adds it to every run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from torch import Tensor, nn

__all__ = [
    "StructuredVisualizer",
    "first_layer_weight",
    "interaction_matrix",
    "model_figures",
    "pairwise_matrix_figure",
    "pairwise_table_figure",
    "pairwise_tables",
    "unary_weight_figure",
]


# ---------------------------------------------------------------------- figures
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
        matrix: ``(N, N)``, e.g. :func:`interaction_matrix` of a multi-label model.
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


# ---------------------------------------------------------------------- weights from models
def first_layer_weight(module: nn.Module) -> Tensor | None:
    """The weight of the first :class:`torch.nn.Linear` inside ``module`` (depth first).

    For the Word50 backbone ``PerPosition(MLP(784, [H1]))`` this is the ``(H1, 784)`` layer whose
    rows the paper shows as 28x28 tiles.

    Args:
        module: a backbone.

    Returns:
        ``(H, D)`` detached weight, or None when the module has no Linear layer.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m.weight.detach()
    return None


def _term_regions(head: nn.Module, name: str) -> list[int]:
    regions = getattr(head, "_term_regions", {})
    return list(regions.get(name, []))


def pairwise_tables(head: nn.Module) -> dict[str, Tensor]:
    """The learned pairwise tables of a head, one per parameter group, with readable names.

    Reads every non-unary term that is a :class:`structlight.RegionTable` with two axes. A group
    whose edges all join variables at the same distance ``d`` is named ``"<term> distance-d"``
    (a 2nd-order :class:`structlight.ChainHead` gives ``distance-1`` and ``distance-2``, the
    paper's two middle panels of Fig. 5); a term with one table gives just the term name; other
    groupings give ``"<term> edge i-j"`` / ``"<term> group g"`` for up to 8 tables. Per-edge
    binary tables are left to :func:`interaction_matrix`.

    Args:
        head: a :class:`structlight.StructuredHead`.

    Returns:
        ``{name: (K_i, K_j) table}``, detached (empty if the head learns no tables, e.g. an MLP
        pairwise function or a unary-only head).
    """
    from structlight.potentials import RegionTable

    out: dict[str, Tensor] = {}
    potentials = getattr(head, "potentials", {})
    unary = set(getattr(head, "unary_terms", []))
    graph = getattr(head, "graph", None)
    for name, term in potentials.items():
        if name in unary or not isinstance(term, RegionTable) or len(term.shape) != 2:
            continue
        weight = term.weight.detach()
        if weight.shape[0] == 1:
            out[name] = weight[0]
            continue
        regions = _term_regions(head, name)
        groups = term.group_index.tolist()
        members: dict[int, list[tuple[int, ...]]] = {}
        for r, gid in zip(regions, groups):
            members.setdefault(gid, []).append(tuple(graph.regions[r]) if graph else ())
        dists = {g: {abs(e[-1] - e[0]) for e in es if e} for g, es in members.items()}
        one_each = all(len(d) == 1 for d in dists.values())
        distinct = len({min(d) for d in dists.values() if d}) == len(dists)
        if one_each and distinct:  # e.g. a chain's per-distance tables
            for g in range(weight.shape[0]):
                out[f"{name} distance-{min(dists[g])}"] = weight[g]
        elif term.shape == (2, 2) or weight.shape[0] > 8:
            continue  # per-edge binary tables: see interaction_matrix; too many to show
        else:
            for g in range(weight.shape[0]):
                es = members.get(g, [])
                label = f"edge {es[0][0]}-{es[0][-1]}" if len(es) == 1 and es[0] else f"group {g}"
                out[f"{name} {label}"] = weight[g]
    return out


def interaction_matrix(head: nn.Module) -> Tensor | None:
    """Pairwise interaction strength between every two binary variables (the paper's Fig. 8).

    For the ``2 x 2`` table ``W`` of edge ``(i, j)`` the entry is the log-odds ratio of the two
    tags co-occurring, ``W[1,1] + W[0,0] - W[0,1] - W[1,0]`` (positive: they appear together,
    negative: they exclude each other); the diagonal and unconnected pairs are 0.

    Args:
        head: a :class:`structlight.StructuredHead` whose variables all have two states and whose
            pairwise terms are :class:`structlight.RegionTable` s (e.g. a
            :class:`structlight.FullyConnectedHead`).

    Returns:
        ``(N, N)`` symmetric matrix, or None when the head has no such tables or non-binary
        variables.
    """
    from structlight.potentials import RegionTable

    graph = getattr(head, "graph", None)
    if graph is None or any(k != 2 for k in graph.num_states):
        return None
    n = graph.num_vars
    mat = torch.zeros(n, n)
    found = False
    unary = set(getattr(head, "unary_terms", []))
    for name, term in getattr(head, "potentials", {}).items():
        if name in unary or not isinstance(term, RegionTable) or term.shape != (2, 2):
            continue
        tables = term().detach().float().cpu()[0]  # (n_regions, 2, 2)
        score = tables[:, 1, 1] + tables[:, 0, 0] - tables[:, 0, 1] - tables[:, 1, 0]
        for k, r in enumerate(_term_regions(head, name)):
            i, j = graph.regions[r]
            mat[i, j] += score[k]
            mat[j, i] += score[k]
            found = True
    return mat if found else None


def model_figures(
    model: nn.Module,
    state_names: Sequence[str] | None = None,
    variable_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    max_tiles: int = 100,
) -> dict[str, Figure]:
    """Every picture that applies to a :class:`structlight.DeepStructuredModel`.

    Args:
        model: has ``backbone`` and ``head`` attributes.
        state_names: names of the states of one variable (``"abcdefghijklmnopqrstuvwxyz"`` for
            Word50) for the pairwise heat maps; None: indices.
        variable_names: names of the variables (MIRFLICKR's 38 tags) for the interaction matrix.
        image_shape: tile shape of the first-layer weights; None: square if the input size is.
        max_tiles: at most this many first-layer tiles.

    Returns:
        ``{"unary_weights": fig, "pairwise/<table>": fig, ..., "pairwise_matrix": fig}``, each
        present only when it applies (a square-image first Linear layer, learned ``K x K``
        tables, binary variables).
    """
    figs: dict[str, Figure] = {}
    backbone = getattr(model, "backbone", None)
    weight = first_layer_weight(backbone) if isinstance(backbone, nn.Module) else None
    if weight is not None:
        d = weight.shape[1]
        if image_shape is not None or math.isqrt(d) ** 2 == d:
            figs["unary_weights"] = unary_weight_figure(weight, image_shape, max_tiles)
    head = getattr(model, "head", None)
    if head is None:
        return figs
    names = list(state_names) if state_names is not None else None
    for key, table in pairwise_tables(head).items():
        labels = names if names is not None and len(names) == table.shape[0] else None
        figs[f"pairwise/{key.replace(' ', '_')}"] = pairwise_table_figure(
            table, labels=labels, title=f"pairwise {key}"
        )
    mat = interaction_matrix(head)
    if mat is not None:
        vnames = list(variable_names) if variable_names is not None else None
        if vnames is not None and len(vnames) != mat.shape[0]:
            vnames = None
        figs["pairwise_matrix"] = pairwise_matrix_figure(mat, vnames)
    return figs


# ---------------------------------------------------------------------- callback
def _names_from_datamodule(dm: Any) -> tuple[list[str] | None, list[str] | None]:
    if dm is None:
        return None, None
    states = getattr(dm, "state_names", None) or getattr(dm, "alphabet", None)
    variables = (
        getattr(dm, "variable_names", None)
        or getattr(dm, "tag_names", None)
        or getattr(dm, "tags", None)
    )
    if variables is None and type(dm).__module__.startswith("datamodules.flickr"):
        from datamodules.flickr import MIRFLICKR_TAGS

        variables = MIRFLICKR_TAGS
    return (
        list(states) if states is not None else None,
        list(variables) if variables is not None else None,
    )


class StructuredVisualizer(Callback):
    """Log the learned weights as TensorBoard images at the end of validation.

    Images (tags under ``weights/``): ``unary_weights`` (first-layer tiles, Fig. 5 left),
    ``pairwise/<table>`` (heat maps with state labels, Fig. 5 middle), ``pairwise_matrix``
    (tag x tag interactions of a binary multi-label model, Fig. 8). Loggers other than
    :class:`~lightning.pytorch.loggers.TensorBoardLogger` are skipped, and so is the sanity check.

    Args:
        every_n_epochs: log after every n-th validation.
        state_names: labels of the states; None: the datamodule's ``state_names`` or
            ``alphabet`` attribute (Word50: a..z), else indices.
        variable_names: labels of the variables; None: the datamodule's ``variable_names`` /
            ``tag_names`` / ``tags`` (MIRFLICKR: its 38 tags), else indices.
        image_shape: tile shape of the first-layer weights; None: square.
        max_tiles: at most this many first-layer tiles.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        state_names: list[str] | None = None,
        variable_names: list[str] | None = None,
        image_shape: list[int] | None = None,
        max_tiles: int = 100,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.state_names = state_names
        self.variable_names = variable_names
        self.image_shape = image_shape
        self.max_tiles = max_tiles

    def _loggers(self, trainer: Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Make the figures and hand them to every TensorBoard logger."""
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not trainer.should_stop:
            return
        loggers = self._loggers(trainer)
        if not loggers:
            return
        dm_states, dm_vars = _names_from_datamodule(getattr(trainer, "datamodule", None))
        figs = model_figures(
            pl_module,
            state_names=self.state_names or dm_states,
            variable_names=self.variable_names or dm_vars,
            image_shape=self.image_shape,
            max_tiles=self.max_tiles,
        )
        for key, fig in figs.items():
            for lg in loggers:
                lg.experiment.add_figure(f"weights/{key}", fig, trainer.global_step, close=False)
        for lg in loggers:
            lg.experiment.flush()

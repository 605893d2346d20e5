"""Pictures of what a deep structured model learned, for TensorBoard and notebooks.

Pure functions turn weights into matplotlib figures (no pyplot state, no TensorBoard needed;
they live in :mod:`structlight.figures` and are exported here too):

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

from structlight.figures import pairwise_matrix_figure, pairwise_table_figure, unary_weight_figure

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
    """The regions of term ``name`` (:meth:`structlight.StructuredHead.term_regions`); none for
    a head without that method."""
    lookup = getattr(head, "term_regions", None)
    return list(lookup(name)) if callable(lookup) else []


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

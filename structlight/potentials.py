"""Potential modules: the networks that compute the region score tables ``f_r(x, y_r; w)``.

A :class:`structlight.StructuredHead` owns a set of potential *terms*. Each term covers a list of
regions of one arity and returns one score table per covered region, stacked along dimension 1:
``(B, n, *shape)`` (or ``(1, n, *shape)`` for tables that do not depend on the input, which the
head broadcasts over the batch). The head flattens and reorders all terms' outputs into the packed
``(B, T)`` layout of :class:`structlight.ConvexBP` with one precomputed index.

Provided here:

* :class:`MLP`: a multi-layer perceptron (Linear + ReLU per hidden layer), usable as a backbone
  (``PerPosition(MLP(784, [1024]))`` is the paper's Word50 "one-layer MLP") or inside a term.
* :class:`Unary`: per-variable scores from backbone features, ``(B, N, F) -> (B, N, K)`` with
  one Linear shared by all positions, or ``(B, F) -> (B, N, K)`` from global features.
* :class:`RegionTable` (and its aliases :class:`PairwiseTable`, :class:`HigherOrderTable`):
  learned tables independent of the input, shared by all covered regions, one per group (e.g.
  per edge type), or one per region.
* :class:`PairwiseMLP`: a non-linear pairwise function of the two variables' inputs, e.g. the
  paper's 1568-64-676 MLP on a pair of 28x28 characters.

Terms that need the raw batch (not only backbone features) subclass :class:`RegionPotential`,
whose ``forward`` receives ``(features, batch)``; any other ``nn.Module`` is called as
``module(features)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "MLP",
    "HigherOrderTable",
    "PairwiseMLP",
    "PairwiseTable",
    "RegionPotential",
    "RegionTable",
    "Unary",
]


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class MLP(nn.Module):
    """A multi-layer perceptron: ``Linear -> ReLU (-> Dropout)`` per hidden layer, then an optional
    output ``Linear`` without activation.

    ``MLP(784, [1024])`` is the paper's "one-layer MLP" character network without its class
    layer (Linear 784-1024 and ReLU; the head adds the 1024-26 unary layer); ``MLP(784, [512, 256])``
    is a two-layer one. ``MLP(1568, [64], 676)`` is the paper's non-linear pairwise function.

    Input handling: if the last dimension has ``in_features`` entries the MLP is applied to it
    (``(B, F)`` or ``(B, N, F)``); otherwise all dimensions after the first are flattened and must
    hold ``in_features`` entries (``(B, 1, 28, 28)`` with ``in_features = 784``).

    Args:
        in_features: input size F.
        hidden: sizes of the hidden layers, each followed by ReLU (and dropout if ``dropout > 0``).
        out_features: size of an output Linear layer without activation; None for no output layer
            (the output is then the last hidden layer's activations).
        dropout: dropout probability after each hidden activation.

    Attributes:
        out_features: the size of the output (last hidden size when ``out_features`` is None).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (),
        out_features: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_int("in_features", in_features)
        hidden = [_check_int(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        if out_features is not None:
            _check_int("out_features", out_features)
        if not hidden and out_features is None:
            raise ValueError("MLP needs at least one hidden layer or an out_features")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_features is not None:
            layers.append(nn.Linear(width, out_features))
            width = out_features
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP.

        Args:
            x: ``(..., in_features)`` or ``(B, *rest)`` with ``prod(rest) = in_features``.

        Returns:
            ``(..., out_features)`` or ``(B, out_features)``.
        """
        if x.dim() < 1:
            raise ValueError("MLP expects a tensor of shape (B, ...), got a scalar")
        if x.shape[-1] != self.in_features:
            flat = x.flatten(1) if x.dim() > 1 else x
            if x.dim() < 2 or flat.shape[-1] != self.in_features:
                raise ValueError(
                    f"MLP(in_features={self.in_features}) got input of shape {tuple(x.shape)}: "
                    f"expected (..., {self.in_features}) or (B, *rest) with prod(rest) = "
                    f"{self.in_features} (wrap it in structlight.backbones.PerPosition for "
                    "(B, N, *rest) inputs)"
                )
            x = flat
        return self.layers(x)


class RegionPotential(nn.Module):
    """Base class of potential terms that read the batch as well as the backbone features.

    Subclasses implement ``forward(features, batch)`` returning ``(B or 1, n, *shape)`` (or the
    same entries flattened as ``(B or 1, n * prod(shape))``), one table per covered region, in
    the order of the regions the head assigned to the term.
    """

    def forward(self, features: Tensor, batch: Mapping[str, Tensor]) -> Tensor:  # noqa: D102
        raise NotImplementedError


class Unary(nn.Module):
    """Unary scores from backbone features.

    Args:
        in_features: feature size F.
        num_states: states per variable K (the largest, if variables differ; the head ignores
            the surplus entries of smaller variables).
        num_vars: number of variables N; required for ``mode="global"``.
        mode: ``"per_variable"``: features ``(B, N, F)``, one Linear ``F -> K`` shared by all
            positions; ``"global"``: features ``(B, F)`` (or ``(B, *rest)``, flattened), one Linear
            ``F -> N * K`` (the Flickr model's 4096-76 top).
        hidden: hidden layers (with ReLU) before the output Linear; ``[]`` for a single Linear.

    Shape:
        - input: ``(B, N, F)`` (per_variable) or ``(B, F)`` (global).
        - output: ``(B, N, K)``.
    """

    def __init__(
        self,
        in_features: int,
        num_states: int,
        num_vars: int | None = None,
        mode: Literal["per_variable", "global"] = "per_variable",
        hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        _check_int("in_features", in_features)
        _check_int("num_states", num_states)
        if mode not in ("per_variable", "global"):
            raise ValueError(f"mode must be 'per_variable' or 'global', got {mode!r}")
        if mode == "global":
            if num_vars is None:
                raise ValueError("Unary(mode='global') needs num_vars (it outputs N * K scores)")
            _check_int("num_vars", num_vars)
        self.mode = mode
        self.num_states = num_states
        self.num_vars = num_vars
        out = num_states if mode == "per_variable" else num_vars * num_states
        hidden = list(hidden)
        self.net: nn.Module = (
            MLP(in_features, hidden, out) if hidden else nn.Linear(in_features, out)
        )
        self.in_features = in_features

    def forward(self, features: Tensor) -> Tensor:
        """Unary scores.

        Args:
            features: ``(B, N, F)`` (per_variable) or ``(B, F)`` (global).

        Returns:
            ``(B, N, K)``.
        """
        if self.mode == "per_variable":
            if features.dim() != 3 or features.shape[-1] != self.in_features:
                raise ValueError(
                    f"Unary(mode='per_variable') expects per-variable features (B, N, "
                    f"{self.in_features}), got {tuple(features.shape)}; for global features "
                    "(B, F) use mode='global'"
                )
            if self.num_vars is not None and features.shape[1] != self.num_vars:
                raise ValueError(
                    f"Unary expects {self.num_vars} positions, features have {features.shape[1]}"
                )
            return self.net(features)
        flat = features.flatten(1) if features.dim() > 2 else features
        if flat.dim() != 2 or flat.shape[1] != self.in_features:
            raise ValueError(
                f"Unary(mode='global') expects global features (B, {self.in_features}), got "
                f"{tuple(features.shape)}; for per-variable features use mode='per_variable'"
            )
        return self.net(flat).reshape(flat.shape[0], self.num_vars, self.num_states)


class RegionTable(RegionPotential):
    """Learned score tables that do not depend on the input, with parameter sharing.

    Covers ``len(groups)`` regions of one shape; regions with the same group id share a table.
    ``groups = [0] * n`` is one table shared by all edges; edge types (``graph.edge_types``)
    give one table per type (the 2nd-order chain's distance-1 and distance-2 tables); ``range(n)``
    one table per region (the Flickr model's 703 tables).

    Args:
        shape: the table shape, e.g. ``(26, 26)`` for a pairwise table, ``(K, K, K)`` for a
            triple.
        groups: group id per covered region (ids are remapped to ``0..G-1`` in order of first
            appearance). Default: a single region.
        init_std: the tables start as ``N(0, init_std^2)`` (zero when 0).

    Attributes:
        weight: ``(G, *shape)`` parameter, one table per group.

    Shape:
        - output: ``(1, n, *shape)``; broadcast over the batch by the head.
    """

    def __init__(
        self,
        shape: Sequence[int],
        groups: Sequence[int] | None = None,
        init_std: float = 0.0,
    ) -> None:
        super().__init__()
        shape = tuple(_check_int(f"shape[{i}]", s) for i, s in enumerate(shape))
        if not shape:
            raise ValueError("a region table needs at least one axis")
        groups = [0] if groups is None else [int(g) for g in groups]
        if not groups:
            raise ValueError("groups is empty: a table must cover at least one region")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        remap: dict[int, int] = {}
        ids = [remap.setdefault(g, len(remap)) for g in groups]
        self.shape = shape
        self.num_regions = len(ids)
        self.num_groups = len(remap)
        self.weight = nn.Parameter(torch.zeros(self.num_groups, *shape))
        if init_std > 0:
            nn.init.normal_(self.weight, std=init_std)
        self._identity = ids == list(range(len(ids)))
        self.register_buffer("group_index", torch.tensor(ids, dtype=torch.long), persistent=False)

    def forward(
        self, features: Tensor | None = None, batch: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """The tables of the covered regions.

        Args:
            features: ignored.
            batch: ignored.

        Returns:
            ``(1, n, *shape)``.
        """
        w = self.weight
        if self._identity:
            return w.unsqueeze(0)
        if self.num_groups == 1:
            return w.expand(self.num_regions, *self.shape).unsqueeze(0)
        return w.index_select(0, self.group_index).unsqueeze(0)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_regions={self.num_regions}, num_groups={self.num_groups}"


class PairwiseTable(RegionTable):
    """A :class:`RegionTable` over pairs: ``shape = (K_i, K_j)`` (the paper's Eq. (6))."""

    def __init__(
        self,
        shape: Sequence[int],
        groups: Sequence[int] | None = None,
        init_std: float = 0.0,
    ) -> None:
        if len(shape) != 2:
            raise ValueError(f"a pairwise table has two axes, got shape {tuple(shape)}")
        super().__init__(shape, groups, init_std)


class HigherOrderTable(RegionTable):
    """A :class:`RegionTable` over regions of three or more variables."""

    def __init__(
        self,
        shape: Sequence[int],
        groups: Sequence[int] | None = None,
        init_std: float = 0.0,
    ) -> None:
        if len(shape) < 3:
            raise ValueError(
                f"a higher-order table has >= 3 axes, got shape {tuple(shape)} "
                "(use PairwiseTable for pairs)"
            )
        super().__init__(shape, groups, init_std)


class PairwiseMLP(RegionPotential):
    """A non-linear pairwise function: an MLP on the concatenated inputs of the two variables.

    For the edge ``(i, j)`` the input is ``concat(x_i, x_j)`` where ``x_v`` is variable ``v``'s
    raw input ``batch[input_key][:, v]`` (``source="input"``; e.g. a 28x28 character, flattened:
    ``2 * 784 = 1568``) or its backbone features ``features[:, v]`` (``source="features"``). The
    output is the ``K_i x K_j`` table: ``MLP(1568, [64], 676)`` is the paper's 1568-64-676
    pairwise MLP (144,356 parameters).

    Args:
        in_features: size of the concatenated pair input, ``2 * prod(x_v.shape)``.
        hidden: hidden layer sizes (ReLU).
        num_states: ``(K_i, K_j)``.
        pairs: the ``(i, j)`` variables of each covered region, in region order.
        source: ``"input"`` (read ``batch[input_key]``, shape ``(B, N, *rest)``) or
            ``"features"`` (the backbone's per-variable features ``(B, N, F)``).
        input_key: the batch key of the raw inputs.

    Shape:
        - output: ``(B, n, K_i, K_j)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_states: Sequence[int],
        pairs: Sequence[Sequence[int]],
        source: Literal["input", "features"] = "input",
        input_key: str = "image",
    ) -> None:
        super().__init__()
        if len(num_states) != 2:
            raise ValueError(f"num_states must be (K_i, K_j), got {tuple(num_states)}")
        if source not in ("input", "features"):
            raise ValueError(f"source must be 'input' or 'features', got {source!r}")
        pairs_t = torch.tensor([list(p) for p in pairs], dtype=torch.long)
        if pairs_t.dim() != 2 or pairs_t.shape[1] != 2 or pairs_t.shape[0] == 0:
            raise ValueError(f"pairs must be a non-empty list of (i, j) pairs, got {pairs!r}")
        if int(pairs_t.min()) < 0:
            raise ValueError(f"pairs must hold variable indices >= 0, got {pairs!r}")
        self.num_states = (int(num_states[0]), int(num_states[1]))
        self.mlp = MLP(in_features, list(hidden), self.num_states[0] * self.num_states[1])
        self.source = source
        self.input_key = input_key
        self.in_features = in_features
        self.register_buffer("pairs", pairs_t, persistent=False)
        # the largest variable index, checked against each input's size without a device sync
        self._max_var = int(pairs_t.max())

    def forward(self, features: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Pairwise tables for every covered edge.

        Args:
            features: backbone features ``(B, N, F)`` (used when ``source="features"``).
            batch: the batch; ``batch[input_key]`` is ``(B, N, *rest)`` when ``source="input"``.

        Returns:
            ``(B, n, K_i, K_j)``.
        """
        if self.source == "input":
            if self.input_key not in batch:
                raise KeyError(
                    f"PairwiseMLP reads batch[{self.input_key!r}], but the batch has keys "
                    f"{sorted(batch)}"
                )
            x = batch[self.input_key]
        else:
            x = features
        if x.dim() < 3:
            raise ValueError(
                f"PairwiseMLP needs per-variable inputs (B, N, *rest) from the {self.source}, got "
                f"{tuple(x.shape)}"
            )
        x = x.flatten(2)
        n_vars = x.shape[1]
        if self._max_var >= n_vars:
            raise ValueError(
                f"PairwiseMLP covers variable {self._max_var} but the {self.source} has "
                f"{n_vars} positions"
            )
        if 2 * x.shape[2] != self.in_features:
            raise ValueError(
                f"PairwiseMLP(in_features={self.in_features}) got per-variable {self.source} of "
                f"size {x.shape[2]} (pairs of {2 * x.shape[2]})"
            )
        x = x.to(self.mlp.layers[0].weight.dtype)
        pair_in = torch.cat(
            [x.index_select(1, self.pairs[:, 0]), x.index_select(1, self.pairs[:, 1])], dim=2
        )
        out = self.mlp(pair_in)
        return out.reshape(x.shape[0], self.pairs.shape[0], *self.num_states)

""":class:`ChainHead`: sequence labelling on a chain (e.g. Word50's five characters)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from structlight.chain import chain_marginals, chain_potentials, chain_viterbi, check_lengths
from structlight.graph import RegionGraph
from structlight.head.base import ExampleMask, StructuredHead
from structlight.head.builders import (
    Share,
    UnaryMode,
    add_pairwise_mlps,
    add_unary_and_tables,
    check_choice,
)
from structlight.head.labels import IGNORE_LABEL
from structlight.head.settings import InferenceSettings, check_head_kwargs

__all__ = ["ChainHead"]


class ChainHead(StructuredHead):
    """A chain over N positions (sequence labelling, e.g. Word50's five characters).

    Regions: N singletons, then the edges ``(i, i + d)`` for ``d = 1..order`` (see
    :meth:`RegionGraph.chain`). Unary: :class:`Unary` from the backbone's per-position features
    ``(B, N, in_features)`` (or global ``(B, in_features)`` with ``unary_mode="global"``).

    Parameter counts of the paper's Word50 models with backbone ``PerPosition(MLP(784, [1024]))``
    and ``in_features=1024``: ``pairwise="table"``, order 1: 831,166; order 2 (``share="type"``,
    separate distance-1/-2 tables): 831,842; ``pairwise="mlp"``, ``pairwise_in_features=1568``,
    ``pairwise_hidden=[64]``: 974,846.

    Variable-length sequences: with ``num_vars`` the longest length, a batch that holds
    ``batch[length_key]`` (``(B,)`` int64, ``1 <= length <= num_vars``) places example ``i``
    on positions ``0..length_i - 1``; the rest is padding, which no loss, inference or metric
    reads (labels there may be anything, -100 included; predictions there are -100 with zero
    marginals). Such a batch may hold fewer than ``num_vars`` positions (padded to its longest
    example, so the backbone runs on fewer positions): the head pads the features, the raw
    inputs it reads and the labels to ``num_vars`` positions itself, and its predictions have
    ``num_vars`` positions. Example ``i`` then gets exactly what a
    ``ChainHead(num_vars=length_i)`` with the same parameters gives it, as long as the terms do
    not depend on the chain length: the unary's Linear is shared by all positions, and the
    pairwise tables with ``share="type"`` or ``"shared"`` are too (``share="edge"`` gives each
    edge its own table, so a shorter chain reads the leading ones).

    Args:
        num_vars: chain length N.
        num_states: states per position K.
        in_features: backbone feature size F.
        order: largest edge distance (1: 1st order, 2: 2nd order).
        pairwise: ``"table"`` (learned K x K tables), ``"mlp"`` (:class:`PairwiseMLP` on the two
            positions' inputs) or ``"none"`` (unaries only).
        share: ``"type"`` (default: one table/MLP per edge distance), ``"shared"`` (one for all
            edges) or ``"edge"`` (one per edge).
        pairwise_hidden: hidden sizes of the pairwise MLP (default ``[64]``).
        pairwise_in_features: input size of the pairwise MLP (two positions' flattened inputs,
            1568 for 28x28 characters); default ``2 * in_features`` when
            ``pairwise_source="features"``.
        pairwise_source: ``"input"`` (read ``batch[input_key]``) or ``"features"``.
        input_key: batch key of the raw inputs (for ``pairwise_source="input"``).
        unary_mode: ``"per_variable"`` or ``"global"`` (see :class:`Unary`).
        unary_hidden: hidden layers of the unary network (default none: one Linear).
        table_init_std: pairwise tables start as ``N(0, table_init_std^2)``.
        counting_numbers: ``c_r`` per region (default 1 for all).
        decoding: ``"marginal"`` (default): argmax of each position's belief after message
            passing, as the paper; ``"viterbi"``: the exact MAP labelling by dynamic programming,
            with exact marginals by the forward-backward algorithm (1st-order chains only).
        inference: the message-passing settings (:class:`InferenceSettings`).
        length_key: batch key of the sequence lengths (absent from the batch: every sequence
            has ``num_vars`` positions).
        **kwargs: ``num_train_examples``, ``label_key``, ``index_key``, ``store_location``: see
            :class:`StructuredHead`.
    """

    task_type = "sequence"

    def __init__(
        self,
        num_vars: int,
        num_states: int,
        in_features: int,
        order: int = 1,
        pairwise: Literal["table", "mlp", "none"] = "table",
        share: Share = "type",
        pairwise_hidden: list[int] | None = None,
        pairwise_in_features: int | None = None,
        pairwise_source: Literal["input", "features"] = "input",
        input_key: str = "image",
        unary_mode: UnaryMode = "per_variable",
        unary_hidden: list[int] | None = None,
        table_init_std: float = 0.01,
        counting_numbers: list[float] | None = None,
        decoding: Literal["marginal", "viterbi"] = "marginal",
        inference: InferenceSettings | None = None,
        length_key: str = "length",
        **kwargs: Any,
    ) -> None:
        check_choice("pairwise", pairwise, ("table", "mlp", "none"))
        check_choice("share", share, ("shared", "type", "edge"))
        check_choice("decoding", decoding, ("marginal", "viterbi"))
        if decoding == "viterbi" and order != 1:
            raise ValueError(
                f"decoding='viterbi' is exact on 1st-order chains only; this head has order={order}"
            )
        check_head_kwargs(type(self).__name__, kwargs)
        graph = RegionGraph.chain(num_vars, num_states, order, counting_numbers=counting_numbers)
        super().__init__(graph, inference=inference, **kwargs)
        self.decoding = decoding
        self.length_key = length_key
        edges = add_unary_and_tables(
            self, in_features, num_states, unary_mode, unary_hidden, pairwise, share, table_init_std
        )
        if pairwise != "mlp" or not edges:
            return
        if pairwise_in_features is None:
            if pairwise_source != "features":
                raise ValueError(
                    "pairwise='mlp' reads the two positions' raw inputs: pass "
                    "pairwise_in_features (twice one position's input size, e.g. 1568 for 28x28 "
                    "characters), or use pairwise_source='features'"
                )
            pairwise_in_features = 2 * in_features
        hidden = [64] if pairwise_hidden is None else list(pairwise_hidden)
        add_pairwise_mlps(
            self, edges, num_states, share, pairwise_in_features, hidden, pairwise_source, input_key
        )

    # ------------------------------------------------------------------ shorter batches
    def forward(self, features: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        """Packed potentials of the batch (:meth:`StructuredHead.forward`); per-position
        features of a variable-length batch with fewer than ``num_vars`` positions are padded
        to ``num_vars`` first (with the raw inputs the pairwise terms read).

        Raises:
            ValueError: fewer positions than ``num_vars`` without ``batch[length_key]``, or a
                length beyond the batch's positions.
        """
        n = self.graph.num_vars
        if features.dim() >= 3 and features.shape[1] < n:
            held = int(features.shape[1])
            self._check_short_batch(batch, int(features.shape[0]), held, "features")
            batch = {
                k: _pad_positions(v, held, n, 0) if k != self.length_key else v
                for k, v in batch.items()
            }
            features = _pad_positions(features, held, n, 0)
        return super().forward(features, batch)

    def labels_and_mask(
        self, batch: Mapping[str, Any], batch_size: int | None = None
    ) -> tuple[Tensor, ExampleMask | None]:
        """:meth:`StructuredHead.labels_and_mask`; the labels of a variable-length batch with
        fewer than ``num_vars`` positions are padded with -100 to ``num_vars`` first."""
        y = batch.get(self.label_key) if isinstance(batch, Mapping) else None
        n = self.graph.num_vars
        if isinstance(y, Tensor) and y.dim() == 2 and y.shape[1] < n:
            held = int(y.shape[1])
            self._check_short_batch(batch, int(y.shape[0]), held, f"batch[{self.label_key!r}]")
            batch = {**batch, self.label_key: _pad_positions(y, held, n, IGNORE_LABEL)}
        return super().labels_and_mask(batch, batch_size)

    def _check_short_batch(self, batch: object, b: int, held: int, what: str) -> None:
        n = self.graph.num_vars
        if not isinstance(batch, Mapping) or self.length_key not in batch:
            raise ValueError(
                f"{type(self).__name__} has {n} positions and {what} has {held}: a batch with "
                f"fewer positions must say each example's length in batch[{self.length_key!r}]"
            )
        key = f"batch[{self.length_key!r}]"
        lengths = check_lengths(batch[self.length_key], b, n, key)
        if bool((lengths > held).any()):
            i = int((lengths > held).nonzero()[0, 0])
            raise ValueError(
                f"{key} says example {i} has {int(lengths[i])} positions, but {what} holds "
                f"{held} (pad each batch to at least its longest example)"
            )

    def variable_mask(self, batch: Mapping[str, Any], batch_size: int) -> Tensor | None:
        """Positions ``0..length_i - 1`` of each example, from ``batch[length_key]``; None when
        the batch has no lengths.

        Raises:
            TypeError: the lengths are not an int64 tensor.
            ValueError: not of shape ``(B,)``, or a length outside ``1..num_vars``.
        """
        if self.length_key not in batch:
            return None
        n = self.graph.num_vars
        lengths = check_lengths(
            batch[self.length_key], batch_size, n, f"batch[{self.length_key!r}]"
        )
        return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]

    def predict(
        self, theta: Tensor, msgs: Tensor, mask: ExampleMask | None = None
    ) -> tuple[Tensor, Tensor]:
        """Decode the batch: marginal decoding (default) or, with ``decoding="viterbi"``, the
        exact MAP labelling and exact marginals (``msgs`` are then not used).

        Args:
            theta: ``(B, T)``.
            msgs: ``(B, M)``.
            mask: the batch's :class:`ExampleMask` (None: every position present); for Viterbi
                decoding its present positions must be a prefix of each chain.

        Returns:
            ``(labels, marginals)``: ``(B, N)`` long and ``(B, N, K)``; -100 and zeros at
            absent positions.

        Raises:
            ValueError: Viterbi decoding with a mask that is not a prefix of each chain.
        """
        if self.decoding == "marginal":
            return super().predict(theta, msgs, mask)
        lengths = None
        if mask is not None:
            present = mask.variables.to(theta.device)
            lengths = present.sum(1)
            n = self.graph.num_vars
            prefix = torch.arange(n, device=theta.device)[None, :] < lengths[:, None]
            if not bool((prefix == present).all()):
                raise ValueError(
                    "decoding='viterbi' reads each chain's length: its present positions must be "
                    "0..length - 1, but the mask has holes"
                )
        with torch.no_grad():
            unary, pairwise = chain_potentials(self.graph, theta.detach())
            labels, _ = chain_viterbi(unary, pairwise, lengths)
            _, marginals, _ = chain_marginals(unary, pairwise, lengths)
            return labels, marginals


def _pad_positions(value: Any, held: int, n: int, fill: float) -> Any:
    """A ``(B, held, ...)`` tensor padded along dim 1 to ``n`` positions with ``fill``; anything
    else (another shape, not a tensor) as it is."""
    if not isinstance(value, Tensor) or value.dim() < 2 or value.shape[1] != held:
        return value
    pad = value.new_full((value.shape[0], n - held, *value.shape[2:]), fill)
    return torch.cat([value, pad], dim=1)

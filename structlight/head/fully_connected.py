""":class:`FullyConnectedHead`: multi-label tagging on all pairs of variables (e.g. Flickr)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor

from structlight.graph import RegionGraph
from structlight.head.base import StructuredHead
from structlight.head.builders import Share, UnaryMode, add_unary_and_tables, check_choice
from structlight.head.settings import InferenceSettings, check_head_kwargs
from structlight.inference.masks import check_variable_mask

__all__ = ["FullyConnectedHead"]


class FullyConnectedHead(StructuredHead):
    """All pairs of N variables (multi-label tagging, e.g. Flickr's 38 tags, 703 edges).

    Regions: N singletons, then every pair ``(i, j), i < j`` (see
    :meth:`RegionGraph.fully_connected`). Unary: :class:`Unary` on the backbone's global features
    ``(B, in_features) -> (B, N, K)`` (the Flickr model's 4096-76 layer) by default. Pairwise:
    one ``K x K`` table per edge by default (``share="edge"``; 703 x 4 = 2,812 parameters for
    Flickr).

    Variable-size examples: a batch that holds ``batch[mask_key]`` (``(B, N)`` bool) keeps, for
    each example, its present variables and the edges between them; no loss, inference or metric
    reads the rest (labels there may be anything, -100 included; predictions there are -100 with
    zero marginals).

    Args:
        num_vars: N.
        in_features: backbone feature size F.
        num_states: states per variable K (2 for binary tags).
        pairwise: ``"table"`` or ``"none"``.
        share: ``"edge"`` (default), ``"shared"`` (one table for all edges) or ``"type"``.
        unary_mode: ``"global"`` (default) or ``"per_variable"``.
        unary_hidden: hidden layers of the unary network.
        table_init_std: tables start as ``N(0, table_init_std^2)``.
        counting_numbers: ``c_r`` per region (default 1 for all).
        inference: the message-passing settings (:class:`InferenceSettings`).
        mask_key: batch key of the present variables (absent from the batch: all present).
        **kwargs: ``num_train_examples``, ``label_key``, ``index_key``, ``store_location``: see
            :class:`StructuredHead`.
    """

    task_type = "multilabel"

    def __init__(
        self,
        num_vars: int,
        in_features: int,
        num_states: int = 2,
        pairwise: Literal["table", "none"] = "table",
        share: Share = "edge",
        unary_mode: UnaryMode = "global",
        unary_hidden: list[int] | None = None,
        table_init_std: float = 0.01,
        counting_numbers: list[float] | None = None,
        inference: InferenceSettings | None = None,
        mask_key: str = "mask",
        **kwargs: Any,
    ) -> None:
        check_choice("pairwise", pairwise, ("table", "none"))
        check_choice("share", share, ("shared", "type", "edge"))
        check_head_kwargs(type(self).__name__, kwargs)
        graph = RegionGraph.fully_connected(num_vars, num_states, counting_numbers=counting_numbers)
        super().__init__(graph, inference=inference, **kwargs)
        self.mask_key = mask_key
        add_unary_and_tables(
            self, in_features, num_states, unary_mode, unary_hidden, pairwise, share, table_init_std
        )

    def variable_mask(self, batch: Mapping[str, Any], batch_size: int) -> Tensor | None:
        """The present variables ``batch[mask_key]``; None when the batch has no mask.

        Raises:
            TypeError: the mask is not a bool tensor.
            ValueError: it is not of shape ``(B, N)``.
        """
        if self.mask_key not in batch:
            return None
        name = f"batch[{self.mask_key!r}]"
        return check_variable_mask(batch[self.mask_key], self.graph.num_vars, batch_size, name)

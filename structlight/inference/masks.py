"""Per-example region masks: variable-size examples on one graph.

A ``(B, R)`` boolean mask says which regions each example has. An absent region has no
potential, no messages and no entropy term: every entry point then computes, for each example,
what it would compute on the example's own induced sub-graph (the :class:`RegionGraph` of its
present regions alone, with their counting numbers; see ``docs/inference.md``).

Why the induced graph is the graph with its absent parts switched off: a region is present when
all its variables are, so every superset of an absent region is absent. A present region's
parents in the induced graph are therefore exactly its present parents (no grandparent becomes a
parent), and its children are all present. What changes per example is which messages exist
(``edge``: a (child, parent) message exists when the parent is present) and the block update's
weights ``w_p = c_p / (c_r + sum_{present p'} c_p')``, computed here once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference.plan import Plan

__all__ = [
    "Masks",
    "build_masks",
    "check_region_mask",
    "check_variable_mask",
    "checked_region_mask",
    "region_mask_from_variables",
]


@dataclass(frozen=True, eq=False)
class Masks:
    """The masks and per-example weights of one batch (made by :func:`build_masks`).

    Attributes:
        region: ``(B, R)`` bool, the present regions (what the caller gave).
        edge: ``(B, E)`` bool, the messages that exist.
        message: ``(B, M)`` the same per message entry, 1 or 0 in the weights' dtype (messages
            are multiplied by it: a float product is several times faster than a boolean
            select on the CPU).
        weight: ``(B, E)`` the block update's weight of each message (0 where absent).
        node: fast path only: ``(N, B)`` bool, present singletons.
        pair: fast path only: ``(E_pairs, B)`` bool, present pairs.
        slot_present: fast path only: ``(S, 1, B)`` the message mask in slot order (0/1).
        slot_weight: fast path only: ``(S, 1, B)`` the weights in slot order.
    """

    region: Tensor
    edge: Tensor
    message: Tensor
    weight: Tensor
    node: Tensor | None
    pair: Tensor | None
    slot_present: Tensor | None
    slot_weight: Tensor | None


def check_region_mask(mask: object, batch_size: int, num_regions: int) -> Tensor:
    """``mask`` must be a ``(B, R)`` boolean tensor.

    Raises:
        TypeError: not a boolean tensor.
        ValueError: the wrong shape.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"the region mask must be a bool tensor of shape (B, R), got {got}")
    if tuple(mask.shape) != (batch_size, num_regions):
        raise ValueError(
            f"the region mask must have shape (B, R) = ({batch_size}, {num_regions}), "
            f"got {tuple(mask.shape)}"
        )
    return mask


def checked_region_mask(mask: object, batch_size: int, graph: RegionGraph, plan: Plan) -> Tensor:
    """``mask`` as a ``(B, R)`` bool tensor on the plan's device, closed under sub-regions.

    Raises:
        TypeError, ValueError: as :func:`check_region_mask`; ValueError also for a mask that
            keeps a region while dropping one of its sub-regions (one of its variables), naming
            the example and both regions.
    """
    mask = check_region_mask(mask, batch_size, graph.num_regions).to(plan.edge_parent.device)
    bad = mask.index_select(1, plan.edge_parent) & ~mask.index_select(1, plan.edge_child)
    if bool(bad.any()):
        b, e = (int(v) for v in bad.nonzero()[0])
        parent, child = graph.edges[e][1], graph.edges[e][0]
        raise ValueError(
            f"the region mask of example {b} keeps region {graph.regions[parent]} but drops "
            f"its sub-region {graph.regions[child]}: a region is present only when all its "
            "variables are (build masks with ConvexBP.region_mask)"
        )
    return mask


def check_variable_mask(
    mask: object,
    num_vars: int,
    batch_size: int | None = None,
    name: str = "the variable mask",
    verb: str = "be",
) -> Tensor:
    """``mask`` must be a ``(B, N)`` bool tensor (True: the variable is present).

    Args:
        mask: what arrived.
        num_vars: ``N``.
        batch_size: the expected ``B`` (None: any).
        name: what the errors call it (``"batch['mask']"``, say).
        verb: ``"be"``, or ``"return"`` for a method's result.

    Raises:
        TypeError: not a bool tensor.
        ValueError: not of shape ``(B, N)``.
    """
    b = "B" if batch_size is None else str(batch_size)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(
            f"{name} must {verb} a bool tensor of shape ({b}, {num_vars}) (True: the variable "
            f"is present), got {got}"
        )
    shape = tuple(mask.shape)
    if (
        len(shape) != 2
        or shape[1] != num_vars
        or (batch_size is not None and shape[0] != batch_size)
    ):
        have = "have" if verb == "be" else verb
        raise ValueError(f"{name} must {have} shape ({b}, {num_vars}), got {shape}")
    return mask


def region_mask_from_variables(variable_mask: object, plan: Plan) -> Tensor:
    """``(B, R)``: a region is present when all its variables are (``variable_mask`` ``(B, N)``
    bool).

    Raises:
        TypeError, ValueError: ``variable_mask`` is not a ``(B, N)`` bool tensor.
    """
    variable_mask = check_variable_mask(variable_mask, plan.num_states.shape[0])
    picked = variable_mask.index_select(1, plan.score_vars.view(-1))
    picked = picked.view(-1, *plan.score_vars.shape) | (plan.score_valid == 0)
    return picked.all(-1)


def build_masks(region: Tensor, plan: Plan) -> Masks:
    """The :class:`Masks` of a ``(B, R)`` region mask on ``plan``'s device and dtype.

    The weights are computed in float64 (as the plan's own) and then cast.
    """
    edge = region.index_select(1, plan.edge_parent)
    c = plan.counting.double()
    present = edge.double()
    c_parent = c.index_select(0, plan.edge_parent)
    b, r = region.shape
    total = present.new_zeros(b, r).index_add_(1, plan.edge_child, present * c_parent)
    count = present.new_zeros(b, r).index_add_(1, plan.edge_child, present)
    denom = (c + total).index_select(1, plan.edge_child)
    safe = torch.where(denom > 0, denom, 1.0)
    w = torch.where(denom > 0, c_parent / safe, 1.0 / (count.index_select(1, plan.edge_child) + 1))
    weight = (w * present).to(plan.counting.dtype)
    node = pair = slot_present = slot_weight = None
    d = plan.pairwise
    if d is not None:
        node = region.index_select(1, d.node_region).t()
        pair = region.index_select(1, d.pair_region).t()
        slot_present = edge.index_select(1, d.slot_edge).t().unsqueeze(1).to(weight.dtype)
        slot_weight = weight.index_select(1, d.slot_edge).t().unsqueeze(1).contiguous()
    return Masks(
        region=region,
        edge=edge,
        message=present.to(weight.dtype).index_select(1, plan.msg_edge),
        weight=weight,
        node=node,
        pair=pair,
        slot_present=slot_present,
        slot_weight=slot_weight,
    )

"""Labels against a head's graph: reading and checking them, the Hamming loss augmentation, and
the arg-max read-out of per-variable beliefs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.head.packing import PackingPlan

__all__ = ["check_labels", "hamming_augment"]


def check_labels(
    batch: Mapping[str, Any],
    label_key: str,
    graph: RegionGraph,
    owner: str,
    batch_size: int | None = None,
) -> Tensor:
    """The labels ``batch[label_key]``, checked against ``graph``
    (:meth:`structlight.StructuredHead.labels_from`).

    Args:
        batch: the batch.
        label_key: the key of its labels.
        graph: the head's graph.
        owner: the head's class name, for the messages.
        batch_size: the expected B (None: any).

    Returns:
        ``(B, N)`` long tensor.

    Raises:
        KeyError: no labels in the batch.
        ValueError: the labels' shape disagrees with the graph, or a label is not a state of its
            variable.
    """
    if not isinstance(batch, Mapping) or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise KeyError(f"the batch has no labels under {label_key!r}; batch keys: {keys}")
    y = batch[label_key]
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    n = graph.num_vars
    if y.dim() != 2 or y.shape[1] != n or (batch_size is not None and y.shape[0] != batch_size):
        raise ValueError(
            f"{owner}'s graph has {n} variables, so labels must have shape "
            f"(B{'' if batch_size is None else '=' + str(batch_size)}, {n}); "
            f"batch[{label_key!r}] has shape {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point:
        if not bool((y == y.round()).all()):
            raise ValueError("labels must be integer class indices, got non-integer floats")
    y = y.long()
    if y.numel():
        _check_label_range(y, graph.num_states, label_key)
    return y


def _check_label_range(y: Tensor, num_states: Sequence[int], label_key: str) -> None:
    """Raise naming the first label that is not a state of its variable."""
    ks = torch.as_tensor(num_states, dtype=torch.long)
    bad = (y < 0) | (y >= ks)
    if not bool(bad.any()):
        return
    b, v = (int(i) for i in bad.nonzero()[0])
    k = int(ks[v])
    raise ValueError(
        f"batch[{label_key!r}][{b}, {v}] = {int(y[b, v])}, but variable {v} has {k} "
        f"states: labels must be in 0..{k - 1} ({int(bad.sum())} labels of the batch are out "
        "of range)"
    )


def hamming_augment(theta: Tensor, labels: Tensor, plan: PackingPlan) -> Tensor:
    """``theta`` with ``+1`` on every singleton state but the label's (differentiable).

    Args:
        theta: ``(B, T)``.
        labels: ``(B, N)``.
        plan: the head's packing on ``theta``'s device and dtype (every variable with a
            singleton region).
    """
    pos = plan.sing_off + labels.to(theta.device)
    out = theta + plan.aug_base
    return out.scatter_add(1, pos, theta.new_full(pos.shape, -1.0))

"""Labels against a head's graph: reading and checking them (at the present positions of a
variable-size example only), and the Hamming loss augmentation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.head.packing import PackingPlan

__all__ = [
    "IGNORE_LABEL",
    "check_label_range",
    "unobserved_positions",
    "check_labels",
    "hamming_augment",
    "read_labels",
]

#: The label of an absent position (a padding position of a variable-size example) or of an
#: unobserved variable (a missing label): the metrics skip targets equal to it, and predictions
#: at absent positions are it too.
IGNORE_LABEL = -100


def check_labels(
    batch: Mapping[str, Any],
    label_key: str,
    graph: RegionGraph,
    owner: str,
    batch_size: int | None = None,
) -> Tensor:
    """The labels ``batch[label_key]``, checked against ``graph`` (every position present).

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
    y = read_labels(batch, label_key, graph, owner, batch_size)
    check_label_range(y, graph.num_states, label_key)
    return y


def read_labels(
    batch: Mapping[str, Any],
    label_key: str,
    graph: RegionGraph,
    owner: str,
    batch_size: int | None = None,
) -> Tensor:
    """The labels ``batch[label_key]`` as a ``(B, N)`` long tensor, their shape checked against
    ``graph`` (their range is :func:`check_label_range`'s).

    Raises:
        KeyError: no labels in the batch.
        ValueError: the labels' shape disagrees with the graph, or they are non-integer floats.
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
    return y.long()


def check_label_range(
    y: Tensor, num_states: Sequence[int], label_key: str, present: Tensor | None = None
) -> None:
    """Raise naming the first label that is neither a state of its variable nor
    :data:`IGNORE_LABEL` (an unobserved label, for learning with missing labels).

    Args:
        y: ``(B, N)`` long labels.
        num_states: the variables' state counts.
        label_key: the labels' batch key, for the message.
        present: ``(B, N)`` bool, the positions whose labels are read (None: all); labels
            elsewhere may hold anything.

    Raises:
        ValueError: a label read is outside ``0..num_states[i] - 1`` and not -100.
    """
    if not y.numel():
        return
    ks = torch.as_tensor(num_states, dtype=torch.long, device=y.device)
    bad = ((y < 0) & (y != IGNORE_LABEL)) | (y >= ks)
    if present is not None:
        bad = bad & present.to(y.device)
    if not bool(bad.any()):
        return
    b, v = (int(i) for i in bad.nonzero()[0])
    k = int(ks[v])
    raise ValueError(
        f"batch[{label_key!r}][{b}, {v}] = {int(y[b, v])}, but variable {v} has {k} "
        f"states: labels must be in 0..{k - 1}, or -100 for an unobserved label "
        f"({int(bad.sum())} labels of the batch are out "
        f"of range{'' if present is None else ' at present positions'})"
    )


def hamming_augment(
    theta: Tensor, labels: Tensor, plan: PackingPlan, present: Tensor | None = None
) -> Tensor:
    """``theta`` with ``+1`` on every singleton state but the label's (differentiable).

    Args:
        theta: ``(B, T)``.
        labels: ``(B, N)``.
        plan: the head's packing on ``theta``'s device and dtype (every variable with a
            singleton region).
        present: ``(B, N)`` bool, the present variables (None: all). Absent variables keep
            their tables as they are, and their labels are not read.
    """
    labels = labels.to(theta.device)
    if present is not None:
        present = present.to(theta.device)
        labels = torch.where(present, labels, 0)
    pos = plan.sing_off + labels
    out = theta + plan.aug_base
    out = out.scatter_add(1, pos, theta.new_full(pos.shape, -1.0))
    if present is None:
        return out
    # the singleton entries of absent variables go back to theta's (the extra column T is the
    # index of states past a variable's count, dropped again)
    b, (n, kmax) = theta.shape[0], plan.var_index.shape
    absent = (~present)[:, :, None].expand(b, n, kmax).reshape(b, n * kmax)
    entries = theta.new_zeros(b, theta.shape[1] + 1, dtype=torch.bool)
    entries = entries.scatter(1, plan.var_index.reshape(1, -1).expand(b, -1), absent)
    return torch.where(entries[:, :-1], theta, out)


def unobserved_positions(labels: Tensor, present: Tensor | None = None) -> Tensor | None:
    """``(B, N)`` bool, the present variables whose label is :data:`IGNORE_LABEL` (unobserved),
    or None when the batch has none (one host read).

    Args:
        labels: ``(B, N)`` checked labels (:func:`check_label_range`).
        present: ``(B, N)`` bool, the present variables (None: all).
    """
    hidden = labels == IGNORE_LABEL
    if present is not None:
        hidden &= present.to(labels.device)
    return hidden if bool(hidden.any()) else None

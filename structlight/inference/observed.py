"""Potentials clamped to partly observed labels (learning with missing labels).

For labels ``y`` with some variables unobserved (label ``< 0``, e.g. -100), the clamped
potentials ``theta_c`` equal ``theta`` on every entry consistent with the observed labels and
:data:`~structlight.inference.layout.NEG_INF` elsewhere: an entry of region ``r`` is forbidden
when one of ``r``'s observed variables takes another state than its label there. The dual of
``theta_c`` then approximates ``eps log Z(x, y_o)``, the partition function summed over the
unobserved variables only; with every label observed each region keeps one entry, and the dual
is ``F(y)`` whatever the messages (see ``docs/missing-labels.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from structlight.inference.layout import NEG_INF, PackedLayout

__all__ = ["ObservedIndex", "clamp_to_observed"]


@dataclass(frozen=True, eq=False)
class ObservedIndex:
    """Which (variable, state) each packed potential entry sets, as flat indices.

    Attributes:
        entry: ``(J, T)`` int64: for the ``j``-th variable of the region of entry ``t``, the
            index ``v * K + s`` of its (variable, state) in a ``(N + 1) * K`` table
            (``K`` the largest state count); regions with fewer than ``J`` variables point at
            row ``N``, which is always allowed.
        num_vars: ``N``.
        max_states: ``K``.
    """

    entry: Tensor
    num_vars: int
    max_states: int

    @classmethod
    def of(cls, layout: PackedLayout) -> ObservedIndex:
        """The index of a graph's packed layout (host tensors)."""
        graph = layout.graph
        n, k = graph.num_vars, max(graph.num_states)
        width = max(len(reg) for reg in graph.regions)
        entry = np.full((width, layout.num_entries), n * k, dtype=np.int64)
        for r, reg in enumerate(graph.regions):
            cols = layout.region_slice(r)
            states = np.indices(graph.region_shape(r)).reshape(len(reg), -1)
            for j, v in enumerate(reg):
                entry[j, cols] = v * k + states[j]
        return cls(torch.from_numpy(entry), n, k)

    def to(self, device: torch.device) -> ObservedIndex:
        """The same index on ``device``."""
        if self.entry.device == device:
            return self
        return ObservedIndex(self.entry.to(device), self.num_vars, self.max_states)


def clamp_to_observed(theta: Tensor, labels: Tensor, index: ObservedIndex) -> Tensor:
    """``theta`` with :data:`NEG_INF` on every entry inconsistent with an observed label.

    Args:
        theta: ``(B, T)`` packed potentials.
        labels: ``(B, N)`` int64; a label ``< 0`` (-100) marks an unobserved (or absent)
            variable, whose states all stay allowed.
        index: the graph's :class:`ObservedIndex`.

    Returns:
        ``(B, T)``, differentiable with respect to ``theta`` at the allowed entries.
    """
    b, n, k = labels.shape[0], index.num_vars, index.max_states
    index = index.to(theta.device)
    labels = labels.to(theta.device)
    states = torch.arange(k, device=theta.device)
    allowed = (labels[:, :, None] < 0) | (labels[:, :, None] == states)  # (B, N, K)
    allowed = torch.cat([allowed.reshape(b, n * k), allowed.new_ones(b, 1)], dim=1)
    keep = allowed.index_select(1, index.entry[0])
    for row in index.entry[1:]:
        keep &= allowed.index_select(1, row)
    return theta.masked_fill(~keep, NEG_INF)

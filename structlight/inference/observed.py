"""Potentials clamped to partly observed labels (learning with missing labels).

For labels ``y`` with some variables unobserved (label ``< 0``, e.g. -100), the clamped
potentials ``theta_c`` equal ``theta`` on every entry consistent with the observed labels and
:data:`~structlight.inference.layout.NEG_INF` elsewhere: an entry of region ``r`` is forbidden
when one of ``r``'s observed variables takes another state than its label there. The dual of
``theta_c`` then approximates ``eps log Z(x, y_o)``, the partition function summed over the
unobserved variables only; with every label observed each region keeps one entry, and the dual
is ``F(y)`` whatever the messages (see ``docs/missing-labels.md``).

With ``singletons_only`` only the singleton tables are clamped (and the tables of regions that
hold a variable without a singleton region). The dual's minimum is the same: a state forbidden
in a variable's singleton table has zero belief there, so by the marginalisation constraints it
has zero belief in every region that holds the variable, whatever that region's table says. The
larger tables are left as they are, so a batch that shares its pair tables still shares them (the
fast path's shared sweeps); the price is that the dual equals ``F(y)`` for fully observed labels
only at its minimum, not for every message.
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
        singleton_cols: ``(C,)`` int64, the entries ``singletons_only`` may forbid: those of
            the singleton tables, and of the regions that hold a variable without one.
        singleton_entry: ``(J', C)``: ``entry`` at those columns, with every variable that has
            a singleton region pointing at row ``N`` outside that region.
    """

    entry: Tensor
    num_vars: int
    max_states: int
    singleton_cols: Tensor
    singleton_entry: Tensor

    @classmethod
    def of(cls, layout: PackedLayout) -> ObservedIndex:
        """The index of a graph's packed layout (host tensors)."""
        graph = layout.graph
        n, k = graph.num_vars, max(graph.num_states)
        width = max(len(reg) for reg in graph.regions)
        entry = np.full((width, layout.num_entries), n * k, dtype=np.int64)
        single = entry.copy()
        owned = {reg[0] for reg in graph.regions if len(reg) == 1}  # variables with a singleton
        for r, reg in enumerate(graph.regions):
            cols = layout.region_slice(r)
            states = np.indices(graph.region_shape(r)).reshape(len(reg), -1)
            for j, v in enumerate(reg):
                entry[j, cols] = v * k + states[j]
                if len(reg) == 1 or v not in owned:
                    single[j, cols] = v * k + states[j]
        checked = single != n * k
        cols = np.flatnonzero(checked.any(0))
        rows = single[checked.any(1)][:, cols]
        return cls(torch.from_numpy(entry), n, k, torch.from_numpy(cols), torch.from_numpy(rows))

    def to(self, device: torch.device) -> ObservedIndex:
        """The same index on ``device``."""
        if self.entry.device == device:
            return self
        return ObservedIndex(
            self.entry.to(device),
            self.num_vars,
            self.max_states,
            self.singleton_cols.to(device),
            self.singleton_entry.to(device),
        )


def clamp_to_observed(
    theta: Tensor, labels: Tensor, index: ObservedIndex, singletons_only: bool = False
) -> Tensor:
    """``theta`` with :data:`NEG_INF` on every entry inconsistent with an observed label.

    Args:
        theta: ``(B, T)`` packed potentials.
        labels: ``(B, N)`` int64; a label ``< 0`` (-100) marks an unobserved (or absent)
            variable, whose states all stay allowed.
        index: the graph's :class:`ObservedIndex`.
        singletons_only: clamp the singleton tables alone (and the tables of regions holding
            a variable without one); the same dual minimum, see the module docstring.

    Returns:
        ``(B, T)``, differentiable with respect to ``theta`` at the allowed entries.
    """
    b, n, k = labels.shape[0], index.num_vars, index.max_states
    index = index.to(theta.device)
    labels = labels.to(theta.device)
    states = torch.arange(k, device=theta.device)
    allowed = (labels[:, :, None] < 0) | (labels[:, :, None] == states)  # (B, N, K)
    allowed = torch.cat([allowed.reshape(b, n * k), allowed.new_ones(b, 1)], dim=1)
    entry = index.singleton_entry if singletons_only else index.entry
    keep = allowed.index_select(1, entry[0])
    for row in entry[1:]:
        keep &= allowed.index_select(1, row)
    if not singletons_only:
        return theta.masked_fill(~keep, NEG_INF)
    # only the columns that may be forbidden are read and written
    cols = index.singleton_cols
    return theta.index_copy(1, cols, theta.index_select(1, cols).masked_fill(~keep, NEG_INF))

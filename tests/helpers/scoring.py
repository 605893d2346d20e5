"""Exact reference values by enumeration, for graphs small enough to list every labelling."""

from __future__ import annotations

import itertools

import torch


def brute_force_scores(graph, pots):
    """All joint labellings and their scores, by enumeration.

    Args:
        graph: a small ``RegionGraph``.
        pots: list of region tables, region r of shape (B, *region_shape(r)).

    Returns:
        ``(labels, scores)``: ``(S, N)`` long tensor of every labelling and ``(B, S)`` scores.
    """
    states = list(itertools.product(*[range(k) for k in graph.num_states]))
    labels = torch.tensor(states, dtype=torch.long)
    b = max(p.shape[0] for p in pots)
    scores = torch.zeros(b, len(states), dtype=pots[0].dtype)
    for r, reg in enumerate(graph.regions):
        table = pots[r].expand(b, *graph.region_shape(r))
        idx = tuple(labels[:, v] for v in reg)
        scores = scores + table[(slice(None), *idx)]
    return labels, scores

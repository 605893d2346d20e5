"""Exact inference on 1st-order chains: forward algorithm, marginals, Viterbi.

A reference for the convex message passing on chains and an option for users whose models are
chain-shaped. Potentials use the pytorch-struct-like layout

* ``unary``: ``(B, N, K)``, ``unary[b, i, y_i]``;
* ``pairwise``: ``(B, N-1, K, K)`` or ``(1, N-1, K, K)`` (shared over the batch),
  ``pairwise[b, i, y_i, y_{i+1}]``.

Parallel time O(N) (a sequential scan over positions, batched over examples and states).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference import NEG_INF

__all__ = [
    "chain_log_partition",
    "chain_marginals",
    "chain_potentials",
    "chain_score",
    "chain_viterbi",
]


def _check(unary: Tensor, pairwise: Tensor) -> tuple[Tensor, Tensor]:
    if unary.dim() != 3:
        raise ValueError(f"unary must have shape (B, N, K), got {tuple(unary.shape)}")
    b, n, k = unary.shape
    want = (n - 1, k, k)
    if pairwise.dim() != 4 or tuple(pairwise.shape[1:]) != want or pairwise.shape[0] not in (1, b):
        raise ValueError(
            f"pairwise must have shape (B or 1, {n - 1}, {k}, {k}) for unary {tuple(unary.shape)}, "
            f"got {tuple(pairwise.shape)}"
        )
    return unary.clamp_min(NEG_INF), pairwise.clamp_min(NEG_INF).expand(b, -1, -1, -1)


def chain_log_partition(unary: Tensor, pairwise: Tensor) -> Tensor:
    """``log Z = log sum_y exp(sum_i u_i(y_i) + sum_i p_i(y_i, y_{i+1}))`` by the forward algorithm.

    Args:
        unary: ``(B, N, K)``.
        pairwise: ``(B or 1, N-1, K, K)``.

    Returns:
        ``(B,)``, differentiable (its gradient is the marginals).
    """
    unary, pairwise = _check(unary, pairwise)
    alpha = unary[:, 0]
    for i in range(1, unary.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + pairwise[:, i - 1], dim=1) + unary[:, i]
    return torch.logsumexp(alpha, dim=-1)


def chain_marginals(unary: Tensor, pairwise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact marginals as the gradient of the log-partition.

    Returns:
        ``(log_z, node_marginals, edge_marginals)`` of shapes ``(B,)``, ``(B, N, K)`` and
        ``(B, N-1, K, K)``.
    """
    with torch.enable_grad():
        u = unary.detach().requires_grad_(True)
        p = pairwise.detach().expand(unary.shape[0], -1, -1, -1).clone().requires_grad_(True)
        log_z = chain_log_partition(u, p)
        gu, gp = torch.autograd.grad(log_z.sum(), (u, p), allow_unused=True)
    if gp is None:  # a chain of one variable has no edges
        gp = torch.zeros_like(p)
    return log_z.detach(), gu, gp


def chain_score(unary: Tensor, pairwise: Tensor, labels: Tensor) -> Tensor:
    """Score ``F(y)`` of labels ``(B, N)`` on a chain; ``(B,)``."""
    unary, pairwise = _check(unary, pairwise)
    s = unary.gather(2, labels[:, :, None]).squeeze(2).sum(1)
    if unary.shape[1] > 1:
        idx = torch.arange(unary.shape[1] - 1, device=unary.device)
        rows = torch.arange(unary.shape[0], device=unary.device)[:, None]
        s = s + pairwise[rows, idx, labels[:, :-1], labels[:, 1:]].sum(1)
    return s


def chain_viterbi(unary: Tensor, pairwise: Tensor) -> tuple[Tensor, Tensor]:
    """MAP labelling by the Viterbi algorithm.

    Returns:
        ``(labels, score)``: ``(B, N)`` long and ``(B,)`` the best score.
    """
    unary, pairwise = _check(unary, pairwise)
    b, n, _ = unary.shape
    delta = unary[:, 0]
    back = []
    for i in range(1, n):
        cand = delta[:, :, None] + pairwise[:, i - 1]  # (B, K_prev, K)
        delta, arg = cand.max(dim=1)
        delta = delta + unary[:, i]
        back.append(arg)
    score, last = delta.max(dim=-1)
    labels = [last]
    for arg in reversed(back):
        last = arg.gather(1, last[:, None]).squeeze(1)
        labels.append(last)
    return torch.stack(labels[::-1], dim=1), score


def chain_potentials(graph: RegionGraph, pots: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """Convert region-graph potentials of a 1st-order chain to ``(unary, pairwise)``.

    Args:
        graph: a graph for which :meth:`RegionGraph.is_chain` holds (as built by
            ``RegionGraph.chain(n, k, order=1)``).
        pots: a list of tables in region order, or the packed ``(B, T)`` tensor.

    Returns:
        ``unary`` ``(B, N, K)`` and ``pairwise`` ``(B, N-1, K, K)``.
    """
    if not graph.is_chain():
        raise ValueError(
            "exact chain inference needs a 1st-order chain with one state count "
            f"(RegionGraph.chain(n, k, order=1)); got {graph!r}"
        )
    n, k = graph.num_vars, graph.num_states[0]
    if isinstance(pots, Tensor):
        if pots.dim() != 2 or pots.shape[1] != n * k + (n - 1) * k * k:
            raise ValueError(
                f"packed potentials must have shape (B, {n * k + (n - 1) * k * k}), "
                f"got {tuple(pots.shape)}"
            )
        b = pots.shape[0]
        return pots[:, : n * k].reshape(b, n, k), pots[:, n * k :].reshape(b, n - 1, k, k)
    if len(pots) != graph.num_regions:
        raise ValueError(f"expected {graph.num_regions} tables, got {len(pots)}")
    b = max(int(p.shape[0]) for p in pots)
    unary = torch.stack([p.expand(b, k) for p in pots[:n]], dim=1)
    if n == 1:
        return unary, unary.new_zeros(b, 0, k, k)
    pairwise = torch.stack([p.expand(b, k, k) for p in pots[n:]], dim=1)
    return unary, pairwise

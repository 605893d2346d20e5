"""Exact inference on 1st-order chains: forward algorithm, marginals, Viterbi.

A reference for the convex message passing on chains and an option for users whose models are
chain-shaped. Potentials use the pytorch-struct-like layout

* ``unary``: ``(B, N, K)``, ``unary[b, i, y_i]``;
* ``pairwise``: ``(B, N-1, K, K)`` or ``(1, N-1, K, K)`` (shared over the batch),
  ``pairwise[b, i, y_i, y_{i+1}]``.

Parallel time O(N) (a sequential scan over positions, batched over examples and states).

Variable-length chains: every function takes ``lengths`` ``(B,)`` int64 with
``1 <= lengths[b] <= N``; example ``b`` then lives on positions ``0..lengths[b] - 1`` and the
padding positions are not read (labels there: -100; marginals there: 0), as if each example were
a chain of its own length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference import NEG_INF

__all__ = [
    "chain_log_partition",
    "check_lengths",
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


def check_lengths(lengths: object, batch_size: int, n: int, key: str = "lengths") -> Tensor:
    """``lengths`` must be a ``(B,)`` int64 tensor with ``1 <= lengths[b] <= N``.

    Raises:
        TypeError: not an int64 tensor.
        ValueError: the wrong shape, or a length outside ``1..N`` (named, with what arrived).
    """
    if not isinstance(lengths, Tensor) or lengths.dtype != torch.int64:
        got = lengths.dtype if isinstance(lengths, Tensor) else type(lengths).__name__
        raise TypeError(f"{key} must be an int64 tensor of shape ({batch_size},), got {got}")
    if tuple(lengths.shape) != (batch_size,):
        raise ValueError(
            f"{key} must have shape ({batch_size},) (one per example), got {tuple(lengths.shape)}"
        )
    bad = (lengths < 1) | (lengths > n)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{key} must lie in 1..{n} (the number of positions); example {i} has {int(lengths[i])}"
        )
    return lengths


def _steps(lengths: Tensor | None, b: int, n: int, device: torch.device) -> Tensor | None:
    """``(N, B, 1)`` bool: position ``i`` is real for example ``b`` (None: all are)."""
    if lengths is None:
        return None
    lengths = check_lengths(lengths, b, n).to(device)
    return (torch.arange(n, device=device)[:, None] < lengths[None, :]).unsqueeze(-1)


def chain_log_partition(unary: Tensor, pairwise: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``log Z = log sum_y exp(sum_i u_i(y_i) + sum_i p_i(y_i, y_{i+1}))`` by the forward algorithm.

    Args:
        unary: ``(B, N, K)``.
        pairwise: ``(B or 1, N-1, K, K)``.
        lengths: ``(B,)`` chain lengths (see the module docstring); None: all ``N``.

    Returns:
        ``(B,)``, differentiable (its gradient is the marginals).
    """
    unary, pairwise = _check(unary, pairwise)
    real = _steps(lengths, unary.shape[0], unary.shape[1], unary.device)
    alpha = unary[:, 0]
    for i in range(1, unary.shape[1]):
        new = torch.logsumexp(alpha[:, :, None] + pairwise[:, i - 1], dim=1) + unary[:, i]
        alpha = new if real is None else torch.where(real[i], new, alpha)
    return torch.logsumexp(alpha, dim=-1)


def chain_marginals(
    unary: Tensor, pairwise: Tensor, lengths: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact marginals as the gradient of the log-partition (0 at padding positions); works
    under ``torch.no_grad`` and ``torch.inference_mode`` too.

    Returns:
        ``(log_z, node_marginals, edge_marginals)`` of shapes ``(B,)``, ``(B, N, K)`` and
        ``(B, N-1, K, K)``.
    """
    # autograd even under torch.inference_mode (Lightning's validation and prediction loops):
    # the clones are ordinary tensors, which autograd may record
    with torch.inference_mode(False), torch.enable_grad():
        u = unary.detach().clone().requires_grad_(True)
        p = pairwise.detach().expand(unary.shape[0], -1, -1, -1).clone().requires_grad_(True)
        log_z = chain_log_partition(u, p, lengths)
        gu, gp = torch.autograd.grad(log_z.sum(), (u, p), allow_unused=True)
    if gp is None:  # a chain of one variable has no edges
        gp = torch.zeros_like(p)
    return log_z.detach(), gu, gp


def chain_score(
    unary: Tensor, pairwise: Tensor, labels: Tensor, lengths: Tensor | None = None
) -> Tensor:
    """Score ``F(y)`` of labels ``(B, N)`` on a chain; ``(B,)``. With ``lengths`` the labels at
    padding positions are not read."""
    unary, pairwise = _check(unary, pairwise)
    b, n, _ = unary.shape
    real = _steps(lengths, b, n, unary.device)
    if real is not None:
        real = real[:, :, 0].t()  # (B, N)
        labels = torch.where(real, labels, 0)
    per_node = unary.gather(2, labels[:, :, None]).squeeze(2)
    s = (per_node if real is None else per_node * real).sum(1)
    if n > 1:
        idx = torch.arange(n - 1, device=unary.device)
        rows = torch.arange(b, device=unary.device)[:, None]
        per_edge = pairwise[rows, idx, labels[:, :-1], labels[:, 1:]]
        s = s + (per_edge if real is None else per_edge * real[:, 1:]).sum(1)
    return s


def chain_viterbi(
    unary: Tensor, pairwise: Tensor, lengths: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """MAP labelling by the Viterbi algorithm.

    Returns:
        ``(labels, score)``: ``(B, N)`` long (-100 at padding positions) and ``(B,)`` the best
        score.
    """
    unary, pairwise = _check(unary, pairwise)
    b, n, k = unary.shape
    real = _steps(lengths, b, n, unary.device)
    delta = unary[:, 0]
    stay = torch.arange(k, device=unary.device).expand(b, k)
    back = []
    for i in range(1, n):
        cand = delta[:, :, None] + pairwise[:, i - 1]  # (B, K_prev, K)
        new, arg = cand.max(dim=1)
        new = new + unary[:, i]
        if real is not None:  # past the end: carry the scores, point back to the same state
            new, arg = torch.where(real[i], new, delta), torch.where(real[i], arg, stay)
        delta = new
        back.append(arg)
    score, last = delta.max(dim=-1)
    labels = [last]
    for arg in reversed(back):
        last = arg.gather(1, last[:, None]).squeeze(1)
        labels.append(last)
    out = torch.stack(labels[::-1], dim=1)
    if real is not None:
        out = out.masked_fill(~real[:, :, 0].t(), -100)
    return out, score


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

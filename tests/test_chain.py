"""Exact chain inference against enumeration, and ConvexBP against the exact chain."""

from __future__ import annotations

import pytest
import torch

from structlight import ConvexBP, RegionGraph
from structlight.chain import (
    chain_log_partition,
    chain_marginals,
    chain_potentials,
    chain_score,
    chain_viterbi,
)
from tests.helpers.scoring import brute_force_scores

DT = torch.float64


def random_chain(n, k, b, seed, shared=False):
    g = RegionGraph.chain(n, k, order=1)
    gen = torch.Generator().manual_seed(seed)
    pots = [torch.randn(b, k, generator=gen, dtype=DT) for _ in range(n)]
    pair_b = 1 if shared else b
    pair = torch.randn(pair_b, k, k, generator=gen, dtype=DT)
    pots += [
        pair if shared else torch.randn(b, k, k, generator=gen, dtype=DT) for _ in range(n - 1)
    ]
    return g, pots


@pytest.mark.parametrize("n, k, seed", [(1, 3, 0), (2, 2, 1), (4, 3, 2), (5, 4, 3)])
@pytest.mark.parametrize("shared", [False, True])
def test_log_partition_marginals_viterbi_match_enumeration(n, k, seed, shared):
    g, pots = random_chain(n, k, 3, seed, shared)
    unary, pairwise = chain_potentials(g, pots)
    labels, scores = brute_force_scores(g, pots)
    log_z, node, edge = chain_marginals(unary, pairwise)
    torch.testing.assert_close(log_z, torch.logsumexp(scores, 1))
    torch.testing.assert_close(chain_log_partition(unary, pairwise), log_z)
    probs = torch.softmax(scores, 1)
    for i in range(n):
        exact = torch.zeros(3, k, dtype=DT).index_add(1, labels[:, i], probs)
        torch.testing.assert_close(node[:, i], exact)
    for i in range(n - 1):
        exact = torch.zeros(3, k * k, dtype=DT).index_add(
            1, labels[:, i] * k + labels[:, i + 1], probs
        )
        torch.testing.assert_close(edge[:, i].reshape(3, -1), exact)
    y, best = chain_viterbi(unary, pairwise)
    torch.testing.assert_close(best, scores.max(1).values)
    torch.testing.assert_close(y, labels[scores.argmax(1)])
    torch.testing.assert_close(chain_score(unary, pairwise, y), best)


def test_packed_and_list_chain_potentials_agree():
    g, pots = random_chain(4, 3, 2, 0)
    bp = ConvexBP(g)
    u1, p1 = chain_potentials(g, pots)
    u2, p2 = chain_potentials(g, bp.pack(pots))
    torch.testing.assert_close(u1, u2)
    torch.testing.assert_close(p1, p2)


@pytest.mark.parametrize("seed", [1, *(pytest.param(s, marks=pytest.mark.slow) for s in (0, 2, 3))])
def test_small_eps_decoding_equals_viterbi(seed):
    """Seed 1 by default; the others (slower to converge at eps = 0.02) are marked slow."""
    g, pots = random_chain(6, 4, 5, seed)
    bp = ConvexBP(g, eps=0.02)
    msgs, _ = bp.run(pots, num_sweeps=300, tol=1e-12)
    y = bp.decode(pots, msgs)
    y_map, _ = chain_viterbi(*chain_potentials(g, pots))
    torch.testing.assert_close(y, y_map)


def test_chain_errors():
    with pytest.raises(ValueError, match="1st-order chain"):
        chain_potentials(RegionGraph.chain(4, 3, order=2), [])
    with pytest.raises(ValueError, match="pairwise must have shape"):
        chain_log_partition(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="unary must have shape"):
        chain_viterbi(torch.zeros(4, 3), torch.zeros(2, 3, 3, 3))


def test_forbidden_transitions_in_exact_chain():
    g, pots = random_chain(4, 3, 2, 5)
    unary, pairwise = chain_potentials(g, pots)
    pairwise = pairwise.clone()
    pairwise[:, :, 0, 1] = float("-inf")
    log_z, node, _ = chain_marginals(unary, pairwise)
    assert torch.isfinite(log_z).all() and not torch.isnan(node).any()
    y, _ = chain_viterbi(unary, pairwise)
    assert not torch.any((y[:, :-1] == 0) & (y[:, 1:] == 1))

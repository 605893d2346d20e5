"""Exact chain functions with ``lengths``: each example as a chain of its own length."""

from __future__ import annotations

import pytest
import torch

from structlight import chain_log_partition, chain_marginals, chain_score, chain_viterbi

DT = torch.float64


def _batch(b=5, n=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(b, n, k, generator=g, dtype=DT)
    pairwise = torch.randn(b, n - 1, k, k, generator=g, dtype=DT)
    lengths = torch.tensor([6, 1, 3, 5, 2])[:b]
    return unary, pairwise, lengths


def test_every_function_equals_the_example_on_its_own_length():
    unary, pairwise, lengths = _batch()
    log_z = chain_log_partition(unary, pairwise, lengths)
    lz, node, edge = chain_marginals(unary, pairwise, lengths)
    labels, best = chain_viterbi(unary, pairwise, lengths)
    for i, n in enumerate(lengths.tolist()):
        u, p = unary[i : i + 1, :n], pairwise[i : i + 1, : n - 1]
        torch.testing.assert_close(log_z[i : i + 1], chain_log_partition(u, p))
        _, own_node, own_edge = chain_marginals(u, p)
        torch.testing.assert_close(node[i : i + 1, :n], own_node)
        torch.testing.assert_close(edge[i : i + 1, : n - 1], own_edge)
        assert torch.equal(node[i, n:], torch.zeros_like(node[i, n:]))
        assert torch.equal(edge[i, n - 1 :], torch.zeros_like(edge[i, n - 1 :]))
        own_labels, own_best = chain_viterbi(u, p)
        assert torch.equal(labels[i : i + 1, :n], own_labels)
        assert bool((labels[i, n:] == -100).all())
        torch.testing.assert_close(best[i : i + 1], own_best)
        # the score of the Viterbi labels, padding labels -100 included, is the best score
        torch.testing.assert_close(
            chain_score(unary, pairwise, labels, lengths)[i : i + 1], own_best
        )
    torch.testing.assert_close(lz, log_z)


def test_full_lengths_change_nothing():
    unary, pairwise, _ = _batch()
    full = torch.full((5,), 6)
    torch.testing.assert_close(
        chain_log_partition(unary, pairwise, full), chain_log_partition(unary, pairwise)
    )
    assert torch.equal(chain_viterbi(unary, pairwise, full)[0], chain_viterbi(unary, pairwise)[0])


@pytest.mark.parametrize(
    "lengths, err, match",
    [
        (torch.tensor([6, 0, 3, 5, 2]), ValueError, r"lengths must lie in 1..6 .*example 1 has 0"),
        (torch.tensor([6, 7, 3, 5, 2]), ValueError, r"example 1 has 7"),
        (torch.tensor([6, -1, 3, 5, 2]), ValueError, r"example 1 has -1"),
        (torch.tensor([6.0, 1, 3, 5, 2]), TypeError, "int64 tensor"),
        (torch.tensor([[6, 1, 3, 5, 2]]), ValueError, r"shape \(5,\)"),
    ],
)
def test_bad_lengths_are_named(lengths, err, match):
    unary, pairwise, _ = _batch()
    with pytest.raises(err, match=match):
        chain_log_partition(unary, pairwise, lengths)


def test_marginals_and_viterbi_work_under_inference_mode():
    """Lightning validates and predicts under ``torch.inference_mode``: the exact marginals
    (the gradient of log Z) must still come out."""
    unary, pairwise, lengths = _batch()
    want = chain_marginals(unary, pairwise, lengths)
    with torch.inference_mode():
        u, p = unary.clone(), pairwise.clone()  # inference tensors, as Lightning's would be
        got = chain_marginals(u, p, lengths)
        labels, _ = chain_viterbi(u, p, lengths)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(labels, chain_viterbi(unary, pairwise, lengths)[0])

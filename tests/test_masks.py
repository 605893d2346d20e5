"""Per-example region masks: every example equals its own induced sub-graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structlight import ConvexBP, RegionGraph
from tests.helpers.scoring import brute_force_scores

DT = torch.float64


def with_counting(graph: RegionGraph, mixed: bool, seed: int = 0) -> RegionGraph:
    if not mixed:
        return graph
    cs = np.random.default_rng(seed).uniform(0.3, 2.0, graph.num_regions).tolist()
    return RegionGraph(graph.num_states, graph.regions, counting_numbers=cs)


def variable_masks(graph: RegionGraph, kind: str, b: int, seed: int) -> torch.Tensor:
    """(B, N) masks: a prefix per example (chains), random holes (grids) or a tag subset."""
    g = torch.Generator().manual_seed(seed)
    n = graph.num_vars
    if kind == "prefix":
        lengths = torch.randint(1, n + 1, (b,), generator=g)
        lengths[0] = n  # one full example
        return torch.arange(n)[None, :] < lengths[:, None]
    mask = torch.rand(b, n, generator=g) > 0.3
    mask[:, 0] = True
    mask[0] = True
    return mask


def random_tables(graph: RegionGraph, b: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, *graph.region_shape(r), generator=g, dtype=DT)
        for r in range(graph.num_regions)
    ]


def induced(graph: RegionGraph, present: list[int]) -> RegionGraph:
    """The sub-graph of the present regions alone, with their counting numbers."""
    return RegionGraph(
        graph.num_states,
        [graph.regions[r] for r in present],
        counting_numbers=[graph.counting_numbers[r] for r in present],
    )


def converge(bp: ConvexBP, pots, mask=None) -> torch.Tensor:
    msgs, _ = bp.run(pots, num_sweeps=4000, tol=1e-14, mask=mask)
    return msgs


CASES = [
    ("chain1", RegionGraph.chain(6, 3), "prefix"),
    ("chain2", RegionGraph.chain(6, 3, order=2), "prefix"),
    ("grid", RegionGraph.grid(3, 3, 2), "holes"),
    ("full", RegionGraph.fully_connected(5, 2), "holes"),
]


@pytest.mark.parametrize("eps", [1.0, 0.5])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("name, graph, kind", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("fast_path", [True, False])
def test_masked_batch_equals_each_induced_sub_graph(name, graph, kind, eps, mixed, fast_path):
    graph = with_counting(graph, mixed)
    b = 4
    bp = ConvexBP(graph, eps=eps, fast_path=fast_path)
    vmask = variable_masks(graph, kind, b, seed=1)
    rmask = bp.region_mask(vmask)
    pots = random_tables(graph, b, seed=2)
    theta = bp.pack(pots).requires_grad_(True)
    msgs = converge(bp, theta.detach(), rmask)
    # absent messages are 0 and stay 0
    m_absent = bp.prepare(theta.detach(), mask=rmask).masks.message == 0
    assert torch.equal(msgs.contiguous()[m_absent], torch.zeros(int(m_absent.sum()), dtype=DT))
    dual = bp.dual(theta, msgs, mask=rmask)
    (grad,) = torch.autograd.grad(dual.sum(), theta)
    beliefs = bp.beliefs(theta.detach(), msgs, mask=rmask)
    vb = bp.variable_beliefs(theta.detach(), msgs, mask=rmask)
    labels = bp.decode(theta.detach(), msgs, mask=rmask)
    for i in range(b):
        present = [r for r in range(graph.num_regions) if rmask[i, r]]
        sub = induced(graph, present)
        sbp = ConvexBP(sub, eps=eps, fast_path=fast_path)
        spots = [pots[r][i : i + 1].clone().requires_grad_(True) for r in present]
        smsgs = converge(sbp, [p.detach() for p in spots])
        sdual = sbp.dual(spots, smsgs)
        torch.testing.assert_close(dual[i], sdual[0], rtol=1e-6, atol=1e-6)
        sgrads = torch.autograd.grad(sdual.sum(), spots)
        sbel = sbp.beliefs([p.detach() for p in spots], smsgs)
        gi = bp.unpack(grad[i : i + 1])
        for j, r in enumerate(present):
            torch.testing.assert_close(gi[r], sgrads[j], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(beliefs[r][i : i + 1], sbel[j], rtol=1e-6, atol=1e-6)
        for r in set(range(graph.num_regions)) - set(present):
            assert torch.equal(gi[r], torch.zeros_like(gi[r]))  # no potential, no gradient
            assert torch.equal(beliefs[r][i], torch.zeros_like(beliefs[r][i]))
        svb = sbp.variable_beliefs([p.detach() for p in spots], smsgs)
        on = vmask[i]
        torch.testing.assert_close(vb[i, on], svb[0, on], rtol=1e-6, atol=1e-6)
        assert torch.equal(vb[i, ~on], torch.zeros_like(vb[i, ~on]))
        assert torch.equal(labels[i, ~on], torch.full_like(labels[i, ~on], -100))
        assert torch.equal(labels[i, on], sbp.decode([p.detach() for p in spots], smsgs)[0, on])


@pytest.mark.parametrize("name, graph, kind", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_masked_decoding_at_eps_zero_is_each_example_map(name, graph, kind):
    """eps = 0 on a chain (a tree: the relaxation is tight): the decoding of every example is
    the MAP labelling of its own present variables, found by brute force."""
    b = 5
    bp = ConvexBP(graph, eps=0.0)
    vmask = variable_masks(graph, kind, b, seed=3)
    rmask = bp.region_mask(vmask)
    pots = random_tables(graph, b, seed=4)
    msgs = converge(bp, pots, rmask)
    labels = bp.decode(pots, msgs, mask=rmask)
    for i in range(b):
        n = int(vmask[i].sum())
        present = [r for r in range(graph.num_regions) if rmask[i, r]]
        sub = RegionGraph(graph.num_states[:n], [graph.regions[r] for r in present])
        all_labels, scores = brute_force_scores(sub, [pots[r][i : i + 1] for r in present])
        assert torch.equal(labels[i, :n], all_labels[scores[0].argmax()])
        assert bool((labels[i, n:] == -100).all())


@pytest.mark.parametrize("path", ["fast", "compiled"])
def test_sweeps_honour_the_mask_on_every_path(path, request, recwarn):
    """Fast (log and exp space) and compiled sweeps give the masked messages of the general
    path, and the dual never rises."""
    graph = RegionGraph.chain(5, 4, order=2)
    b = 3
    ref = ConvexBP(graph, fast_path=False)
    bp = ConvexBP(graph, compile=path == "compiled")
    rmask = ref.region_mask(variable_masks(graph, "prefix", b, seed=5))
    theta = ref.pack(random_tables(graph, b, seed=6))
    m_ref = m = ref.init_messages(b, DT)
    prev = ref.dual(theta, m_ref, mask=rmask)
    compiled = request.getfixturevalue("compiled_sweeps") if path == "compiled" else None
    for _ in range(4):
        m_ref = ref.sweep(theta, m_ref, mask=rmask)
        m = bp.sweep(theta, m, mask=rmask)
        torch.testing.assert_close(m.contiguous(), m_ref, rtol=1e-10, atol=1e-10)
        d = ref.dual(theta, m_ref, mask=rmask)
        assert bool((d <= prev + 1e-12).all())
        prev = d
    if compiled is not None:
        compiled.check(bp, warnings=recwarn)
        assert len(compiled) == 4


def test_full_mask_changes_nothing():
    graph = RegionGraph.grid(3, 3, 3)
    bp = ConvexBP(graph)
    theta = bp.pack(random_tables(graph, 2, seed=7))
    full = torch.ones(2, graph.num_regions, dtype=torch.bool)
    m0, _ = bp.run(theta, num_sweeps=5)
    m1, _ = bp.run(theta, num_sweeps=5, mask=full)
    torch.testing.assert_close(m1.contiguous(), m0.contiguous(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        bp.dual(theta, m1, mask=full), bp.dual(theta, m0), rtol=1e-12, atol=0
    )


def test_score_reads_present_regions_only():
    graph = RegionGraph.chain(4, 3)
    bp = ConvexBP(graph)
    pots = random_tables(graph, 2, seed=8)
    vmask = torch.tensor([[True] * 4, [True, True, False, False]])
    rmask = bp.region_mask(vmask)
    labels = torch.tensor([[0, 1, 2, 1], [2, 0, -100, -100]])
    got = bp.score(pots, labels, mask=rmask)
    want1 = pots[0][1, 2] + pots[1][1, 0] + pots[4][1, 2, 0]  # regions (0,), (1,), (0, 1)
    torch.testing.assert_close(got[1], want1)
    torch.testing.assert_close(got[:1], bp.score([p[:1] for p in pots], labels[:1]))
    with pytest.raises(ValueError, match="labels out of range"):
        bp.score(pots, torch.tensor([[0, 1, 2, 1], [2, -100, 0, 0]]), mask=rmask)
    # the masks prepared potentials hold are used as built (a training step's score)
    prep = bp.prepare(pots, mask=rmask)
    assert bp.prepare(pots, mask=prep.masks).masks is prep.masks
    torch.testing.assert_close(bp.score(pots, labels, mask=prep.masks), got)
    # masks of another batch size are not: their region mask is checked, and refused
    other = bp.prepare([p[:1] for p in pots], mask=rmask[:1]).masks
    with pytest.raises(ValueError, match=r"\(B, R\) = \(2, 7\), got \(1, 7\)"):
        bp.score(pots, labels, mask=other)
    # and masks built for another dtype are rebuilt from their region mask
    narrow = bp.prepare([p.float() for p in pots], mask=rmask).masks
    assert narrow.weight.dtype == torch.float32
    assert bp.prepare(pots, mask=narrow).masks.weight.dtype == pots[0].dtype


def test_bad_masks_are_refused_with_what_arrived():
    graph = RegionGraph.chain(3, 2)
    bp = ConvexBP(graph)
    theta = bp.pack(random_tables(graph, 2, seed=9))
    msgs = bp.init_messages(2, DT)
    with pytest.raises(TypeError, match="bool tensor"):
        bp.sweep(theta, msgs, mask=torch.ones(2, graph.num_regions))
    with pytest.raises(ValueError, match=r"\(B, R\) = \(2, 5\), got \(2, 4\)"):
        bp.sweep(theta, msgs, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(B, 3\), got \(2, 2\)"):
        bp.region_mask(torch.ones(2, 2, dtype=torch.bool))
    holed = torch.ones(2, 5, dtype=torch.bool)
    holed[1, 1] = False  # drops variable 1 but keeps the pairs (0, 1) and (1, 2)
    with pytest.raises(ValueError, match=r"example 1 keeps region \(0, 1\) but drops .*\(1,\)"):
        bp.dual(theta, msgs, mask=holed)
    prep = bp.prepare(theta, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="another region mask"):
        bp.dual(prep, msgs, mask=torch.ones(2, 5, dtype=torch.bool))


def test_region_mask_from_variables():
    graph = RegionGraph.chain(4, 2, order=2)
    bp = ConvexBP(graph)
    vmask = torch.tensor([[True, True, True, False]])
    got = bp.region_mask(vmask)[0].tolist()
    want = [all(bool(vmask[0, v]) for v in reg) for reg in graph.regions]
    assert got == want and not all(want) and any(want)


@pytest.mark.parametrize("states", [2, 4])
def test_masked_dual_with_batch_shared_pair_tables(states):
    """A head's pair tables are shared by the batch (one table, broadcast): the masked fast dual,
    after a sweep built the exp tables, matches the general path, gradients included."""
    graph = RegionGraph.chain(6, states)
    b = 3
    fast, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    pots = random_tables(graph, b, seed=10)
    for r in graph.regions_of_size(2):
        pots[r] = pots[r][:1].expand(b, states, states).clone()
    rmask = fast.region_mask(variable_masks(graph, "prefix", b, seed=11))
    theta = fast.pack(pots)
    msgs, _ = general.run(theta, num_sweeps=3, mask=rmask)
    tf, tg = theta.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    prep = fast.prepare(tf, mask=rmask)
    fast.sweep(prep, msgs)  # builds the exp tables the dual then reads
    # off the optimum (the messages' gradient is not ~0), absent messages kept at 0
    noise = torch.randn(msgs.shape, generator=torch.Generator().manual_seed(12), dtype=msgs.dtype)
    msgs = msgs + 0.3 * noise * prep.masks.message
    mf, mg = msgs.clone().requires_grad_(True), msgs.clone().requires_grad_(True)
    df, dg = fast.dual(prep, mf), general.dual(tg, mg, mask=rmask)
    torch.testing.assert_close(df, dg, rtol=1e-12, atol=1e-10)
    df.sum().backward()
    dg.sum().backward()
    torch.testing.assert_close(tf.grad, tg.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mf.grad, mg.grad, rtol=1e-10, atol=1e-12)

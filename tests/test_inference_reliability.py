"""ConvexBP reliability: half-precision inputs are refused, variables in no region get a uniform
belief, and regions with counting number 0 get the beliefs their parents imply (docs/design.md, section 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from structlight import ConvexBP, RegionGraph
from structlight.inference import dual, readout
from tests.helpers.scoring import brute_force_scores

DT = torch.float64
HALF = [torch.float16, torch.bfloat16]


def random_pots(graph: RegionGraph, b: int, seed: int, scale: float = 1.0, dtype=DT):
    gen = torch.Generator().manual_seed(seed)
    return [
        scale * torch.randn(b, *graph.region_shape(r), generator=gen, dtype=dtype)
        for r in range(graph.num_regions)
    ]


def exact_marginals(graph: RegionGraph, pots) -> torch.Tensor:
    """``(B, N, Kmax)`` variable marginals of ``softmax(F)``, by enumeration."""
    labels, scores = brute_force_scores(graph, pots)
    probs = torch.softmax(scores, 1)
    out = torch.zeros(probs.shape[0], graph.num_vars, max(graph.num_states), dtype=probs.dtype)
    for v in range(graph.num_vars):
        out[:, v] = out[:, v].index_add(1, labels[:, v], probs)
    return out


# --------------------------------------------------------------------------- half precision

GRAPHS = {
    "uniform": RegionGraph.chain(4, 3),  # fast path, one state count
    "mixed": RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]),  # fast, padded
    "higher_order": RegionGraph(  # general index path
        [2, 3, 2, 2], [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (2, 3), (0, 1, 2)]
    ),
}

POTS_ENTRIES = {
    "pack": lambda bp, pots, msgs, y: bp.pack(pots),
    "sweep": lambda bp, pots, msgs, y: bp.sweep(pots, msgs),
    "run": lambda bp, pots, msgs, y: bp.run(pots, num_sweeps=2),
    "run_tol": lambda bp, pots, msgs, y: bp.run(pots, msgs, num_sweeps=2, tol=1e-3),
    "dual": lambda bp, pots, msgs, y: bp.dual(pots, msgs),
    "beliefs": lambda bp, pots, msgs, y: bp.beliefs(pots, msgs),
    "variable_beliefs": lambda bp, pots, msgs, y: bp.variable_beliefs(pots, msgs),
    "decode": lambda bp, pots, msgs, y: bp.decode(pots, msgs),
    "score": lambda bp, pots, msgs, y: bp.score(pots, y),
    "reparameterize": lambda bp, pots, msgs, y: bp.reparameterize(pots, msgs),
}
MSGS_ENTRIES = [k for k in POTS_ENTRIES if k not in ("pack", "run", "score")]


@pytest.mark.parametrize("graph", list(GRAPHS.values()), ids=list(GRAPHS))
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("entry", list(POTS_ENTRIES))
@pytest.mark.parametrize("packed", [False, True])
def test_half_precision_potentials_are_refused(graph, dtype, entry, packed):
    bp = ConvexBP(graph)
    pots = random_pots(graph, 2, 0, dtype=torch.float32)
    pots = bp.pack(pots).to(dtype) if packed else [p.to(dtype) for p in pots]
    msgs = bp.init_messages(2)
    labels = torch.zeros(2, graph.num_vars, dtype=torch.long)
    what = "potentials" if packed else "potential 0"
    with pytest.raises(
        ValueError,
        match=rf"ConvexBP computes in float32 or float64; got {what} of dtype {dtype}: "
        r"pass theta\.float\(\)",
    ):
        POTS_ENTRIES[entry](bp, pots, msgs, labels)


@pytest.mark.parametrize("graph", list(GRAPHS.values()), ids=list(GRAPHS))
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("entry", MSGS_ENTRIES)
def test_half_precision_messages_are_refused(graph, dtype, entry):
    bp = ConvexBP(graph)
    pots = random_pots(graph, 2, 0, dtype=torch.float32)
    msgs = torch.randn(2, bp.num_message_entries).to(dtype)
    with pytest.raises(
        ValueError, match=rf"float32 or float64; got messages of dtype {dtype}: pass msgs\.float"
    ):
        POTS_ENTRIES[entry](bp, pots, msgs, None)
    with pytest.raises(ValueError, match=rf"got messages of dtype {dtype}"):
        bp.init_messages(2, dtype)


def test_one_half_precision_table_among_float32_tables_is_refused():
    """A list mixing dtypes would be promoted by the concatenation: each table is checked."""
    g = GRAPHS["uniform"]
    bp = ConvexBP(g)
    pots = random_pots(g, 2, 0, dtype=torch.float32)
    pots[5] = pots[5].half()
    with pytest.raises(ValueError, match=r"got potential 5 of dtype torch\.float16"):
        bp.dual(pots, bp.init_messages(2))
    with pytest.raises(TypeError, match="floating point"):
        bp.pack([p.long() for p in pots])


# --------------------------------------------------------------------------- isolated variables


@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_variable_in_no_region_has_a_uniform_belief(dtype):
    # variables 1 (2 states, fewer than Kmax) and 4 (Kmax = 4 states) are in no region
    g = RegionGraph([3, 2, 3, 2, 4], [(0, 2), (3,)])
    bp = ConvexBP(g)
    pots = random_pots(g, 4, 0, scale=2.0, dtype=dtype)
    msgs, _ = bp.run(pots, num_sweeps=3)
    vb = bp.variable_beliefs(pots, msgs)
    exact = exact_marginals(g, [p.double() for p in pots]).to(dtype)  # one region: exact
    torch.testing.assert_close(vb, exact)
    torch.testing.assert_close(vb[:, 1], torch.tensor([0.5, 0.5, 0, 0], dtype=dtype).expand(4, 4))
    torch.testing.assert_close(vb[:, 4], torch.full((4, 4), 0.25, dtype=dtype))
    y = bp.decode(pots, msgs)
    assert torch.all(y < torch.tensor(g.num_states)) and torch.all(y >= 0)
    assert torch.all(y[:, [1, 4]] == 0)  # ties: the first state
    torch.testing.assert_close(y[:, [0, 2, 3]], exact[:, [0, 2, 3]].argmax(-1))


def test_variable_in_no_region_leaves_the_other_beliefs_alone():
    """With message passing: the other variables' beliefs are those of the graph without it."""
    g = RegionGraph([3, 2, 3, 2], [(0,), (2,), (3,), (0, 2), (2, 3)])  # variable 1 isolated
    h = RegionGraph([3, 3, 2], [(0,), (1,), (2,), (0, 1), (1, 2)])  # the same, renumbered
    bp, bh = ConvexBP(g), ConvexBP(h)
    pots = random_pots(g, 3, 1, scale=2.0)
    mg, _ = bp.run(pots, num_sweeps=20)
    mh, _ = bh.run(pots, num_sweeps=20)
    vg, vh = bp.variable_beliefs(pots, mg), bh.variable_beliefs(pots, mh)
    torch.testing.assert_close(vg[:, [0, 2, 3]], vh)
    torch.testing.assert_close(vg[:, 1], torch.tensor([0.5, 0.5, 0.0], dtype=DT).expand(3, 3))
    torch.testing.assert_close(bp.decode(pots, mg)[:, [0, 2, 3]], bh.decode(pots, mh))


# --------------------------------------------------------------------------- ĉ = 0 regions


def pairwise_primal(graph: RegionGraph, eps: float, theta: torch.Tensor) -> tuple:
    """The primal optimum of one example on a pairwise graph, by an independent smooth dual.

    Primal: ``max sum_r <mu_r, f_r> + sum_r ĉ_r H(mu_r)`` over locally consistent beliefs. With
    multipliers ``lam[e, v]`` on ``mu_v = sum mu_e`` and ``mu_v`` free (not only in the simplex:
    consistency with a pair puts it there anyway) where ``ĉ_v = 0``, the dual is
    ``sum_e ĉ_e lse((f_e - lam[e,a] - lam[e,b]) / ĉ_e) + sum_{ĉ_v > 0} ĉ_v lse((f_v + sum_e
    lam[e,v]) / ĉ_v)`` subject to ``f_v + sum_e lam[e,v] = 0`` where ``ĉ_v = 0``: smooth once
    one multiplier per such variable is eliminated, so L-BFGS solves it to high accuracy.
    Needs every pair ``ĉ_e > 0`` and every variable in a singleton region and a pair.

    Returns:
        ``(dual value, (N, Kmax) variable marginals, {pair region: (K_a, K_b) belief})``.
    """
    g = graph
    c_hat = [eps * c for c in g.counting_numbers]
    sizes = [g.region_size(r) for r in range(g.num_regions)]
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def tab(r: int) -> torch.Tensor:
        return theta[off[r] : off[r] + sizes[r]].reshape(g.region_shape(r))

    node = {reg[0]: r for r, reg in enumerate(g.regions) if len(reg) == 1}
    pairs = g.regions_of_size(2)
    assert all(c_hat[e] > 0 for e in pairs) and len(node) == g.num_vars
    inc: dict[int, list[tuple[int, int]]] = {v: [] for v in range(g.num_vars)}
    for e in pairs:
        for side, v in enumerate(g.regions[e]):
            inc[v].append((e, side))
    ks = g.num_states
    pos, n = {}, 0
    for v in range(g.num_vars):
        for key in inc[v] if c_hat[node[v]] > 0 else inc[v][:-1]:
            pos[key] = n
            n += ks[v]

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        lam = {}
        for v in range(g.num_vars):
            tot = torch.zeros(ks[v], dtype=DT)
            for key in inc[v]:
                if key in pos:
                    lam[key] = x[pos[key] : pos[key] + ks[v]]
                    tot = tot + lam[key]
            if c_hat[node[v]] == 0:
                lam[inc[v][-1]] = -tab(node[v]) - tot
        val = torch.zeros((), dtype=DT)
        mus = {}
        for e in pairs:
            z = (tab(e) - lam[(e, 0)][:, None] - lam[(e, 1)][None, :]) / c_hat[e]
            val = val + c_hat[e] * torch.logsumexp(z.reshape(-1), 0)
            mus[e] = torch.softmax(z.reshape(-1), 0).reshape(z.shape).detach()
        for v in range(g.num_vars):
            r = node[v]
            if c_hat[r] > 0:
                a = tab(r) + sum(lam[key] for key in inc[v])
                val = val + c_hat[r] * torch.logsumexp(a / c_hat[r], 0)
        return val, mus

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        xt = torch.tensor(x, dtype=DT, requires_grad=True)
        val, _ = objective(xt)
        (grad,) = torch.autograd.grad(val, xt)
        return float(val.detach()), grad.numpy()

    res = minimize(
        fun,
        np.zeros(n),
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=20000, maxcor=30, gtol=1e-12, ftol=1e-16),
    )
    val, mus = objective(torch.tensor(res.x, dtype=DT))
    marg = torch.zeros(g.num_vars, max(ks), dtype=DT)
    for v in range(g.num_vars):
        for e, side in inc[v]:  # consistent at the optimum: check it, then keep the mean
            m = mus[e].sum(1 - side)
            torch.testing.assert_close(
                m, mus[inc[v][0][0]].sum(1 - inc[v][0][1]), atol=1e-7, rtol=0
            )
        e, side = inc[v][0]
        marg[v, : ks[v]] = mus[e].sum(1 - side)
    return float(val), marg, mus


def zero_graph(kind: str, counting: str, n: int, seed: int = 0) -> RegionGraph:
    """Binary chains / fully connected graphs with ĉ = 0 singletons (all, or every other one)."""
    base = RegionGraph.chain(n, 2) if kind == "chain" else RegionGraph.fully_connected(n, 2)
    num_pairs = base.num_regions - n
    if counting == "zero_nodes":
        cs = [0.0] * n + [0.2] * num_pairs
    else:  # mixed: even singletons 0, odd ones 0.5; pairs in [0.2, 1]
        rng = np.random.default_rng(seed)
        cs = [0.0 if i % 2 == 0 else 0.5 for i in range(n)] + rng.uniform(
            0.2, 1.0, num_pairs
        ).tolist()
    return RegionGraph(base.num_states, base.regions, counting_numbers=cs)


ZERO_CASES = [
    ("chain", "zero_nodes", 6),
    ("chain", "mixed", 5),
    ("fully_connected", "zero_nodes", 4),
    ("fully_connected", "zero_nodes", 5),
    ("fully_connected", "mixed", 6),
]


def packed_reference(bp: ConvexBP, marg: torch.Tensor, mus: dict) -> torch.Tensor:
    """The solver's beliefs in the packed ``(T,)`` layout (singletons: the marginals)."""
    g = bp.graph
    tables = [
        marg[reg[0], : g.num_states[reg[0]]] if len(reg) == 1 else mus[r]
        for r, reg in enumerate(g.regions)
    ]
    return bp.pack([t[None] for t in tables])[0]


@pytest.mark.parametrize(
    "kind, counting, n",
    # the larger of the two fully connected zero-node graphs with the slow tests
    [pytest.param(*c, marks=pytest.mark.slow) if c == ZERO_CASES[3] else c for c in ZERO_CASES],
)
@pytest.mark.parametrize("eps", [1.0, 0.5])
@pytest.mark.parametrize("fast_path", [True, False])
def test_zero_count_beliefs_match_an_independent_solver(kind, counting, n, eps, fast_path):
    """Converged ĉ = 0 singletons: their beliefs, the decoding and the dual's gradient are the
    marginals of the (unique) primal optimum, not an argmax of rounding noise."""
    g = zero_graph(kind, counting, n)
    bp = ConvexBP(g, eps=eps, fast_path=fast_path)
    assert bp.uses_fast_path == fast_path
    b = 3
    theta = bp.pack(random_pots(g, b, 10 + n))
    # no tolerance: with ĉ = 0 terms the dual can creep down by less than any useful tol per
    # sweep while the beliefs are still 1e-4 away (sublinear block-coordinate descent)
    msgs, _ = bp.run(theta, num_sweeps=2000)
    vb = bp.variable_beliefs(theta, msgs)
    bel = bp.beliefs(theta, msgs)
    y = bp.decode(theta, msgs)
    th = theta.clone().requires_grad_(True)
    d = bp.dual(th, msgs)
    (grad,) = torch.autograd.grad(d.sum(), th)
    d = d.detach()
    # the gradient is the beliefs (the contract), on this path
    torch.testing.assert_close(grad, bp.pack(bel), rtol=0, atol=1e-12)
    for i in range(b):
        ref_d, marg, mus = pairwise_primal(g, eps, theta[i])
        assert abs(float(d[i]) - ref_d) < 1e-9, (float(d[i]), ref_d)
        torch.testing.assert_close(vb[i], marg, rtol=0, atol=1e-5)
        torch.testing.assert_close(grad[i], packed_reference(bp, marg, mus), rtol=0, atol=1e-5)
        for v in range(n):
            top2 = marg[v].topk(2).values
            if float(top2[0] - top2[1]) > 1e-3:  # decode = argmax of the true marginal
                assert int(y[i, v]) == int(marg[v].argmax()), (i, v, marg[v])


@pytest.mark.parametrize("kind, counting, n", ZERO_CASES[:3])
@pytest.mark.parametrize("eps", [1.0, 0.5])
def test_zero_count_converged_gradient_is_the_same_on_both_paths(kind, counting, n, eps):
    g = zero_graph(kind, counting, n, seed=1)
    fast, general = ConvexBP(g, eps), ConvexBP(g, eps, fast_path=False)
    theta = fast.pack(random_pots(g, 4, 3))
    grads = []
    for bp in (fast, general):
        msgs, _ = bp.run(theta, num_sweeps=2000)
        th = theta.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(bp.dual(th, msgs).sum(), th)
        torch.testing.assert_close(gr, bp.pack(bp.beliefs(theta, msgs)), rtol=0, atol=1e-12)
        grads.append(gr)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind, counting, n", ZERO_CASES[:3])
@pytest.mark.parametrize("eps", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("fast_path", [True, False])
def test_zero_count_gradient_away_from_convergence_is_the_one_hot_argmax(
    kind, counting, n, eps, fast_path
):
    """No ties: a ĉ = 0 region's gradient is exactly the one-hot argmax of its scores, and
    finite differences of the dual agree with autograd everywhere."""
    g = zero_graph(kind, counting, n)
    bp = ConvexBP(g, eps=eps, fast_path=fast_path)
    gen = torch.Generator().manual_seed(5)
    theta = bp.pack(random_pots(g, 2, 4, scale=2.0))
    msgs = 1.5 * torch.randn(2, bp.num_message_entries, generator=gen, dtype=DT)
    fhat = bp.reparameterize(theta, msgs)
    th = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bp.dual(th, msgs).sum(), th)
    c_hat = [eps * c for c in g.counting_numbers]
    off = 0
    for r in range(g.num_regions):
        size = g.region_size(r)
        if c_hat[r] == 0:
            f = fhat[:, off : off + size]
            top2 = f.topk(2, dim=1).values
            assert torch.all(top2[:, 0] - top2[:, 1] > 1e-3)  # no near-ties in this data
            onehot = torch.nn.functional.one_hot(f.argmax(1), size).to(DT)
            torch.testing.assert_close(grad[:, off : off + size], onehot, rtol=0, atol=0)
        off += size
    h = 1e-6
    fd = torch.zeros_like(theta)
    with torch.no_grad():
        for t in range(theta.shape[1]):
            e = torch.zeros_like(theta)
            e[:, t] = h
            fd[:, t] = (bp.dual(theta + e, msgs) - bp.dual(theta - e, msgs)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=0, atol=1e-6)


def test_zero_count_regions_under_an_exact_region_get_its_marginals():
    """One ĉ > 0 region holding everything: the dual is exactly log Z, and the ĉ = 0 regions
    below it (pairs, then singletons under ĉ = 0 pairs: top-down) get the exact marginals."""
    g = RegionGraph(
        [2, 3, 2],
        [(0, 1, 2), (0, 1), (1, 2), (0,), (1,), (2,)],
        counting_numbers=[1, 0, 0, 0, 0, 0],
    )
    bp = ConvexBP(g, eps=1.0)
    pots = random_pots(g, 5, 2, scale=2.0)
    labels, scores = brute_force_scores(g, pots)
    probs = torch.softmax(scores, 1).reshape(5, 2, 3, 2)
    msgs, _ = bp.run(pots, num_sweeps=200, tol=1e-14)
    torch.testing.assert_close(bp.dual(pots, msgs), torch.logsumexp(scores, 1))
    bel = bp.beliefs(pots, msgs)
    want = [probs, probs.sum(3), probs.sum(1), probs.sum((2, 3)), probs.sum((1, 3))]
    want.append(probs.sum((1, 2)))
    for b, w in zip(bel, want, strict=True):
        torch.testing.assert_close(b, w, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        bp.variable_beliefs(pots, msgs), exact_marginals(g, pots), rtol=0, atol=1e-9
    )
    th = [p.clone().requires_grad_(True) for p in pots]
    bp.dual(th, msgs).sum().backward()
    for t, w in zip(th, want, strict=True):
        torch.testing.assert_close(t.grad, w, rtol=0, atol=1e-9)
    # the same graph as the tree test: one region and two ĉ = 0 singletons
    g2 = RegionGraph([3, 2, 2], [(0, 1, 2), (0,), (2,)], counting_numbers=[1, 0, 0])
    bp2 = ConvexBP(g2, eps=1.0)
    pots2 = random_pots(g2, 5, 11)
    _, scores2 = brute_force_scores(g2, pots2)
    probs2 = torch.softmax(scores2, 1).reshape(5, 3, 2, 2)
    m2, _ = bp2.run(pots2, num_sweeps=50)
    bel2 = bp2.beliefs(pots2, m2)
    torch.testing.assert_close(bel2[1], probs2.sum((2, 3)))
    torch.testing.assert_close(bel2[2], probs2.sum((1, 2)))


@pytest.mark.parametrize("kind, counting, n", ZERO_CASES[:3])
@pytest.mark.parametrize("fast_path", [True, False])
def test_zero_count_ties_are_found_in_float32(kind, counting, n, fast_path):
    """float32 rounding makes the converged scores tie only to about 1e-6 relative."""
    g = zero_graph(kind, counting, n)
    bp = ConvexBP(g, eps=1.0, fast_path=fast_path)
    theta = bp.pack(random_pots(g, 3, 20, scale=1.5))
    msgs, _ = bp.run(theta.float(), num_sweeps=1000)
    vb = bp.variable_beliefs(theta.float(), msgs)
    for i in range(3):
        _, marg, _ = pairwise_primal(g, 1.0, theta[i])
        torch.testing.assert_close(vb[i].double(), marg, rtol=0, atol=2e-3)


@pytest.mark.parametrize("graph", [RegionGraph.chain(5, 3), RegionGraph.fully_connected(4, 2)])
@pytest.mark.parametrize("counting", [None, "random"])
def test_positive_counting_numbers_never_touch_the_zero_count_code(graph, counting, monkeypatch):
    """Every ĉ > 0 (the common case): decided at construction, nothing extra is computed."""
    if counting == "random":
        cs = np.random.default_rng(0).uniform(0.2, 2.0, graph.num_regions).tolist()
        graph = RegionGraph(graph.num_states, graph.regions, counting_numbers=cs)

    def boom(*args, **kwargs):
        raise AssertionError("zero-count beliefs computed on a graph without ĉ = 0 regions")

    monkeypatch.setattr(readout, "face_beliefs", boom)
    monkeypatch.setattr(readout, "pair_beliefs", boom)
    monkeypatch.setattr(dual, "pair_beliefs", boom)
    for fast_path in (True, False):
        bp = ConvexBP(graph, eps=0.7, fast_path=fast_path)
        assert bp.uses_fast_path == fast_path
        theta = bp.pack(random_pots(graph, 2, 0)).requires_grad_(True)
        msgs, _ = bp.run(theta.detach(), num_sweeps=5)
        bp.dual(theta, msgs).sum().backward()
        bp.beliefs(theta, msgs)
        bp.decode(theta, msgs)


def test_zero_count_beliefs_with_mixed_state_counts_and_forbidden_states():
    """Padded states (fast path) and forbidden ones (NEG_INF, huge magnitudes in the tie
    tolerance) get no belief; both paths agree with the independent solver."""
    base = RegionGraph.grid(2, 3, [2, 3, 4, 3, 2, 3])
    n = base.num_vars
    cs = [0.0] * n + [0.5] * (base.num_regions - n)
    g = RegionGraph(base.num_states, base.regions, counting_numbers=cs)
    pots = random_pots(g, 3, 1)
    pots[0][:, 0] = float("-inf")  # variable 0 may not take state 0
    pots[n][1, 0] = float("-inf")  # example 1: a row of the first pair table
    fast, general = ConvexBP(g), ConvexBP(g, fast_path=False)
    assert fast.uses_fast_path
    theta = fast.pack(pots)
    refs = [pairwise_primal(g, 1.0, theta[i]) for i in range(3)]
    for bp in (fast, general):
        msgs, _ = bp.run(theta, num_sweeps=200)
        vb = bp.variable_beliefs(theta, msgs)
        assert torch.all(vb[:, 0, 0] == 0)
        th = theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(bp.dual(th, msgs).sum(), th)
        torch.testing.assert_close(grad, bp.pack(bp.beliefs(theta, msgs)), rtol=0, atol=1e-12)
        for i, (_, marg, mus) in enumerate(refs):
            torch.testing.assert_close(vb[i], marg, rtol=0, atol=1e-6)
            torch.testing.assert_close(grad[i], packed_reference(bp, marg, mus), rtol=0, atol=1e-6)

"""ConvexBP: descent, optimality against an independent solver, bounds, gradients, errors."""

from __future__ import annotations

import gc
import itertools
import pickle
import warnings
import weakref

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from structlight import NEG_INF, ConvexBP, RegionGraph
from structlight.inference import EXP_MIN_STATES
from structlight.inference import dual as dual_module
from structlight.inference import prepared as prepared_module
from structlight.inference import readout as readout_module
from tests.helpers.scoring import brute_force_scores

DT = torch.float64


def random_graph(seed: int, kind: str, counting: str = "ones") -> RegionGraph:
    """Small random region graphs with per-variable state counts."""
    rng = np.random.default_rng(seed)
    if kind == "loopy":  # a 2x3 grid plus a diagonal: cycles, mixed state counts
        n = 6
        ks = rng.integers(2, 4, size=n).tolist()
        regions = [(i,) for i in range(n)] + [
            (0, 1),
            (1, 2),
            (3, 4),
            (4, 5),
            (0, 3),
            (1, 4),
            (2, 5),
            (0, 4),
        ]
    elif kind == "fully_connected":
        n = 5
        ks = rng.integers(2, 4, size=n).tolist()
        regions = [(i,) for i in range(n)] + list(itertools.combinations(range(n), 2))
    elif kind == "higher_order":  # triples over shared pairs and singletons (a 3-level graph)
        n = 5
        ks = rng.integers(2, 4, size=n).tolist()
        regions = [(i,) for i in range(n)] + [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)]
        regions += [(2, 1, 0), (2, 3, 4), (0, 3, 4)]  # unsorted on purpose: axes in tuple order
    else:
        raise ValueError(kind)
    r = len(regions)
    if counting == "ones":
        cs = None
    elif counting == "random":
        cs = rng.uniform(0.2, 2.0, size=r).tolist()
    else:  # some zero counting numbers
        cs = rng.uniform(0.2, 2.0, size=r)
        cs[rng.random(r) < 0.3] = 0.0
        cs = cs.tolist()
    return RegionGraph(ks, regions, counting_numbers=cs)


def random_pots(graph, b, seed, scale=1.0, dtype=DT):
    gen = torch.Generator().manual_seed(seed)
    return [
        scale * torch.randn(b, *graph.region_shape(r), generator=gen, dtype=dtype)
        for r in range(graph.num_regions)
    ]


CASES = [
    (kind, counting, eps)
    for kind in ("loopy", "fully_connected", "higher_order")
    for counting, eps in (("ones", 1.0), ("random", 0.7), ("zeros", 1.0), ("ones", 0.0))
]


@pytest.mark.parametrize("kind, counting, eps", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_never_increases(kind, counting, eps, seed):
    g = random_graph(seed, kind, counting)
    bp = ConvexBP(g, eps=eps)
    pots = random_pots(g, 6, seed, scale=2.0)
    msgs = bp.init_messages(6, DT)
    prev = bp.dual(pots, msgs)
    for _ in range(25):
        msgs = bp.sweep(pots, msgs)
        d = bp.dual(pots, msgs)
        assert torch.all(d <= prev + 1e-10 * (1 + prev.abs())), (d - prev).max()
        prev = d
    assert torch.isfinite(prev).all()


def lbfgs_minimum(bp: ConvexBP, theta: torch.Tensor) -> np.ndarray:
    """Minimise the dual over the messages with SciPy's L-BFGS and autograd: one example."""
    m = bp.num_message_entries

    def fun(x):
        lam = torch.tensor(x, dtype=DT, requires_grad=True)
        d = bp.dual(theta, lam[None])
        (g,) = torch.autograd.grad(d.sum(), lam)
        return float(d.detach()), g.numpy()

    res = minimize(
        fun,
        np.zeros(m),
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=20000, maxcor=30, gtol=1e-13, ftol=1e-16),
    )
    return res.fun


@pytest.mark.parametrize("kind", ["loopy", "fully_connected", "higher_order"])
@pytest.mark.parametrize("counting, eps", [("ones", 1.0), ("random", 0.5)])
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_converged_dual_matches_independent_solver(kind, counting, eps, seed):
    g = random_graph(seed, kind, counting)
    bp = ConvexBP(g, eps=eps)
    theta = bp.pack(random_pots(g, 2, 100 + seed))
    msgs, _ = bp.run(theta, num_sweeps=3000, tol=1e-13)
    d = bp.dual(theta, msgs)
    for b in range(2):
        ref = lbfgs_minimum(bp, theta[b : b + 1])
        assert abs(float(d[b]) - ref) < 1e-6, (float(d[b]), ref)
        assert float(d[b]) >= ref - 1e-6
    # local consistency: marginalising a parent's belief gives the child's
    bel = bp.beliefs(theta, msgs)
    for c, p in g.edges:
        axes = tuple(1 + i for i, v in enumerate(g.regions[p]) if v not in g.regions[c])
        marg = bel[p].sum(dim=axes)
        kept = [v for v in g.regions[p] if v in g.regions[c]]
        marg = marg.permute(0, *[1 + kept.index(v) for v in g.regions[c]])
        torch.testing.assert_close(marg, bel[c], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["loopy", "fully_connected", "higher_order"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_upper_bounds_log_partition_and_score(kind, seed):
    g = random_graph(seed, kind, "ones")
    bp = ConvexBP(g, eps=1.0)
    pots = random_pots(g, 4, seed)
    labels, scores = brute_force_scores(g, pots)
    log_z = torch.logsumexp(scores, dim=1)
    msgs, _ = bp.run(pots, num_sweeps=200)
    assert torch.all(bp.dual(pots, msgs) >= log_z - 1e-9)
    # D(lam) >= F(y) for any messages and any labelling, at any temperature
    gen = torch.Generator().manual_seed(seed)
    for eps in (1.0, 0.3, 0.0):
        bp_e = ConvexBP(g, eps=eps)
        lam = 3 * torch.randn(4, bp_e.num_message_entries, generator=gen, dtype=DT)
        d = bp_e.dual(pots, lam)
        assert torch.all(d[:, None] >= scores - 1e-9)
        # and score() agrees with enumeration
        pick = torch.randint(0, labels.shape[0], (4,), generator=gen)
        torch.testing.assert_close(bp_e.score(pots, labels[pick]), scores[torch.arange(4), pick])


@pytest.mark.parametrize("eps", [1.0, 0.5])
@pytest.mark.parametrize("kind", ["loopy", "higher_order"])
def test_dual_gradient_is_beliefs(kind, eps):
    g = random_graph(3, kind, "random")
    bp = ConvexBP(g, eps=eps)
    pots = [p.requires_grad_(True) for p in random_pots(g, 3, 7)]
    msgs = bp.init_messages(3, DT)
    for _ in range(3):
        msgs = bp.sweep(pots, msgs)
    d = bp.dual(pots, msgs)
    d.sum().backward()
    bel = bp.beliefs(pots, msgs)
    for p, b in zip(pots, bel):
        torch.testing.assert_close(p.grad, b)
        torch.testing.assert_close(b.reshape(3, -1).sum(1), torch.ones(3, dtype=DT))


def test_tree_with_exact_counting_matches_enumeration_and_marginals():
    # A chain with counting numbers c_edge = 1, c_node = 0 is NOT Bethe (node 1 - deg < 0), so
    # the bound is strict; but on a graph with a single region the dual is exactly log Z.
    g = RegionGraph([3, 2, 2], [(0, 1, 2), (0,), (2,)], counting_numbers=[1, 0, 0])
    bp = ConvexBP(g, eps=1.0)
    pots = random_pots(g, 5, 11)
    _, scores = brute_force_scores(g, pots)
    msgs, _ = bp.run(pots, num_sweeps=50)
    torch.testing.assert_close(bp.dual(pots, msgs), torch.logsumexp(scores, 1))
    # the top region's belief is the exact joint distribution
    probs = torch.softmax(scores, 1).reshape(5, 3, 2, 2)
    torch.testing.assert_close(bp.beliefs(pots, msgs)[0], probs)
    # singletons have counting number 0: their scores tie at convergence, and their beliefs are
    # the marginals their parent implies (not a vertex picked by rounding noise)
    beliefs = bp.beliefs(pots, msgs)
    torch.testing.assert_close(beliefs[1], probs.sum((2, 3)))
    torch.testing.assert_close(beliefs[2], probs.sum((1, 2)))


def test_forbidden_states_give_no_nan():
    g = random_graph(0, "higher_order", "ones")
    for eps in (1.0, 0.0):
        bp = ConvexBP(g, eps=eps)
        pots = random_pots(g, 4, 5)
        pots[0][:, 0] = float("-inf")  # variable 0 may not take state 0
        pots[5][:, 1, 1] = float("-inf")  # pair (0, 1) may not be (1, 1)
        pots[10][0] = float("-inf")  # example 0: triple (2,1,0) entirely forbidden
        msgs = bp.init_messages(4, DT)
        for _ in range(20):
            msgs = bp.sweep(pots, msgs)
        assert torch.isfinite(msgs).all()
        d = bp.dual(pots, msgs)
        assert not torch.isnan(d).any()
        assert d[0] <= NEG_INF / 2 and torch.isfinite(d[1:]).all()
        bel = bp.beliefs(pots, msgs)
        assert not any(torch.isnan(b).any() for b in bel)
        assert torch.all(bel[0][1:, 0] == 0)
        y = bp.decode(pots, msgs)
        assert torch.all(y[1:, 0] != 0)


def test_broadcast_tables_and_packing_agree():
    g = RegionGraph.chain(4, 3, order=2)
    bp = ConvexBP(g)
    gen = torch.Generator().manual_seed(0)
    pots = [
        torch.randn(1 if len(r) == 2 else 5, *g.region_shape(i), generator=gen)
        for i, r in enumerate(g.regions)
    ]
    expanded = [p.expand(5, *p.shape[1:]) for p in pots]
    theta = bp.pack(pots)
    assert theta.shape == (5, bp.num_entries)
    m1 = bp.sweep(pots, bp.init_messages(5))
    m2 = bp.sweep(expanded, bp.init_messages(5))
    m3 = bp.sweep(theta, bp.init_messages(5))
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(m1, m3)
    assert m1.dtype == torch.float32


def test_float32_matches_float64():
    g = random_graph(1, "loopy", "ones")
    bp = ConvexBP(g)
    pots = random_pots(g, 3, 1)
    m64, _ = bp.run(pots, num_sweeps=30)
    m32, _ = bp.run([p.float() for p in pots], num_sweeps=30)
    torch.testing.assert_close(
        bp.dual([p.float() for p in pots], m32).double(), bp.dual(pots, m64), atol=1e-4, rtol=1e-5
    )


def test_decode_uses_largest_variable_belief():
    g = RegionGraph([3, 4], [(0,), (0, 1)])  # variable 1 only inside the pair
    bp = ConvexBP(g, eps=1.0)
    pots = random_pots(g, 7, 2, scale=3.0)
    msgs, _ = bp.run(pots, num_sweeps=50)
    vb = bp.variable_beliefs(pots, msgs)
    assert vb.shape == (7, 2, 4)
    torch.testing.assert_close(vb[:, 0, 3], torch.zeros(7, dtype=DT))
    torch.testing.assert_close(vb.sum(-1), torch.ones(7, 2, dtype=DT))
    pair = bp.beliefs(pots, msgs)[1]
    torch.testing.assert_close(vb[:, 1], pair.sum(1))
    y = bp.decode(pots, msgs)
    torch.testing.assert_close(y[:, 1], pair.sum(1).argmax(-1))


def test_bad_inputs_raise():
    g = RegionGraph.chain(3, 2)
    bp = ConvexBP(g)
    good = [torch.zeros(2, *g.region_shape(r)) for r in range(g.num_regions)]
    msgs = bp.init_messages(2)
    with pytest.raises(ValueError, match="eps"):
        ConvexBP(g, eps=-1.0)
    with pytest.raises(TypeError, match="RegionGraph"):
        ConvexBP("chain")
    bad = list(good)
    bad[3] = torch.zeros(2, 2, 3)
    with pytest.raises(ValueError, match=r"potential 3 .* shape \(B, 2, 2\), got \(2, 2, 3\)"):
        bp.sweep(bad, msgs)
    with pytest.raises(ValueError, match="expected 5 potential tables"):
        bp.dual(good[:4], msgs)
    bad = list(good)
    bad[0] = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="different batch sizes"):
        bp.dual(bad, msgs)
    with pytest.raises(ValueError, match="batch size"):
        bp.sweep(good, bp.init_messages(3))
    other = ConvexBP(RegionGraph.chain(4, 2))
    with pytest.raises(ValueError, match="another graph"):
        bp.sweep(good, other.init_messages(2))
    with pytest.raises(ValueError, match="dtype"):
        bp.sweep(good, bp.init_messages(2, torch.float64))
    with pytest.raises(ValueError, match="shape \\(B, 3\\)"):
        bp.score(good, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        bp.score(good, torch.full((2, 3), 2))
    with pytest.raises(TypeError, match="floating point"):
        bp.pack([p.long() for p in good])


@pytest.mark.parametrize(
    "graph",
    [
        RegionGraph.chain(5, 4, order=2),
        RegionGraph.fully_connected(6, 3),
        RegionGraph.grid(3, 4, [2, 3, 4, 2] * 3),
        random_graph(0, "loopy", "zeros"),
        random_graph(1, "fully_connected", "random"),
    ],
)
@pytest.mark.parametrize("eps", [1.0, 0.4, 0.0])
def test_pairwise_fast_path_agrees_with_general_path(graph, eps):
    fast, general = ConvexBP(graph, eps), ConvexBP(graph, eps, fast_path=False)
    assert fast.uses_fast_path and not general.uses_fast_path
    pots = random_pots(graph, 4, 9, scale=2.0)
    pots[graph.num_vars][1] = float("-inf")  # one pair table fully forbidden in example 1
    pots[0][:, 0] = float("-inf")
    mf = mg = fast.init_messages(4, DT)
    for _ in range(6):
        mf, mg = fast.sweep(pots, mf), general.sweep(pots, mg)
        torch.testing.assert_close(mf, mg, rtol=1e-12, atol=1e-9)
    # dual (and its gradient), variable beliefs and decoding agree too
    lam = mf + torch.randn_like(mf)
    theta = fast.pack(pots).requires_grad_(True)
    d_fast = fast.dual(theta, lam)
    (g_fast,) = torch.autograd.grad(d_fast.sum(), theta)
    d_gen = general.dual(theta, lam)
    (g_gen,) = torch.autograd.grad(d_gen.sum(), theta)
    torch.testing.assert_close(d_fast, d_gen, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g_fast, g_gen)
    torch.testing.assert_close(
        fast.variable_beliefs(pots, lam), general.variable_beliefs(pots, lam)
    )
    torch.testing.assert_close(fast.decode(pots, lam), general.decode(pots, lam))


def test_fast_path_is_not_used_where_it_does_not_apply():
    assert not ConvexBP(random_graph(0, "higher_order")).uses_fast_path
    # a variable without a singleton region
    assert not ConvexBP(RegionGraph([2, 2, 2], [(0,), (1,), (0, 1), (1, 2)])).uses_fast_path


EXTREME_GRAPHS = [
    RegionGraph.chain(5, 9, order=2),  # >= EXP_MIN_STATES states: exp-space sweeps on the CPU
    RegionGraph.fully_connected(5, 8),
    RegionGraph.fully_connected(6, 2),  # two states: the two-term log-sum-exp
    RegionGraph.grid(3, 3, 3),
]


@pytest.mark.parametrize("graph", EXTREME_GRAPHS)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("eps", [1.0, 1e-3])
def test_fast_path_is_exact_for_extreme_potentials(graph, scale, eps):
    """Huge, forbidden (-inf) and tiny-temperature potentials: fast path == general path."""
    fast, general = ConvexBP(graph, eps), ConvexBP(graph, eps, fast_path=False)
    assert fast.uses_fast_path
    pots = random_pots(graph, 5, 3, scale=scale)
    pots[0][1, 0] = float("-inf")  # example 1: variable 0 may not take state 0
    pots[graph.num_vars][2, 0] = float("-inf")  # example 2: a row of a pair table forbidden
    pots[graph.num_vars + 1][3] = float("-inf")  # example 3: a whole pair table forbidden
    mf = mg = fast.init_messages(5, DT)
    for _ in range(4):
        mf, mg = fast.sweep(pots, mf), general.sweep(pots, mg)
        assert torch.isfinite(mf).all()
        torch.testing.assert_close(mf, mg, rtol=1e-12, atol=1e-9 * scale / eps)
    torch.testing.assert_close(fast.dual(pots, mf), general.dual(pots, mg), rtol=1e-12, atol=0)
    # float32 stays close to float64 where nothing is forbidden
    p32 = [p[[0, 4]].float() for p in pots]
    m32 = fast.sweep(p32, fast.init_messages(2))
    m64 = general.sweep([p[[0, 4]] for p in pots], general.init_messages(2, DT))
    torch.testing.assert_close(m32.double(), m64, rtol=1e-4, atol=1e-4 * scale / eps)


@pytest.mark.parametrize(
    "graph",
    [
        RegionGraph.grid(3, 4, 5),
        RegionGraph.chain(4, 9),
        RegionGraph.fully_connected(4, 2),
        RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]),  # mixed K
    ],
)
def test_sweep_leaves_its_inputs_alone(graph):
    bp, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    for b in (1, 3):
        theta = bp.pack(random_pots(graph, b, 0))
        msgs = torch.randn(b, bp.num_message_entries, dtype=DT)
        theta0, msgs0 = theta.clone(), msgs.clone()
        out = bp.sweep(theta, msgs)
        assert out.data_ptr() != msgs.data_ptr()
        torch.testing.assert_close(theta, theta0, rtol=0, atol=0)
        torch.testing.assert_close(msgs, msgs0, rtol=0, atol=0)
        # a sweep's output may be laid out (M, B) underneath; fed back, it is read without a
        # transpose and must still be left alone (and the sweep be the general path's)
        out0 = out.clone()
        again = bp.sweep(theta, out)
        assert again.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
        torch.testing.assert_close(out, out0, rtol=0, atol=0)
        torch.testing.assert_close(again, general.sweep(theta, out0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            bp.dual(theta, out), general.dual(theta, out0), rtol=1e-12, atol=0
        )


@pytest.mark.parametrize(
    "graph",
    [
        RegionGraph.grid(4, 4, 5),  # exp space (K >= EXP_MIN_STATES), B = 1: flat gathers, bmm
        RegionGraph.chain(5, 9, order=2),
        RegionGraph.fully_connected(5, 2),  # log space
        RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]),  # mixed K
    ],
)
@pytest.mark.parametrize("b", [1, 3])
def test_prepared_potentials_reuse_their_tables_and_a_new_prepare_sees_a_change(graph, b):
    """A prepared object's sweep tables serve every sweep on it; after an in-place change of
    the potentials the old object is refused and a new prepare sees the new values."""
    fast, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    theta = fast.pack(random_pots(graph, b, 1, scale=3.0))
    theta[0, 0] = float("-inf") if b > 1 else theta[0, 0]
    theta = fast.pack(theta)
    prep = fast.prepare(theta)
    mf = mg = fast.init_messages(b, DT)
    for _ in range(3):  # one prepared object: its tables are built once and reused
        mf, mg = fast.sweep(prep, mf), general.sweep(theta, mg)
        torch.testing.assert_close(mf, mg, rtol=1e-12, atol=1e-9)
    # reused tables give the very numbers fresh ones do
    torch.testing.assert_close(fast.sweep(prep, mf), fast.sweep(theta, mf), rtol=0, atol=0)
    with torch.no_grad():
        theta.mul_(-2.0).clamp_min_(NEG_INF)  # in place: the prepared object is stale now
    with pytest.raises(ValueError, match="changed in place after ConvexBP.prepare"):
        fast.sweep(prep, mf)
    prep = fast.prepare(theta)
    for _ in range(2):
        mf, mg = fast.sweep(prep, mf), general.sweep(theta, mg)
        torch.testing.assert_close(mf, mg, rtol=1e-12, atol=1e-9)
    # run() (one theta for all sweeps) agrees with sweeps on fresh copies, eps = 0 too
    for eps in (1.0, 0.0):
        fa, fb = ConvexBP(graph, eps), ConvexBP(graph, eps, fast_path=False)
        ma, _ = fa.run(theta, num_sweeps=4)
        mb = fb.init_messages(b, DT)
        for _ in range(4):
            mb = fb.sweep(theta.clone(), mb)
        torch.testing.assert_close(ma, mb, rtol=1e-12, atol=1e-9)
    # the engine keeps nothing of its inputs: they go with the caller's last reference
    gone = weakref.ref(theta)
    del theta, prep
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_exp_space_batch_of_one_is_exact_for_extreme_potentials(scale):
    """B = 1 exp-space sweeps (flat gathers, bmm), -inf entries and underflow: == general."""
    graph = RegionGraph.grid(3, 4, 4)
    fast, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    pots = random_pots(graph, 1, 2, scale=scale)
    pots[0][0, 0] = float("-inf")
    pots[graph.num_vars][0, 1] = float("-inf")
    theta = fast.pack(pots)
    mf = mg = fast.init_messages(1, DT)
    for _ in range(4):
        mf, mg = fast.sweep(theta, mf), general.sweep(theta, mg)
        assert torch.isfinite(mf).all()
        torch.testing.assert_close(mf, mg, rtol=1e-12, atol=1e-9 * scale)
    torch.testing.assert_close(fast.dual(theta, mf), general.dual(theta, mg), rtol=1e-12, atol=0)


DUAL_GRAPHS = [
    RegionGraph.chain(5, 26),  # exp space, the blended step's graph
    RegionGraph.grid(3, 3, 4),  # region order interleaves nothing; B = 1 below too
    RegionGraph.chain(4, 2),  # two states: log space only
]


def _dual_and_grads(bp, theta, lam):
    theta = theta.detach().clone().requires_grad_(True)
    lam = lam.detach().clone().requires_grad_(True)
    d = bp.dual(theta, lam)
    w = torch.linspace(0.5, 1.5, d.shape[0], dtype=d.dtype)  # a non-uniform output gradient
    g_theta, g_lam = torch.autograd.grad((d * w).sum(), (theta, lam))
    return d.detach(), g_theta, g_lam


@pytest.mark.parametrize("graph", DUAL_GRAPHS)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("after_sweep", [False, True])
def test_fast_dual_function_matches_autograd_of_general_path(graph, scale, b, after_sweep):
    """The fast path's dual (a custom autograd Function, beliefs as its backward, exp tables
    built by a sweep on the same prepared object) == autograd through the general path."""
    fast, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    pots = random_pots(graph, b, 5, scale=scale)
    pots[0][0, 0] = float("-inf")  # a forbidden state
    if b > 1:
        pots[graph.num_vars][1, 0] = float("-inf")  # a forbidden row of a pair table
        pots[graph.num_vars + 1][2] = float("-inf")  # a whole pair table forbidden
    theta = fast.pack(pots).requires_grad_(True)
    lam = fast.init_messages(b, DT)
    for _ in range(2):
        lam = general.sweep(theta, lam)
    lam = lam + scale * torch.randn_like(lam)
    prep = fast.prepare(theta)  # keeps theta's graph: the dual on it is differentiable
    if after_sweep:  # the blended step: a sweep (no gradient) then the dual, one prepared object
        with torch.no_grad():
            lam = fast.sweep(prep, lam)
    d_f, gt_f, gl_f = _dual_and_grads(general, theta, lam)  # the reference
    exp_space = min(graph.num_states) >= EXP_MIN_STATES
    lam = lam.requires_grad_(True)
    w = torch.linspace(0.5, 1.5, b, dtype=DT)
    calls: list[int] = []
    tables = dual_module.dense_tables
    for _ in range(2):  # the tables stay with the object: a second dual reuses them too
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dual_module, "dense_tables", lambda *a: calls.append(1) or tables(*a))
            mp.setattr(readout_module, "dense_tables", lambda *a: calls.append(1) or tables(*a))
            dd = fast.dual(prep, lam)
        if after_sweep and exp_space and scale == 1.0 and b == 1:  # no underflow: theta unread
            assert not calls
        g1, g2 = torch.autograd.grad((dd * w).sum(), (theta, lam))
        torch.testing.assert_close(dd, d_f, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(g1, gt_f, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g2, gl_f, rtol=1e-9, atol=1e-12)
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all()


def test_sweep_tables_reach_the_dual_only_through_the_same_prepared_object():
    """A sweep's exp tables serve a dual only when the caller passes the prepared object they
    belong to; plain potentials, copies and changed potentials are computed afresh."""
    graph = RegionGraph.chain(5, 26)
    fast, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    theta = fast.pack(random_pots(graph, 3, 8, scale=3.0))
    prep = fast.prepare(theta)
    lam = fast.sweep(prep, fast.init_messages(3, DT))
    with torch.no_grad():
        theta.mul_(-1.5)  # in place: the prepared object is stale
    with pytest.raises(ValueError, match="prepare them again"):
        fast.dual(prep, lam)
    torch.testing.assert_close(fast.dual(theta, lam), general.dual(theta, lam), rtol=1e-12, atol=0)
    prep = fast.prepare(theta)
    lam = fast.sweep(prep, lam)
    other = theta.clone()  # another tensor: prepared afresh, no tables
    torch.testing.assert_close(fast.dual(other, lam), general.dual(other, lam), rtol=1e-12, atol=0)
    for pots in (prep, theta):  # the object's tables, then plain potentials
        torch.testing.assert_close(
            fast.dual(pots, lam), general.dual(theta, lam), rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("fast_path", [True, False])
def test_forbidden_state_written_in_place_after_a_clean_sweep_is_still_clamped(fast_path):
    """Plain potentials are checked for forbidden entries on every call (nothing remembered)."""
    graph = RegionGraph.chain(4, 3)
    bp, ref = ConvexBP(graph, fast_path=fast_path), ConvexBP(graph, fast_path=False)
    theta = bp.pack(random_pots(graph, 2, 0)).float()
    msgs = bp.sweep(theta, bp.init_messages(2))  # theta found clean (and remembered)
    theta[0, 0] = float("-inf")  # in place: variable 0 may not take state 0 in example 0
    out = bp.sweep(theta, msgs)
    assert torch.isfinite(out).all() and torch.isfinite(bp.dual(theta, out)).all()
    clamped = theta.clamp_min(NEG_INF)
    torch.testing.assert_close(out, ref.sweep(clamped, msgs.contiguous()))


def _spy(fn, log: list):
    """``fn``, recording whether each call found batch-shared pair tables."""

    def spied(*args):
        out = fn(*args)
        log.append(out is not None)
        return out

    return spied


@pytest.mark.parametrize(
    "graph",
    [
        RegionGraph.chain(5, 4, order=2),
        RegionGraph.grid(3, 3, 3),
        RegionGraph.fully_connected(5, 2),  # log space
    ],
)
def test_batch_shared_pair_tables_match_the_general_path(graph):
    """Pair tables equal across the batch (a head's K x K tables) run as (K, K) @ (K, B) products;
    one differing entry anywhere sends the batch down the per-example path. Both are exact."""
    fast, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    b = 4
    pots = random_pots(graph, b, 7)
    for r in graph.regions_of_size(2):
        pots[r] = pots[r][:1].expand(b, -1, -1).clone()  # one table per region for the batch
    theta = fast.pack(pots)
    nearly = theta.clone()
    nearly[2, -1] += 1e-9  # the last pair entry of one example differs
    shared_pairs = prepared_module.shared_pairs
    for th, shared in ((theta, True), (nearly, False)):
        found = []
        with pytest.MonkeyPatch.context() as mp:  # which form the sweeps took
            mp.setattr(prepared_module, "shared_pairs", _spy(shared_pairs, found))
            mf = mg = torch.randn(b, fast.num_message_entries, dtype=DT)
            for _ in range(3):
                mf, mg = fast.sweep(th, mf), general.sweep(th, mg)
                torch.testing.assert_close(mf, mg, rtol=1e-10, atol=1e-10)
        assert found and all(f == shared for f in found)
        tf, tg = th.clone().requires_grad_(True), th.clone().requires_grad_(True)
        lf, lg = mf.clone().requires_grad_(True), mg.clone().requires_grad_(True)
        prep = fast.prepare(tf)
        fast.sweep(prep, mf)  # builds the object's tables, which the dual then uses
        df, dg = fast.dual(prep, lf), general.dual(tg, lg)
        torch.testing.assert_close(df, dg, rtol=1e-12, atol=1e-10)
        w = torch.rand(b, dtype=DT)  # an arbitrary output gradient
        (df * w).sum().backward()
        (dg * w).sum().backward()
        torch.testing.assert_close(tf.grad, tg.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lf.grad, lg.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "graph, b",
    [
        (RegionGraph.fully_connected(5, 2), 3),  # two states: the max/min form
        # each compiles anew (seconds); grids and 2nd-order chains compile by default below
        pytest.param(RegionGraph.grid(3, 3, 3), 1, marks=pytest.mark.slow),
        pytest.param(RegionGraph.chain(4, 4, order=2), 2, marks=pytest.mark.slow),
    ],
)
def test_compiled_sweeps_match_the_general_path(graph, b, compiled_sweeps, recwarn):
    """``compile=True``: the whole sweep under torch.compile, log space, same schedule."""
    bp, general = ConvexBP(graph, compile=True), ConvexBP(graph, fast_path=False)
    assert bp.uses_compiled_sweeps
    theta = bp.pack(random_pots(graph, b, 3, scale=3.0))
    mc = mg = torch.randn(b, bp.num_message_entries, dtype=DT)
    m0 = mc.clone()
    for _ in range(3):
        mc, mg = bp.sweep(theta, mc), general.sweep(theta, mg)
        torch.testing.assert_close(mc, mg, rtol=1e-10, atol=1e-10)
    compiled_sweeps.check(bp, warnings=recwarn)
    assert len(compiled_sweeps) == 3
    torch.testing.assert_close(bp.dual(theta, mc), general.dual(theta, mg), rtol=1e-12, atol=0)
    for msgs in (m0, mc):  # the input is left alone (also one laid out (M, B) by a sweep)
        kept = msgs.clone()
        out = bp.sweep(theta, msgs)
        torch.testing.assert_close(msgs, kept, rtol=0, atol=0)
        assert out.untyped_storage().data_ptr() != msgs.untyped_storage().data_ptr()


def test_compile_applies_only_where_it_can_and_falls_back_when_it_fails(monkeypatch):
    with pytest.raises(TypeError, match="compile must be True or False"):
        ConvexBP(RegionGraph.chain(3, 3), compile="yes")  # type: ignore[arg-type]
    assert not ConvexBP(RegionGraph.chain(3, 3), eps=0.5, compile=True).uses_compiled_sweeps
    mixed = RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)])
    assert not ConvexBP(mixed, compile=True).uses_compiled_sweeps
    assert not ConvexBP(RegionGraph.chain(3, 3)).uses_compiled_sweeps

    def broken(fn, **options):
        def run(*args):
            raise RuntimeError("no C++ compiler\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    graph = RegionGraph.fully_connected(4, 2)
    bp, other, eager = ConvexBP(graph, compile=True), ConvexBP(graph, compile=True), ConvexBP(graph)
    theta = bp.pack(random_pots(graph, 2, 0))
    msgs = torch.randn(2, bp.num_message_entries, dtype=DT)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        out = bp.sweep(theta, msgs)
    assert not bp.uses_compiled_sweeps
    torch.testing.assert_close(out, eager.sweep(theta, msgs), rtol=0, atol=0)
    with warnings.catch_warnings():  # warned once: later sweeps of this instance are quiet
        warnings.simplefilter("error")
        torch.testing.assert_close(bp.sweep(theta, out), eager.sweep(theta, out), rtol=0, atol=0)
    # the failure is this instance's: another one still tries (and decides for itself)
    assert other.uses_compiled_sweeps
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        other.sweep(theta, msgs)
    assert not other.uses_compiled_sweeps
    assert not pickle.loads(pickle.dumps(bp)).uses_compiled_sweeps  # the decision travels


def test_convex_bp_pickles_after_use():
    graph = RegionGraph.chain(4, 3)
    bp = ConvexBP(graph, compile=True)
    theta = bp.pack(random_pots(graph, 2, 0))
    plain = ConvexBP(graph)
    msgs = plain.sweep(theta, plain.init_messages(2, DT))  # caches and weak references now
    again = pickle.loads(pickle.dumps(plain))
    torch.testing.assert_close(again.sweep(theta, msgs), plain.sweep(theta, msgs), rtol=0, atol=0)
    assert pickle.loads(pickle.dumps(bp)).compile


def test_compiled_sweeps_redo_underflowing_sweeps_in_log_space(compiled_sweeps, recwarn):
    """Huge and forbidden potentials make exp-space sums underflow: the compiled sweep must
    notice and redo the sweep in log space (the general path is the reference)."""
    graph = RegionGraph.grid(3, 3, 3)
    bp, general = ConvexBP(graph, compile=True), ConvexBP(graph, fast_path=False)
    pots = random_pots(graph, 2, 5, scale=300.0)
    pots[graph.num_vars][1, 0] = float("-inf")  # a forbidden row of one pair table
    theta = bp.pack(pots)
    mc = mg = bp.init_messages(2, DT)
    for _ in range(3):
        mc, mg = bp.sweep(theta, mc), general.sweep(theta, mg)
        assert torch.isfinite(mc).all()
        torch.testing.assert_close(mc, mg, rtol=1e-10, atol=1e-6)
    compiled_sweeps.check(bp, warnings=recwarn)


def test_compiled_sweeps_of_several_graphs_in_one_process_stay_exact(compiled_sweeps, recwarn):
    """Each engine's compiled sweep is specialised to its own graph and batch size: a second
    and a third graph of other state counts and batch sizes (the same compiled function, new
    shapes) must still match the eager sweeps."""
    cases = [
        (RegionGraph.chain(5, 7, order=2), 6),
        (RegionGraph.fully_connected(6, 2), 5),
        (RegionGraph.grid(4, 4, 5), 1),
    ]
    for graph, b in cases:
        comp, eager = ConvexBP(graph, compile=True), ConvexBP(graph)
        theta = eager.pack(random_pots(graph, b, 1, dtype=torch.float32))
        mc = me = eager.init_messages(b)
        for _ in range(4):
            mc, me = comp.sweep(theta, mc), eager.sweep(theta, me)
        compiled_sweeps.check(comp, warnings=recwarn)
        torch.testing.assert_close(mc, me, rtol=1e-4, atol=1e-4)
    assert len(compiled_sweeps) == 4 * len(cases)

"""ConvexBP.prepare: explicit state shared between sweeps and the dual, nothing kept elsewhere."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import pytest
import torch

import structlight.inference as inference
from structlight import NEG_INF, ConvexBP, RegionGraph
from structlight.inference import PreparedPotentials

DT = torch.float64

GRAPHS = [
    RegionGraph.chain(5, 4),  # exp space
    RegionGraph.fully_connected(4, 2),  # log space
    RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]),  # mixed K
    RegionGraph([2, 2, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2)]),  # general path only
]


def random_pots(graph: RegionGraph, b: int, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        scale * torch.randn(b, *graph.region_shape(r), generator=gen, dtype=DT)
        for r in range(graph.num_regions)
    ]


def test_prepare_checks_and_clamps_once_and_is_frozen():
    graph = RegionGraph.chain(3, 3)
    bp = ConvexBP(graph)
    theta = bp.pack(random_pots(graph, 2, 0))
    prep = bp.prepare(theta)
    assert isinstance(prep, PreparedPotentials)
    assert prep.clean and prep.theta is theta  # nothing to clamp: no copy
    assert (prep.device, prep.dtype, prep.batch_size) == (theta.device, DT, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prep.theta = theta  # type: ignore[misc]
    assert bp.prepare(prep) is prep  # already prepared by this instance
    dirty = theta.clone()
    dirty[1, 0] = float("-inf")
    prep = bp.prepare(dirty)
    assert not prep.clean and prep.theta is not dirty
    assert float(prep.theta[1, 0]) == NEG_INF
    torch.testing.assert_close(prep.theta, bp.pack(dirty), rtol=0, atol=0)
    pots = random_pots(graph, 2, 1)  # a list of tables is packed once
    torch.testing.assert_close(bp.prepare(pots).theta, bp.pack(pots), rtol=0, atol=0)


def test_no_module_level_state():
    """No process-wide flags or memos: only constants and definitions at module level."""
    for name in ("_COMPILE_FAILED", "_CLAMP_CHECKED", "_handoff_sig"):
        assert not hasattr(inference, name)
    bp = ConvexBP(RegionGraph.chain(3, 3))
    assert not any(hasattr(bp, name) for name in ("_prep", "_handoff"))


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("eps", [1.0, 0.5, 0.0])
def test_every_method_takes_prepared_potentials_with_the_same_results(graph, eps):
    bp = ConvexBP(graph, eps)
    b = 3
    theta = bp.pack(random_pots(graph, b, 2, scale=2.0))
    theta[0, 0] = float("-inf")
    theta = bp.pack(theta)
    prep = bp.prepare(theta)
    msgs, _ = bp.run(theta, num_sweeps=3)
    mp, _ = bp.run(prep, num_sweeps=3)
    torch.testing.assert_close(mp, msgs, rtol=0, atol=0)
    torch.testing.assert_close(bp.sweep(prep, msgs), bp.sweep(theta, msgs), rtol=0, atol=0)
    torch.testing.assert_close(bp.dual(prep, msgs), bp.dual(theta, msgs), rtol=1e-13, atol=0)
    torch.testing.assert_close(
        bp.reparameterize(prep, msgs), bp.reparameterize(theta, msgs), rtol=0, atol=0
    )
    torch.testing.assert_close(
        bp.variable_beliefs(prep, msgs), bp.variable_beliefs(theta, msgs), rtol=0, atol=0
    )
    for a, c in zip(bp.beliefs(prep, msgs), bp.beliefs(theta, msgs), strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert torch.equal(bp.decode(prep, msgs), bp.decode(theta, msgs))
    labels = torch.zeros(b, graph.num_vars, dtype=torch.long)
    torch.testing.assert_close(bp.score(prep, labels), bp.score(theta, labels), rtol=0, atol=0)


@pytest.mark.parametrize("graph", [RegionGraph.chain(5, 26), RegionGraph.grid(3, 3, 3)])
@pytest.mark.parametrize("b", [1, 4])
def test_training_step_flow_sweeps_without_grad_and_differentiates_the_dual(graph, b):
    """``prep = bp.prepare(theta)``, sweeps under no_grad, ``bp.dual(prep, msgs)``: the gradient
    reaches the potentials and equals the general path's (autograd) gradient."""
    bp, general = ConvexBP(graph), ConvexBP(graph, fast_path=False)
    leaf = bp.pack(random_pots(graph, b, 3)).requires_grad_(True)
    theta = leaf * 1.5  # a non-leaf with a graph, as a head's potentials
    prep = bp.prepare(theta)
    msgs = bp.init_messages(b, DT)
    with torch.no_grad():
        for _ in range(2):
            msgs = bp.sweep(prep, msgs)
    assert not msgs.requires_grad
    (g_fast,) = torch.autograd.grad(bp.dual(prep, msgs).sum(), leaf, retain_graph=True)
    (g_ref,) = torch.autograd.grad(general.dual(theta, msgs).sum(), leaf)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_prepare():
    graph = RegionGraph.chain(3, 3)
    bp = ConvexBP(graph)
    theta = bp.pack(random_pots(graph, 2, 4)).requires_grad_(True)
    msgs, _ = bp.run(theta.detach(), num_sweeps=2)
    assert torch.autograd.gradcheck(lambda t: bp.dual(bp.prepare(t), msgs), (theta,))


def test_stale_prepared_potentials_are_refused():
    graph = RegionGraph.chain(4, 3)
    bp = ConvexBP(graph)
    theta = bp.pack(random_pots(graph, 2, 5))
    prep = bp.prepare(theta)
    msgs = bp.sweep(prep, bp.init_messages(2, DT))
    theta[0, 0] = float("-inf")  # in place, after prepare
    for call in (bp.sweep, bp.dual, bp.variable_beliefs, bp.beliefs, bp.decode):
        with pytest.raises(ValueError, match="changed in place after ConvexBP.prepare"):
            call(prep, msgs)
    fresh = bp.prepare(theta)  # a new prepare sees the change, forbidden state clamped
    assert not fresh.clean
    out = bp.sweep(fresh, msgs)
    assert torch.isfinite(out).all() and torch.isfinite(bp.dual(fresh, out)).all()
    torch.testing.assert_close(out, bp.sweep(theta.clamp_min(NEG_INF), msgs), rtol=0, atol=0)


def test_broadcast_and_foreign_prepared_potentials():
    graph = RegionGraph.chain(4, 3)
    bp, other = ConvexBP(graph), ConvexBP(graph, eps=0.5)
    one = bp.pack(random_pots(graph, 1, 6))
    msgs = torch.randn(3, bp.num_message_entries, dtype=DT)
    prep1 = bp.prepare(one)  # batch 1, used with 3 examples: expanded per call
    torch.testing.assert_close(bp.sweep(prep1, msgs), bp.sweep(one, msgs), rtol=0, atol=0)
    prep3 = bp.prepare(one, batch_size=3)
    assert prep3.batch_size == 3
    torch.testing.assert_close(bp.dual(prep3, msgs), bp.dual(one, msgs), rtol=0, atol=0)
    # another instance's object: its potentials are used, its tables are not
    bp.sweep(prep3, msgs)
    torch.testing.assert_close(other.sweep(prep3, msgs), other.sweep(one, msgs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch size"):
        bp.sweep(bp.prepare(torch.cat([one, one])), msgs)


def test_prepared_under_inference_mode():
    graph = RegionGraph.chain(4, 5)
    bp = ConvexBP(graph)
    theta = bp.pack(random_pots(graph, 2, 7))
    with torch.inference_mode():
        prep = bp.prepare(theta.clone())
        msgs, duals = bp.run(prep, num_sweeps=3, tol=0.0)
        again, _ = bp.run(theta, num_sweeps=3)
    torch.testing.assert_close(msgs, again, rtol=0, atol=0)
    assert duals.shape[1] == 2


def test_threads_share_one_instance():
    """Threads sweeping their own prepared potentials on one instance get serial results."""
    graph = RegionGraph.chain(6, 4)
    bp = ConvexBP(graph)
    thetas = [bp.pack(random_pots(graph, 2, s)) for s in range(4)]
    want = [bp.run(t, num_sweeps=5)[0] for t in thetas]
    got: list[torch.Tensor | None] = [None] * len(thetas)
    fresh = ConvexBP(graph)  # caches built under the race

    def work(i: int) -> None:
        got[i] = fresh.run(fresh.prepare(thetas[i]), num_sweeps=5)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(thetas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, c in zip(got, want, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_instance_pickles_while_prepared_objects_exist():
    graph = RegionGraph.chain(4, 4)
    bp = ConvexBP(graph)
    theta = bp.pack(random_pots(graph, 2, 8))
    prep = bp.prepare(theta)
    msgs = bp.sweep(prep, bp.init_messages(2, DT))
    again = pickle.loads(pickle.dumps(bp))
    torch.testing.assert_close(again.sweep(theta, msgs), bp.sweep(prep, msgs), rtol=0, atol=0)
    torch.testing.assert_close(again.sweep(again.prepare(prep), msgs), bp.sweep(prep, msgs))

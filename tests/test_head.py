"""StructuredHead and its subclasses: packing, losses, gradients, message store, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from structlight import ConvexBP, RegionGraph
from structlight.backbones import PerPosition
from structlight.head import ChainHead, FullyConnectedHead, InferenceSettings, StructuredHead
from structlight.potentials import MLP, HigherOrderTable, PairwiseTable, Unary
from structlight.store import MessageStore
from tests.helpers.scoring import brute_force_scores


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def make_batch(b: int, n: int, f: int, k: int, seed: int = 0, dtype=torch.float64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, n, f, generator=gen, dtype=dtype),
        "label": torch.randint(0, k, (b, n), generator=gen),
        "index": torch.arange(b),
    }


# ---------------------------------------------------------------------------- parameter counts
def test_paper_parameter_counts():
    backbone = PerPosition(MLP(784, [1024]))
    first = ChainHead(5, 26, 1024, order=1, pairwise="table")
    assert n_params(backbone, first) == 831_166
    second = ChainHead(5, 26, 1024, order=2, pairwise="table", share="type")
    assert n_params(backbone, second) == 831_842
    assert second.potentials["pairwise"].weight.shape == (2, 26, 26)  # distance 1 and 2
    mlp = ChainHead(5, 26, 1024, order=1, pairwise="mlp", pairwise_in_features=1568)
    assert n_params(backbone, mlp) == 974_846
    # Flickr's top: 4096-76 and one 2x2 table per edge (AlexNet below is counted elsewhere)
    assert n_params(FullyConnectedHead(38, 4096)) == 4096 * 76 + 76 + 703 * 4
    # the backbone + head actually run on Word50-shaped batches
    batch = {"image": torch.randn(2, 5, 1, 28, 28), "label": torch.zeros(2, 5, dtype=torch.long)}
    assert mlp(backbone(batch["image"]), batch).shape == (2, mlp.bp.num_entries)


# ---------------------------------------------------------------------------- packing
def test_chain_head_packs_like_convexbp_pack():
    torch.manual_seed(0)
    head = ChainHead(4, 3, 6, order=2, share="edge", table_init_std=1.0).double()
    batch = make_batch(2, 4, 6, 3)
    theta = head(batch["image"], batch)
    unary = head.potentials["unary"](batch["image"])
    tables = head.potentials["pairwise"].weight
    g = head.graph
    pots = [unary[:, i] for i in range(4)] + [tables[e : e + 1] for e in range(len(g.regions) - 4)]
    assert torch.equal(theta, head.bp.pack(pots, batch_size=2))
    assert head.packing().mode == "identity"


def test_generic_head_gather_add_and_higher_order():
    """Terms registered out of region order (gather), overlapping (add), of arity 3, mixed K."""
    torch.manual_seed(0)
    g = RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2)])
    head = StructuredHead(g, task_type="sequence").double()
    head.add_potential("triple", HigherOrderTable((2, 3, 3), init_std=1.0), [5])
    head.add_potential("unary", Unary(4, 3), [0, 1, 2], unary=True)
    head.add_potential("pair", PairwiseTable((3, 3), groups=[0, 1], init_std=1.0), [3, 4])
    head.double()
    assert head.packing().mode == "gather"
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    theta = head(x, {})
    u = head.potentials["unary"](x)
    w = head.potentials["pair"].weight
    pots = [u[:, 0, :2], u[:, 1], u[:, 2], w[0:1, :2, :], w[1:2], head.potentials["triple"].weight]
    assert torch.equal(theta, head.bp.pack(pots, batch_size=2))
    assert torch.equal(head.unary_scores(theta)[:, 0, :2], u[:, 0, :2])
    # a second term on the pairs: tables add up
    head.add_potential("pair2", PairwiseTable((3, 3), groups=[0, 0], init_std=1.0), [3, 4])
    head.double()
    assert head.packing().mode == "add"
    w2 = head.potentials["pair2"].weight
    pots[3] = pots[3] + w2[:, :2, :]
    pots[4] = pots[4] + w2
    assert torch.allclose(head(x, {}), head.bp.pack(pots, batch_size=2))
    assert sorted(head.unary_terms) == ["unary"]
    assert n_params(*[head.potentials[n] for n in ("pair", "pair2", "triple")]) == sum(
        p.numel() for p in head.pairwise_parameters()
    )


def test_add_potential_errors():
    g = RegionGraph.chain(3, 2)
    head = StructuredHead(g)
    with pytest.raises(ValueError, match="different sizes"):
        head.add_potential("bad", PairwiseTable((2, 2)), [0, 3])
    with pytest.raises(ValueError, match="regions are 0..4"):
        head.add_potential("bad", PairwiseTable((2, 2)), [7])
    with pytest.raises(RuntimeError, match="no potential terms"):
        head(torch.randn(1, 3, 2), {})
    head.add_potential("unary", Unary(2, 3), [0, 1, 2], unary=True)  # K=3 but graph has 2 states
    with pytest.raises(ValueError, match="'unary'"):
        head(torch.randn(1, 3, 2), {})


# ---------------------------------------------------------------------------- losses
@pytest.mark.parametrize("eps", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("kind", ["chain2", "full"])
def test_loss_nonnegative_for_any_messages(eps, kind):
    torch.manual_seed(1)
    settings = InferenceSettings(eps=eps)
    if kind == "chain2":
        head = ChainHead(
            5, 4, 3, order=2, inference=settings, table_init_std=2.0, num_train_examples=6
        )
    else:
        head = FullyConnectedHead(5, 3, num_states=3, inference=settings, table_init_std=2.0)
        head.store.resize(6)
    head = head.double()
    n, k = head.graph.num_vars, max(head.graph.num_states)
    feats = torch.randn(6, n, 3, dtype=torch.float64) * 3
    if kind == "full":
        feats = feats[:, 0]
    batch = make_batch(6, n, 3, k, seed=2)
    theta = head(feats, batch)
    labels = batch["label"]
    for msgs in (
        head.bp.init_messages(6, torch.float64),
        5 * torch.randn(6, head.bp.num_message_entries, dtype=torch.float64),
    ):
        assert (head.structured_loss(theta, labels, msgs) >= -1e-9).all()
    for _ in range(4):
        out = head.training_loss(theta, batch)
        assert (out.loss >= -1e-9).all()
        assert out.dual_change is not None and (out.dual_change <= 1e-9).all()  # descent
    assert head.loss_augmentation == (eps == 0.0)


def test_gradcheck_against_finite_differences():
    """Gradient of L = D(theta(w), lam) - F(theta(w), y*) with lam fixed, w.r.t. all parameters."""
    torch.manual_seed(0)
    kw = dict(pairwise="mlp", pairwise_source="features", pairwise_hidden=[2])
    head = ChainHead(4, 3, 5, order=2, inference=InferenceSettings(eps=0.7), **kw).double()
    head.add_potential("extra", PairwiseTable((3, 3), groups=[0, 0, 0], init_std=0.5), [4, 5, 6])
    head.double()
    batch = make_batch(3, 4, 5, 3, seed=3)
    with torch.no_grad():
        msgs = head.infer(head(batch["image"], batch), num_sweeps=2)
    names = [n for n, _ in head.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in head.parameters())

    def loss(*ps):
        theta = torch.func.functional_call(head, dict(zip(names, ps)), (batch["image"], batch))
        return head.structured_loss(theta, batch["label"], msgs).sum()

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5)


def test_gradient_is_beliefs_minus_ground_truth():
    """The paper's gradient: d L / d f_r(y_r) = b_r(y_r) - [y*_r = y_r]."""
    torch.manual_seed(0)
    g = RegionGraph.chain(4, 3, 2)
    bp = ConvexBP(g, 1.0)
    head = StructuredHead(g)
    theta = torch.randn(2, bp.num_entries, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4))
    msgs = bp.run(theta.detach(), num_sweeps=3)[0]
    head.structured_loss(theta, labels, msgs).sum().backward()
    beliefs = torch.cat([b.reshape(2, -1) for b in bp.beliefs(theta.detach(), msgs)], 1)
    onehot = torch.zeros_like(theta)
    idx = []
    for r, reg in enumerate(g.regions):
        flat = torch.zeros(2, dtype=torch.long)
        for v, k in zip(reg, g.region_shape(r)):
            flat = flat * k + labels[:, v]
        idx.append(head.bp.layout.region_slice(r).start + flat)
    onehot.scatter_(1, torch.stack(idx, 1), 1.0)
    assert torch.allclose(theta.grad, beliefs - onehot, atol=1e-10)


def test_unary_only_loss_is_cross_entropy():
    """With the structure ignored the loss is the per-position cross-entropy (eps = c = 1); the
    c_r = 1 dual with zero pairwise tables would instead temper each unary by 1 + degree."""
    torch.manual_seed(0)
    head = ChainHead(5, 4, 3, order=1).double()
    with torch.no_grad():
        head.potentials["pairwise"].weight.zero_()
    batch = make_batch(3, 5, 3, 4)
    theta = head(batch["image"], batch)
    u = head.potentials["unary"](batch["image"])
    ce = nn.functional.cross_entropy(u.reshape(-1, 4), batch["label"].reshape(-1), reduction="none")
    out = head.independent_loss(theta, batch["label"])
    assert torch.allclose(out.loss, ce.reshape(3, 5).sum(1))
    msgs = head.infer(theta, num_sweeps=300, tol=1e-12)
    deg = torch.tensor([1.0, 2, 2, 2, 1], dtype=torch.float64)
    tempered = ((1 + deg) * torch.logsumexp(u / (1 + deg[:, None]), -1)).sum(1)
    assert torch.allclose(head.bp.dual(theta, msgs), tempered, atol=1e-6)
    labels, marg = head.predict_independent(theta)
    assert torch.equal(labels, u.argmax(-1))
    assert torch.allclose(marg, torch.softmax(u, -1))


def test_hamming_augmentation_gives_the_structured_hinge_loss(brute_force):
    torch.manual_seed(3)
    hinge = InferenceSettings(eps=0.0)
    head = ChainHead(4, 3, 2, order=1, inference=hinge, table_init_std=1.0).double()
    assert head.loss_augmentation
    batch = make_batch(3, 4, 2, 3, seed=4)
    theta = head(batch["image"], batch)
    y = batch["label"]
    aug = head.augment(theta, y)
    assert torch.allclose(head.bp.score(aug, y), head.bp.score(theta, y))  # F(y*) unchanged
    u_aug, u = head.unary_scores(aug), head.unary_scores(theta)
    assert torch.allclose(u_aug - u, 1 - nn.functional.one_hot(y, 3).double())
    # brute force: max_y F(y) + Hamming(y, y*) - F(y*)
    g = head.graph
    pots = head.bp.unpack(theta)
    all_y, scores = brute_force(g, pots)
    hamming = (all_y[None] != y[:, None]).sum(-1)
    hinge = (scores + hamming).max(1).values - head.bp.score(theta, y)
    msgs = head.infer(aug, num_sweeps=100)
    loss = head.structured_loss(theta, y, msgs)
    assert torch.allclose(loss, hinge, atol=1e-8)  # the LP is tight on a chain
    ind = head.independent_loss(theta, y).loss  # per-variable hinge
    want = ((u + 1 - nn.functional.one_hot(y, 3)).amax(-1) - u.gather(2, y[..., None])[..., 0]).sum(
        1
    )
    assert torch.allclose(ind, want)


# ---------------------------------------------------------------------------- blending
def test_blended_step_updates_only_the_batch_slots():
    torch.manual_seed(0)
    settings = InferenceSettings(sweeps_per_step=2)
    head = ChainHead(
        5, 4, 3, order=2, inference=settings, table_init_std=1.0, num_train_examples=10
    )
    head = head.double()
    head.store.messages.normal_()
    before = head.store.messages.clone()
    batch = make_batch(3, 5, 3, 4)
    batch["index"] = torch.tensor([7, 2, 4])
    theta = head(batch["image"], batch)
    out = head.training_loss(theta, batch)
    want = before[[7, 2, 4]]
    for _ in range(2):
        want = head.bp.sweep(theta.detach(), want)
    assert torch.allclose(head.store.messages[[7, 2, 4]], want)
    others = [i for i in range(10) if i not in (7, 2, 4)]
    assert torch.equal(head.store.messages[others], before[others])
    assert out.num_sweeps == 2
    assert torch.allclose(out.loss, head.structured_loss(theta, batch["label"], want))
    d0 = head.bp.dual(theta.detach(), before[[7, 2, 4]])
    assert torch.allclose(out.dual_change, (out.dual - d0) / 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_blended_step_keeps_the_old_messages_of_a_non_finite_example(bad):
    """An example whose new messages hold a NaN or an infinity keeps its stored ones."""
    torch.manual_seed(0)
    head = ChainHead(5, 4, 3, order=1, table_init_std=1.0, num_train_examples=10).double()
    head.store.messages.normal_()
    before = head.store.messages.clone()
    batch = make_batch(3, 5, 3, 4)
    batch["index"] = torch.tensor([7, 2, 4])
    theta = head(batch["image"], batch).detach().clone()
    theta[1, 0] = bad  # example 1 (slot 2): its sweep's messages are not finite
    head.training_loss(theta, batch, track_dual_change=False)
    assert torch.equal(head.store.messages[2], before[2])
    want = head.bp.sweep(theta[[0, 2]], before[[7, 4]])
    assert torch.allclose(head.store.messages[[7, 4]], want)
    assert torch.isfinite(head.store.messages).all()


def test_double_loop_restarts_from_zero_and_stores_nothing():
    torch.manual_seed(0)
    settings = InferenceSettings(blend=False, max_sweeps=20, tol=1e-6)
    head = ChainHead(5, 4, 3, inference=settings, table_init_std=1.0).double()
    batch = make_batch(3, 5, 3, 4)
    batch.pop("index")  # not needed without blending
    theta = head(batch["image"], batch)
    out = head.training_loss(theta, batch)
    msgs, duals = head.bp.run(theta.detach(), num_sweeps=20, tol=1e-6)
    assert out.num_sweeps == duals.shape[0] <= 20
    assert torch.allclose(out.loss, head.structured_loss(theta, batch["label"], msgs))
    assert head.store.num_examples == 0


def _train(head: StructuredHead, batch: dict, steps: int) -> float:
    opt = torch.optim.SGD(head.parameters(), lr=0.3)
    for _ in range(steps):
        opt.zero_grad()
        loss = head.training_loss(head(batch["image"], batch), batch).loss.mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(head.training_loss(head(batch["image"], batch), batch).loss.mean())


def test_blended_and_double_loop_reach_the_same_loss_with_many_sweeps():
    batch = make_batch(8, 5, 8, 4, seed=5)
    kw = dict(num_vars=5, num_states=4, in_features=8, order=1)
    torch.manual_seed(0)
    blended = ChainHead(**kw, inference=InferenceSettings(sweeps_per_step=10), num_train_examples=8)
    blended = blended.double()
    torch.manual_seed(0)
    loop10 = InferenceSettings(blend=False, max_sweeps=10, tol=None)
    double = ChainHead(**kw, inference=loop10).double()
    assert all(torch.equal(a, b) for a, b in zip(blended.parameters(), double.parameters()))
    lb, ld = _train(blended, batch, 10), _train(double, batch, 10)
    torch.manual_seed(0)
    start = _train(ChainHead(**kw, inference=loop10).double(), batch, 0)
    assert lb < 0.8 * start  # it did learn
    assert lb == pytest.approx(ld, rel=1e-4)
    # with a single sweep per step the two differ (the blended messages lag behind)
    torch.manual_seed(0)
    one = ChainHead(**kw, inference=InferenceSettings(sweeps_per_step=1), num_train_examples=8)
    one = one.double()
    torch.manual_seed(0)
    loop1 = InferenceSettings(blend=False, max_sweeps=1, tol=None)
    one_dl = ChainHead(**kw, inference=loop1).double()
    assert _train(one, batch, 5) != pytest.approx(_train(one_dl, batch, 5), rel=1e-4)


# ---------------------------------------------------------------------------- errors
def test_clear_errors():
    head = ChainHead(5, 4, 3, num_train_examples=4)
    batch = make_batch(2, 5, 3, 4, dtype=torch.float32)
    theta = head(batch["image"], batch)
    bad = dict(batch, label=torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="graph has 5 variables"):
        head.training_loss(theta, bad)
    with pytest.raises(KeyError, match="'label'"):
        head.training_loss(theta, {"image": batch["image"], "index": batch["index"]})
    no_index = {"image": batch["image"], "label": batch["label"]}
    with pytest.raises(KeyError, match=r"batch\['index'\].*\['image', 'label'\]"):
        head.training_loss(theta, no_index)
    with pytest.raises(IndexError, match=r"\[3, 9\].*4 slots"):
        head.training_loss(theta, dict(batch, index=torch.tensor([3, 9])))
    with pytest.raises(ValueError, match="repeats"):
        head.training_loss(theta, dict(batch, index=torch.tensor([1, 1])))
    empty = ChainHead(5, 4, 3)
    with pytest.raises(IndexError, match="no slots"):
        empty.training_loss(empty(batch["image"], batch), batch)
    with pytest.raises(ValueError, match="pairwise_in_features"):
        ChainHead(5, 26, 1024, pairwise="mlp")
    with pytest.raises(ValueError, match="share"):
        ChainHead(5, 26, 1024, share="per_edge")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- message store
def test_message_store_gather_scatter_resize_and_state_dict():
    store = MessageStore(3, 4)
    store.scatter(torch.tensor([2, 0]), torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    assert torch.equal(
        store.gather(torch.tensor([0, 2, 1])), torch.tensor([[4.0, 5, 6], [1, 2, 3], [0, 0, 0]])
    )
    store.resize(6)
    assert (
        store.num_examples == 6
        and store.messages[2, 0] == 1.0
        and store.messages[5].abs().sum() == 0
    )
    other = MessageStore(3)  # empty: loading resizes it
    other.load_state_dict(store.state_dict())
    assert torch.equal(other.messages, store.messages)
    wrong = MessageStore(5)
    with pytest.raises(RuntimeError, match="message entries"):
        wrong.load_state_dict(store.state_dict())
    with pytest.raises(TypeError, match="integers"):
        store.gather(torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        store.scatter(torch.tensor([0, 1]), torch.zeros(2, 4))
    with pytest.raises(IndexError, match="-1"):
        store.gather(torch.tensor([-1, 0]))
    # saved with the head's state
    head = ChainHead(3, 2, 2, num_train_examples=5)
    assert head.state_dict()["store.messages"].shape == (5, head.bp.num_message_entries)
    assert math.prod(head.store.messages.shape) == 5 * head.bp.num_message_entries


def test_chain_head_viterbi_decoding_is_the_exact_map():
    torch.manual_seed(0)
    head = ChainHead(4, 3, in_features=5, decoding="viterbi", table_init_std=1.0)
    feats = torch.randn(6, 4, 5)
    theta = head(feats).detach()
    labels, marg = head.predict(theta, head.bp.init_messages(6))
    pots = [
        theta[:, head.bp.layout.region_slice(r)].reshape(6, *head.graph.region_shape(r))
        for r in range(head.graph.num_regions)
    ]
    all_labels, scores = brute_force_scores(head.graph, pots)
    torch.testing.assert_close(labels, all_labels[scores.argmax(1)])
    probs = torch.softmax(scores, 1)
    exact0 = torch.zeros(6, 3).index_add(1, all_labels[:, 0], probs)
    torch.testing.assert_close(marg[:, 0], exact0)
    # the default stays marginal decoding from the messages
    assert ChainHead(4, 3, in_features=5).decoding == "marginal"
    with pytest.raises(ValueError, match="1st-order chains only"):
        ChainHead(4, 3, in_features=5, order=2, decoding="viterbi")
    with pytest.raises(ValueError, match="decoding must be"):
        ChainHead(4, 3, in_features=5, decoding="map")


def test_compile_sweeps_head_trains_like_the_eager_head(compiled_sweeps, recwarn):
    """``InferenceSettings(compile_sweeps=True)`` reaches the engine; the step's store, loss and
    gradients agree."""
    torch.manual_seed(0)
    eager = FullyConnectedHead(6, 5, table_init_std=1.0, num_train_examples=8).double()
    settings = InferenceSettings(compile_sweeps=True)
    compiled = FullyConnectedHead(
        6, 5, table_init_std=1.0, num_train_examples=8, inference=settings
    )
    compiled = compiled.double()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.bp.compile and compiled.bp.uses_compiled_sweeps and not eager.bp.compile
    x = torch.randn(4, 5, dtype=torch.float64)
    batch = {"label": torch.randint(0, 2, (4, 6)), "index": torch.tensor([1, 5, 0, 7])}
    outs = []
    for head in (eager, compiled):
        out = head.training_loss(head(x, batch), batch)
        out.loss.sum().backward()
        outs.append(out)
    compiled_sweeps.check(compiled.bp, warnings=recwarn)
    torch.testing.assert_close(
        compiled.store.messages, eager.store.messages, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(outs[1].loss, outs[0].loss, rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------- settings, schedules
def test_inference_settings_validate_and_choose_the_schedule():
    from structlight.head import Blended, DoubleLoop

    default = InferenceSettings()
    assert default.schedule() == Blended(1) and default.augments_loss is False
    assert InferenceSettings(eps=0).eps == 0.0 and InferenceSettings(eps=0).augments_loss
    assert not InferenceSettings(eps=0, loss_augmentation=False).augments_loss
    loop = InferenceSettings(blend=False, max_sweeps=7, tol=None)
    assert loop.schedule() == DoubleLoop(7, None) and not loop.schedule().uses_store
    for kw, err, match in [
        ({"eps": -1.0}, ValueError, "eps must be finite and >= 0, got -1.0"),
        ({"eps": float("inf")}, ValueError, "eps must be finite"),
        ({"eps": "1"}, TypeError, "eps must be a number"),
        ({"sweeps_per_step": 1.0}, TypeError, "sweeps_per_step must be an int, got 1.0"),
        ({"sweeps_per_step": 0}, ValueError, "sweeps_per_step must be >= 1, got 0"),
        ({"max_sweeps": 0}, ValueError, "max_sweeps must be an int >= 1, got 0"),
        ({"max_sweeps": True}, ValueError, "max_sweeps must be an int >= 1, got True"),
        ({"tol": -1e-3}, ValueError, "tol must be >= 0 or None, got -0.001"),
        ({"compile_sweeps": 1}, TypeError, "compile_sweeps must be True or False, got 1"),
    ]:
        with pytest.raises(err, match=match):
            InferenceSettings(**kw)


def test_head_reads_its_settings_from_one_object():
    settings = InferenceSettings(eps=0.5, sweeps_per_step=3, blend=False, max_sweeps=4, tol=None)
    head = ChainHead(4, 3, 2, inference=settings)
    assert head.inference is settings and head.bp.eps == 0.5
    views = (head.eps, head.sweeps_per_step, head.blend, head.max_sweeps, head.tol)
    assert views == (0.5, 3, False, 4, None)
    assert head.schedule == settings.schedule() and head.loss_augmentation is False
    with pytest.raises(AttributeError):
        head.eps = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"inference=InferenceSettings\(eps=0.0, blend=False\)"):
        ChainHead(4, 3, 2, eps=0.0, blend=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"FullyConnectedHead got sweeps_per_step"):
        FullyConnectedHead(4, 2, sweeps_per_step=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="inference must be an InferenceSettings.*got dict"):
        ChainHead(4, 3, 2, inference={"eps": 1.0})  # type: ignore[arg-type]
    assert head.term_regions("pairwise") == head.graph.regions_of_size(2)
    with pytest.raises(KeyError, match="no potential term named 'nope'"):
        head.term_regions("nope")


def test_schedules_run_the_documented_sweeps():
    """Blended: exactly ``sweeps_per_step`` sweeps from the given messages; DoubleLoop: the
    engine's run to ``tol`` (or ``max_sweeps``)."""
    from structlight.head import Blended, DoubleLoop

    torch.manual_seed(0)
    bp = ConvexBP(RegionGraph.chain(4, 3, 2))
    theta = torch.randn(2, bp.num_entries, dtype=torch.float64)
    prep = bp.prepare(theta)
    start = torch.randn(2, bp.num_message_entries, dtype=torch.float64)
    msgs, num = Blended(2).run(bp, prep, start)
    assert num == 2 and torch.equal(msgs, bp.sweep(theta, bp.sweep(theta, start)))
    msgs, num = DoubleLoop(50, 1e-9).run(bp, prep, bp.init_messages(2, torch.float64))
    want, duals = bp.run(theta, num_sweeps=50, tol=1e-9)
    assert num == duals.shape[0] < 50 and torch.equal(msgs, want)
    assert DoubleLoop(3, None).run(bp, prep, start)[1] == 3

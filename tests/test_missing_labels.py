"""Learning with missing labels: the clamped dual, the latent loss, its second message store.

The loss of an example with unobserved labels (-100 at present positions) is
``D(theta~; lam) - D(theta_clamped; mu)``. The checks:

* the clamped potentials forbid exactly the entries that disagree with an observed label, and
  with every label observed their dual is ``F(y*)`` for any messages; clamping the singleton
  tables alone (what the head trains with) has the same dual minimum;
* at convergence the loss equals the difference of the two dual minima found by an independent
  solver (SciPy's L-BFGS on a dual written here from the region graph alone);
* the gradient matches finite differences; the loss is never negative at convergence;
* with no unobserved label, losses and training are bit for bit those of the supervised head.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from structlight import ConvexBP, DeepStructuredModel, RegionGraph
from structlight.head import ChainHead, InferenceSettings

DT = torch.float64
GRAPHS = {
    "chain1": RegionGraph.chain(4, 3),
    "chain2": RegionGraph.chain(4, 2, order=2),
    "grid": RegionGraph.grid(2, 3, 2),
    "higher": RegionGraph(
        [2, 3, 2, 2],
        [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (2, 3), (0, 1, 2)],
        counting_numbers=[1.0, 0.5, 1.0, 2.0, 1.0, 0.7, 1.0, 1.5],
    ),
}


def random_theta(graph: RegionGraph, b: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, ConvexBP(graph).num_entries, generator=gen, dtype=DT)


def random_labels(graph: RegionGraph, b: int, seed: int, hide: float) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    y = np.stack([rng.integers(0, k, size=b) for k in graph.num_states], axis=1)
    y[rng.random(y.shape) < hide] = -100
    y[:, 0] = np.where(y[:, 0] < 0, 0, y[:, 0])  # at least one observed label per example
    return torch.from_numpy(y)


# ----------------------------------------------------------------- an independent dual
class ReferenceDual:
    """The dual ``sum_r c^_r lse(fhat_r / c^_r)`` written from the region graph alone."""

    def __init__(self, graph: RegionGraph, eps: float) -> None:
        self.graph, self.eps = graph, eps
        self.shapes = [graph.region_shape(r) for r in range(graph.num_regions)]
        self.edges = list(graph.edges)  # (child, parent)
        self.sizes = [int(np.prod(self.shapes[c])) for c, _ in self.edges]
        self.index = []  # per edge: each parent entry's child entry
        for c, p in self.edges:
            states = np.indices(self.shapes[p]).reshape(len(graph.regions[p]), -1)
            pos = [graph.regions[p].index(v) for v in graph.regions[c]]
            flat = np.ravel_multi_index(tuple(states[pos]), self.shapes[c])
            self.index.append(torch.from_numpy(flat))

    def __call__(self, tables: list[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
        parts = lam.split(self.sizes)
        fhat = [t.reshape(-1).clone() for t in tables]
        for (c, p), msg, idx in zip(self.edges, parts, self.index, strict=True):
            fhat[p] = fhat[p] + msg[idx]
            fhat[c] = fhat[c] - msg
        total = lam.new_zeros(())
        for r, f in enumerate(fhat):
            ch = self.eps * self.graph.counting_numbers[r]
            total = total + (ch * torch.logsumexp(f / ch, 0) if ch > 0 else f.max())
        return total

    def minimum(self, tables: list[torch.Tensor]) -> float:
        def fun(x):
            lam = torch.tensor(x, dtype=DT, requires_grad=True)
            d = self(tables, lam)
            (g,) = torch.autograd.grad(d, lam)
            return float(d.detach()), g.numpy()

        res = minimize(
            fun,
            np.zeros(sum(self.sizes)),
            jac=True,
            method="L-BFGS-B",
            options=dict(maxiter=20000, maxcor=30, gtol=1e-12, ftol=1e-16),
        )
        return float(res.fun)


# ----------------------------------------------------------------- the clamped potentials
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_clamp_forbids_exactly_the_entries_that_disagree_with_an_observed_label(name):
    graph = GRAPHS[name]
    bp = ConvexBP(graph)
    theta, y = random_theta(graph, 5, 1), random_labels(graph, 5, 2, hide=0.4)
    clamped = bp.clamp_to_observed(theta, y)
    for r, (orig, got) in enumerate(zip(bp.unpack(theta), bp.unpack(clamped), strict=True)):
        for b in range(5):
            for states in itertools.product(*(range(k) for k in graph.region_shape(r))):
                ok = all(
                    y[b, v] < 0 or y[b, v] == s
                    for v, s in zip(graph.regions[r], states, strict=True)
                )
                want = orig[b][states] if ok else torch.tensor(-1e30, dtype=DT)
                assert got[b][states] == want, (r, b, states)


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("eps", [1.0, 0.5, 0.0])
def test_fully_observed_clamped_dual_is_the_score_for_any_messages(name, eps):
    graph = GRAPHS[name]
    bp = ConvexBP(graph, eps=eps)
    theta, y = random_theta(graph, 4, 3), random_labels(graph, 4, 4, hide=0.0)
    gen = torch.Generator().manual_seed(5)
    msgs = 3.0 * torch.randn(4, bp.num_message_entries, generator=gen, dtype=DT)
    dual = bp.dual(bp.clamp_to_observed(theta, y), msgs)
    torch.testing.assert_close(dual, bp.score(theta, y), rtol=0, atol=1e-10)


NO_SINGLETON = RegionGraph([2, 3, 2], [(0,), (1,), (0, 1), (1, 2)])  # variable 2 has none


@pytest.mark.parametrize("name", [*sorted(GRAPHS), "no_singleton"])
def test_singleton_clamp_forbids_the_singletons_and_leaves_covered_regions(name):
    """``singletons_only``: a singleton table forbids its variable's other states; a larger
    region is clamped only by its variables that have no singleton table."""
    graph = GRAPHS.get(name, NO_SINGLETON)
    bp = ConvexBP(graph)
    theta, y = random_theta(graph, 5, 1), random_labels(graph, 5, 2, hide=0.4)
    clamped = bp.clamp_to_observed(theta, y, singletons_only=True)
    owned = {reg[0] for reg in graph.regions if len(reg) == 1}
    for r, (orig, got) in enumerate(zip(bp.unpack(theta), bp.unpack(clamped), strict=True)):
        reg = graph.regions[r]
        checked = reg if len(reg) == 1 else [v for v in reg if v not in owned]
        for b in range(5):
            for states in itertools.product(*(range(k) for k in graph.region_shape(r))):
                ok = all(
                    y[b, v] < 0 or y[b, v] == s
                    for v, s in zip(reg, states, strict=True)
                    if v in checked
                )
                want = orig[b][states] if ok else torch.tensor(-1e30, dtype=DT)
                assert got[b][states] == want, (r, b, states)


@pytest.mark.parametrize("name", [*sorted(GRAPHS), "no_singleton"])
@pytest.mark.parametrize("eps", [1.0, 0.5])
def test_singleton_clamp_has_the_minimum_of_the_full_clamp(name, eps):
    """The converged dual of the singleton clamp equals SciPy's minimum of the full clamp."""
    graph = GRAPHS.get(name, NO_SINGLETON)
    bp = ConvexBP(graph, eps=eps)
    theta, y = random_theta(graph, 2, 12), random_labels(graph, 2, 13, hide=0.4)
    single = bp.clamp_to_observed(theta, y, singletons_only=True)
    mu, _ = bp.run(single, num_sweeps=20000, tol=1e-14)
    got = bp.dual(single, mu)
    full = bp.clamp_to_observed(theta, y)
    ref = ReferenceDual(graph, eps)
    for b in range(2):
        want = ref.minimum([t[b] for t in bp.unpack(full)])
        assert abs(float(got[b]) - want) < 1e-6, (b, float(got[b]), want)


def test_singleton_clamp_keeps_shared_pair_tables_shared():
    graph = GRAPHS["chain1"]
    bp = ConvexBP(graph)
    tables = [t[:1].expand(3, *t.shape[1:]) for t in bp.unpack(random_theta(graph, 1, 3))]
    theta = bp.pack([tables[r] if len(reg) > 1 else torch.randn_like(tables[r])
                     for r, reg in enumerate(graph.regions)])  # fmt: skip
    y = torch.tensor([[0, -100, 2, 1], [1, 1, -100, -100], [2, 0, 1, -100]])
    pairs = [r for r, reg in enumerate(graph.regions) if len(reg) > 1]
    single = bp.unpack(bp.clamp_to_observed(theta, y, singletons_only=True))
    full = bp.unpack(bp.clamp_to_observed(theta, y))
    assert all(torch.equal(single[r], tables[r]) for r in pairs)
    assert not all(torch.equal(full[r][0], full[r][1]) for r in pairs)


def test_clamp_refuses_labels_out_of_range():
    bp = ConvexBP(GRAPHS["chain1"])
    theta = random_theta(GRAPHS["chain1"], 1, 0)
    with pytest.raises(ValueError, match=r"labels\[0, 2\] = 3, but variable 2 has 3 states"):
        bp.clamp_to_observed(theta, torch.tensor([[0, 1, 3, -100]]))
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        bp.clamp_to_observed(theta, torch.tensor([[0, 1]]))


# ----------------------------------------------------------------- the latent loss
def chain_head(n=4, k=3, f=5, eps=1.0, blend=False, **kw) -> ChainHead:
    torch.manual_seed(0)
    settings = InferenceSettings(
        eps=eps, blend=blend, max_sweeps=20000, tol=1e-15, loss_augmentation=False
    )
    return ChainHead(n, k, f, order=1, table_init_std=0.8, inference=settings, **kw).double()


@pytest.mark.parametrize("eps", [1.0, 0.5])
def test_converged_loss_is_the_difference_of_two_dual_minima(eps):
    """Against SciPy on the free and the clamped problem, each minimised independently."""
    head = chain_head(eps=eps)
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(6), dtype=DT)
    y = torch.tensor([[0, -100, 2, -100], [1, 1, -100, 0], [2, 0, 1, 1]])
    theta = head(x).detach()
    loss = head.training_loss(theta, {"label": y}).loss
    ref = ReferenceDual(head.graph, eps)
    for b in range(3):
        free = ref.minimum([t[b] for t in head.bp.unpack(theta)])
        clamped_theta = head.bp.clamp_to_observed(theta[b : b + 1], y[b : b + 1])
        clamped = ref.minimum([t[0] for t in head.bp.unpack(clamped_theta)])
        assert abs(float(loss[b]) - (free - clamped)) < 1e-7, (b, float(loss[b]), free - clamped)
        assert float(loss[b]) >= -1e-9


def test_latent_loss_gradient_matches_finite_differences():
    head = chain_head()
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(7), dtype=DT)
    y = torch.tensor([[0, -100, 2, -100], [-100, 1, -100, 0]])
    batch = {"label": y}
    params = [p for p in head.parameters() if p.requires_grad]
    head.zero_grad()
    head.training_loss(head(x), batch).loss.sum().backward()
    grads = [p.grad.clone() for p in params]
    h = 1e-6
    for p, g in zip(params, grads, strict=True):
        flat, gflat = p.data.view(-1), g.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            old = float(flat[i])
            flat[i] = old + h
            up = float(head.training_loss(head(x), batch).loss.sum())
            flat[i] = old - h
            down = float(head.training_loss(head(x), batch).loss.sum())
            flat[i] = old
            assert abs((up - down) / (2 * h) - float(gflat[i])) < 1e-5 * (1 + abs(float(gflat[i])))


@pytest.mark.parametrize("eps", [1.0, 0.0])
def test_loss_is_never_negative_at_convergence(eps):
    graph = RegionGraph.grid(2, 3, 3)
    bp = ConvexBP(graph, eps=eps)
    theta = 2.0 * random_theta(graph, 8, 8)
    y = random_labels(graph, 8, 9, hide=0.5)
    free, _ = bp.run(theta, num_sweeps=3000, tol=1e-14)
    clamped = bp.clamp_to_observed(theta, y)
    mu, _ = bp.run(clamped, num_sweeps=3000, tol=1e-14)
    loss = bp.dual(theta, free) - bp.dual(clamped, mu)
    assert (loss >= -1e-8).all(), loss


def test_eps_zero_is_the_latent_structured_hinge_on_a_chain():
    """On a chain the LP is tight: the loss is max_y [F(y) + Hamming on observed] - max_h F."""
    torch.manual_seed(0)
    settings = InferenceSettings(eps=0.0, blend=False, max_sweeps=2000, tol=1e-13)
    head = ChainHead(4, 3, 5, order=1, table_init_std=0.8, inference=settings).double()
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(10), dtype=DT)
    y = torch.tensor([[0, -100, 2, -100], [1, 1, -100, 0], [-100, 0, 1, 1]])
    theta = head(x).detach()
    loss = head.training_loss(theta, {"label": y}).loss
    for b in range(3):
        best_aug, best_clamped = -np.inf, -np.inf
        for ys in itertools.product(range(3), repeat=4):
            f = float(head.bp.score(theta[b : b + 1], torch.tensor([ys])))
            observed = [(v, int(y[b, v])) for v in range(4) if y[b, v] >= 0]
            wrong = sum(s != ys[v] for v, s in observed)
            best_aug = max(best_aug, f + wrong)
            if wrong == 0:
                best_clamped = max(best_clamped, f)
        assert abs(float(loss[b]) - (best_aug - best_clamped)) < 1e-6, b


# ----------------------------------------------------------------- unchanged when all observed
def _fit_steps(missing_labels: bool, labels: torch.Tensor, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(1)
    head = ChainHead(4, 3, 5, order=1, num_train_examples=6, missing_labels=missing_labels)
    model = nn.Linear(7, 5)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x = torch.randn(6, 4, 7, generator=torch.Generator().manual_seed(2))
    for step in range(steps):
        idx = torch.tensor([step % 3, 3 + step % 3])
        batch = {"label": labels[idx], "index": idx}
        opt.zero_grad()
        head.training_loss(head(model(x[idx])), batch).loss.mean().backward()
        opt.step()
    return [p.detach().clone() for p in params] + [head.store.messages.clone()]


def test_with_every_label_observed_training_is_bit_identical():
    y = torch.randint(0, 3, (6, 4), generator=torch.Generator().manual_seed(3))
    for a, b in zip(_fit_steps(False, y), _fit_steps(True, y), strict=True):
        assert torch.equal(a, b)


def test_unobserved_labels_fill_the_second_store_and_change_training():
    y = torch.randint(0, 3, (6, 4), generator=torch.Generator().manual_seed(3))
    partial = y.clone()
    partial[0, 1] = partial[4, 2] = -100
    full, latent = _fit_steps(True, y), _fit_steps(True, partial)
    assert not torch.equal(full[0], latent[0])


def test_second_store_only_when_asked_and_in_the_state_dict():
    plain = ChainHead(4, 3, 5, num_train_examples=6)
    assert plain.clamped_store is None and not plain.missing_labels
    assert not any("clamped_store" in k for k in plain.state_dict())
    head = ChainHead(4, 3, 5, num_train_examples=6, missing_labels=True)
    assert head.missing_labels and head.clamped_store.num_examples == 6
    assert head.state_dict()["clamped_store.messages"].shape == (6, head.bp.num_message_entries)
    assert not head.enable_missing_labels()  # idempotent
    head.store.shard(1, 2)
    late = ChainHead(4, 3, 5, num_train_examples=6)
    late.store.shard(1, 2)
    assert late.enable_missing_labels()
    assert (late.clamped_store.rank, late.clamped_store.world_size) == (1, 2)
    assert late.clamped_store.num_local == late.store.num_local == 3
    pinned = ChainHead(4, 3, 5, num_train_examples=6, store_location="pinned", missing_labels=True)
    assert pinned.clamped_store.location == "pinned"


def test_second_store_is_written_and_restored_from_a_checkpoint(tmp_path):
    head = ChainHead(4, 3, 5, num_train_examples=6, missing_labels=True)
    y = torch.tensor([[0, -100, 2, 1], [1, 1, -100, 0]])
    batch = {"label": y, "index": torch.tensor([2, 5])}
    head.training_loss(head(torch.randn(2, 4, 5)), batch)
    rows = head.clamped_store.messages[[2, 5]]
    assert (rows != 0).any(1).all() and (head.clamped_store.messages[[0, 1, 3, 4]] == 0).all()
    torch.save(head.state_dict(), tmp_path / "head.pt")
    again = ChainHead(4, 3, 5, num_train_examples=6, missing_labels=True)
    again.load_state_dict(torch.load(tmp_path / "head.pt"))
    assert torch.equal(again.clamped_store.messages, head.clamped_store.messages)


# ----------------------------------------------------------------- unary only, metrics, errors
def test_unary_only_loss_is_cross_entropy_over_observed_labels():
    head = ChainHead(4, 3, 5, pairwise="none")
    theta = head(torch.randn(2, 4, 5))
    y = torch.tensor([[0, -100, 2, 1], [-100, 1, -100, 0]])
    loss = head.independent_loss(theta, y).loss
    u = head.unary_scores(theta)
    ce = nn.functional.cross_entropy(u.reshape(-1, 3), y.reshape(-1), reduction="none")
    torch.testing.assert_close(loss, ce.view(2, 4).sum(1))


def test_bad_labels_name_the_key_and_the_allowed_values():
    head = ChainHead(4, 3, 5, missing_labels=True)
    for bad in (-101, -50, -1, 3):
        batch = {"label": torch.tensor([[0, bad, 1, 1]])}
        with pytest.raises(ValueError, match=rf"batch\['label'\]\[0, 1\] = {bad}.*or -100"):
            head.labels_from(batch)


def test_a_batch_without_observed_labels_contributes_zero_and_says_so():
    head = ChainHead(4, 3, 5, num_train_examples=4, missing_labels=True)
    batch = {"label": torch.full((2, 4), -100), "index": torch.tensor([0, 1])}
    with pytest.warns(UserWarning, match=r"batch\['label'\] is -100 at every present position"):
        out = head.training_loss(head(torch.randn(2, 4, 5)), batch)
    assert torch.equal(out.loss, torch.zeros(2))


def test_validation_counts_observed_labels_only():
    """A model fitted on partly labelled words validates on them: metrics skip -100."""
    from structlight.metrics import task_metrics

    metrics = task_metrics("sequence", prefix="val/")
    pred = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]])
    target = torch.tensor([[0, -100, 2, 1], [1, -100, -100, 1]])
    metrics.update(pred, target)
    out = {k: float(v) for k, v in metrics.compute().items()}
    assert out["val/char_acc"] == pytest.approx(100 * 4 / 5)
    assert out["val/word_acc"] == pytest.approx(100 * 1 / 2)


# ----------------------------------------------------------------- data: hidden training labels
def word_arrays(n: int = 40, seed: int = 0):
    from datamodules.word50.dataset import Word50Dataset

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 26, size=(n, 5)).astype(np.uint8)
    return Word50Dataset.from_arrays(images, labels, "train")


def test_missing_labels_draw_is_reproducible_and_exact():
    from datamodules.missing import MissingLabels

    hidden = MissingLabels(fraction=0.5, per_example=2, seed=3).draw(40, 5)
    assert np.array_equal(hidden, MissingLabels(fraction=0.5, per_example=2, seed=3).draw(40, 5))
    per_row = hidden.sum(1)
    assert (per_row > 0).sum() == 20 and set(per_row[per_row > 0]) == {2}
    assert not np.array_equal(hidden, MissingLabels(seed=4).draw(40, 5))
    for bad, match in (
        (dict(fraction=1.5), "fraction must be in"),
        (dict(per_example=0), "per_example must be an integer"),
        (dict(handling="guess"), "handling must be one of"),
    ):
        with pytest.raises(ValueError, match=match):
            MissingLabels(**bad)
    with pytest.raises(ValueError, match="per_example = 6, but examples have only 5 labels"):
        MissingLabels(per_example=6).draw(10, 5)


def test_hidden_labels_latent_negative_discard_and_none_see_the_same_positions():
    from datamodules.missing import HiddenLabels, MissingLabels
    from datamodules.word50.dataset import Word50Dataset

    base = word_arrays()
    full = base.labels.astype(np.int64)
    views = {
        h: HiddenLabels(base, MissingLabels(handling=h, seed=1))
        for h in ("latent", "negative", "discard", "none")
    }
    hidden = views["latent"].hidden
    assert np.array_equal(hidden, views["discard"].hidden) and hidden.any(1).sum() == 20
    batch = Word50Dataset.collate(views["latent"].__getitems__(list(range(40))))
    assert torch.equal(batch["label"], torch.from_numpy(np.where(hidden, -100, full)))
    assert torch.equal(batch["index"], torch.arange(40))
    neg = Word50Dataset.collate(views["negative"].__getitems__(list(range(40))))
    assert torch.equal(neg["label"], torch.from_numpy(np.where(hidden, 0, full)))
    kept = np.flatnonzero(~hidden.any(1))
    disc = views["discard"]
    assert len(disc) == 20
    batch = Word50Dataset.collate(disc.__getitems__(list(range(20))))
    assert torch.equal(batch["index"], torch.arange(20))  # renumbered for the message store
    assert torch.equal(batch["label"], torch.from_numpy(full[kept]))
    assert torch.equal(disc[3]["image"], base[int(kept[3])]["image"])
    none = Word50Dataset.collate(views["none"].__getitems__(list(range(40))))
    assert torch.equal(none["label"], torch.from_numpy(full))
    one = views["latent"][int(np.flatnonzero(hidden.any(1))[0])]
    assert (one["label"] == -100).sum() == 2


def test_a_datamodule_with_missing_labels_trains_with_the_second_store(tmp_path, word50_root):
    """Word50 with hidden letters: the model turns the second store on in setup, fills it for
    the partly labelled words only, and saves it in the checkpoint."""
    import lightning as L

    from datamodules.missing import MissingLabels
    from datamodules.word50 import Word50DataModule
    from structlight.backbones import PerPosition
    from structlight.potentials import MLP

    dm = Word50DataModule(
        root=word50_root,  # the tiny generated Word50 (20/10/10 words), read only
        progress=False,
        num_train=20,
        num_val=10,
        num_test=10,
        batch_size=10,
        missing_labels=MissingLabels(fraction=0.5, per_example=2, handling="latent"),
    )
    assert dm.has_missing_labels
    torch.manual_seed(0)
    model = DeepStructuredModel(
        PerPosition(MLP(784, [16])), ChainHead(5, 26, 16), val_sweeps=5, val_tol=None
    )
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    store = model.head.clamped_store
    assert store is not None and store.num_examples == 20
    partial = torch.from_numpy(dm.datasets["train"].hidden.any(1))
    touched = (store.messages != 0).any(1)
    assert torch.equal(touched, partial)
    assert bool(torch.isfinite(trainer.callback_metrics["val/char_acc"]))
    ckpt = torch.load(
        next((tmp_path / "checkpoints").glob("*.ckpt"))
        if (tmp_path / "checkpoints").exists()
        else next(tmp_path.rglob("*.ckpt")),
        weights_only=False,
    )
    assert torch.equal(ckpt["state_dict"]["head.clamped_store.messages"], store.messages)


def test_a_head_without_the_second_store_loads_a_checkpoint_that_has_it():
    """``structlight test --ckpt_path`` builds the head from the recipe; the checkpoint of a
    run with missing labels still loads, second store included."""
    head = ChainHead(4, 3, 5, num_train_examples=6, missing_labels=True)
    batch = {"label": torch.tensor([[0, -100, 1, 1], [1, 1, 1, 1]]), "index": torch.tensor([1, 2])}
    head.training_loss(head(torch.randn(2, 4, 5)), batch)
    plain = ChainHead(4, 3, 5)
    plain.load_state_dict(head.state_dict())
    assert plain.missing_labels
    assert torch.equal(plain.clamped_store.messages, head.clamped_store.messages)
    assert (plain.clamped_store.messages[1] != 0).any()


@pytest.mark.slow
def test_ddp_shards_the_second_store_and_checkpoints_it_whole(tmp_path):
    """Two gloo processes: both stores sharded alike; the checkpoint holds the whole second
    store in example order, with messages exactly for the partly labelled (even) examples."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "ddp_scripts" / "missing.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = torch.load(tmp_path / "missing.pt", weights_only=False)
    assert out["shards"] == [
        {"store": (rank, 2, 12), "clamped_store": (rank, 2, 12)} for rank in (0, 1)
    ]
    clamped = out["ckpt_clamped"]
    assert clamped.shape[0] == 24 and torch.equal(clamped, out["clamped"])
    assert (clamped != 0).any(1).tolist() == [i % 2 == 0 for i in range(24)]
    assert (out["store"] != 0).any(1).all()  # every example's free messages moved


def test_structured_loss_with_clamped_messages_is_the_converged_training_loss():
    """Validation's loss (messages of both problems converged by the caller) equals the
    double-loop training loss; without the clamped messages it refuses, naming the remedy."""
    head = chain_head()
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(11), dtype=DT)
    y = torch.tensor([[0, -100, 2, -100], [1, 1, 2, 0]])
    theta = head(x).detach()
    lam, _ = head.bp.run(theta, num_sweeps=20000, tol=1e-15)
    mu, _ = head.bp.run(head.clamped_potentials(theta, y), num_sweeps=20000, tol=1e-15)
    got = head.structured_loss(theta, y, lam, clamped_msgs=mu)
    want = head.training_loss(theta, {"label": y}).loss
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    full = head.bp.dual(theta[1:], lam[1:]) - head.bp.score(theta[1:], y[1:])
    assert got[1] == full[0]  # the fully observed example: the supervised loss itself
    with pytest.raises(ValueError, match="pass clamped_msgs"):
        head.structured_loss(theta, y, lam)

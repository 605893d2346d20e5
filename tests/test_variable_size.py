"""Variable-size examples through the heads, the training step, prediction and the metrics.

The rule: a padded example gets exactly what a head built for its own size gives it (the same
parameters, copied by state dict), and nothing at its absent positions is read.
"""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from structlight.head import ChainHead, FullyConnectedHead, InferenceSettings, StructuredHead
from structlight.metrics import CharacterAccuracy, ExactMatch, HammingError, WordAccuracy
from structlight.task import DeepStructuredModel
from tests.helpers.synthetic import quiet_trainer

DT = torch.float64
K, F, D = 4, 3, 5  # states, head features, inputs per position
NMAX = 6
LENGTHS = [6, 3, 5, 4]  # >= 3: a 2nd-order chain of every length has both edge types
CONVERGED = InferenceSettings(blend=False, max_sweeps=5000, tol=1e-13)


def padded_batch(lengths=LENGTHS, n=NMAX, seed=0, pad_label=-100, pad_input=0.0) -> dict:
    """Inputs, labels, indices and lengths; padding positions hold ``pad_input``/``pad_label``."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    image = torch.randn(b, n, D, generator=g, dtype=DT)
    label = torch.randint(0, K, (b, n), generator=g)
    length = torch.tensor(lengths, dtype=torch.int64)
    pad = torch.arange(n)[None, :] >= length[:, None]
    return {
        "image": image.masked_fill(pad[..., None], pad_input),
        "label": label.masked_fill(pad, pad_label),
        "index": torch.arange(b),
        "length": length,
    }


def example(batch: dict, i: int) -> dict:
    """Example ``i`` of a padded batch, cut to its own length (no ``length`` key)."""
    n = int(batch["length"][i])
    return {
        "image": batch["image"][i : i + 1, :n],
        "label": batch["label"][i : i + 1, :n],
        "index": torch.tensor([0]),
    }


def make_model(n: int, order: int, seed: int = 0, **head_kw) -> DeepStructuredModel:
    torch.manual_seed(seed)
    backbone = nn.Linear(D, F)
    head = ChainHead(n, K, F, order=order, table_init_std=0.5, **head_kw)
    model = DeepStructuredModel(backbone, head, val_sweeps=5000, val_tol=1e-13)
    return model.double()


def copy_of(model: DeepStructuredModel, n: int, order: int, **head_kw) -> DeepStructuredModel:
    """A model of chain length ``n`` with ``model``'s parameters (shared across positions)."""
    small = make_model(n, order, seed=123, **head_kw)
    state = {k: v for k, v in model.state_dict().items() if "store" not in k}
    missing, unexpected = small.load_state_dict(state, strict=False)
    assert not unexpected and all("store" in k for k in missing), (missing, unexpected)
    return small


def absent_messages(head, theta, mask) -> torch.Tensor:
    """``(B, M)`` bool: the message entries of absent regions (the engine's message mask)."""
    return head.bp.prepare(theta, mask=mask.regions).masks.message.to(DT) == 0


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("order", [1, 2])
def test_padded_example_equals_its_own_length(order):
    """Converged loss (double loop), its gradient, and predict_step labels and marginals of a
    padded example equal those of a ChainHead(num_vars=length_i) with the same parameters."""
    model = make_model(NMAX, order, inference=CONVERGED)
    batch = padded_batch()
    theta = model(batch)
    out = model.head.training_loss(theta, batch)
    pred = model.predict_step(batch, 0)
    for i, n in enumerate(LENGTHS):
        small = copy_of(model, n, order, inference=CONVERGED)
        one = example(batch, i)
        ref = small.head.training_loss(small(one), one)
        assert out.loss[i].item() == pytest.approx(ref.loss[0].item(), abs=1e-6, rel=0)
        # the gradient of example i's loss reaches the shared parameters alike
        g_pad = torch.autograd.grad(out.loss[i], list(model.parameters()), retain_graph=True)
        g_ref = torch.autograd.grad(ref.loss[0], list(small.parameters()))
        for a, b in zip(g_pad, g_ref, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
        ref_pred = small.predict_step(one, 0)
        assert torch.equal(pred["labels"][i, :n], ref_pred["labels"][0])
        assert torch.allclose(pred["marginals"][i, :n], ref_pred["marginals"][0], atol=1e-6)
        assert (pred["labels"][i, n:] == -100).all()
        assert (pred["marginals"][i, n:] == 0).all()


def cut(batch: dict, n: int) -> dict:
    """The batch padded only to ``n`` positions (its longest example), as ``pad_to="longest"``."""
    return {k: v[:, :n] if v.dim() == 2 or k == "image" else v for k, v in batch.items()}


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("pairwise", ["table", "mlp"])
def test_a_batch_shorter_than_the_head_trains_and_predicts_as_padded(order, pairwise):
    """A batch padded to its longest example (5 of 6 positions) gives the potentials, the
    blended loss and its gradient, the stored messages and the predictions of the same batch
    padded to num_vars; the metrics count the same positions."""
    lengths = [5, 3, 5, 2]
    kw = {} if pairwise == "table" else {"pairwise_in_features": 2 * D, "pairwise_hidden": [4]}
    runs = []
    for batch in (padded_batch(lengths), cut(padded_batch(lengths), 5)):
        model = make_model(NMAX, order, pairwise=pairwise, num_train_examples=4, **kw)
        theta = model(batch)
        out = model.head.training_loss(theta, batch)
        grads = torch.autograd.grad(out.loss.sum(), list(model.parameters()))
        labels, mask = model.head.labels_and_mask(batch)
        runs.append(
            (theta, out.loss, grads, model.head.store.messages.clone(),
             model.predict_step(batch, 0), labels, mask.variables)
        )  # fmt: skip
    (t_a, l_a, g_a, s_a, p_a, y_a, m_a), (t_b, l_b, g_b, s_b, p_b, y_b, m_b) = runs
    # the potentials of present regions agree (the backbone's bias fills the padding of the
    # batch padded to num_vars, zeros that of the shorter one: neither is read)
    model = make_model(NMAX, order, pairwise=pairwise, **kw)
    present = model.head.bp.prepare(t_a.detach(), mask=model.head.example_mask(
        padded_batch(lengths), 4).regions).masks.region  # fmt: skip
    for r, (a, b) in enumerate(zip(model.head.bp.unpack(t_a), model.head.bp.unpack(t_b))):
        assert torch.equal(a[present[:, r]], b[present[:, r]]), r
    tight = dict(atol=1e-12, rtol=0)
    torch.testing.assert_close(l_a, l_b, **tight)
    torch.testing.assert_close(s_a, s_b, **tight)
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, b, **tight)
    assert torch.equal(p_a["labels"], p_b["labels"]) and p_b["labels"].shape == (4, NMAX)
    torch.testing.assert_close(p_a["marginals"], p_b["marginals"], **tight)
    assert torch.equal(y_a, y_b) and torch.equal(m_a, m_b)


def test_a_shorter_batch_needs_lengths_that_fit():
    model = make_model(NMAX, 1)
    batch = cut(padded_batch([5, 3, 5, 2]), 5)
    with pytest.raises(ValueError, match=r"6 positions and features has 5: .*batch\['length'\]"):
        model({k: v for k, v in batch.items() if k != "length"})
    with pytest.raises(ValueError, match=r"6 positions and batch\['label'\] has 5"):
        model.head.labels_and_mask({k: v for k, v in batch.items() if k != "length"})
    short = {**batch, "length": torch.tensor([5, 3, 6, 2])}
    with pytest.raises(ValueError, match=r"example 2 has 6 positions, but features holds 5"):
        model(short)
    with pytest.raises(ValueError, match=r"example 2 has 6 positions, but batch\['label'\] hold"):
        model.head.labels_and_mask(short)


def test_padding_is_never_read():
    """Garbage inputs and labels (any value) at padding positions change nothing."""
    model = make_model(NMAX, 2, inference=CONVERGED)
    clean = padded_batch()
    dirty = padded_batch(pad_label=999, pad_input=1e3)
    assert not torch.equal(clean["image"], dirty["image"])
    for batch in (clean, dirty):
        batch["loss"] = model.head.training_loss(model(batch), batch).loss
        batch["pred"] = model.predict_step(batch, 0)
    assert torch.allclose(clean["loss"], dirty["loss"], atol=1e-12, rtol=0)
    assert torch.equal(clean["pred"]["labels"], dirty["pred"]["labels"])
    assert torch.allclose(clean["pred"]["marginals"], dirty["pred"]["marginals"], atol=1e-12)


def test_labels_are_checked_at_present_positions_only():
    head = make_model(NMAX, 1).head
    batch = padded_batch(pad_label=999)
    labels = head.labels_from(batch)
    pad = torch.arange(NMAX)[None, :] >= batch["length"][:, None]
    assert (labels[pad] == -100).all() and torch.equal(labels[~pad], batch["label"][~pad])
    batch["label"][1, 0] = K  # a present position
    with pytest.raises(ValueError, match=r"batch\['label'\]\[1, 0\] = 4.*present positions"):
        head.labels_from(batch)
    # without lengths every position is present: -100 there is an unobserved label, which a
    # blended head without the clamped problem's message store refuses, naming the remedy
    batch = padded_batch()
    del batch["length"]
    assert torch.equal(head.labels_from(batch), batch["label"])
    theta = head(torch.randn(batch["label"].shape[0], NMAX, F, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"batch\['label'\] has unobserved.*missing_labels=True"):
        head.training_loss(theta, batch)
    batch["label"][0, 0] = -5  # neither a state nor -100
    with pytest.raises(ValueError, match=r"= -5.*or -100 for an unobserved label"):
        head.labels_from(batch)


# ---------------------------------------------------------------------------- the mask's sources
def test_chain_head_length_errors_name_the_key_the_range_and_what_arrived():
    head = ChainHead(NMAX, K, F)
    b = 2
    good = {"label": torch.zeros(b, NMAX, dtype=torch.long)}
    cases = [
        (torch.tensor([3, 4], dtype=torch.int32), TypeError, r"batch\['length'\].*int64.*int32"),
        ([3, 4], TypeError, r"batch\['length'\].*int64.*list"),
        (torch.tensor([[3], [4]]), ValueError, r"batch\['length'\].*\(2,\).*\(2, 1\)"),
        (torch.tensor([3, 0]), ValueError, r"batch\['length'\].*1\.\.6.*example 1 has 0"),
        (torch.tensor([7, 3]), ValueError, r"batch\['length'\].*1\.\.6.*example 0 has 7"),
    ]
    for value, err, match in cases:
        with pytest.raises(err, match=match):
            head.labels_from({**good, "length": value})
    # the key is configurable; a batch without it is all present
    custom = ChainHead(NMAX, K, F, length_key="n")
    mask = custom.example_mask({"n": torch.tensor([2, 6])}, b)
    assert torch.equal(mask.variables.sum(1), torch.tensor([2, 6]))
    assert custom.example_mask({"length": torch.tensor([2, 6])}, b) is None
    with pytest.raises(ValueError, match=r"batch\['n'\]"):
        custom.example_mask({"n": torch.tensor([2, 9])}, b)


def test_variable_mask_hook_and_its_errors():
    """A new head states its variable-size examples by overriding variable_mask."""

    class Holes(ChainHead):
        def variable_mask(self, batch, batch_size):
            return batch.get("holes")

    head = Holes(4, K, F)
    holes = torch.tensor([[True, False, True, True], [True, True, True, True]])
    mask = head.example_mask({"holes": holes}, 2)
    assert torch.equal(mask.variables, holes)
    assert torch.equal(mask.regions, head.bp.region_mask(holes))
    # the edges (0, 1) and (1, 2) of example 0 are absent
    assert mask.regions[0].tolist() == [True, False, True, True, False, False, True]
    with pytest.raises(TypeError, match=r"variable_mask must return a bool tensor.*int64"):
        head.example_mask({"holes": holes.long()}, 2)
    with pytest.raises(ValueError, match=r"variable_mask must return shape \(2, 4\), got \(2, 3\)"):
        head.example_mask({"holes": holes[:, :3]}, 2)
    assert StructuredHead.variable_mask(head, {"holes": holes}, 2) is None


def test_fully_connected_mask_equals_the_smaller_graph_and_errors():
    """A masked FullyConnectedHead example equals FullyConnectedHead(num_vars=#present) on the
    present variables (per-variable unary, one shared table: parameters independent of N)."""
    kw = dict(num_states=3, unary_mode="per_variable", share="shared", table_init_std=0.5)
    torch.manual_seed(0)
    big = FullyConnectedHead(5, F, inference=CONVERGED, **kw).double()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, F, generator=g, dtype=DT)
    labels = torch.randint(0, 3, (2, 5), generator=g)
    present = torch.tensor([[True, False, True, True, False], [True] * 5])
    batch = {"label": labels.masked_fill(~present, -100), "mask": present}
    theta = big(feats, batch)
    loss = big.training_loss(theta, batch).loss
    mask = big.example_mask(batch, 2)
    pred, marg = big.predict(theta, big.converge(theta, 5000, 1e-13, mask=mask)[0], mask)
    keep = [0, 2, 3]
    small = FullyConnectedHead(3, F, inference=CONVERGED, **kw).double()
    small.load_state_dict({k: v for k, v in big.state_dict().items() if "store" not in k}, False)
    one = {"label": labels[:1, keep]}
    t_small = small(feats[:1, keep], one)
    ref = small.training_loss(t_small, one).loss
    ref_pred, ref_marg = small.predict(t_small, small.converge(t_small, 5000, 1e-13)[0])
    assert loss[0].item() == pytest.approx(ref.item(), abs=1e-6, rel=0)
    assert torch.equal(pred[0, keep], ref_pred[0]) and (pred[0, [1, 4]] == -100).all()
    assert torch.allclose(marg[0, keep], ref_marg[0], atol=1e-6) and (marg[0, [1, 4]] == 0).all()
    # configurable key and clear errors
    assert FullyConnectedHead(5, F, mask_key="tags", **kw).example_mask(batch, 2) is None
    with pytest.raises(TypeError, match=r"batch\['mask'\] must be a bool tensor.*int64"):
        big.example_mask({"mask": present.long()}, 2)
    with pytest.raises(ValueError, match=r"batch\['mask'\] must have shape \(2, 5\).*\(2, 4\)"):
        big.example_mask({"mask": present[:, :4]}, 2)


# ---------------------------------------------------------------------------- losses
def test_hamming_augmentation_touches_present_variables_only():
    head = make_model(NMAX, 1).head
    batch = padded_batch()
    labels, mask = head.labels_and_mask(batch)
    theta = head(head.potentials["unary"].net.weight.new_zeros(4, NMAX, F), batch)
    aug = head.augment(theta, labels, mask)
    delta = head.unary_scores(aug) - head.unary_scores(theta)
    for i, n in enumerate(LENGTHS):
        want = torch.ones(n, K, dtype=DT).scatter(1, labels[i, :n, None], 0.0)
        assert torch.equal(delta[i, :n], want)
        assert (delta[i, n:] == 0).all()
    assert torch.equal(aug[:, head.graph.num_vars * K :], theta[:, head.graph.num_vars * K :])


def test_hinge_loss_and_unary_only_loss_of_a_padded_example():
    """eps = 0 with the Hamming augmentation (structured hinge loss, messages converged on each
    side) and the unary-only loss (per-variable hinge) equal their own-length values."""
    hinge = InferenceSettings(eps=0.0, blend=False, max_sweeps=3000, tol=1e-13)
    model = make_model(NMAX, 1, inference=hinge)
    batch = padded_batch()
    labels, mask = model.head.labels_and_mask(batch)
    theta = model(batch)
    loss = model.head.training_loss(theta, batch).loss
    unary = model.head.independent_loss(theta, labels, mask).loss
    ind_labels, ind_marg = model.head.predict_independent(theta, mask)
    for i, n in enumerate(LENGTHS):
        small = copy_of(model, n, 1, inference=hinge)
        one = example(batch, i)
        t = small(one)
        assert loss[i].item() == pytest.approx(
            small.head.training_loss(t, one).loss.item(), abs=1e-6
        )
        u = small.head.potentials["unary"](small.backbone(one["image"]))[0]
        y = one["label"][0]
        per_var = (u + 1.0).scatter(1, y[:, None], u.gather(1, y[:, None])).amax(1)
        assert unary[i].item() == pytest.approx(
            (per_var - u.gather(1, y[:, None])[:, 0]).sum().item()
        )
        ref_unary = small.head.independent_loss(t, small.head.labels_from(one)).loss
        assert unary[i].item() == pytest.approx(ref_unary.item(), abs=1e-12)
        l_ref, m_ref = small.head.predict_independent(t)
        assert torch.equal(ind_labels[i, :n], l_ref[0]) and (ind_labels[i, n:] == -100).all()
        assert torch.allclose(ind_marg[i, :n], m_ref[0]) and (ind_marg[i, n:] == 0).all()


def test_blended_steps_and_the_message_store():
    """Blended steps on a padded batch follow each example's own-length trajectory (a 1st-order
    chain: its sweep order restricted to a prefix is the prefix's own), and the store keeps 0 at
    the absent regions' messages."""
    blend = InferenceSettings(sweeps_per_step=1)
    model = make_model(NMAX, 1, inference=blend)
    model.head.store.resize(len(LENGTHS))
    batch = padded_batch()
    losses = []
    with torch.no_grad():
        theta = model(batch)
        for _ in range(3):
            losses.append(model.head.training_loss(theta, batch).loss)
    mask = model.head.example_mask(batch, len(LENGTHS))
    absent = absent_messages(model.head, theta, mask)
    stored = model.head.store.gather(torch.arange(len(LENGTHS)))
    assert absent.any() and (stored[absent] == 0).all() and (stored[~absent] != 0).any()
    for i, n in enumerate(LENGTHS):
        small = copy_of(model, n, 1, inference=blend)
        small.head.store.resize(1)
        one = example(batch, i)
        with torch.no_grad():
            t = small(one)
            for step in range(3):
                ref = small.head.training_loss(t, one).loss
                assert losses[step][i].item() == pytest.approx(ref.item(), abs=1e-9, rel=0)


def test_viterbi_decoding_reads_the_lengths():
    model = make_model(NMAX, 1, decoding="viterbi")
    batch = padded_batch()
    pred = model.predict_step(batch, 0)
    for i, n in enumerate(LENGTHS):
        small = copy_of(model, n, 1, decoding="viterbi")
        ref = small.predict_step(example(batch, i), 0)
        assert torch.equal(pred["labels"][i, :n], ref["labels"][0])
        assert torch.allclose(pred["marginals"][i, :n], ref["marginals"][0], atol=1e-12)
        assert (pred["labels"][i, n:] == -100).all() and (pred["marginals"][i, n:] == 0).all()

    class Holes(ChainHead):
        def variable_mask(self, batch, batch_size):
            return batch["holes"]

    head = Holes(4, K, F, decoding="viterbi").double()
    holes = torch.tensor([[True, False, True, True]])
    theta = head(torch.zeros(1, 4, F, dtype=DT))
    with pytest.raises(ValueError, match="viterbi.*0..length - 1.*holes"):
        head.predict(theta, None, head.example_mask({"holes": holes}, 1))


# ---------------------------------------------------------------------------- convergence
def test_prediction_converges_where_ten_sweeps_do_not():
    """On a long chain whose one informative position is its first, 10 sweeps from zero do not
    carry the information to the end (a sweep moves it about two positions); the default (the
    dual to 1e-4, at most 100 sweeps) does."""
    n = 40
    head = ChainHead(n, K, F).double()
    tables = []
    for reg in head.graph.regions:
        if len(reg) == 1:
            t = torch.zeros(1, K, dtype=DT)
            t[0, 2] = 10.0 if reg[0] == 0 else 0.0
        else:
            t = 8.0 * torch.eye(K, dtype=DT)[None]
        tables.append(t)
    theta = head.bp.pack(tables, batch_size=2)
    exact, _ = head.converge(theta, 5000, 1e-14)
    l_exact, m_exact = head.predict(theta, exact)
    assert (l_exact == 2).all()
    ten = head.infer(theta, 10)
    msgs, used = head.converge(theta)
    assert 10 < used <= 100
    l_ten, m_ten = head.predict(theta, ten)
    l_conv, m_conv = head.predict(theta, msgs)
    assert (l_ten != 2).any() and (m_ten - m_exact).abs().max() > 5e-2
    assert torch.equal(l_conv, l_exact) and (m_conv - m_exact).abs().max() < 1e-2
    # tol=None is exactly the fixed number of sweeps
    fixed, used = head.converge(theta, 10, None)
    assert used == 10 and torch.equal(fixed, ten)
    # a tolerance met early stops early
    _, used = head.converge(theta, 100, 10.0)
    assert used == 1


def test_model_validates_val_tol_and_logs_the_sweeps():
    with pytest.raises(ValueError, match="val_tol must be a number >= 0 or None, got -1"):
        DeepStructuredModel(nn.Linear(D, F), ChainHead(NMAX, K, F), val_tol=-1)
    model = DeepStructuredModel(nn.Linear(D, F), ChainHead(NMAX, K, F))
    assert (model.val_sweeps, model.val_tol) == (100, 1e-4)


class PaddedWords(Dataset):
    """Padded examples of several lengths, as dicts (default collate stacks them)."""

    def __init__(self, lengths, seed=0, **kw) -> None:
        self.batch = padded_batch(lengths, seed=seed, **kw)
        self.batch["image"] = self.batch["image"].float()

    def __len__(self) -> int:
        return len(self.batch["length"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.batch.items()}


def test_training_and_validation_with_lengths():
    """Fit and validate on padded data: garbage at the padding changes no parameter, the store
    keeps 0 at absent messages, and the metrics count present positions only."""
    lengths = [6, 2, 4, 5, 1, 3, 6, 2]
    results = []
    for kw in ({}, {"pad_label": 7, "pad_input": 50.0}):
        pl.seed_everything(0, verbose=False)
        head = ChainHead(NMAX, K, F, order=2)
        opt = partial(torch.optim.SGD, lr=0.1)
        model = DeepStructuredModel(nn.Linear(D, F), head, optimizer=opt)
        data = DataLoader(PaddedWords(lengths, **kw), batch_size=4)
        trainer = quiet_trainer(max_epochs=2)
        trainer.fit(model, data, data)
        res = trainer.validate(model, data, verbose=False)[0]
        results.append((model, res))
    (a, res_a), (b, res_b) = results
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), k
    assert res_a == pytest.approx(res_b, abs=1e-4)
    assert 1 <= res_a["val/sweeps"] <= 100
    # the store: absent messages are 0
    ds = PaddedWords(lengths)
    mask = a.head.example_mask({"length": ds.batch["length"]}, len(lengths))
    theta = a(ds.batch)
    absent = absent_messages(a.head, theta.detach(), mask)
    assert (a.head.store.gather(torch.arange(len(lengths)))[absent] == 0).all()
    # character accuracy over present positions: from predict_step by hand
    pred = a.predict_step(ds.batch, 0)["labels"]
    present = mask.variables
    acc = (pred == ds.batch["label"])[present].double().mean().item() * 100
    assert res_a["val/char_acc"] == pytest.approx(acc, abs=1e-4)


# ---------------------------------------------------------------------------- metrics
def test_metrics_skip_absent_targets():
    preds = torch.tensor([[0, 1, -100], [2, 2, 2], [1, -100, -100], [-100, -100, -100]])
    target = torch.tensor([[0, 1, -100], [2, 0, 2], [0, -100, -100], [-100, -100, -100]])
    # present: 2 + 3 + 1 = 6 positions, 4 right; examples with a position: 3, one exact
    assert CharacterAccuracy()(preds, target).item() == pytest.approx(100 * 4 / 6)
    assert WordAccuracy()(preds, target).item() == pytest.approx(100 / 3)
    assert ExactMatch()(preds, target).item() == pytest.approx(100 / 3)
    assert HammingError()(preds, target).item() == pytest.approx(100 * 2 / 6)
    assert HammingError(as_percentage=False)(preds, target).item() == pytest.approx(2 / 3)
    # a wrong prediction at an absent position counts for nothing
    wrong_pad = preds.masked_fill(target == -100, 3)
    assert CharacterAccuracy()(wrong_pad, target).item() == pytest.approx(100 * 4 / 6)
    assert WordAccuracy()(wrong_pad, target).item() == pytest.approx(100 / 3)

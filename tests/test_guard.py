"""The non-finite guard: a bad step changes nothing, is counted and named, and stops the run when
it repeats; validation reports NaN loudly; empty batches are skipped in every stage."""

from __future__ import annotations

import math
import warnings
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from structlight.guard import NonFiniteError, NonFiniteGuard
from structlight.head import ChainHead
from structlight.task import DeepStructuredModel
from structlight.testing import SyntheticChainDataModule
from tests.helpers.evaluation import sequence_accuracies
from tests.helpers.synthetic import parameters
from tests.helpers.synthetic import quiet_trainer as make_trainer

N, K, HIDDEN = 5, 10, 16
NUM_TRAIN, BATCH = 16, 4
BAD_EXAMPLE = 5  # in the second batch (examples 4..7) of an unshuffled epoch


class FixedBatches(Sampler[list[int]]):
    """Yields the given batches of example indices, in order, every epoch."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Data(SyntheticChainDataModule):
    """The synthetic chain task with a chosen training batch order and optional NaN inputs."""

    def __init__(self, batches: list[list[int]], nan_train=(), nan_val=()) -> None:
        super().__init__(num_train=NUM_TRAIN, num_val=8, num_test=8, batch_size=BATCH, seed=0)
        self.batches = batches
        for i in nan_train:
            self.train_set.images[i, 2, 0] = float("nan")
        for i in nan_val:
            self.val_set.images[i, 1, 3] = float("nan")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_sampler=FixedBatches(self.batches))


def all_batches() -> list[list[int]]:
    return [list(range(s, s + BATCH)) for s in range(0, NUM_TRAIN, BATCH)]


def make_model(dm: Data, lr: float = 0.1, **kw) -> DeepStructuredModel:
    pl.seed_everything(0, verbose=False)
    backbone = nn.Sequential(nn.Linear(dm.num_features, HIDDEN), nn.ReLU())
    head = ChainHead(N, K, HIDDEN, order=1)
    opt = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    return DeepStructuredModel(backbone, head, optimizer=opt, val_sweeps=3, **kw)


def fit(dm: Data, epochs: int = 1, **kw) -> tuple[DeepStructuredModel, pl.Trainer, list]:
    model = make_model(dm, **kw)
    trainer = make_trainer(max_epochs=epochs, limit_val_batches=0, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
    return model, trainer, [str(w.message) for w in caught]


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_nan_input_skips_the_step_and_leaves_weights_optimizer_and_store_unchanged(mode):
    bad, trainer, trainer_bad_msgs = fit(
        Data(all_batches(), nan_train=[BAD_EXAMPLE]), epochs=2, nonfinite_guard=mode
    )
    # the same run without the bad batch: every step of the guarded run but the skipped ones
    good_batches = [b for b in all_batches() if BAD_EXAMPLE not in b]
    ref, _, _ = fit(Data(good_batches, nan_train=[BAD_EXAMPLE]), epochs=2, nonfinite_guard=mode)

    for k, v in parameters(bad).items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, parameters(ref)[k]), k
    store, ref_store = bad.head.store.messages, ref.head.store.messages
    assert torch.isfinite(store).all()
    assert torch.equal(store, ref_store)
    assert (store[4:8] == 0).all()  # the bad batch's rows were never written
    assert (store[:4] != 0).any() and (store[8:] != 0).any()
    assert bad.guard.skipped_count() == 2  # once per epoch
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2.0
    named = [m for m in trainer_bad_msgs if "skipped training step" in m]
    assert len(named) == 2
    assert f"[{BAD_EXAMPLE}]" in named[0] and "potentials" in named[0]


def test_unguarded_run_spreads_nan_which_the_guard_prevents():
    off, _, _ = fit(Data(all_batches(), nan_train=[BAD_EXAMPLE]), nonfinite_guard="off")
    assert not all(torch.isfinite(v).all() for v in parameters(off).values())


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_huge_learning_rate_stops_after_consecutive_skips_with_the_cause(mode):
    dm = Data(all_batches() * 3)
    model = make_model(dm, lr=1e12, nonfinite_guard=mode, max_consecutive_skips=3)
    trainer = make_trainer(max_epochs=1, limit_val_batches=0, log_every_n_steps=1)
    with pytest.raises(NonFiniteError, match="3 consecutive steps") as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, datamodule=dm)
    assert "non-finite" in str(info.value) and "learning rate" in str(info.value)
    assert all(torch.isfinite(v).all() for v in parameters(model).values())
    assert torch.isfinite(model.head.store.messages).all()


def test_validation_with_nan_potentials_reports_nan_loudly():
    dm = Data(all_batches(), nan_val=[3])
    model = make_model(dm)
    trainer = make_trainer(max_epochs=1)
    with pytest.warns(UserWarning, match="1 examples had non-finite potentials"):
        out = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert math.isnan(out["val/char_acc"]) and math.isnan(out["val/word_acc"])
    assert out["val/nonfinite_examples"] == 1.0
    clean_data = Data(all_batches())
    clean_model = make_model(clean_data)
    clean = trainer.validate(clean_model, datamodule=clean_data)[0]
    char_acc, word_acc = sequence_accuracies(clean_model, clean_data.val_dataloader())
    assert clean["val/char_acc"] == pytest.approx(char_acc, abs=1e-4)
    assert clean["val/word_acc"] == pytest.approx(word_acc, abs=1e-4)


def test_metrics_turn_nan_after_a_nonfinite_example():
    from structlight.metrics import task_metrics

    for task, key in (("sequence", "char_acc"), ("multilabel", "hamming_error")):
        m = task_metrics(task)
        y = torch.zeros(3, 4, dtype=torch.long)
        m.update(y, y, finite=torch.tensor([True, True, True]))
        assert not math.isnan(float(m.compute()[key]))
        m.update(y, y, finite=torch.tensor([True, False, True]))
        assert math.isnan(float(m.compute()[key]))


def _empty_like(batch: dict) -> dict:
    return {k: v[:0] for k, v in batch.items()}


def test_empty_batches_are_skipped_in_fit_validate_test_and_predict():
    dm = Data(all_batches())
    full = [dm.train_set[i] for i in range(NUM_TRAIN)]
    batches = [
        {k: torch.stack([e[k] for e in full[s : s + BATCH]]) for k in full[0]}
        for s in range(0, NUM_TRAIN, BATCH)
    ]
    with_empty = [batches[0], _empty_like(batches[0]), batches[1], _empty_like(batches[0])]
    model, ref = make_model(dm), make_model(dm)
    for m in (model, ref):
        m.head.store.resize(NUM_TRAIN)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=DataLoader(with_empty, batch_size=None))
    make_trainer(max_epochs=1).fit(ref, train_dataloaders=DataLoader(batches[:2], batch_size=None))
    for k, v in parameters(model).items():
        assert torch.equal(v, parameters(ref)[k]), k
    # labels partly the model's own predictions: two words and three letters of a third right
    known = dict(batches[2], label=batches[2]["label"].clone())
    model.eval()
    with torch.no_grad():
        pred = model.predict_step(known, 0)["labels"]
    known["label"][:2], known["label"][2, :3] = pred[:2], pred[2, :3]
    loader = DataLoader([known, _empty_like(known)], batch_size=None)
    char_acc, word_acc = sequence_accuracies(model, [known])  # the empty batch adds nothing
    assert char_acc >= 100 * 13 / 20 and word_acc >= 50.0
    val = trainer.validate(model, loader, verbose=False)[0]
    test = trainer.test(model, loader, verbose=False)[0]
    for out, stage in ((val, "val"), (test, "test")):
        assert out[f"{stage}/char_acc"] == pytest.approx(char_acc, abs=1e-4)
        assert out[f"{stage}/word_acc"] == pytest.approx(word_acc, abs=1e-4)
    preds = trainer.predict(model, loader)
    assert preds[1]["labels"].shape == (0, N) and preds[1]["marginals"].shape == (0, N, K)
    assert torch.equal(preds[0]["labels"], pred)


def test_head_write_back_keeps_old_rows_for_nonfinite_messages():
    head = ChainHead(N, K, 4, order=1, num_train_examples=6)
    head.store.messages = torch.full((6, head.store.num_message_entries), 0.5)
    feats = torch.randn(3, N, 4)
    batch = {"label": torch.zeros(3, N, dtype=torch.long), "index": torch.tensor([0, 2, 4])}
    theta = head(feats, batch).detach()
    theta[1, 0] = float("nan")
    head.training_loss(theta, batch)
    msgs = head.store.messages
    assert torch.isfinite(msgs).all()
    assert (msgs[2] == 0.5).all()  # example 2 (batch row 1) kept its old row
    assert (msgs[0] != 0.5).any() and (msgs[4] != 0.5).any()
    assert (msgs[[1, 3, 5]] == 0.5).all()


def test_guard_rejects_bad_settings():
    with pytest.raises(ValueError, match="nonfinite_guard must be one of"):
        NonFiniteGuard("sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_consecutive_skips must be an int >= 0"):
        NonFiniteGuard("auto", -1)


def test_guard_counters_survive_a_checkpoint(tmp_path):
    dm = Data(all_batches(), nan_train=[BAD_EXAMPLE])
    model = make_model(dm)
    trainer = make_trainer(max_epochs=1, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = make_model(dm)
    restored.on_load_checkpoint(torch.load(path, weights_only=False))
    assert restored.guard.skipped_count() == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_ddp_ranks_skip_the_same_steps_and_stay_identical(tmp_path, mode):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "ddp_scripts" / "guard.py"
    out = tmp_path / "guard.pt"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--mode", mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = torch.load(out, weights_only=False)
    assert len(ranks) == 2
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 2  # one bad batch per epoch
    for k, v in ranks[0]["params"].items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, ranks[1]["params"][k]), k
    assert ranks[0]["store_finite"] and ranks[1]["store_finite"]


def test_forbidden_states_at_minus_infinity_are_not_a_bad_step():
    guard = NonFiniteGuard("immediate")
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    opt = torch.optim.SGD([w], lr=0.1)
    theta = torch.zeros(2, 4)
    theta[0, 1] = float("-inf")  # a forbidden state: legitimate
    guard.note_batch(theta, torch.zeros(2), index=torch.tensor([0, 1]))
    assert guard.before_step([w], opt, 0) and w.grad is not None
    theta[1, 2] = float("inf")  # +inf is not
    guard.note_batch(theta, torch.zeros(2), index=torch.tensor([0, 1]))
    with pytest.warns(UserWarning, match=r"non-finite potentials .*examples \[1\]"):
        assert not guard.before_step([w], opt, 1)
    assert w.grad is None and guard.skipped_count() == 1

"""DeepStructuredModel with Lightning: strategies, blending across epochs, resume, CLI, errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from structlight.head import ChainHead, FullyConnectedHead, InferenceSettings
from structlight.task import DeepStructuredModel
from structlight.testing import SyntheticChainDataModule, SyntheticChainDataset
from tests.helpers.evaluation import hamming_error
from tests.helpers.synthetic import quiet_trainer as make_trainer

K = 10  # states of the synthetic chain task (the data module's default)
HIDDEN = 16


def make_model(
    dm: SyntheticChainDataModule,
    strategy: str = "joint",
    lr: float = 0.1,
    seed: int = 0,
    head_kw: dict | None = None,
    **kw,
) -> DeepStructuredModel:
    """A per-position Linear+ReLU backbone and a 1st-order chain head."""
    pl.seed_everything(seed, verbose=False)
    backbone = nn.Sequential(nn.Linear(dm.num_features, HIDDEN), nn.ReLU())
    head = ChainHead(5, K, HIDDEN, **(head_kw or {}))
    opt = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    return DeepStructuredModel(backbone, head, optimizer=opt, strategy=strategy, **kw)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# ---------------------------------------------------------------------------- strategies
def test_joint_beats_unary_only_when_transitions_decide():
    dm = SyntheticChainDataModule(num_train=200, num_val=200, batch_size=20)
    acc, models = {}, {}
    for strategy in ("unary_only", "joint"):
        model = models[strategy] = make_model(dm, strategy, lr=0.2)
        trainer = make_trainer(max_epochs=6, check_val_every_n_epoch=100)
        trainer.fit(model, dm)
        res = trainer.validate(model, dm, verbose=False)[0]
        acc[strategy] = (res["val/word_acc"], res["val/char_acc"])
    (uw, uc), (jw, jc) = acc["unary_only"], acc["joint"]
    # unclear positions are coin flips for the unary model: word accuracy about 0.75^5 = 24%
    assert uw < 45.0, acc
    assert jw > 85.0 and jw > uw + 40.0, acc
    assert jc > uc, acc
    # unary_only kept its pairwise tables at zero; joint learned them
    assert torch.count_nonzero(models["unary_only"].head.potentials["pairwise"].weight) == 0
    assert torch.count_nonzero(models["joint"].head.potentials["pairwise"].weight) > 0


def test_piecewise_and_pretrain_joint_load_the_unary_checkpoint(tmp_path: Path):
    dm = SyntheticChainDataModule(num_train=60, num_val=20, batch_size=20)
    unary = make_model(dm, "unary_only", seed=1)
    assert all(not p.requires_grad for p in unary.head.pairwise_parameters())
    assert all(float(p.abs().max()) == 0.0 for p in unary.head.pairwise_parameters())
    trainer = make_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(unary, dm)
    ckpt = tmp_path / "unary.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = unary._unary_state_keys()
    assert any(k.startswith("backbone.") for k in keys) and any("unary" in k for k in keys)
    saved = {k: v.clone() for k, v in unary.state_dict().items() if k in keys}

    piece = make_model(dm, "piecewise", seed=2, unary_checkpoint=str(ckpt))
    pair_before = piece.head.potentials["pairwise"].weight.detach().clone()
    make_trainer(max_epochs=2, limit_val_batches=0).fit(piece, dm)
    state = piece.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in keys)  # loaded and frozen
    assert not torch.equal(piece.head.potentials["pairwise"].weight, pair_before)  # learned
    piece.train()
    assert not piece.backbone.training and piece.head.training  # frozen parts stay in eval

    joint = make_model(dm, "pretrain_joint", lr=0.0, seed=3, unary_checkpoint=str(ckpt))
    assert not torch.equal(joint.state_dict()[keys[0]], saved[keys[0]])
    make_trainer(max_epochs=1, limit_val_batches=0).fit(joint, dm)
    assert all(torch.equal(joint.state_dict()[k], saved[k]) for k in keys)
    assert all(p.requires_grad for p in joint.parameters())


# ---------------------------------------------------------------------------- blending
def test_messages_after_k_epochs_equal_k_sweeps_with_lr_zero():
    dm = SyntheticChainDataModule(num_train=30, num_val=10, batch_size=8, shuffle=True)
    model = make_model(dm, lr=0.0, head_kw={"order": 2})
    k = 3
    make_trainer(max_epochs=k, limit_val_batches=0).fit(model, dm)
    assert model.head.store.num_examples == 30  # sized from the datamodule
    model.eval()
    ds = dm.train_set
    batch = {"image": ds.images, "label": ds.labels, "index": torch.arange(30)}
    with torch.no_grad():
        theta = model(batch)
        want = model.head.infer(theta, num_sweeps=k)
        once = model.head.infer(theta, num_sweeps=k - 1)
    got = model.head.store.messages
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, once, atol=1e-3)  # k, not k-1, sweeps


@pytest.mark.parametrize(
    "head_kw",
    [
        {},
        {"inference": InferenceSettings(eps=0.0), "order": 2},
        {"inference": InferenceSettings(blend=False, max_sweeps=5)},
    ],
    ids=["eps1-blend", "eps0-hinge", "double-loop"],
)
def test_loss_nonnegative_on_every_batch_and_logged(head_kw):
    dm = SyntheticChainDataModule(num_train=60, num_val=20, batch_size=10)
    model = make_model(dm, head_kw=head_kw)
    rec = LossRecorder()
    trainer = make_trainer(max_epochs=2, callbacks=[rec], log_every_n_steps=1)
    trainer.fit(model, dm)
    assert len(rec.losses) == 12
    assert min(rec.losses) >= -1e-5
    assert rec.losses[-1] < rec.losses[0]
    logged = trainer.logged_metrics
    for key in ("train/loss_step", "train/dual_step", "train/dual_change", "val/loss"):
        assert key in logged, sorted(logged)
    assert float(logged["train/dual_change"]) <= 1e-5
    assert {"val/char_acc", "val/word_acc"} <= set(trainer.callback_metrics)
    if not model.head.blend:
        assert 1 <= float(logged["train/sweeps"]) <= 5
        assert model.head.store.num_examples == 0  # the double loop keeps no messages


def test_tensorboard_scalars(tmp_path: Path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dm = SyntheticChainDataModule(num_train=20, num_val=10, batch_size=10)
    logger = TensorBoardLogger(tmp_path, name="tb")
    make_trainer(max_epochs=1, logger=logger, log_every_n_steps=1).fit(make_model(dm), dm)
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_step", "train/dual_step", "train/dual_change", "val/word_acc"} <= tags


# ---------------------------------------------------------------------------- resume
def test_resume_after_one_epoch_equals_uninterrupted_run(tmp_path: Path):
    def run(epochs: int, ckpt: str | None = None) -> tuple[DeepStructuredModel, pl.Trainer]:
        dm = SyntheticChainDataModule(num_train=40, num_val=10, batch_size=8, shuffle=True)
        model = make_model(dm, seed=0 if ckpt is None else 99, head_kw={"order": 2})
        trainer = make_trainer(max_epochs=epochs, limit_val_batches=0)
        trainer.fit(model, dm, ckpt_path=ckpt)
        return model, trainer

    full, _ = run(2)
    half, trainer = run(1)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    assert not torch.equal(half.head.store.messages, full.head.store.messages)
    resumed, _ = run(2, str(ckpt))
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and "head.store.messages" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # load_from_checkpoint: the (empty) store of a fresh head is resized to the saved one
    loaded = DeepStructuredModel.load_from_checkpoint(
        ckpt,
        backbone=nn.Sequential(nn.Linear(half.backbone[0].in_features, HIDDEN), nn.ReLU()),
        head=ChainHead(5, K, HIDDEN, order=2),
    )
    assert torch.equal(loaded.head.store.messages, half.head.store.messages)
    assert loaded.hparams.strategy == "joint" and loaded._unary_loaded


# ---------------------------------------------------------------------------- predict, norms
def test_predict_step_returns_labels_and_marginals():
    dm = SyntheticChainDataModule(num_train=20, num_val=10, num_test=10, batch_size=5)
    model = make_model(dm)
    out = make_trainer(max_epochs=1).predict(model, dm)
    assert len(out) == 2
    assert out[0]["labels"].shape == (5, 5) and out[0]["labels"].dtype == torch.long
    marg = out[0]["marginals"]
    assert marg.shape == (5, 5, K)
    assert torch.allclose(marg.sum(-1), torch.ones(5, 5), atol=1e-5)
    assert torch.equal(out[0]["labels"], marg.argmax(-1))


def test_infinity_norm_projection_and_explicit_l2():
    dm = SyntheticChainDataModule(num_train=40, num_val=10, batch_size=10)
    model = make_model(dm, lr=0.5, linf_bound=0.05, l2_weight=1e-3)
    make_trainer(max_epochs=2, limit_val_batches=0).fit(model, dm)
    assert float(model.head.potentials["pairwise"].weight.detach().abs().max()) <= 0.05 + 1e-7
    assert (
        float(model.head.potentials["unary"].net.weight.detach().abs().max()) > 0.05
    )  # not in scope
    reg = model._regulariser()
    total = sum(p.pow(2).sum() for p in model.parameters())
    assert torch.allclose(reg, 0.5e-3 * total)


# ---------------------------------------------------------------------------- multi-label
class _MultiLabel(Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=gen)
        self.y = (self.x[:, :4] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": i}


def test_fully_connected_multilabel_metrics():
    pl.seed_everything(0, verbose=False)
    model = DeepStructuredModel(nn.Identity(), FullyConnectedHead(4, 8))
    assert model.monitor == "val/hamming_error" and model.monitor_mode == "min"
    train = DataLoader(_MultiLabel(40), batch_size=10, shuffle=False)
    val = DataLoader(_MultiLabel(20, seed=1), batch_size=10)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, train, val)  # no datamodule: the store is sized from the loader
    assert model.head.store.num_examples == 40
    m = trainer.callback_metrics
    error, count = hamming_error(model, val)  # by hand, from the model's predictions
    assert float(m["val/hamming_error"]) == pytest.approx(error, abs=1e-4)
    assert float(m["val/hamming_count"]) == pytest.approx(count, abs=1e-5)
    assert float(m["val/hamming_count"]) == pytest.approx(float(m["val/hamming_error"]) * 4 / 100)


# ---------------------------------------------------------------------------- configuration
def test_lightning_cli_builds_the_model_from_yaml(tmp_path: Path):
    from lightning.pytorch.cli import LightningCLI

    cfg = tmp_path / "word.yaml"
    cfg.write_text(
        f"""
model:
  class_path: structlight.DeepStructuredModel
  init_args:
    backbone:
      class_path: torch.nn.Identity
    head:
      class_path: structlight.ChainHead
      init_args: {{num_vars: 5, num_states: {K}, in_features: 15, order: 2, share: type}}
    strategy: joint
    unary_checkpoint: null
    optimizer:
      class_path: torch.optim.SGD
      init_args: {{lr: 0.01, momentum: 0.95}}
    lr_scheduler:
      class_path: torch.optim.lr_scheduler.ReduceLROnPlateau
      init_args: {{mode: max, factor: 0.5, patience: 0}}
    val_sweeps: 10
data:
  class_path: structlight.testing.SyntheticChainDataModule
  init_args: {{num_train: 20, num_val: 10, batch_size: 10}}
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
"""
    )
    cli = LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(cfg)],
        save_config_callback=None,
    )
    model = cli.model
    assert isinstance(model, DeepStructuredModel) and isinstance(model.head, ChainHead)
    assert model.head.graph.num_regions == 5 + 4 + 3
    conf = model.configure_optimizers()
    assert conf["optimizer"].param_groups[0]["momentum"] == 0.95
    assert conf["lr_scheduler"]["monitor"] == "val/word_acc"
    cli.trainer.fit(model, cli.datamodule)
    assert "val/word_acc" in cli.trainer.callback_metrics


class _NoIndex(SyntheticChainDataset):
    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        del item["index"]
        return item


def test_bad_configurations_raise_clear_errors(tmp_path: Path):
    dm = SyntheticChainDataModule(num_train=20, num_val=10, batch_size=10)
    with pytest.raises(ValueError, match="unary_checkpoint"):
        make_model(dm, "piecewise")
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_model(dm, "layerwise")
    with pytest.raises(TypeError, match="StructuredHead"):
        DeepStructuredModel(nn.Identity(), nn.Linear(2, 2))  # type: ignore[arg-type]
    missing = make_model(dm, "piecewise", unary_checkpoint=str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        make_trainer(max_epochs=1).fit(missing, dm)
    # graph of 4 variables, labels of 5
    pl.seed_everything(0, verbose=False)
    short = DeepStructuredModel(
        nn.Identity(), ChainHead(4, K, dm.num_features, unary_mode="per_variable")
    )
    with pytest.raises(ValueError, match=r"graph has 4 variables.*\(10, 5\)"):
        make_trainer(max_epochs=1).fit(short, dm)
    # no "index" in the batch
    no_index = DataLoader(_NoIndex(20), batch_size=10)
    with pytest.raises(KeyError, match=r"batch\['index'\].*\['image', 'label'\]"):
        make_trainer(max_epochs=1).fit(make_model(dm), no_index)
    # a checkpoint of another model for the unary
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.0.weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="lacks"):
        make_model(dm, "pretrain_joint", unary_checkpoint=str(other)).load_unary_checkpoint(other)

"""Every Lightning internal structlight uses (:mod:`structlight._lightning`), on a real Trainer.

These fail loudly when a Lightning release moves or changes one of them: the attribute is
missing (:class:`structlight._lightning.LightningCompatError`) or no longer means what the
library relies on.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader

from structlight import _lightning as L
from structlight.head import ChainHead
from structlight.sampling import EpochShuffleSampler
from structlight.store_callback import MessageStoreSync
from structlight.task import DeepStructuredModel
from structlight.testing import SyntheticChainDataModule, SyntheticChainDataset
from tests.helpers.synthetic import quiet_trainer

BATCHES = 3  # training batches per epoch (12 examples, batch size 4)


def _data() -> SyntheticChainDataModule:
    return SyntheticChainDataModule(num_train=12, num_val=4, num_test=1, batch_size=4)


def _model(dm: SyntheticChainDataModule) -> DeepStructuredModel:
    pl.seed_everything(0, verbose=False)
    backbone = nn.Sequential(nn.Linear(dm.num_features, 8), nn.ReLU())
    opt = partial(torch.optim.SGD, lr=0.1)
    return DeepStructuredModel(backbone, ChainHead(5, 10, 8), optimizer=opt)


class Probe(pl.Callback):
    """Calls the compat functions at the hooks where the library does and records the answers."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}

    def note(self, key: str, value: Any) -> None:
        self.seen.setdefault(key, []).append(value)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.note("attached", L.attached_trainer(pl_module) is trainer)
        self.note("source", L.train_data_source(trainer))
        self.note("combined_at_setup", L.train_combined_loader(trainer))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.note("combined", L.train_combined_loader(trainer))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.note("epochs_completed", L.epochs_completed(trainer))
        self.note("position_at_start", L.epoch_position(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.note("position", L.epoch_position(trainer))
        self.note("last", L.is_last_batch(trainer))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.note("position_in_val", L.epoch_position(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.note("position_at_end", L.epoch_position(trainer))


def test_version_is_in_the_tested_range() -> None:
    assert L.VERSION >= L.MIN_VERSION
    assert L.VERSION == L._version(lightning.__version__)
    assert L._version("2.6.0rc1") == (2, 6) and L._version("3") == (3, 0)


@pytest.mark.parametrize(
    ("version", "outcome"),
    [("2.1.3", "LightningCompatError"), ("9.0.0", "newer than the versions")],
)
def test_import_refuses_old_and_warns_on_new_lightning(
    version: str, outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs when the module is imported: a fresh copy of it is executed with
    ``lightning.__version__`` set (the imported module is left alone)."""
    monkeypatch.setattr(lightning, "__version__", version)
    spec = importlib.util.spec_from_file_location("structlight_lightning_probe", L.__file__)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    if outcome == "LightningCompatError":
        with pytest.raises(RuntimeError, match=f"lightning {version} does not have") as err:
            spec.loader.exec_module(probe)
        assert type(err.value).__name__ == outcome
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec.loader.exec_module(probe)  # imports, with a warning
        assert any(outcome in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_fit_loop_internals_on_a_real_run() -> None:
    dm = _data()
    model = _model(dm)
    assert L.attached_trainer(model) is None
    probe = Probe()
    trainer = quiet_trainer(max_epochs=2, callbacks=[probe], limit_val_batches=1)
    trainer.fit(model, dm)
    seen = probe.seen
    assert seen["attached"] == [True]
    assert isinstance(seen["source"][0], L.DataLoaderSource)
    assert seen["combined_at_setup"] == [None]  # made when training starts
    flat = seen["combined"][0].flattened
    assert len(flat) == 1 and isinstance(flat[0], DataLoader) and flat[0].batch_size == 4
    assert seen["epochs_completed"] == [0, 1]
    assert seen["position_at_start"] == [(False, 0), (False, 0)]  # not begun at its start hook
    assert seen["position"] == [(True, i) for i in (1, 2, 3)] * 2  # processed, this epoch
    assert seen["last"] == [False, False, True] * 2
    assert seen["position_in_val"] == [(True, BATCHES)] * 2  # still inside the epoch
    assert seen["position_at_end"] == [(False, 0)] * 2  # counted as done before this hook


def test_restarting_flag_and_ready_count_on_resume(tmp_path: Path) -> None:
    dm = _data()
    saved: list[dict[str, Any]] = []

    class SaveAtSecondEpochStart(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            if trainer.current_epoch == 1:
                trainer.save_checkpoint(tmp_path / "epoch1.ckpt")

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, ckpt: dict) -> None:
            progress = ckpt["loops"]["fit_loop"]["epoch_progress"]
            before = {p: dict(progress[p]) for p in ("total", "current")}
            changed = L.unready_next_epoch(ckpt)
            saved.append({"before": before, "changed": changed, "after": progress})

    trainer = quiet_trainer(max_epochs=2, callbacks=[SaveAtSecondEpochStart()])
    trainer.fit(_model(dm), dm)
    (entry,) = saved
    for part in ("total", "current"):  # Lightning counts the epoch ready before the hook
        assert entry["before"][part]["ready"] == entry["before"][part]["started"] + 1 == 2
        assert entry["after"][part]["ready"] == entry["after"][part]["started"] == 1
    assert entry["changed"] and not L.unready_next_epoch({"loops": {}})

    # resuming in the middle of an epoch: the fit loop is restarting until that epoch's end
    class SaveMidEpoch(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 1:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    quiet_trainer(max_epochs=1, callbacks=[SaveMidEpoch()]).fit(_model(dm), dm)
    flags: list[bool] = []

    class Restarting(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            flags.append(trainer.fit_loop.restarting)

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            flags.append(trainer.fit_loop.restarting)
            L.clear_fit_restarting(trainer)
            flags.append(trainer.fit_loop.restarting)

    trainer = quiet_trainer(max_epochs=2, callbacks=[Restarting()])
    trainer.fit(_model(dm), dm, ckpt_path=tmp_path / "mid.ckpt")
    assert flags == [True, True, False, False, False]


def test_data_source_replacement_and_iterator_restart() -> None:
    dm = _data()
    ds = SyntheticChainDataset(12, seed=0)

    class Source(L.DataLoaderSource):
        def dataloader(self) -> Any:
            return DataLoader(ds, batch_size=6, sampler=EpochShuffleSampler(ds, seed=0))

    seen: list[list[int]] = []

    class Swap(pl.Callback):
        def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
            inner = L.train_data_source(trainer)
            L.set_train_data_source(trainer, Source(inner.instance, inner.name))

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            if trainer.current_epoch == 0:  # as a mid-epoch resume: skip, then remake
                (loader,) = L.train_combined_loader(trainer).flattened
                loader.sampler.fast_forward(0, 6)
                assert L.restart_train_iterator(trainer)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            seen.append(batch["index"].tolist())

    trainer = quiet_trainer(max_epochs=2, callbacks=[Swap()], limit_val_batches=0)
    trainer.fit(_model(dm), dm)
    order = list(EpochShuffleSampler(ds, seed=0))
    # the replacement source's loaders (batches of 6); epoch 0 restarted after its first half
    assert seen[0] == order[6:] and len(seen) == 3 and all(len(b) == 6 for b in seen)


def test_distributed_sampler_flag_and_update_dataloader() -> None:
    assert L.uses_distributed_sampler(quiet_trainer())
    assert not L.uses_distributed_sampler(quiet_trainer(use_distributed_sampler=False))
    ds = SyntheticChainDataset(10, seed=0)
    loader = DataLoader(ds, batch_size=3, drop_last=True)
    sampler = EpochShuffleSampler(ds, seed=1)
    new = L.update_dataloader(loader, sampler)
    assert new is not loader and new.dataset is ds and new.sampler is sampler
    assert new.batch_size == 3 and new.drop_last


def test_mark_checkpoint_saved_mirrors_model_checkpoint(tmp_path: Path) -> None:
    dm = _data()
    lightning_cb = ModelCheckpoint(dirpath=tmp_path / "pl", save_top_k=-1)
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[lightning_cb], enable_checkpointing=True, limit_val_batches=0
    )
    trainer.fit(_model(dm), dm)
    # what Lightning's own _save_checkpoint records, which the override must record too
    assert lightning_cb._last_global_step_saved == trainer.global_step == BATCHES
    assert Path(lightning_cb._last_checkpoint_saved).is_file()
    ours = ModelCheckpoint(dirpath=tmp_path / "ours")
    L.mark_checkpoint_saved(ours, trainer, "x.ckpt")
    assert ours._last_global_step_saved == BATCHES and ours._last_checkpoint_saved == "x.ckpt"


# ---------------------------------------------------------------------------- store callback
def test_store_callback_is_added_with_user_callbacks_and_replaces_a_user_instance(
    tmp_path: Path,
) -> None:
    dm = _data()
    model = _model(dm)
    probe, theirs = Probe(), MessageStoreSync()
    trainer = quiet_trainer(max_epochs=1, callbacks=[probe, theirs], limit_val_batches=0)
    trainer.fit(model, dm)
    syncs = [c for c in trainer.callbacks if isinstance(c, MessageStoreSync)]
    assert syncs == [model.store_sync] and probe in trainer.callbacks
    for weights_only in (False, True):  # weights-only saves skip callbacks: the model writes it
        path = tmp_path / f"w{weights_only}.ckpt"
        trainer.save_checkpoint(path, weights_only=weights_only)
        ckpt = torch.load(path, weights_only=False)
        info = ckpt["message_stores"]["head.store"]
        assert info["num_examples"] == 12 and info["world_size"] == 1
        assert info["num_message_entries"] == model.head.store.num_message_entries
        assert "num_messages" not in info  # the entry's former name
        assert torch.equal(ckpt["state_dict"]["head.store.messages"], model.head.store.messages)
    # a checkpoint written when the entry was called num_messages resumes as before
    ckpt = torch.load(tmp_path / "wFalse.ckpt", weights_only=False)
    info = ckpt["message_stores"]["head.store"]
    info["num_messages"] = info.pop("num_message_entries")
    torch.save(ckpt, tmp_path / "older.ckpt")
    resumed = _model(dm)
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(resumed, dm, ckpt_path=tmp_path / "older.ckpt")
    assert trainer.global_step == 2 * BATCHES and resumed.head.store.num_examples == 12


# ---------------------------------------------------------------------------- LightningCLI
class _Tiny(pl.LightningModule):
    def __init__(self, width: int = 1) -> None:
        super().__init__()
        self.width = width


class _Stop(Exception):
    pass


def test_ckpt_path_check_runs_before_lightning_reads_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "tiny.ckpt"
    torch.save({"hyper_parameters": {"width": 3}}, path)
    seen: list[tuple[str, Any]] = []

    def check(cli: LightningCLI) -> None:
        config = cli.config["validate"]
        seen.append(("check", (str(config["ckpt_path"]), config["model"]["width"])))

    @L.check_before_ckpt_hparams(check)
    class CLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            seen.append(("built from", self.config["validate"]["model"]["width"]))
            raise _Stop  # nothing to run

    with pytest.raises(_Stop):
        CLI(_Tiny, args=["validate", "--ckpt_path", str(path)], save_config_callback=None)
    # the check saw the command line alone; Lightning then read width=3 from the checkpoint
    assert seen == [("check", (str(path), 1)), ("built from", 3)]
    refused: list[str] = []

    def refuse(cli: LightningCLI) -> None:
        refused.append("checked")
        raise _Stop

    @L.check_before_ckpt_hparams(refuse)
    class Refusing(LightningCLI):
        pass

    path.write_bytes(b"not a checkpoint")  # Lightning would fail loading it: never reached
    with pytest.raises(_Stop):
        Refusing(_Tiny, args=["validate", "--ckpt_path", str(path)], save_config_callback=None)
    assert refused == ["checked"]

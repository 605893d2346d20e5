"""The synthetic chain task: models, data, trainers and training-state comparisons.

Shared by the tests and by the scripts under ``tests/ddp_scripts/`` (run as subprocesses; they
put the repository root on ``sys.path`` and import this module as ``tests.helpers.synthetic``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from structlight.distributed import ShardedSampler
from structlight.head import ChainHead
from structlight.task import DeepStructuredModel
from structlight.testing import SyntheticChainDataModule

K = 10  # states of the synthetic chain task
N = 5  # positions
HIDDEN = 16


def make_data(num_train: int, batch_size: int, num_val: int = 0) -> SyntheticChainDataModule:
    """The synthetic chain task, shuffled per epoch with seed 0."""
    return SyntheticChainDataModule(
        num_train=num_train, num_val=max(num_val, 1), num_test=1, batch_size=batch_size, seed=0
    )


def make_model(
    dm: SyntheticChainDataModule,
    lr: float,
    seed: int = 0,
    order: int = 2,
    store_location: str = "device",
    dropout: float = 0.0,
    plateau: str | None = None,
) -> DeepStructuredModel:
    """A per-position Linear+ReLU backbone and a chain head; SGD with momentum 0.9.

    ``dropout > 0`` adds a dropout layer (training draws from the global generator);
    ``plateau="max"`` halves the step size when ``val/word_acc`` does not rise (the recipes'
    schedule: an epoch-interval scheduler stepped on a validation metric); ``"min"`` when it
    does not fall (so that, in a short test run, it surely steps).
    """
    pl.seed_everything(seed, verbose=False)
    layers: list[nn.Module] = [nn.Linear(dm.num_features, HIDDEN), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    backbone = nn.Sequential(*layers)
    head = ChainHead(N, K, HIDDEN, order=order, store_location=store_location)
    opt = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    sched = (
        partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode=plateau, factor=0.5, patience=0)
        if plateau
        else None
    )
    return DeepStructuredModel(backbone, head, optimizer=opt, lr_scheduler=sched, val_sweeps=5)


def quiet_trainer(**kw: Any) -> pl.Trainer:
    """A deterministic CPU trainer without logger, checkpoints, progress bar or summary
    (``kw`` overrides)."""
    args: dict[str, Any] = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    args.update(kw)
    return pl.Trainer(**args)


def make_trainer(max_epochs: int, devices: int, val: bool, **kw: Any) -> pl.Trainer:
    """A quiet CPU trainer; DDP (gloo) when ``devices > 1``."""
    args: dict[str, Any] = dict(
        devices=devices, max_epochs=max_epochs, limit_val_batches=1.0 if val else 0
    )
    if devices > 1:
        args["strategy"] = "ddp"
    args.update(kw)
    return quiet_trainer(**args)


class MergedShardBatchSampler(Sampler[list[int]]):
    """One process's batches equal to a DDP(world) run's global batches.

    Step ``k`` of epoch ``e`` yields the union of every rank's ``k``-th batch of
    :class:`ShardedSampler` (``batch_size`` per rank), so a single process with this sampler
    follows the same data, gradients and messages as the DDP run.
    """

    def __init__(self, num_examples: int, world_size: int, batch_size: int, seed: int = 0) -> None:
        self.samplers = [
            ShardedSampler(num_examples, world_size, r, seed=seed) for r in range(world_size)
        ]
        self.sampler = self.samplers[0]  # Lightning calls batch_sampler.sampler.set_epoch
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.epoch
        orders = []
        for s in self.samplers:
            s.set_epoch(epoch)
            orders.append(list(s))
        for start in range(0, len(orders[0]), self.batch_size):
            yield [i for order in orders for i in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)


class MergedDataModule(SyntheticChainDataModule):
    """:func:`make_data`'s task, trained in one process as a DDP(world) run would be."""

    def __init__(self, num_train: int, batch_size: int, num_val: int, world_size: int) -> None:
        super().__init__(
            num_train=num_train, num_val=max(num_val, 1), num_test=1, batch_size=batch_size, seed=0
        )
        self.world_size = world_size

    def train_dataloader(self) -> DataLoader:
        merged = MergedShardBatchSampler(
            len(self.train_set), self.world_size, self.batch_size, self.seed
        )
        return DataLoader(self.train_set, batch_sampler=merged)


class Recorder(pl.Callback):
    """Per epoch: the example indices this rank trained on, and the epoch's training loss.

    Also the store's peak size in bytes when training ends (``peak_bytes``, before ``on_fit_end``
    gathers the shards of a DDP run into rank 0's store).
    """

    def __init__(self) -> None:
        self.visits: list[list[int]] = []
        self.epoch_loss: list[float] = []
        self.peak_bytes = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_loss(trainer)
        self.visits.append([])

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.visits:  # resumed in the middle of an epoch: no epoch start was seen
            self.visits.append([])
        self.visits[-1].extend(int(i) for i in batch["index"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_loss(trainer)
        self.peak_bytes = pl_module.head.store.peak_bytes

    def _record_loss(self, trainer: pl.Trainer) -> None:
        value = trainer.callback_metrics.get("train/loss_epoch")
        if value is not None and len(self.epoch_loss) < len(self.visits):
            self.epoch_loss.append(float(value))


def parameters(model: DeepStructuredModel) -> dict[str, Tensor]:
    """The model's weights (its state without the message store), on the CPU."""
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("head.store.")
    }


def training_state(trainer: pl.Trainer, model: DeepStructuredModel) -> dict[str, Any]:
    """Everything a resume must reproduce: weights, message store, optimizer and scheduler
    state, steps and epochs (tensors on the CPU; compare with :func:`assert_same_state`)."""
    state: dict[str, Any] = {
        f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()
    }
    for i, opt in enumerate(trainer.optimizers):
        for pid, buf in opt.state_dict()["state"].items():
            for name, value in buf.items():
                state[f"optimizer{i}.{pid}.{name}"] = torch.as_tensor(value).cpu().clone()
        state[f"optimizer{i}.lr"] = torch.tensor([g["lr"] for g in opt.param_groups])
    for i, cfg in enumerate(trainer.lr_scheduler_configs):
        for name, value in cfg.scheduler.state_dict().items():
            if isinstance(value, (int, float, bool)):
                state[f"scheduler{i}.{name}"] = torch.tensor(float(value))
    state["global_step"] = torch.tensor(trainer.global_step)
    state["epoch"] = torch.tensor(trainer.current_epoch)
    return state


def state_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose tensors differ in any bit (or exist on one side only), with the largest gap."""
    out = sorted(f"{k}: only on one side" for k in set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.shape != y.shape:
            out.append(f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        elif not torch.equal(x, y):
            gap = (x.double() - y.double()).abs().max().item()
            out.append(f"{k}: max difference {gap:.3g}")
    return out


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def k_sweeps_from_zero(model: DeepStructuredModel, dm: SyntheticChainDataModule, k: int) -> Tensor:
    """``(n, M)`` messages of ``k`` sweeps from zero on every training example (fixed weights)."""
    model = model.cpu().eval()
    ds = dm.train_set
    n = len(ds)
    batch = {"image": ds.images, "label": ds.labels, "index": torch.arange(n)}
    with torch.no_grad():
        return model.head.infer(model(batch), num_sweeps=k)


class Snapshot(pl.Callback):
    """Copy ``last.ckpt`` when the batch of a given step starts (rank 0)."""

    def __init__(self, ckpt_dir: Path, at_step: int, to: Path) -> None:
        self.ckpt_dir, self.at_step, self.to = ckpt_dir, at_step, to

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step and trainer.is_global_zero:
            shutil.copy(self.ckpt_dir / "last.ckpt", self.to)


def all_ranks(obj: Any) -> list[Any]:
    """``obj`` of every rank (all-gathered under ``torch.distributed``), in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

"""Models, data and helpers shared by the DDP scripts and ``tests/test_distributed.py``.

The scripts import this module by path (their directory is ``sys.path[0]``), the tests as
``tests.ddp_scripts.common``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
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
) -> DeepStructuredModel:
    """A per-position Linear+ReLU backbone and a chain head; SGD with momentum 0.9."""
    pl.seed_everything(seed, verbose=False)
    backbone = nn.Sequential(nn.Linear(dm.num_features, HIDDEN), nn.ReLU())
    head = ChainHead(N, K, HIDDEN, order=order, store_location=store_location)
    opt = partial(torch.optim.SGD, lr=lr, momentum=0.9)
    return DeepStructuredModel(backbone, head, optimizer=opt, val_sweeps=5)


def quiet_trainer(**kw: Any) -> pl.Trainer:
    """A deterministic CPU trainer without logger, checkpoints, progress bar or summary
    (``kw`` overrides; also used by ``tests/test_task.py``)."""
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

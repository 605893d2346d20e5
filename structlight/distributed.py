"""Blended learning under data parallelism: rank-stable sampling and a sharded message store.

Per-example messages are state that plain data parallelism does not handle: Lightning's
``DistributedSampler`` sends an example to a different rank every epoch, where its messages are
not. Here every example stays on one rank for the whole run, and each rank keeps only the
messages of its own examples:

* **Sharding.** Example ``i`` belongs to rank ``i % world_size`` and lives in that rank's local
  slot ``i // world_size`` (:meth:`structlight.MessageStore.shard`). Each rank holds ``ceil`` or
  ``floor`` of ``n / world_size`` slots, so the store's memory per rank falls as ``1 /
  world_size``.
* **Sampling.** :class:`ShardedSampler` yields this rank's examples, in the order in which they
  appear in one permutation of all ``n`` examples seeded by ``seed + epoch`` (the permutation a
  single process would use, so one process with ``world_size = 1`` visits the examples exactly
  as :class:`structlight.sampling.EpochShuffleSampler` does). Every rank yields
  ``n // world_size`` examples per epoch, so every rank runs the same number of steps (DDP
  needs that). When ``world_size`` does not divide ``n``, the ``n % world_size`` larger shards
  hold one example more than they visit: each skips one of its examples per epoch, in rotation
  (local slot ``epoch % shard_size``), so that example's messages simply wait one epoch. No
  example is repeated (a repeat would update its messages twice) and no padding is needed.
* **Wiring.** Under ``Trainer(strategy="ddp")`` (any run with ``trainer.world_size > 1``),
  :class:`structlight.store_callback.MessageStoreSync` (a callback every
  :class:`structlight.DeepStructuredModel` adds to its trainer) shards the model's store in
  ``setup("fit")`` and calls :func:`install_sharded_sampler`, which wraps the trainer's
  training data source so that the training loader it returns (from the datamodule, the module
  or ``fit(train_dataloaders=...)``) is re-created around a :class:`ShardedSampler`, keeping
  its dataset, batch size, collate function, workers and the rest (Lightning's own
  ``_update_dataloader``, the function it uses to inject its ``DistributedSampler``; see
  :mod:`structlight._lightning`). Because :class:`ShardedSampler` is a
  ``DistributedSampler``, Lightning then leaves the loader alone; validation and test loaders
  keep Lightning's ``DistributedSampler``. With ``Trainer(use_distributed_sampler=False)`` the
  user shards the data: the store then refuses any example of another rank's shard with an
  error naming :class:`ShardedSampler`.
* **Checkpoints.** DDP checkpoints are written by rank 0 alone, from its own ``state_dict``.
  :class:`~structlight.store_callback.MessageStoreSync` therefore gathers every shard to rank 0
  when a checkpoint is saved (:func:`gather_store`, in chunks, so a pinned-memory store never
  needs the whole tensor on a GPU) and saves the full ``(n, M)`` tensor in example order under
  the usual ``head.store.messages`` key: the checkpoint does not depend on the number of
  processes that wrote it. On loading, each rank keeps its rows ``full[rank::world_size]``, so
  a run resumes on the same, or on any other, number of processes (and a single-process
  checkpoint resumes under DDP). Each rank briefly holds the whole tensor while the checkpoint
  is loaded (Lightning loads the checkpoint file in every process); rank 0 holds it while
  saving.
* **Exit.** A process that exits with a live ``gloo`` process group can abort in interpreter
  finalisation (``terminate called without an active exception``, exit status -6) when gloo's
  worker threads are torn down after Python is. Lightning never destroys the group, so
  :class:`~structlight.store_callback.MessageStoreSync` registers
  :func:`destroy_process_group_at_exit` once a run has more than one process.
* **Buffers.** The messages are not a registered buffer, so ``DistributedDataParallel`` neither
  syncs them at wrapping time nor broadcasts rank 0's over the others at every forward
  (``broadcast_buffers=True``, its default).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sized
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from structlight import _lightning
from structlight.sampling import EpochShuffleSampler, FastForwardMixin
from structlight.store import MessageStore, shard_size

__all__ = [
    "ShardedSampler",
    "check_train_sampler",
    "destroy_process_group_at_exit",
    "gather_store",
    "install_sharded_sampler",
    "message_bytes_per_example",
    "shard_size",
]

#: Training samplers that visit every example once per epoch: replaced without a warning.
_PERMUTATION_SAMPLERS = (RandomSampler, SequentialSampler, DistributedSampler, EpochShuffleSampler)
#: Rows of a sharded store moved per collective when gathering it (bounded by this many bytes).
GATHER_CHUNK_BYTES = 16 * 2**20


class ShardedSampler(FastForwardMixin, DistributedSampler):
    """This rank's examples (``i % num_replicas == rank``), reshuffled every epoch.

    The order is that of this rank's examples in ``torch.randperm(n)`` drawn from a generator
    seeded by ``seed + epoch``; Lightning calls :meth:`set_epoch` at every epoch. Each rank
    yields ``n // num_replicas`` examples per epoch; a shard with one example more skips the
    example in its local slot ``epoch % shard_size`` that epoch (rotation). See the module docs.
    :meth:`fast_forward` leaves out the first examples of one epoch (a resume in the middle of
    it, see :class:`structlight.checkpointing.ResumeState`).

    Args:
        dataset: the training dataset (only its length is used) or the number of examples.
        num_replicas: number of ranks.
        rank: this rank.
        shuffle: reshuffle every epoch; False: ascending example order.
        seed: base seed of the shuffling.

    Raises:
        ValueError: fewer examples than ranks, or a rank out of range.
    """

    def __init__(
        self,
        dataset: Sized | int,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        n = dataset if isinstance(dataset, int) else len(dataset)
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in [0, {num_replicas}), got {rank!r}")
        if n < num_replicas:
            raise ValueError(
                f"data parallel training over {num_replicas} processes needs at least "
                f"{num_replicas} training examples (one per process), got {n}"
            )
        super().__init__(
            range(n) if isinstance(dataset, int) else dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.num_examples = n
        self.shard_size = shard_size(n, num_replicas, rank)
        self.num_samples = n // num_replicas
        self.total_size = self.num_samples * num_replicas

    def skipped(self, epoch: int | None = None) -> list[int]:
        """The examples of this shard not visited in an epoch (at most one).

        Args:
            epoch: the epoch; None: the current one.

        Returns:
            The skipped example indices: ``[]`` when the shard holds ``n // num_replicas``
            examples, else ``[rank + (epoch % shard_size) * num_replicas]``.
        """
        e = self.epoch if epoch is None else epoch
        if self.shard_size == self.num_samples:
            return []
        return [self.rank + (e % self.shard_size) * self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        n, w, r = self.num_examples, self.num_replicas, self.rank
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
            order = order[order.remainder(w) == r]
        else:
            order = torch.arange(r, n, w)
        skip = self.skipped()
        if skip:
            order = order[order != skip[0]]
        return iter(self._apply_fast_forward(order.tolist()))

    def __len__(self) -> int:
        return self.num_samples


# ---------------------------------------------------------------------------- Lightning wiring
def _sampler_of(loader: DataLoader) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if isinstance(inner, DistributedSampler) else loader.sampler


def _shard_loader(loader: object, rank: int, world_size: int) -> object:
    if not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            "blended training under data parallelism needs a map-style training dataset (each "
            "example's messages live on one rank, and ShardedSampler picks that rank's examples "
            "by index); got an IterableDataset"
        )
    current = _sampler_of(loader)
    if (
        isinstance(current, ShardedSampler)
        and current.rank == rank
        and current.num_replicas == world_size
    ):
        return loader
    if not isinstance(current, _PERMUTATION_SAMPLERS) or getattr(current, "replacement", False):
        rank_zero_warn(
            f"the training loader's sampler ({type(current).__name__}) is replaced by "
            "structlight.distributed.ShardedSampler, which keeps every example on one rank (its "
            "messages live there) and reshuffles each rank's examples every epoch"
        )
    seed = getattr(current, "seed", None)
    if not isinstance(seed, int):
        seed = int(os.getenv("PL_GLOBAL_SEED", "0"))
    shuffle = bool(getattr(current, "shuffle", not isinstance(current, SequentialSampler)))
    sampler = ShardedSampler(loader.dataset, world_size, rank, shuffle=shuffle, seed=seed)
    return _lightning.update_dataloader(loader, sampler)


class _ShardedTrainSource(_lightning.DataLoaderSource):
    """Lightning's training data source, returning loaders re-created with a ShardedSampler."""

    def __init__(self, inner: _lightning.DataLoaderSource, rank: int, world_size: int) -> None:
        super().__init__(inner.instance, inner.name)
        self.rank = rank
        self.world_size = world_size

    def dataloader(self) -> Any:
        loaders = super().dataloader()
        if isinstance(loaders, CombinedLoader):
            loaders.flattened = [
                _shard_loader(dl, self.rank, self.world_size) for dl in loaders.flattened
            ]
            return loaders
        return apply_to_collection(loaders, DataLoader, _shard_loader, self.rank, self.world_size)


def install_sharded_sampler(trainer: pl.Trainer) -> bool:
    """Make the trainer's training loaders sample with this rank's :class:`ShardedSampler`.

    Called by :meth:`structlight.store_callback.MessageStoreSync.setup` when
    ``trainer.world_size > 1``.
    Wraps ``trainer.fit_loop``'s data source, so that every training loader it hands out (also
    after ``reload_dataloaders_every_n_epochs``) is re-created around a :class:`ShardedSampler`
    for ``trainer.global_rank`` of ``trainer.world_size``. Does nothing with one process, with
    ``Trainer(use_distributed_sampler=False)`` (the user's sampler is then trusted), or when
    already installed.

    Args:
        trainer: the trainer, during ``setup("fit")``.

    Returns:
        Whether the training loaders are (now) sharded by this module.
    """
    world, rank = int(trainer.world_size), int(trainer.global_rank)
    if world <= 1 or not _lightning.uses_distributed_sampler(trainer):
        return False
    source = _lightning.train_data_source(trainer)
    if isinstance(source, _ShardedTrainSource):
        source.rank, source.world_size = rank, world
        return True
    _lightning.set_train_data_source(trainer, _ShardedTrainSource(source, rank, world))
    return True


_EXIT_HOOK_REGISTERED = False


def _destroy_default_group() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # never turn a clean exit into a failure
            rank_zero_warn(f"destroying the default process group at exit failed: {err!r}")


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (registered once).

    ``torch.distributed`` leaves an undestroyed ``gloo`` group's worker threads to C++ static
    destruction, after Python's finalisation has begun; that can end a finished run with
    ``terminate called without an active exception`` (SIGABRT, exit status -6). An
    :mod:`atexit` handler runs while the interpreter is still whole. Idempotent; a no-op at exit
    when no group is initialised (or the user destroyed it already).
    """
    global _EXIT_HOOK_REGISTERED
    if not _EXIT_HOOK_REGISTERED:
        atexit.register(_destroy_default_group)
        _EXIT_HOOK_REGISTERED = True


def check_train_sampler(trainer: pl.Trainer, loader: object) -> None:
    """Check that a training loader visits only this rank's examples (if Lightning samples).

    Args:
        trainer: the trainer.
        loader: ``trainer.train_dataloader``.

    Raises:
        RuntimeError: under data parallelism with Lightning's sampler replacement on, a training
            loader does not sample with this rank's :class:`ShardedSampler` (the wiring of
            :func:`install_sharded_sampler` did not take effect).
    """
    world, rank = int(trainer.world_size), int(trainer.global_rank)
    if world <= 1 or not _lightning.uses_distributed_sampler(trainer):
        return
    loaders: list[DataLoader] = []
    apply_to_collection(loader, DataLoader, loaders.append)
    for dl in loaders:
        s = _sampler_of(dl)
        if not (isinstance(s, ShardedSampler) and s.rank == rank and s.num_replicas == world):
            raise RuntimeError(
                f"under data parallelism every training example must stay on one rank, but the "
                f"training loader samples with {type(s).__name__}; expected "
                f"structlight.distributed.ShardedSampler(rank={rank}, num_replicas={world}). "
                "Pass it to your training DataLoader yourself, or report this (the automatic "
                "wiring did not take effect with this Lightning version)"
            )


# ---------------------------------------------------------------------------- checkpoints
def _comm_device(group: Any = None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_store(
    store: MessageStore, dst: int = 0, chunk_bytes: int = GATHER_CHUNK_BYTES
) -> Tensor | None:
    """The whole ``(num_examples, M)`` message tensor of a sharded store, in example order.

    A collective: every rank of the default process group must call it. The shards move in
    chunks of at most ``chunk_bytes`` per rank through the backend's device (the GPU for NCCL),
    so a store kept in host memory never has to fit on a GPU; the result is assembled in host
    memory on ``dst``.

    Args:
        store: this rank's (sharded) store.
        dst: the rank that receives the result.
        chunk_bytes: bytes per rank and collective.

    Returns:
        On ``dst``: ``(num_examples, M)`` float tensor on the CPU (for an unsharded store: its
        messages, without communication). On the other ranks: None.
    """
    if not store.is_sharded:
        return store.messages
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("gather_store needs the default process group (a running DDP job)")
    if dist.get_world_size() != store.world_size:
        raise RuntimeError(
            f"the store is sharded over {store.world_size} processes, the process group has "
            f"{dist.get_world_size()}"
        )
    local = store.messages
    n, m, w, r = store.num_examples, store.num_message_entries, store.world_size, store.rank
    device = _comm_device()
    rows_max = shard_size(n, w, 0)
    chunk = max(1, chunk_bytes // max(1, m * local.element_size()))
    full = torch.empty(n, m, dtype=local.dtype) if r == dst else None
    buf = torch.empty(min(chunk, rows_max), m, dtype=local.dtype, device=device)
    parts = [torch.empty_like(buf) for _ in range(w)] if r == dst else None
    for start in range(0, rows_max, chunk):
        stop = min(start + chunk, rows_max)
        mine = local[start : min(stop, local.shape[0])]
        send = buf[: stop - start]
        send[: mine.shape[0]] = mine.to(device)
        send[mine.shape[0] :] = 0
        if parts is None:
            dist.gather(send, None, dst=dst)
            continue
        recv = [p[: stop - start] for p in parts]
        dist.gather(send, recv, dst=dst)
        assert full is not None
        for q, part in enumerate(recv):
            rows = max(0, min(stop, shard_size(n, w, q)) - start)
            full[q::w][start : start + rows] = part[:rows].cpu()
    return full


def message_bytes_per_example(
    store_or_m: MessageStore | int, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of messages per training example: ``M * dtype size``.

    Args:
        store_or_m: a store, or ``M`` (``ConvexBP(graph).num_message_entries``).
        dtype: storage type (float32 by default, 4 bytes).
    """
    m = store_or_m.num_message_entries if isinstance(store_or_m, MessageStore) else int(store_or_m)
    return m * torch.empty(0, dtype=dtype).element_size()

"""The message store's life in a run: sharding under data parallelism, checkpoints, fit end.

:class:`MessageStoreSync` is a Lightning callback that every
:class:`structlight.DeepStructuredModel` adds to its trainer itself
(``LightningModule.configure_callbacks``), with or without the user's own callbacks and under
the ``structlight`` command alike. With one process it only describes the stores in each
checkpoint; with more (``Trainer(strategy="ddp")``) it

* shards the model's message store at ``setup("fit")`` (example ``i`` on rank
  ``i % world_size``) and installs :class:`structlight.distributed.ShardedSampler` in the
  training loader (:func:`structlight.distributed.install_sharded_sampler`);
* checks, when training starts, that the training loader does sample with it;
* gathers every rank's shard into rank 0's checkpoint (``on_save_checkpoint``), so checkpoints
  hold the whole ``(num_examples, M)`` store in example order whatever the number of processes;
* gathers the shards into rank 0's store when ``fit`` ends;
* destroys the default process group when the interpreter exits.

See :mod:`structlight.distributed`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from structlight.distributed import (
    check_train_sampler,
    destroy_process_group_at_exit,
    gather_store,
    install_sharded_sampler,
)
from structlight.store import MessageStore

__all__ = ["MessageStoreSync", "message_stores"]


def message_stores(module: pl.LightningModule) -> list[tuple[str, MessageStore]]:
    """The module's message stores, with their module names (``"head.store"``)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, MessageStore)]


def _blends(module: pl.LightningModule) -> bool:
    """Whether the module trains with its head's message store (DeepStructuredModel's flag)."""
    return bool(getattr(module, "uses_message_store", False))


class MessageStoreSync(Callback):
    """Shard, checkpoint and gather a :class:`structlight.DeepStructuredModel`'s message store.

    Added by the model itself (:meth:`structlight.DeepStructuredModel.configure_callbacks`); an
    instance passed to ``Trainer(callbacks=...)`` is replaced by the model's. See the module
    docs for what it does at each stage.

    Attributes:
        sharded: True on every rank from ``setup("fit")`` to ``on_fit_end`` of a run over
            several processes: the stores are sharded, and saving a checkpoint gathers them (a
            collective).
    """

    def __init__(self) -> None:
        self.sharded = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """At ``fit``: shard the store and install the sharded sampler (several processes).

        Raises:
            RuntimeError: the store holds one shard of a run over another number of processes.
        """
        if stage != "fit" or not _blends(pl_module):
            return
        store: MessageStore = pl_module.head.store
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        if store.is_sharded and (store.rank, store.world_size) != (rank, world):
            raise RuntimeError(
                f"this model's message store holds only shard {store.rank} of "
                f"{store.world_size} (it was trained on {store.world_size} processes), and this "
                f"run has {world}: resume from a checkpoint of that run instead (checkpoints hold "
                "every shard and are re-sharded on loading)"
            )
        self.sharded = world > 1
        if world > 1:
            for _, each in message_stores(pl_module):  # the clamped problem's store too
                each.shard(rank, world)
            install_sharded_sampler(trainer)
            destroy_process_group_at_exit()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check that the training loader samples this rank's examples only."""
        if _blends(pl_module):
            check_train_sampler(trainer, trainer.train_dataloader)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Put every rank's shard of the message store into the checkpoint."""
        self.write_stores(trainer, pl_module, checkpoint)

    def write_stores(
        self,
        trainer: pl.Trainer | None,
        pl_module: pl.LightningModule,
        checkpoint: dict[str, Any],
    ) -> None:
        """Write the whole stores and ``checkpoint["message_stores"]`` (once per checkpoint).

        Lightning writes DDP checkpoints from rank 0's ``state_dict`` alone; during a sharded
        run this gathers the shards to rank 0 (a collective: called on every rank, as saving
        is) and stores the full ``(num_examples, M)`` tensor, in example order, under the
        store's ``messages`` key, exactly as a single process would (after ``fit``, rank 0's
        store is whole already: see :meth:`on_fit_end`). ``checkpoint["message_stores"]``
        records each store's size and the number of processes of the run. Does nothing when the
        checkpoint has ``message_stores`` already, or no ``state_dict``.

        Args:
            trainer: the trainer (None: a single process).
            pl_module: the model.
            checkpoint: the checkpoint dict being saved.
        """
        state = checkpoint.get("state_dict")
        if "message_stores" in checkpoint or not isinstance(state, dict):
            return
        info = {}
        for name, store in message_stores(pl_module):
            prefix = f"{name}." if name else ""
            if self.sharded and store.is_sharded:  # the same on every rank
                full = gather_store(store)  # a collective: every rank takes part
                if full is not None:  # rank 0, which writes the checkpoint
                    state.pop(prefix + "shard", None)
                    state[prefix + "messages"] = full
            info[name] = {
                "num_examples": store.num_examples,
                "num_message_entries": store.num_message_entries,
                "world_size": int(trainer.world_size) if trainer is not None else 1,
                "sharding": "example i on rank i % world_size",
            }
        checkpoint["message_stores"] = info

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under data parallelism: gather the store's shards into rank 0's store.

        After ``fit`` rank 0 (the main process of ``strategy="ddp"``, whose weights
        ``ddp_spawn`` hands back to the calling process) holds every example's messages, as
        after a single-process run; the other ranks keep their shards. Rank 0 needs host memory
        for the whole store for this, as for every checkpoint.
        """
        if not self.sharded:
            return
        self.sharded = False  # from now on, checkpoints hold rank 0's (whole) store
        for _, store in message_stores(pl_module):
            if store.is_sharded:
                full = gather_store(store)
                if full is not None:
                    store.unshard(full)

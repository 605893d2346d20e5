"""The model's side of the message store's life in a run: sizing it, and adding its callback.

:class:`MessageStoreHooks` gives :class:`structlight.DeepStructuredModel` the Lightning hooks
that concern its head's message store:

* ``setup("fit")`` sizes the store from the datamodule (its ``num_train_examples``, else the
  length of its training dataset); with dataloaders passed to ``fit`` it is sized at
  ``on_train_start`` instead, which also checks that a store restored from a checkpoint covers
  the training data;
* ``configure_callbacks`` adds :class:`structlight.store_callback.MessageStoreSync`, which
  shards, checkpoints and gathers the store (see :mod:`structlight.store_callback`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

from structlight._lightning import attached_trainer
from structlight.store import MessageStore
from structlight.store_callback import MessageStoreSync, message_stores

__all__ = ["MessageStoreHooks"]


class MessageStoreHooks:
    """Lightning hooks of a :class:`~structlight.DeepStructuredModel` for its message store.

    A mixin (before ``LightningModule`` in the model's bases). The model provides ``head`` (with
    its ``store`` and ``blend``), ``strategy_spec`` and ``store_sync`` (its
    :class:`~structlight.store_callback.MessageStoreSync`).
    """

    @property
    def uses_message_store(self) -> bool:
        """Whether training reads and writes the head's message store (blending, structured)."""
        return self.strategy_spec.uses_structure and self.head.blend

    def _size_store(self, num_examples: int | None) -> None:
        if num_examples is None:
            return
        for _, store in message_stores(self.head):  # the clamped problem's store too
            if store.num_examples < num_examples:
                store.resize(int(num_examples))

    def setup(self, stage: str) -> None:
        """Size the message store from the datamodule (``num_train_examples`` or its length).

        With more than one process (``trainer.world_size > 1``, e.g. ``strategy="ddp"``),
        :class:`~structlight.store_callback.MessageStoreSync` has sharded the store (example
        ``i`` on rank ``i % world_size``) and installed
        :class:`structlight.distributed.ShardedSampler` in the training loader just before.

        Raises:
            RuntimeError: a run over several processes without a ``MessageStoreSync`` callback
                (a subclass's ``configure_callbacks`` that leaves it out).
        """
        if stage != "fit" or not self.uses_message_store or attached_trainer(self) is None:
            return
        trainer = self.trainer
        if int(trainer.world_size) > 1 and not any(
            isinstance(c, MessageStoreSync) for c in trainer.callbacks
        ):
            raise RuntimeError(
                "data parallel training with a message store needs the "
                "structlight.store_callback.MessageStoreSync callback, which "
                "DeepStructuredModel.configure_callbacks returns: call super() in an "
                "overriding configure_callbacks"
            )
        dm = self.trainer.datamodule
        if dm is None:
            return  # dataloaders passed to fit(): sized in on_train_start
        if getattr(dm, "has_missing_labels", False):
            self.head.enable_missing_labels()
        self._size_store(self._num_train_examples(dm.train_dataloader))

    def _num_train_examples(self, loader: Callable[[], Any]) -> int | None:
        """Training examples: the datamodule's ``num_train_examples``, else the length of
        ``loader()``'s dataset (None if it has none)."""
        dm = self.trainer.datamodule
        n = getattr(dm, "num_train_examples", None) if dm is not None else None
        if n is not None:
            return int(n)
        try:
            dataset = getattr(loader(), "dataset", None)
            return len(dataset) if dataset is not None else None
        except (TypeError, AttributeError, NotImplementedError):
            return None

    def on_train_start(self) -> None:
        """Size the message store from the training dataloader if ``setup`` could not, and check
        that a store restored from a checkpoint covers the training data."""
        if not self.uses_message_store:
            return
        store = self.head.store
        n = self._num_train_examples(lambda: self.trainer.train_dataloader)
        if store.num_examples == 0:
            if n is None:
                raise ValueError(
                    "cannot size the message store: the training data has no length; pass "
                    "num_train_examples to the head (or give the datamodule a "
                    "num_train_examples attribute)"
                )
            self._size_store(n)
        elif n is not None and store.num_examples < n:
            ckpt = self.trainer.ckpt_path
            source = (
                f"the checkpoint '{ckpt}' holds messages for {store.num_examples} training examples"
                if ckpt
                else f"the message store has {store.num_examples} slots (num_train_examples)"
            )
            raise ValueError(
                f"{source}, but the training data has {n}: "
                + (
                    "it was trained on another data set (or another split size). Resume with the "
                    "data it was trained on, or start a new run without --ckpt_path"
                    if ckpt
                    else "size the store for the whole training set"
                )
            )

    def _stores(self) -> list[tuple[str, MessageStore]]:
        return message_stores(self)

    def configure_callbacks(self) -> list[pl.Callback]:
        """The model's own callbacks, added to the trainer's: :class:`MessageStoreSync`.

        Lightning calls this at the start of every ``fit``, ``validate``, ``test`` and
        ``predict``; a ``MessageStoreSync`` passed to the trainer is replaced by this one.
        """
        return [*super().configure_callbacks(), self.store_sync]

    def _store_sync_in_use(self) -> MessageStoreSync:
        """The trainer's :class:`MessageStoreSync` (the model's own when not attached)."""
        trainer = attached_trainer(self)
        for callback in trainer.callbacks if trainer is not None else ():
            if isinstance(callback, MessageStoreSync):
                return callback
        return self.store_sync

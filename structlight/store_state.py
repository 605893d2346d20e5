"""A :class:`structlight.MessageStore` in state dicts, checkpoints and pickles.

The messages are not a registered buffer (so ``DistributedDataParallel`` never broadcasts one
rank's messages over the others'), but they are in the ``state_dict`` under ``messages``, as a
buffer would be. A sharded store saves its own shard there, plus ``shard = [rank, world_size,
num_examples]``; :class:`structlight.DeepStructuredModel` replaces both in its checkpoints by the
full ``(num_examples, M)`` tensor in example order (gathered from every rank), so a checkpoint
looks the same whatever the number of processes that wrote it. Loading a full tensor into a
sharded store keeps this rank's rows: resuming on another number of processes re-shards.

:func:`messages_to_load` checks a state dict's messages against a store and picks the rows it
keeps; :class:`SavedMessages` is the part of :class:`~structlight.MessageStore` that writes and
reads its state dict entries and pickles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from structlight.store_checks import shard_size

__all__ = ["SavedMessages", "messages_to_load"]


# ---------------------------------------------------------------------------- saved messages
def messages_to_load(
    state_dict: Mapping[str, Any],
    prefix: str,
    num_message_entries: int,
    rank: int,
    world_size: int,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> tuple[Tensor, int] | None:
    """The rows of a state dict's messages that a store keeps, checked against the store.

    The checking half of the store's ``_load_from_state_dict``: takes the store's
    ``messages`` and ``shard`` keys off ``unexpected_keys``, and records a missing key (when
    ``strict``) or what is wrong in ``missing_keys`` and ``error_msgs``, as
    :meth:`torch.nn.Module.load_state_dict` expects.

    Args:
        state_dict: the state dict being loaded.
        prefix: the store's key prefix in it (``"head.store."``).
        num_message_entries: ``M`` of the store.
        rank: the store's shard.
        world_size: the store's number of shards.
        strict: whether a missing ``messages`` key is an error.
        missing_keys: ``load_state_dict``'s list of missing keys.
        unexpected_keys: ``load_state_dict``'s list of unexpected keys.
        error_msgs: ``load_state_dict``'s list of errors.

    Returns:
        ``(rows, num_examples)``: the messages of the slots the store holds (a whole store's
        rows ``rank::world_size`` when sharded), and the number of examples of all shards; None
        when there is nothing to load (missing key or an error recorded).
    """
    key, shard_key = prefix + "messages", prefix + "shard"
    for k in (key, shard_key):
        if k in unexpected_keys:
            unexpected_keys.remove(k)
    incoming = state_dict.get(key)
    if incoming is None:
        if strict:
            missing_keys.append(key)
        return None
    if not isinstance(incoming, Tensor) or incoming.dim() != 2:
        got = tuple(incoming.shape) if isinstance(incoming, Tensor) else type(incoming).__name__
        error_msgs.append(f"{key}: expected a (num_examples, M) tensor, got {got}")
        return None
    if incoming.shape[1] != num_message_entries:
        error_msgs.append(
            f"{key}: the checkpoint stores {incoming.shape[1]} message entries per "
            f"example, this model's graph has {num_message_entries} (a different graph?)"
        )
        return None
    info = state_dict.get(shard_key)
    if info is None:  # the whole store, in example order
        local = incoming[rank::world_size] if world_size > 1 else incoming
        return local, int(incoming.shape[0])
    saved_rank, saved_world, n = (int(v) for v in torch.as_tensor(info).tolist())
    if (saved_rank, saved_world) != (rank, world_size) or incoming.shape[0] != shard_size(
        n, saved_world, saved_rank
    ):
        error_msgs.append(
            f"{key}: this state_dict holds only shard {saved_rank} of {saved_world} of the "
            f"messages (one process's part of a run over {saved_world} processes); this store "
            f"is shard {rank} of {world_size}. Save through Lightning "
            "(trainer.save_checkpoint / ModelCheckpoint: DeepStructuredModel gathers every "
            "shard into the checkpoint), or structlight.distributed.gather_store, to get "
            "all messages"
        )
        return None
    return incoming, n


class SavedMessages:
    """State dict entries and pickling of a :class:`structlight.MessageStore`.

    A mixin of :class:`~structlight.MessageStore` (before ``nn.Module`` in its bases), which
    provides the storage: ``messages`` (read after pending writes and deferred checks),
    ``_messages``, ``_num_examples``, ``num_message_entries``, ``rank``, ``world_size``,
    ``is_sharded``, ``flush()``, ``check()``, ``_alloc()`` and ``_set()``.
    """

    def __getstate__(self) -> dict[str, Any]:
        self.flush()  # pending copies and the CUDA stream do not pickle (deepcopy, ddp_spawn)
        self.check()
        state = self.__dict__.copy()
        state["_pending"], state["_copy_stream"] = [], None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_unchecked", [])  # stores pickled before deferred checks
        self.__dict__.setdefault("_defer_checks", False)
        if "num_messages" in self.__dict__:  # stores pickled before the name num_message_entries
            self.__dict__["num_message_entries"] = self.__dict__.pop("num_messages")

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        msgs = self.messages
        destination[prefix + "messages"] = msgs if keep_vars else msgs.detach()
        if self.is_sharded:
            destination[prefix + "shard"] = torch.tensor(
                [self.rank, self.world_size, self._num_examples], dtype=torch.long
            )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        loaded = messages_to_load(
            state_dict,
            prefix,
            self.num_message_entries,
            self.rank,
            self.world_size,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        if loaded is None:
            return
        local, n = loaded
        self.flush()
        self.check()
        old = self._messages
        new = self._alloc(int(local.shape[0]), old.device, old.dtype, zero=False)
        with torch.no_grad():
            new.copy_(local)
        self._num_examples = n
        self._set(new)

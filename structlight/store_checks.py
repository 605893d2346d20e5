"""The slots of a :class:`structlight.MessageStore` and the checks of the indices that reach them.

**Layout.** Sharded across ``world_size`` processes, example ``i`` belongs to rank
``i % world_size`` and lives in that rank's local slot ``i // world_size``; :func:`shard_size`
counts a rank's slots.

**Example indices.** Every index a store is given is checked: in range, of this rank's shard,
and (on writes) not repeated within the batch. Where the indices are (or become) a CPU tensor,
e.g. with a store in host memory, the checks run at once, for free. Indices on a GPU, with the
store on the GPU (the usual case under Lightning, which moves the whole batch, ``index``
included, before the step), are checked *later*, so that a step needs no device sync: until then
they are clamped to valid slots (nothing is read or written out of bounds, and an invalid index
changes no slot). They are read back and checked together by :meth:`IndexChecks.check`, which
raises the error an immediate check would have raised; the store runs it on every read of its
messages (so before every checkpoint), before it changes shape or device, and at the latest
after :attr:`IndexChecks.check_interval` unchecked accesses.

:func:`check_indices` is the check itself, on CPU indices; :class:`IndexChecks` is the part of
:class:`~structlight.MessageStore` that maps example indices to local slots and defers the
checks of GPU indices; :func:`example_indices` reads a batch's indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IndexChecks",
    "as_index",
    "check_count",
    "check_indices",
    "example_indices",
    "has_repeats",
    "shard_size",
]


def check_count(name: str, value: object, minimum: int = 0) -> int:
    """``value``, checked to be an int (not a bool) of at least ``minimum``.

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def shard_size(num_examples: int, world_size: int, rank: int) -> int:
    """Number of examples ``i < num_examples`` with ``i % world_size == rank``.

    Args:
        num_examples: examples in the training set.
        world_size: number of processes.
        rank: this process's rank, ``0 <= rank < world_size``.

    Returns:
        ``ceil((num_examples - rank) / world_size)`` (0 if ``rank >= num_examples``).
    """
    return max(0, (num_examples - rank + world_size - 1) // world_size)


# ---------------------------------------------------------------------------- example indices
def example_indices(batch: Mapping[str, Any], key: str = "index") -> Tensor:
    """The example indices of a batch (:meth:`structlight.MessageStore.index_from`).

    Args:
        batch: a dict batch.
        key: the key holding the indices.

    Returns:
        ``(B,)`` long tensor.

    Raises:
        KeyError: the batch has no ``key``.
        TypeError: the batch is not a mapping.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"blended training needs dict batches with an {key!r} entry, got {type(batch).__name__}"
        )
    if key not in batch:
        raise KeyError(
            f"blended training keeps messages per training example and needs each example's "
            f"dataset index in batch[{key!r}], but the batch has keys {sorted(batch)}; "
            f"make the dataset return its index under {key!r}"
        )
    index = batch[key]
    return torch.as_tensor(index)


def has_repeats(index: Tensor) -> bool:
    """Whether a ``(B,)`` CPU integer tensor holds a value twice."""
    b = index.numel()
    if b < 2:
        return False
    # (a Python set is the faster check for small batches, a sort for large ones)
    distinct = len(set(index.tolist())) if b <= 256 else torch.unique(index).numel()
    return distinct != b


def as_index(index: Tensor) -> Tensor:
    """``index`` as a ``(B,)`` integer tensor, where it is.

    Raises:
        TypeError: the values are not integers.
        ValueError: ``index`` is not one-dimensional.
    """
    if not isinstance(index, Tensor):
        index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
        raise TypeError(f"example indices must be integers, got dtype {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"example indices must have shape (B,), got {tuple(index.shape)}")
    return index


def check_indices(
    index: Tensor, num_examples: int, rank: int, world_size: int, unique: bool
) -> None:
    """Check ``(B,)`` long CPU example indices (non-empty): no device sync is involved.

    Args:
        index: the example indices.
        num_examples: slots of all shards together; valid indices are ``0..num_examples - 1``.
        rank: this process's shard: example ``i`` belongs to rank ``i % world_size``.
        world_size: number of shards.
        unique: the indices are written to, so none may repeat.

    Raises:
        IndexError: an index is out of range or belongs to another rank's shard.
        ValueError: ``unique`` and an index repeats.
    """
    n = num_examples
    lo, hi = torch.aminmax(index)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= n:
        raise IndexError(
            f"example index out of range: got indices in [{lo}, {hi}], but the message store "
            f"has {n} slots (valid indices 0..{n - 1}); is the store sized for the training "
            "set, and do the indices count from 0?"
        )
    w = world_size
    if w > 1:
        foreign = index.remainder(w) != rank
        if bool(foreign.any()):
            i = int(index[foreign][0])
            raise IndexError(
                f"example {i} belongs to the message store's shard on rank {i % w}, but rank "
                f"{rank} got it: every example must stay on one rank (example i on rank "
                f"i % {w}) for the whole run. The training loader must sample with "
                "structlight.distributed.ShardedSampler; DeepStructuredModel installs it under "
                "DDP unless Trainer(use_distributed_sampler=False)"
            )
    if unique and has_repeats(index):
        raise ValueError(
            "an example index repeats within the batch; each example may appear once per "
            "batch (sample without replacement)"
        )


class IndexChecks:
    """Example indices to local slots, with the checks of GPU indices deferred.

    A mixin of :class:`structlight.MessageStore`, which provides the storage and its layout:
    ``_messages`` (the ``(num_local, M)`` slots this process holds), ``_num_examples``,
    ``rank`` and ``world_size``, and initialises ``_unchecked = []`` (the accesses not yet
    checked: index on the storage's device, and whether it must not repeat) and
    ``_defer_checks = False`` (True: check CPU indices as if they were on a GPU, later, to
    exercise that path without one).

    Attributes:
        check_interval: the most accesses whose index checks may wait (indices on a GPU): the
            next one runs :meth:`check` first, one device sync.
    """

    check_interval: int = 256

    _messages: Tensor
    _num_examples: int
    _unchecked: list[tuple[Tensor, bool]]
    _defer_checks: bool
    rank: int
    world_size: int

    def _check_host(self, index: Tensor, unique: bool) -> None:
        """Check ``(B,)`` long CPU example indices of this store: see :func:`check_indices`."""
        check_indices(index, self._num_examples, self.rank, self.world_size, unique)

    def _local_index(self, index: Tensor, write: bool = False) -> tuple[Tensor, Tensor | None]:
        """Check example indices and map them to local slots on the storage's device.

        CPU indices (also those a host-memory store brings to the CPU) are checked at once.
        Indices on the storage's GPU are checked later (:meth:`check`) and clamped to valid
        slots until then; this path reads no tensor value on the host.

        Args:
            index: ``(B,)`` integer example indices.
            write: the indices are written to: they must not repeat, and ``ok`` is needed.

        Returns:
            ``(local, ok)``: ``(B,)`` long local slots on the storage's device, and ``ok``: for
            a write with deferred checks, the ``(B,)`` bool mask of the valid indices (up to
            repeats); else None.

        Raises:
            IndexError, ValueError: see :func:`check_indices` (at once for checked indices), or
                the store has no slots.
        """
        index = as_index(index)
        device = self._messages.device
        if index.numel() == 0:
            return index.to(device=device, dtype=torch.long), None
        n = self._num_examples
        if n == 0:
            raise IndexError(
                "the message store has no slots: size it with MessageStore.resize("
                "num_train_examples) (DeepStructuredModel does so from the training data, or pass "
                "num_train_examples to the head)"
            )
        w = self.world_size
        host_store = device.type == "cpu"
        # a host store reads its slots on the host: there a GPU index's copy waits anyway
        index = index.to(device=device, dtype=torch.long) if host_store else index.long()
        if index.device.type == "cpu" and not self._defer_checks:
            self._check_host(index, write)
            local = index.div(w, rounding_mode="floor") if w > 1 else index
            return (local if host_store else local.to(device, non_blocking=True)), None
        num_local = int(self._messages.shape[0])
        if num_local == 0:  # no slot to fall back on: every index is invalid
            self._check_host(index.cpu(), write)
        if len(self._unchecked) >= self.check_interval:
            self.check()
        index = index.to(device)
        self._unchecked.append((index.clone(), write))
        sharded = w > 1
        local = index.div(w, rounding_mode="floor") if sharded else index
        safe = local.clamp(0, num_local - 1)
        if not write:
            return safe, None
        ok = safe == local
        if sharded:
            ok &= index.remainder(w) == self.rank
        return safe, ok

    def check(self) -> None:
        """Check the example indices whose checks were deferred (indices on a GPU).

        One device sync if there are any; a no-op otherwise. Runs on every read of the store's
        messages, before the store changes shape or device, and at the latest after
        :attr:`check_interval` unchecked accesses.

        Raises:
            IndexError: an index was out of range or of another rank's shard.
            ValueError: an index repeated within a written batch.
        """
        if not self._unchecked:
            return
        pending, self._unchecked = self._unchecked, []
        flat = torch.cat([index for index, _ in pending]).cpu()
        parts = flat.split([index.numel() for index, _ in pending])
        for part, (_, unique) in zip(parts, pending):
            self._check_host(part, unique)

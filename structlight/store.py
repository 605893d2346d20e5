"""Per-example message storage for blended learning and inference (docs/design.md §2).

The paper keeps every training example's dual messages ``lam`` between optimisation steps, so
each visit of an example continues its message passing where the last visit stopped. A
:class:`MessageStore` holds them as one ``(num_examples, M)`` tensor, indexed by the dataset
index each batch carries (``batch["index"]``).

All access goes through :meth:`MessageStore.gather` and :meth:`MessageStore.scatter`, so the
storage can change without touching the callers:

* **Sharding** (data parallelism, see :mod:`structlight.distributed`): after
  :meth:`MessageStore.shard` a process holds only the examples ``i`` with
  ``i % world_size == rank``, example ``i`` in local slot ``i // world_size``; each rank holds
  ``ceil`` or ``floor`` of ``num_examples / world_size`` slots.
* **Location**: ``"device"`` (default) keeps the messages with the module (``.to(device)``
  moves them); ``"pinned"`` keeps them in page-locked host memory whatever the module's device,
  and copies only the batch's slots to the GPU (``non_blocking``) and back (on a side CUDA
  stream, completed lazily before the next read), for data sets whose messages exceed GPU
  memory. Without CUDA, ``"pinned"`` is ordinary host memory and every copy is synchronous.

Memory per example is ``M * 4`` bytes in float32, ``M = ConvexBP(graph).num_message_entries``:
208 entries (832 B) for Word50's 1st-order chain (5 x 26, also with the MLP pairwise), 364 (1,456
B) for the 2nd-order chain, 2,812 (11,248 B) for Flickr's 38 fully connected binary tags; for
10,000 training examples 7.9 MiB, 13.9 MiB and 107 MiB, divided by the number of ranks when
sharded.

**Index checks.** Every index is checked: in range, of this rank's shard, and (on writes) not
repeated within the batch; CPU indices at once, indices on a GPU later, in one device sync
(:meth:`MessageStore.check`), so that a step needs none: see :mod:`structlight.store_checks`.

The messages are not a registered buffer (so ``DistributedDataParallel`` never broadcasts one
rank's messages over the others'), but they are in the ``state_dict`` under ``messages``, as a
buffer would be; checkpoints hold the whole store in example order whatever the number of
processes that wrote them, and loading re-shards: see :mod:`structlight.store_state`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from structlight.store_checks import (
    IndexChecks,
    as_index,
    check_count,
    example_indices,
    shard_size,
)
from structlight.store_state import SavedMessages

__all__ = ["MessageStore", "StoreLocation", "shard_size"]

StoreLocation = Literal["device", "pinned"]
_LOCATIONS = ("device", "pinned")


class MessageStore(IndexChecks, SavedMessages, nn.Module):
    """One slot of ``M`` message entries per training example, optionally sharded across ranks.

    Args:
        num_message_entries: ``M``, the message entries per example
            (``ConvexBP.num_message_entries``).
        num_examples: number of slots; 0 (default) leaves the store empty until :meth:`resize`
            (:class:`structlight.DeepStructuredModel` sizes it from the training data).
        location: ``"device"`` (the module's device) or ``"pinned"`` (page-locked host memory,
            batch slots copied to and from the GPU asynchronously; ordinary host memory without
            CUDA).

    Attributes:
        messages: ``(num_local, M)`` float32 tensor of the slots this process holds (all of them
            unless sharded), zero-initialised. Reading it completes pending asynchronous writes
            and runs the deferred index checks (:meth:`check`).
        rank: this process's shard (0 unless sharded).
        world_size: number of shards (1 unless sharded).
        peak_bytes: the largest size in bytes the messages have taken in this process;
            temporary copies (checkpoints, batches) are not counted.
        check_interval: the most accesses (:meth:`gather`, :meth:`scatter`) whose index checks
            may wait (indices on a GPU): the next one runs :meth:`check` first, one device sync.
    """

    def __init__(
        self, num_message_entries: int, num_examples: int = 0, location: StoreLocation = "device"
    ) -> None:
        super().__init__()
        check_count("num_message_entries", num_message_entries)
        check_count("num_examples", num_examples)
        if location not in _LOCATIONS:
            raise ValueError(f"location must be one of {_LOCATIONS}, got {location!r}")
        self.num_message_entries = num_message_entries
        self.location: str = location
        self.rank = 0
        self.world_size = 1
        self._num_examples = num_examples
        self._pending: list[tuple[Tensor, Tensor, Any]] = []
        self._copy_stream: Any = None
        self.peak_bytes = 0
        # (index on the storage's device, whether it must not repeat): accesses not yet checked
        self._unchecked: list[tuple[Tensor, bool]] = []
        # check CPU indices as if they were on a GPU (later), to exercise that path without one
        self._defer_checks = False
        self._messages = torch.zeros(0, num_message_entries)
        self._set(self._alloc(num_examples, torch.device("cpu"), torch.float32, zero=True))

    # ------------------------------------------------------------------ storage
    @property
    def messages(self) -> Tensor:
        """``(num_local, M)`` messages of the slots this process holds.

        Reading them completes pending writes and raises on indices whose checks were deferred
        (:meth:`check`).
        """
        self.flush()
        self.check()
        return self._messages

    @messages.setter
    def messages(self, value: Tensor) -> None:
        if (
            not isinstance(value, Tensor)
            or value.dim() != 2
            or value.shape[1] != self.num_message_entries
        ):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"messages must have shape (num_local, {self.num_message_entries}), got {got}"
            )
        if value.shape[0] != self.num_local:
            raise ValueError(
                f"messages must have {self.num_local} rows (the slots this process holds), got "
                f"{value.shape[0]}; use resize() to change the number of slots"
            )
        self.flush()
        self.check()
        self._set(value)

    def _pinned(self) -> bool:
        return self.location == "pinned" and torch.cuda.is_available()

    def _alloc(self, rows: int, device: torch.device, dtype: torch.dtype, zero: bool) -> Tensor:
        if self.location == "pinned":
            out = torch.empty(
                rows, self.num_message_entries, dtype=dtype, pin_memory=self._pinned()
            )
            return out.zero_() if zero else out
        make = torch.zeros if zero else torch.empty
        return make(rows, self.num_message_entries, dtype=dtype, device=device)

    def _set(self, tensor: Tensor) -> None:
        self._messages = tensor
        self.peak_bytes = max(self.peak_bytes, tensor.numel() * tensor.element_size())

    @property
    def num_examples(self) -> int:
        """Number of slots in all shards together (the training set's size)."""
        return self._num_examples

    @property
    def num_local(self) -> int:
        """Number of slots this process holds."""
        return int(self._messages.shape[0])

    @property
    def is_sharded(self) -> bool:
        """Whether the slots are split across more than one process."""
        return self.world_size > 1

    def _apply(self, fn: Any, recurse: bool = True) -> MessageStore:
        super()._apply(fn, recurse)
        if self.location == "device":  # a "pinned" store stays in host memory
            self.flush()
            self.check()  # the unchecked indices are on the old device
            self._set(fn(self._messages))
        return self

    # ------------------------------------------------------------------ shape
    def shard(self, rank: int, world_size: int) -> None:
        """Keep only the slots of the examples ``i`` with ``i % world_size == rank``.

        The messages of those slots are kept (this rank's part of a whole store). Sharding a
        store again with the same ``(rank, world_size)`` does nothing.

        Args:
            rank: this process's rank.
            world_size: number of processes.

        Raises:
            ValueError: ``rank`` out of range.
            RuntimeError: the store is already sharded another way (re-sharding needs all
                shards: save a checkpoint, which holds them, and load it).
        """
        check_count("world_size", world_size, 1)
        check_count("rank", rank)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size = {world_size}, got {rank}")
        if (rank, world_size) == (self.rank, self.world_size):
            return
        if self.is_sharded:
            raise RuntimeError(
                f"the message store holds shard {self.rank} of {self.world_size} (it was sharded "
                f"across {self.world_size} processes) and cannot become shard {rank} of "
                f"{world_size} in place: the other shards live in other processes. Save a "
                "checkpoint (it holds every shard) and resume from it on the new number of "
                "processes; it is re-sharded on loading"
            )
        self.flush()
        self.check()
        old = self._messages
        rows = shard_size(self._num_examples, world_size, rank)
        new = self._alloc(rows, old.device, old.dtype, zero=False)
        new.copy_(old[rank::world_size])
        self.rank, self.world_size = rank, world_size
        self._set(new)

    def unshard(self, full: Tensor) -> None:
        """Become a whole store again, holding every example's messages.

        Args:
            full: ``(num_examples, M)`` messages of all examples in example order (e.g. from
                :func:`structlight.distributed.gather_store`); used as the storage if it is on
                the storage's device with its dtype, else copied there.

        Raises:
            ValueError: ``full`` has the wrong shape.
        """
        if (
            not isinstance(full, Tensor)
            or full.dim() != 2
            or full.shape[1] != self.num_message_entries
        ):
            got = tuple(full.shape) if isinstance(full, Tensor) else type(full).__name__
            raise ValueError(
                f"expected a (num_examples, {self.num_message_entries}) tensor, got {got}"
            )
        self.flush()
        self.check()
        old = self._messages
        adopt = full.device == old.device and full.dtype == old.dtype and full.is_contiguous()
        if adopt and self._pinned():
            adopt = full.is_pinned()
        if adopt:
            new = full.detach()
        else:
            new = self._alloc(int(full.shape[0]), old.device, old.dtype, zero=False)
            new.copy_(full)
        self.rank, self.world_size, self._num_examples = 0, 1, int(full.shape[0])
        del old
        self._set(new)

    def resize(self, num_examples: int) -> None:
        """Change the number of slots (of all shards together), keeping the messages that remain.

        New slots start at zero. Device and dtype are kept.
        """
        check_count("num_examples", num_examples)
        if num_examples == self._num_examples:
            return
        self.flush()
        self.check()
        old = self._messages
        rows = shard_size(num_examples, self.world_size, self.rank)
        new = self._alloc(rows, old.device, old.dtype, zero=True)
        keep = min(rows, old.shape[0])
        new[:keep] = old[:keep]
        self._num_examples = num_examples
        self._set(new)

    def owned_indices(self) -> Tensor:
        """``(num_local,)`` the example indices of the local slots, in slot order."""
        return torch.arange(self.rank, self._num_examples, self.world_size)

    # ------------------------------------------------------------------ access
    #: The example indices of a batch: :func:`structlight.store_checks.example_indices`.
    index_from = staticmethod(example_indices)

    def gather(self, index: Tensor, device: torch.device | str | None = None) -> Tensor:
        """The stored messages of some examples.

        Args:
            index: ``(B,)`` integer example indices (of this rank's shard when sharded).
            device: where to return them; None: the storage's device. From a ``"pinned"``
                store to a CUDA device the copy is asynchronous (``non_blocking``).

        Returns:
            ``(B, M)``, a copy. For a GPU index whose check is deferred (see the module's
            docstring), the rows of invalid indices are those of valid slots until
            :meth:`check` raises.

        Raises:
            IndexError: an index is out of range, belongs to another rank's shard (GPU indices:
                later, from :meth:`check`), or the store is empty.
        """
        self.flush()
        local, _ = self._local_index(index)
        target = self._messages.device if device is None else torch.device(device)
        if self._pinned() and target.type == "cuda":
            staging = torch.empty(
                local.numel(), self.num_message_entries, dtype=self._messages.dtype, pin_memory=True
            )
            torch.index_select(self._messages, 0, local, out=staging)
            return staging.to(target, non_blocking=True)
        return self._messages.index_select(0, local).to(target)

    def scatter(self, index: Tensor, msgs: Tensor) -> None:
        """Write back the messages of some examples.

        From CUDA into a ``"pinned"`` store the copy runs on a side stream and the write
        completes before the next read of the store (:meth:`flush`). For a GPU index whose
        check is deferred (see the module's docstring), the rows of invalid indices are not
        written (a valid row whose slot an invalid index is clamped to may be lost, and a
        repeated index leaves its slot with one of its rows) until :meth:`check` raises.

        Args:
            index: ``(B,)`` integer example indices, without repeats.
            msgs: ``(B, M)`` messages (detached before storing), on any device.

        Raises:
            IndexError: an index is out of range or belongs to another rank's shard (GPU
                indices: later, from :meth:`check`).
            ValueError: shapes disagree, or an index repeats within the batch (GPU indices:
                later, from :meth:`check`).
        """
        index = as_index(index)
        b = index.numel()
        if msgs.dim() != 2 or msgs.shape != (b, self.num_message_entries):
            raise ValueError(
                f"messages must have shape ({b}, {self.num_message_entries}) for {b} indices, got "
                f"{tuple(msgs.shape)}"
            )
        local, ok = self._local_index(index, write=True)
        src = msgs.detach().to(self._messages.dtype)
        if self._pinned() and src.is_cuda:
            # (a sweep's output is a transposed view: made contiguous here, on the compute
            # stream, so that the side stream's copy to pinned memory is one plain memcpy)
            self._scatter_async(local, src.contiguous())
            return
        self.flush()
        src = src.to(self._messages.device)
        if ok is not None:  # invalid rows rewrite their (clamped) slot's current messages
            src = torch.where(ok[:, None], src, self._messages.index_select(0, local))
        self._messages.index_copy_(0, local, src)

    def _scatter_async(self, local: Tensor, src: Tensor) -> None:
        current = torch.cuda.current_stream(src.device)
        if self._copy_stream is None or self._copy_stream.device != src.device:
            self._copy_stream = torch.cuda.Stream(device=src.device)
        stream = self._copy_stream
        stream.wait_stream(current)  # src is ready on the compute stream
        host = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        with torch.cuda.stream(stream):
            host.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        src.record_stream(stream)  # keep src's memory until the copy has run
        self._pending.append((local, host, done))

    def flush(self) -> None:
        """Complete the pending asynchronous writes (a no-op unless ``"pinned"`` on CUDA)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for local, host, done in pending:
            done.synchronize()
            self._messages.index_copy_(0, local, host)

    def extra_repr(self) -> str:
        parts = [
            f"num_examples={self._num_examples}",
            f"num_message_entries={self.num_message_entries}",
        ]
        if self.is_sharded:
            parts.append(f"shard={self.rank}/{self.world_size}, num_local={self.num_local}")
        if self.location != "device":
            parts.append(f"location={self.location!r}")
        return ", ".join(parts)

"""Per-example message storage for blended learning and inference (DESIGN §2).

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
repeated within the batch. Where the indices are (or become) a CPU tensor, e.g. with a store in
host memory, the checks run at once, for free. Indices on a GPU, with the store on the GPU (the
usual case under Lightning, which moves the whole batch, ``index`` included, before the step),
are checked *later*, so that a step needs no device sync: until then they are clamped to valid
slots (nothing is read or written out of bounds, and an invalid index changes no slot). They
are read back and checked together by :meth:`MessageStore.check`, which raises the error an
immediate check would have raised; it runs on every read of :attr:`MessageStore.messages` (so
before every checkpoint), before the store changes shape or device, and at the latest after
:attr:`MessageStore.check_interval` unchecked accesses.

The messages are not a registered buffer (so ``DistributedDataParallel`` never broadcasts one
rank's messages over the others'), but they are in the ``state_dict`` under ``messages``, as a
buffer would be. A sharded store saves its own shard there, plus ``shard = [rank, world_size,
num_examples]``; :class:`structlight.DeepStructuredModel` replaces both in its checkpoints by the
full ``(num_examples, M)`` tensor in example order (gathered from every rank), so a checkpoint
looks the same whatever the number of processes that wrote it. Loading a full tensor into a
sharded store keeps this rank's rows: resuming on another number of processes re-shards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["MessageStore", "StoreLocation", "shard_size"]

StoreLocation = Literal["device", "pinned"]
_LOCATIONS = ("device", "pinned")


def _check_count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _repeats(index: Tensor) -> bool:
    """Whether a ``(B,)`` CPU integer tensor holds a value twice."""
    b = index.numel()
    if b < 2:
        return False
    # (a Python set is the faster check for small batches, a sort for large ones)
    distinct = len(set(index.tolist())) if b <= 256 else torch.unique(index).numel()
    return distinct != b


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


class MessageStore(nn.Module):
    """One slot of ``M`` message entries per training example, optionally sharded across ranks.

    Args:
        num_messages: ``M``, the message entries per example (``ConvexBP.num_message_entries``).
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

    check_interval: int = 256

    def __init__(
        self, num_messages: int, num_examples: int = 0, location: StoreLocation = "device"
    ) -> None:
        super().__init__()
        _check_count("num_messages", num_messages)
        _check_count("num_examples", num_examples)
        if location not in _LOCATIONS:
            raise ValueError(f"location must be one of {_LOCATIONS}, got {location!r}")
        self.num_messages = num_messages
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
        self._messages = torch.zeros(0, num_messages)
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
        if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != self.num_messages:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"messages must have shape (num_local, {self.num_messages}), got {got}"
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
            out = torch.empty(rows, self.num_messages, dtype=dtype, pin_memory=self._pinned())
            return out.zero_() if zero else out
        make = torch.zeros if zero else torch.empty
        return make(rows, self.num_messages, dtype=dtype, device=device)

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
        _check_count("world_size", world_size, 1)
        _check_count("rank", rank)
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
        if not isinstance(full, Tensor) or full.dim() != 2 or full.shape[1] != self.num_messages:
            got = tuple(full.shape) if isinstance(full, Tensor) else type(full).__name__
            raise ValueError(f"expected a (num_examples, {self.num_messages}) tensor, got {got}")
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
        _check_count("num_examples", num_examples)
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
    @staticmethod
    def index_from(batch: Mapping[str, Any], key: str = "index") -> Tensor:
        """The example indices of a batch.

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
                f"blended training needs dict batches with an {key!r} entry, got "
                f"{type(batch).__name__}"
            )
        if key not in batch:
            raise KeyError(
                f"blended training keeps messages per training example and needs each example's "
                f"dataset index in batch[{key!r}], but the batch has keys {sorted(batch)}; "
                f"make the dataset return its index under {key!r}"
            )
        index = batch[key]
        return torch.as_tensor(index)

    @staticmethod
    def _as_index(index: Tensor) -> Tensor:
        """``index`` as a ``(B,)`` integer tensor, where it is."""
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
            raise TypeError(f"example indices must be integers, got dtype {index.dtype}")
        if index.dim() != 1:
            raise ValueError(f"example indices must have shape (B,), got {tuple(index.shape)}")
        return index

    def _check_host(self, index: Tensor, unique: bool) -> None:
        """Check ``(B,)`` long CPU example indices (non-empty): no device sync is involved.

        Raises:
            IndexError: an index is out of range or belongs to another rank's shard.
            ValueError: ``unique`` and an index repeats.
        """
        n = self._num_examples
        lo, hi = torch.aminmax(index)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= n:
            raise IndexError(
                f"example index out of range: got indices in [{lo}, {hi}], but the message store "
                f"has {n} slots (valid indices 0..{n - 1}); is the store sized for the training "
                "set, and do the indices count from 0?"
            )
        w = self.world_size
        if w > 1:
            foreign = index.remainder(w) != self.rank
            if bool(foreign.any()):
                i = int(index[foreign][0])
                raise IndexError(
                    f"example {i} belongs to the message store's shard on rank {i % w}, but rank "
                    f"{self.rank} got it: every example must stay on one rank (example i on rank "
                    f"i % {w}) for the whole run. The training loader must sample with "
                    "structlight.distributed.ShardedSampler; DeepStructuredModel installs it under "
                    "DDP unless Trainer(use_distributed_sampler=False)"
                )
        if unique and _repeats(index):
            raise ValueError(
                "an example index repeats within the batch; each example may appear once per "
                "batch (sample without replacement)"
            )

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
            IndexError, ValueError: see :meth:`_check_host` (at once for checked indices), or
                the store has no slots.
        """
        index = self._as_index(index)
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
        if self.num_local == 0:  # no slot to fall back on: every index is invalid
            self._check_host(index.cpu(), write)
        if len(self._unchecked) >= self.check_interval:
            self.check()
        index = index.to(device)
        self._unchecked.append((index.clone(), write))
        local = index.div(w, rounding_mode="floor") if self.is_sharded else index
        safe = local.clamp(0, self.num_local - 1)
        if not write:
            return safe, None
        ok = safe == local
        if self.is_sharded:
            ok &= index.remainder(w) == self.rank
        return safe, ok

    def check(self) -> None:
        """Check the example indices whose checks were deferred (indices on a GPU).

        One device sync if there are any; a no-op otherwise. Runs on every read of
        :attr:`messages`, before the store changes shape or device, and at the latest after
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
                local.numel(), self.num_messages, dtype=self._messages.dtype, pin_memory=True
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
        index = self._as_index(index)
        b = index.numel()
        if msgs.dim() != 2 or msgs.shape != (b, self.num_messages):
            raise ValueError(
                f"messages must have shape ({b}, {self.num_messages}) for {b} indices, got "
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

    # ------------------------------------------------------------------ state dict
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
        key, shard_key = prefix + "messages", prefix + "shard"
        for k in (key, shard_key):
            if k in unexpected_keys:
                unexpected_keys.remove(k)
        incoming = state_dict.get(key)
        if incoming is None:
            if strict:
                missing_keys.append(key)
            return
        if not isinstance(incoming, Tensor) or incoming.dim() != 2:
            got = tuple(incoming.shape) if isinstance(incoming, Tensor) else type(incoming).__name__
            error_msgs.append(f"{key}: expected a (num_examples, M) tensor, got {got}")
            return
        if incoming.shape[1] != self.num_messages:
            error_msgs.append(
                f"{key}: the checkpoint stores {incoming.shape[1]} message entries per "
                f"example, this model's graph has {self.num_messages} (a different graph?)"
            )
            return
        info = state_dict.get(shard_key)
        if info is not None:
            rank, world, n = (int(v) for v in torch.as_tensor(info).tolist())
            if (rank, world) != (self.rank, self.world_size) or incoming.shape[0] != shard_size(
                n, world, rank
            ):
                error_msgs.append(
                    f"{key}: this state_dict holds only shard {rank} of {world} of the messages "
                    f"(one process's part of a run over {world} processes); this store is shard "
                    f"{self.rank} of {self.world_size}. Save through Lightning "
                    "(trainer.save_checkpoint / ModelCheckpoint: DeepStructuredModel gathers every "
                    "shard into the checkpoint), or structlight.distributed.gather_store, to get "
                    "all messages"
                )
                return
            local = incoming
        else:  # the whole store, in example order
            n = int(incoming.shape[0])
            local = incoming[self.rank :: self.world_size] if self.is_sharded else incoming
        self.flush()
        self.check()
        old = self._messages
        new = self._alloc(int(local.shape[0]), old.device, old.dtype, zero=False)
        with torch.no_grad():
            new.copy_(local)
        self._num_examples = n
        self._set(new)

    def extra_repr(self) -> str:
        parts = [f"num_examples={self._num_examples}", f"num_messages={self.num_messages}"]
        if self.is_sharded:
            parts.append(f"shard={self.rank}/{self.world_size}, num_local={self.num_local}")
        if self.location != "device":
            parts.append(f"location={self.location!r}")
        return ", ".join(parts)

"""Batches of variable-size examples: padding collate and length-grouped sampling.

Examples of different sizes (words of 2 to 14 letters, sequences of per-position features) are
batched by padding every per-position tensor to a common size ``N`` along its first dimension:

* :func:`pad_collate` (and :class:`PadCollate`, its picklable, configured form for
  ``DataLoader(collate_fn=...)``) pads a list of examples to the batch's longest example or to
  a fixed ``N``, fills the padding with 0 (inputs) and :data:`PAD_LABEL` (-100, labels), and
  adds ``length``, ``(B,)`` int64: example ``i`` occupies positions ``0 .. length[i] - 1``.
  Per-example scalars such as ``index`` (the message store's key) are stacked as usual.
* :class:`LengthGroupedSampler` orders each epoch so that consecutive batches hold examples of
  similar length (bucketing), so fewer positions are padding when batches are padded to their
  longest example. Like :class:`structlight.sampling.EpochShuffleSampler` its order is a
  function of ``(seed, epoch)`` and it can skip the first examples of an epoch
  (``fast_forward``), so a run resumed from a checkpoint written in the middle of an epoch
  sees the same batches as an uninterrupted one; it is also a
  :class:`structlight.distributed.ShardedSampler`, so under data parallelism each process
  groups the lengths of its own shard of the examples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from structlight.distributed import ShardedSampler
from structlight.sampling import default_seed

__all__ = ["PAD_LABEL", "LengthGroupedSampler", "PadCollate", "pad_collate"]

PAD_LABEL = -100
"""Label at padding positions (the heads' ``IGNORE_LABEL``: losses and metrics skip it)."""


def _example_length(example: Mapping[str, Any], keys: Sequence[str], position: int) -> int:
    lengths = {k: int(example[k].shape[0]) for k in keys}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"pad_collate: example {position} of the batch has per-position tensors of different "
            f"lengths {lengths}; every key in sequence_keys must have the example's length as "
            "its first dimension"
        )
    return next(iter(lengths.values()))


def pad_collate(
    batch: Sequence[Mapping[str, Any]],
    pad_to: int | None = None,
    sequence_keys: Sequence[str] | None = None,
    label_key: str = "label",
    length_key: str = "length",
    pad_values: Mapping[str, float | int] | None = None,
) -> dict[str, Tensor]:
    """Pad variable-length examples to one size and stack them, adding their lengths.

    Args:
        batch: examples, each a mapping of tensors (or arrays): per-position ones of shape
            ``(L_i, ...)`` (e.g. ``image (L_i, 1, 28, 28)``, ``label (L_i,)``), and
            per-example ones of any shape (e.g. ``index ()``).
        pad_to: pad to this many positions (e.g. a model's fixed ``N_max``); None: to the
            batch's longest example.
        sequence_keys: the per-position keys; None: every key whose value has at least one
            dimension (0-dimensional values are per-example).
        label_key: the key padded with :data:`PAD_LABEL` (-100) rather than 0.
        length_key: the key the lengths are written to.
        pad_values: padding value per key, overriding the defaults (0; -100 for ``label_key``).

    Returns:
        A dict with every key of the examples, per-position ones ``(B, N, ...)`` (padded along
        dimension 1), per-example ones stacked ``(B, ...)``, and ``length_key``: ``(B,)``
        int64, each example's length (``1 <= length <= N``).

    Raises:
        ValueError: an empty batch, examples with different keys, an example of length 0,
            per-position tensors of one example with different lengths, an example longer than
            ``pad_to``, or a ``length_key`` the examples already have.
    """
    if len(batch) == 0:
        raise ValueError("pad_collate: the batch is empty")
    first = batch[0]
    if not isinstance(first, Mapping):
        raise TypeError(
            f"pad_collate: examples must be mappings of tensors (dicts), got {type(first).__name__}"
        )
    names = list(first)
    if length_key in names:
        raise ValueError(
            f"pad_collate: the examples already have a {length_key!r} entry; pass another "
            "length_key"
        )
    for i, example in enumerate(batch):
        if list(example) != names:
            raise ValueError(
                f"pad_collate: example {i} has keys {list(example)}, example 0 has {names}"
            )
    values = [{k: torch.as_tensor(example[k]) for k in names} for example in batch]
    if sequence_keys is None:
        seq = [k for k in names if values[0][k].dim() > 0]
    else:
        seq = list(sequence_keys)
        missing = [k for k in seq if k not in names]
        if missing:
            raise ValueError(
                f"pad_collate: sequence_keys {missing} are not in the examples {names}"
            )
    if not seq:
        raise ValueError(
            f"pad_collate: no per-position tensors among {names} (all are 0-dimensional)"
        )
    lengths = [_example_length(v, seq, i) for i, v in enumerate(values)]
    short = [i for i, n in enumerate(lengths) if n < 1]
    if short:
        raise ValueError(f"pad_collate: example {short[0]} of the batch has length 0")
    longest = max(lengths)
    if pad_to is None:
        size = longest
    else:
        if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
            raise ValueError(f"pad_collate: pad_to must be None or an int >= 1, got {pad_to!r}")
        if longest > pad_to:
            i = lengths.index(longest)
            raise ValueError(
                f"pad_collate: example {i} of the batch has length {longest}, more than "
                f"pad_to={pad_to}; raise pad_to (the model's number of positions) or leave out "
                "longer examples"
            )
        size = pad_to
    fill = {label_key: PAD_LABEL}
    fill.update(pad_values or {})
    out: dict[str, Tensor] = {}
    for k in names:
        items = [v[k] for v in values]
        if k not in seq:
            shapes = {tuple(t.shape) for t in items}
            if len(shapes) > 1:
                raise ValueError(
                    f"pad_collate: {k!r} is not in sequence_keys {seq} but has different shapes "
                    f"across the batch {sorted(shapes)}; add it to sequence_keys to pad it"
                )
            out[k] = torch.stack(items)
            continue
        shape = items[0].shape[1:]
        for i, t in enumerate(items):
            if t.shape[1:] != shape or t.dtype != items[0].dtype:
                raise ValueError(
                    f"pad_collate: {k!r} of example {i} is {t.dtype} {tuple(t.shape)}, of "
                    f"example 0 {items[0].dtype} {tuple(items[0].shape)}; only the first "
                    "dimension may differ"
                )
        padded = torch.full((len(items), size, *shape), fill.get(k, 0), dtype=items[0].dtype)
        for i, t in enumerate(items):
            padded[i, : t.shape[0]] = t
        out[k] = padded
    out[length_key] = torch.tensor(lengths, dtype=torch.int64)
    return out


class PadCollate:
    """:func:`pad_collate` with fixed settings, for ``DataLoader(collate_fn=PadCollate(...))``.

    A plain object (not a closure), so it pickles into ``DataLoader`` worker processes.

    Args:
        pad_to, sequence_keys, label_key, length_key, pad_values: see :func:`pad_collate`.
    """

    def __init__(
        self,
        pad_to: int | None = None,
        sequence_keys: Sequence[str] | None = None,
        label_key: str = "label",
        length_key: str = "length",
        pad_values: Mapping[str, float | int] | None = None,
    ) -> None:
        if pad_to is not None and (
            isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1
        ):
            raise ValueError(f"PadCollate: pad_to must be None or an int >= 1, got {pad_to!r}")
        self.pad_to = pad_to
        self.sequence_keys = None if sequence_keys is None else tuple(sequence_keys)
        self.label_key = label_key
        self.length_key = length_key
        self.pad_values = dict(pad_values or {})

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        return pad_collate(
            batch,
            pad_to=self.pad_to,
            sequence_keys=self.sequence_keys,
            label_key=self.label_key,
            length_key=self.length_key,
            pad_values=self.pad_values,
        )

    def __repr__(self) -> str:
        return f"PadCollate(pad_to={self.pad_to}, label_key={self.label_key!r})"


def _check_lengths(lengths: Any) -> np.ndarray:
    arr = np.asarray(lengths.cpu() if isinstance(lengths, Tensor) else lengths)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(
            "LengthGroupedSampler: lengths must be a 1-D sequence of integers (one per example), "
            f"got {arr.dtype} of shape {arr.shape}"
        )
    if arr.size and arr.min() < 0:
        raise ValueError(
            f"LengthGroupedSampler: lengths must be >= 0, got {int(arr.min())} at example "
            f"{int(arr.argmin())}"
        )
    return arr.astype(np.int64)


class LengthGroupedSampler(ShardedSampler):
    """Batches of similar lengths, in an order that depends only on ``(seed, epoch)``.

    An epoch's order is made in four steps, all from one generator seeded by ``seed + epoch``:

    1. this process's examples in random order (the permutation
       :class:`structlight.distributed.ShardedSampler` draws; with one process, that of
       :class:`structlight.sampling.EpochShuffleSampler`);
    2. cut into windows of ``window`` batches (``window * batch_size`` examples), each sorted
       by length (stable: equal lengths stay in random order);
    3. cut into batches of ``batch_size``;
    4. the full batches in random order, the one incomplete batch (if any) last.

    A larger window gives batches of more equal lengths (less padding) and less random batch
    composition; ``window=None`` sorts the whole epoch. The sampler yields example indices;
    use it with the same ``batch_size`` in the ``DataLoader``
    (``DataLoader(data, batch_size=b, sampler=LengthGroupedSampler(lengths, b))``), whose
    batching then recovers the batches above. Because every batch before the last is full,
    :meth:`fast_forward` (skip the first ``k * batch_size`` examples of an epoch, as
    :class:`structlight.checkpointing.ResumeState` does on a mid-epoch resume) skips exactly
    the first ``k`` batches.

    Under data parallelism pass ``num_replicas`` and ``rank`` (a datamodule reads them from
    ``self.trainer``): example ``i`` stays on rank ``i % num_replicas``, where the message
    store keeps its messages, and each rank groups its own examples. With other values than
    the trainer's, the training loader's sampler is replaced by a plain
    :class:`~structlight.distributed.ShardedSampler` and the grouping is lost.

    Args:
        lengths: ``(n,)`` the length of every example of the dataset.
        batch_size: examples per batch; must be the ``DataLoader``'s.
        seed: base seed; None: :func:`structlight.sampling.default_seed` (``PL_GLOBAL_SEED``,
            else 0).
        window: batches per sorted window (>= 1), or None for the whole epoch.
        shuffle: False: no randomness (examples in ascending order, sorted by length within
            windows, batches in that order), e.g. for evaluation.
        num_replicas: number of data-parallel processes.
        rank: this process.

    Raises:
        ValueError: lengths that are not a 1-D sequence of integers >= 0, a ``batch_size`` or
            ``window`` < 1, or bad ``num_replicas``/``rank`` (see ``ShardedSampler``).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | Tensor,
        batch_size: int,
        seed: int | None = None,
        window: int | None = 50,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        arr = _check_lengths(lengths)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"LengthGroupedSampler: batch_size must be an int >= 1, got {batch_size!r}"
            )
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 1
        ):
            raise ValueError(
                f"LengthGroupedSampler: window must be None or an int >= 1 (batches per sorted "
                f"window), got {window!r}"
            )
        seed = default_seed() if seed is None else int(seed)
        super().__init__(len(arr), num_replicas, rank, shuffle=shuffle, seed=seed)
        self.lengths = torch.from_numpy(arr)
        self.batch_size = batch_size
        self.window = window

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """An epoch's batches, in order (the current epoch by default; no fast-forward).

        Args:
            epoch: the epoch; None: the current one.

        Returns:
            Lists of example indices, every one of ``batch_size`` except possibly the last.
        """
        e = self.epoch if epoch is None else int(epoch)
        n, w, r = self.num_examples, self.num_replicas, self.rank
        gen = torch.Generator().manual_seed(self.seed + e)
        if self.shuffle:
            order = torch.randperm(n, generator=gen)
            order = order[order.remainder(w) == r]
        else:
            order = torch.arange(r, n, w)
        skip = self.skipped(e)
        if skip:
            order = order[order != skip[0]]
        span = len(order) if self.window is None else self.window * self.batch_size
        sorted_parts = []
        for lo in range(0, len(order), max(span, 1)):
            part = order[lo : lo + span]
            keys = self.lengths[part]
            sorted_parts.append(part[torch.sort(keys, stable=True).indices])
        grouped = torch.cat(sorted_parts) if sorted_parts else order
        chunks = list(torch.split(grouped, self.batch_size))
        full = [c for c in chunks if len(c) == self.batch_size]
        rest = [c for c in chunks if len(c) < self.batch_size]
        if self.shuffle and full:
            full = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
        return [c.tolist() for c in full + rest]

    def __iter__(self) -> Iterator[int]:
        order = [i for batch in self.batches() for i in batch]
        return iter(self._apply_fast_forward(order))

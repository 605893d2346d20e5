"""Training samplers whose order is a function of ``(seed, epoch)``, so a resumed run repeats it.

:class:`EpochShuffleSampler` draws one permutation per epoch from a generator seeded by
``seed + epoch`` (Lightning calls :meth:`~EpochShuffleSampler.set_epoch` at every epoch). Unlike
:class:`torch.utils.data.RandomSampler`, which draws its permutation from the global random
number generator, the order does not depend on what else consumed random numbers before the
epoch began, so a run resumed from a checkpoint visits the examples in the same order as an
uninterrupted one.

Both it and :class:`structlight.distributed.ShardedSampler` (its data-parallel counterpart) can
skip the first examples of one epoch (:meth:`~EpochShuffleSampler.fast_forward`), which is how
:class:`structlight.checkpointing.ResumeState` continues a run from a checkpoint written in the
middle of an epoch without visiting an example twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["EpochShuffleSampler", "FastForwardMixin", "default_seed"]

#: The environment variable :func:`lightning.pytorch.seed_everything` sets.
SEED_ENV = "PL_GLOBAL_SEED"


def default_seed() -> int:
    """The shuffling seed when none is given: ``PL_GLOBAL_SEED`` (set by ``seed_everything``) or 0.

    Raises:
        ValueError: ``PL_GLOBAL_SEED`` is set but is not an integer.
    """
    value = os.environ.get(SEED_ENV, "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"the environment variable {SEED_ENV} must be an integer (seed_everything sets it), "
            f"got {value!r}"
        ) from None


class FastForwardMixin:
    """Skip the first examples of one epoch's order (a resume in the middle of that epoch).

    A sampler using it calls :meth:`_apply_fast_forward` on its epoch's full order in
    ``__iter__``; ``__len__`` stays the full epoch length (Lightning counts the epoch's batches
    from it and starts the resumed epoch at the batch it had reached).
    """

    epoch: int
    _skip: tuple[int, int] | None = None

    def fast_forward(self, epoch: int, num_examples: int) -> None:
        """Leave out the first ``num_examples`` examples of ``epoch``'s order, once.

        Args:
            epoch: the epoch the skip applies to; other epochs are unaffected.
            num_examples: examples of that epoch already trained on.

        Raises:
            ValueError: a negative count or epoch.
        """
        if epoch < 0 or num_examples < 0:
            raise ValueError(
                f"fast_forward expects epoch >= 0 and num_examples >= 0, got {epoch}, {num_examples}"
            )
        self._skip = (int(epoch), int(num_examples)) if num_examples else None

    def _apply_fast_forward(self, order: list[int]) -> list[int]:
        if self._skip is None or self._skip[0] != self.epoch:
            return order
        skip = self._skip[1]
        self._skip = None  # once: the next pass over this epoch is whole again
        return order[skip:]


class EpochShuffleSampler(FastForwardMixin, Sampler[int]):
    """A random permutation per epoch, seeded by ``seed + epoch`` (reproducible across resumes).

    Args:
        data_source: the dataset (only its length is used) or the number of examples.
        seed: base seed; None: :func:`default_seed` (``PL_GLOBAL_SEED``, else 0), read here.

    Raises:
        ValueError: a negative number of examples.
    """

    def __init__(self, data_source: Sized | int, seed: int | None = None) -> None:
        n = data_source if isinstance(data_source, int) else len(data_source)
        if n < 0:
            raise ValueError(f"EpochShuffleSampler needs a number of examples >= 0, got {n}")
        self.num_examples = int(n)
        self.seed = default_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> list[int]:
        """The full order of an epoch (the current one by default)."""
        e = self.epoch if epoch is None else epoch
        gen = torch.Generator().manual_seed(self.seed + e)
        return torch.randperm(self.num_examples, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._apply_fast_forward(self.order()))

    def __len__(self) -> int:
        return self.num_examples

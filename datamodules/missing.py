"""Training labels made partly missing, reproducibly, to study learning with missing labels.

:class:`MissingLabels` says which training examples lose labels and how many each loses;
:class:`HiddenLabels` wraps a training split with it. Three ways of handling the hidden labels:

* ``"latent"``: they become -100 (unobserved), for the latent loss
  (``StructuredHead(missing_labels=True)``, ``docs/missing-labels.md``);
* ``"discard"``: the examples that lost labels are dropped (the other examples are renumbered
  ``0..n-1`` for the message store);
* ``"negative"``: they become ``negative_label`` (0: "tag absent" for multi-label tagging), the
  common practice of reading a missing tag as a negative one;
* ``"none"``: nothing is hidden (the fully labelled ceiling, with the same code path).

The choice depends on ``seed`` alone (and the split's size and label shape), never on the
handling, so the three ways see the same examples and the same hidden positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["HiddenLabels", "MissingLabels"]

Handling = Literal["latent", "discard", "negative", "none"]
_HANDLINGS = ("latent", "discard", "negative", "none")

#: The label of an unobserved variable (the library's ``IGNORE_LABEL``).
UNOBSERVED = -100


@dataclass(frozen=True)
class MissingLabels:
    """Which training labels go missing.

    Args:
        fraction: the share of training examples that lose labels, in ``[0, 1]``.
        per_example: labels hidden in each of those (distinct positions), ``>= 1``.
        handling: ``"latent"``, ``"discard"``, ``"negative"`` or ``"none"`` (module docs).
        seed: the draw's seed.
        negative_label: the label ``"negative"`` writes.
    """

    fraction: float = 0.5
    per_example: int = 2
    handling: Handling = "latent"
    seed: int = 0
    negative_label: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.fraction) <= 1.0:
            raise ValueError(f"MissingLabels.fraction must be in [0, 1], got {self.fraction!r}")
        if not isinstance(self.per_example, int) or self.per_example < 1:
            raise ValueError(
                f"MissingLabels.per_example must be an integer >= 1, got {self.per_example!r}"
            )
        if self.handling not in _HANDLINGS:
            raise ValueError(
                f"MissingLabels.handling must be one of {_HANDLINGS}, got {self.handling!r}"
            )

    def draw(self, num_examples: int, num_vars: int) -> np.ndarray:
        """``(num_examples, num_vars)`` bool: the hidden labels.

        Raises:
            ValueError: ``per_example`` larger than ``num_vars``.
        """
        if self.per_example > num_vars:
            raise ValueError(
                f"MissingLabels.per_example = {self.per_example}, but examples have only "
                f"{num_vars} labels"
            )
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(num_examples, int(round(self.fraction * num_examples)), replace=False)
        hidden = np.zeros((num_examples, num_vars), dtype=bool)
        for i in np.sort(chosen):
            hidden[i, rng.choice(num_vars, self.per_example, replace=False)] = True
        return hidden


class HiddenLabels(Dataset):
    """A training split with some labels hidden (:class:`MissingLabels`).

    Args:
        base: a dataset of dict items (``label`` ``(N,)``, ``index`` ``()``) with a ``labels``
            attribute ``(n, N)``, and optionally ``__getitems__`` returning a stacked batch
            with a ``stacked`` dict (as :class:`~datamodules.word50.Word50Dataset` does).
        config: what to hide and how to handle it.

    Attributes:
        hidden: ``(n, N)`` bool, the hidden labels of ``base`` (before any discarding).
        keep: ``(len(self),)`` the examples of ``base`` served, in order.
    """

    def __init__(self, base: Any, config: MissingLabels) -> None:
        labels = np.asarray(base.labels)
        if labels.ndim != 2:
            raise ValueError(
                f"hiding labels needs fixed-size examples: labels of shape (n, N), got "
                f"{labels.shape}"
            )
        self.base, self.config = base, config
        self.hidden = (
            np.zeros(labels.shape, dtype=bool)
            if config.handling == "none"
            else config.draw(*labels.shape)
        )
        if config.handling == "discard":
            self.keep = np.flatnonzero(~self.hidden.any(1))
        else:
            self.keep = np.arange(labels.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """``(len(self), N)`` the labels served (-100 or ``negative_label`` where hidden)."""
        labels = np.asarray(self.base.labels).astype(np.int64)[self.keep]
        return np.where(self.hidden[self.keep], self._fill(), labels)

    def _fill(self) -> int:
        return self.config.negative_label if self.config.handling == "negative" else UNOBSERVED

    def __len__(self) -> int:
        return len(self.keep)

    def _fix(self, batch: dict[str, torch.Tensor], positions: np.ndarray) -> None:
        hide = torch.from_numpy(self.hidden[self.keep[positions]])
        batch["label"] = batch["label"].masked_fill(hide, self._fill())
        batch["index"] = torch.from_numpy(positions.astype(np.int64))

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        pos = int(i) % n
        item = dict(self.base[int(self.keep[pos])])
        if "label" not in item:  # an item the data set skips (an unreadable image)
            return item
        hide = torch.from_numpy(self.hidden[self.keep[pos]])
        item["label"] = torch.as_tensor(item["label"]).masked_fill(hide, self._fill())
        item["index"] = torch.tensor(pos, dtype=torch.long)
        return item

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A whole batch: the base's stacked batch with the labels and indices fixed."""
        pos = np.asarray(indices, dtype=np.int64) % max(len(self), 1)
        if not hasattr(self.base, "__getitems__"):
            return [self[int(i)] for i in pos]
        out = self.base.__getitems__(self.keep[pos].tolist())
        stacked = getattr(out, "stacked", None)
        if stacked is None:
            return [self[int(i)] for i in pos]
        self._fix(stacked, pos)
        return out

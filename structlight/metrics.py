"""Evaluation metrics as ``torchmetrics.Metric`` subclasses (summed states, so correct under DDP).

* Sequences (Word50): :class:`CharacterAccuracy` (fraction of correct positions, the paper's
  "character accuracy", i.e. one minus the Hamming loss) and :class:`WordAccuracy` (exact match
  of the whole sequence, one minus the zero-one loss).
* Multi-label (Flickr): :class:`HammingError`, the wrong decisions as a percentage of all
  decisions (``as_percentage=True``, the paper's Table 2) or as the mean count per example, and
  :class:`ExactMatch` (subset accuracy: every tag of the example right).

All metrics report percentages (0-100) where they are rates, as the paper's tables do.

Variable-size examples: a target of :data:`IGNORE_INDEX` (-100) marks an absent position (a
padding position, where the prediction is -100 too). Such positions are not decisions: the
counts run over the others, and an example with none at all does not count.

Every ``update`` takes an optional ``finite``: ``(B,)`` bool, False for an example whose
potentials were not finite (NaN or infinity). Such predictions are meaningless, so a metric that
saw one computes NaN for the whole epoch instead of a plausible number.
:func:`task_metrics` builds the collection a task type needs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

__all__ = [
    "IGNORE_INDEX",
    "CharacterAccuracy",
    "ExactMatch",
    "HammingError",
    "WordAccuracy",
    "task_metrics",
]

#: The target of an absent position; metrics skip it.
IGNORE_INDEX = -100


class _NonFiniteAware(Metric):
    """Counts examples with non-finite potentials; :meth:`_or_nan` turns a result into NaN."""

    nonfinite: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("nonfinite", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _note(self, finite: Tensor | None) -> None:
        if finite is not None:
            self.nonfinite += (~finite.bool()).sum()

    def _or_nan(self, value: Tensor) -> Tensor:
        return torch.where(self.nonfinite > 0, torch.full_like(value, float("nan")), value)


def _check(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if preds.shape != target.shape or preds.dim() != 2:
        raise ValueError(
            f"preds and target must both have shape (B, N), got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )
    return preds.long(), target.long()


class _CountingAccuracy(_NonFiniteAware):
    """``100 * correct / total`` with both counts summed across processes (correct under DDP).

    Subclasses say what one batch adds to the counts in :meth:`_counts`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _counts(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor, finite: Tensor | None = None) -> None:
        """Accumulate a batch. ``preds``, ``target``: ``(B, N)``; ``finite``: ``(B,)`` or None."""
        correct, total = self._counts(*_check(preds, target))
        self.correct += correct
        self.total += total
        self._note(finite)

    def compute(self) -> Tensor:
        """Accuracy in percent (NaN if an example had non-finite potentials)."""
        return self._or_nan(100.0 * self.correct.float() / self.total.clamp_min(1).float())


class CharacterAccuracy(_CountingAccuracy):
    """Percentage of correctly labelled positions over all (present) positions seen.

    ``update(preds, target)``: both ``(B, N)`` integer labels; targets equal to
    :data:`IGNORE_INDEX` are skipped.
    """

    def _counts(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        present = target != IGNORE_INDEX
        return ((preds == target) & present).sum(), present.sum()


class WordAccuracy(_CountingAccuracy):
    """Percentage of sequences whose every (present) position is correct (exact match).

    ``update(preds, target)``: both ``(B, N)`` integer labels; targets equal to
    :data:`IGNORE_INDEX` are skipped, and a sequence without any other is not counted.
    """

    def _counts(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        present = target != IGNORE_INDEX
        seen = present.any(dim=1)
        right = ((preds == target) | ~present).all(dim=1) & seen
        return right.sum(), seen.sum()


class ExactMatch(WordAccuracy):
    """Percentage of multi-label examples whose every (present) tag decision is correct
    (subset accuracy); the multi-label name of :class:`WordAccuracy`."""


class HammingError(_NonFiniteAware):
    """Wrong decisions of multi-label predictions.

    Args:
        as_percentage: True (default): wrong decisions as a percentage of all decisions (``B * N``
            of them); False: the mean number of wrong decisions per example.

    ``update(preds, target)``: both ``(B, N)`` integer (e.g. 0/1) labels; targets equal to
    :data:`IGNORE_INDEX` are not decisions, and an example without any decision does not count
    as an example.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    wrong: Tensor
    decisions: Tensor
    examples: Tensor

    def __init__(self, as_percentage: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.as_percentage = as_percentage
        self.add_state("wrong", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("decisions", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("examples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, finite: Tensor | None = None) -> None:
        """Accumulate a batch. ``preds``, ``target``: ``(B, N)``; ``finite``: ``(B,)`` or None."""
        preds, target = _check(preds, target)
        present = target != IGNORE_INDEX
        self.wrong += ((preds != target) & present).sum()
        self.decisions += present.sum()
        self.examples += present.any(dim=1).sum()
        self._note(finite)

    def compute(self) -> Tensor:
        """Percentage of wrong decisions, or the mean wrong count per example (NaN if an
        example had non-finite potentials)."""
        if self.as_percentage:
            value = 100.0 * self.wrong.float() / self.decisions.clamp_min(1).float()
        else:
            value = self.wrong.float() / self.examples.clamp_min(1).float()
        return self._or_nan(value)


def task_metrics(task_type: str, prefix: str = "") -> MetricCollection:
    """The metrics of a task type.

    Args:
        task_type: ``"sequence"`` (``char_acc``, ``word_acc``) or ``"multilabel"``
            (``hamming_error`` in percent, ``hamming_count`` per example, ``exact_match`` in
            percent).
        prefix: prepended to the names, e.g. ``"val/"``.

    Returns:
        A ``MetricCollection``; ``update(preds, target)`` with ``(B, N)`` labels.
    """
    if task_type == "sequence":
        metrics: dict[str, Metric] = {"char_acc": CharacterAccuracy(), "word_acc": WordAccuracy()}
    elif task_type == "multilabel":
        metrics = {
            "hamming_error": HammingError(as_percentage=True),
            "hamming_count": HammingError(as_percentage=False),
            "exact_match": ExactMatch(),
        }
    else:
        raise ValueError(f"task_type must be 'sequence' or 'multilabel', got {task_type!r}")
    # compute_groups=False: metrics with coinciding states (e.g. N = 1) must not be merged
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)

"""Metrics: character/word accuracy and Hamming error, accumulated and merged as under DDP."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from structlight.metrics import (
    CharacterAccuracy,
    ExactMatch,
    HammingError,
    WordAccuracy,
    task_metrics,
)

PREDS = torch.tensor([[0, 1, 2], [0, 0, 0], [2, 2, 2], [1, 1, 1]])
TARGET = torch.tensor([[0, 1, 2], [0, 1, 0], [1, 1, 1], [1, 1, 1]])
# correct positions per row: 3, 2, 0, 3 -> 8 of 12; exact matches: rows 0 and 3 -> 2 of 4


def test_values_by_hand():
    assert CharacterAccuracy()(PREDS, TARGET).item() == pytest.approx(100 * 8 / 12)
    assert WordAccuracy()(PREDS, TARGET).item() == pytest.approx(50.0)
    assert HammingError()(PREDS, TARGET).item() == pytest.approx(100 * 4 / 12)
    assert HammingError(as_percentage=False)(PREDS, TARGET).item() == pytest.approx(4 / 4)


@pytest.mark.parametrize(
    "metric, whole_value, last_row_value",
    [
        (CharacterAccuracy, 100 * 8 / 12, 100.0),
        (WordAccuracy, 50.0, 100.0),
        (HammingError, 100 * 4 / 12, 0.0),
        (lambda: HammingError(as_percentage=False), 4 / 4, 0.0),
    ],
    ids=["char_acc", "word_acc", "hamming_error", "hamming_count"],
)
def test_accumulates_over_batches_and_merges_like_ddp(metric, whole_value, last_row_value):
    """Two ranks' sum states merged equal one pass over all data (what DDP's sum reduce does)."""
    whole = metric()
    whole.update(PREDS, TARGET)
    assert whole.compute().item() == pytest.approx(whole_value)
    a, b = metric(), metric()
    a.update(PREDS[:1], TARGET[:1])
    b.update(PREDS[1:], TARGET[1:])
    assert all(fx is dim_zero_sum for fx in a._reductions.values())
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(whole_value)
    # unequal batch sizes: a mean of per-batch values would be wrong here
    per_batch_mean = (metric()(PREDS[:1], TARGET[:1]) + metric()(PREDS[1:], TARGET[1:])) / 2
    assert whole.compute().item() != pytest.approx(per_batch_mean.item())
    whole.reset()
    whole.update(PREDS[3:], TARGET[3:])  # the last row alone: all correct
    assert whole.compute().item() == pytest.approx(last_row_value)


def test_absent_positions_are_not_decisions():
    """Targets of -100 (padding) are skipped; an example with none present does not count."""
    preds = torch.tensor([[0, 1, -100], [2, 2, 2], [-100, -100, -100], [1, 0, 1]])
    target = torch.tensor([[0, 1, -100], [2, 0, -100], [-100, -100, -100], [1, 1, 1]])
    # present: 2 + 2 + 0 + 3 = 7 positions, correct 2 + 1 + 0 + 2 = 5; examples 3, exact 1
    assert CharacterAccuracy()(preds, target).item() == pytest.approx(100 * 5 / 7)
    assert WordAccuracy()(preds, target).item() == pytest.approx(100 * 1 / 3)
    assert ExactMatch()(preds, target).item() == pytest.approx(100 * 1 / 3)
    assert HammingError()(preds, target).item() == pytest.approx(100 * 2 / 7)
    assert HammingError(as_percentage=False)(preds, target).item() == pytest.approx(2 / 3)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        CharacterAccuracy().update(PREDS, TARGET[:, :2])
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        WordAccuracy().update(PREDS.flatten(), TARGET.flatten())


def test_task_metrics_names():
    """Each name holds its own metric (values by hand, different for every name)."""
    seq = task_metrics("sequence", prefix="val/")
    assert set(seq.keys()) == {"val/char_acc", "val/word_acc"}
    seq.update(PREDS, TARGET)
    out = seq.compute()
    assert out["val/char_acc"].item() == pytest.approx(100 * 8 / 12)
    assert out["val/word_acc"].item() == pytest.approx(50.0)
    ml = task_metrics("multilabel", prefix="test/")
    assert set(ml.keys()) == {"test/hamming_error", "test/hamming_count", "test/exact_match"}
    ml.update(PREDS[1:], TARGET[1:])  # wrong decisions 1 + 3 + 0 of 9; exact rows 1 of 3
    out = ml.compute()
    assert out["test/hamming_error"].item() == pytest.approx(100 * 4 / 9)
    assert out["test/hamming_count"].item() == pytest.approx(4 / 3)
    assert out["test/exact_match"].item() == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="sequence"):
        task_metrics("segmentation")

"""Metrics: character/word accuracy and Hamming error, accumulated and merged as under DDP."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from structlight.metrics import CharacterAccuracy, HammingError, WordAccuracy, task_metrics

PREDS = torch.tensor([[0, 1, 2], [0, 0, 0], [2, 2, 2], [1, 1, 1]])
TARGET = torch.tensor([[0, 1, 2], [0, 1, 0], [1, 1, 1], [1, 1, 1]])
# correct positions per row: 3, 2, 0, 3 -> 8 of 12; exact matches: rows 0 and 3 -> 2 of 4


def test_values_by_hand():
    assert CharacterAccuracy()(PREDS, TARGET).item() == pytest.approx(100 * 8 / 12)
    assert WordAccuracy()(PREDS, TARGET).item() == pytest.approx(50.0)
    assert HammingError()(PREDS, TARGET).item() == pytest.approx(100 * 4 / 12)
    assert HammingError(as_percentage=False)(PREDS, TARGET).item() == pytest.approx(4 / 4)


@pytest.mark.parametrize(
    "metric",
    [CharacterAccuracy, WordAccuracy, HammingError, lambda: HammingError(as_percentage=False)],
)
def test_accumulates_over_batches_and_merges_like_ddp(metric):
    """Two ranks' sum states merged equal one pass over all data (what DDP's sum reduce does)."""
    whole = metric()
    whole.update(PREDS, TARGET)
    a, b = metric(), metric()
    a.update(PREDS[:1], TARGET[:1])
    b.update(PREDS[1:], TARGET[1:])
    assert all(fx is dim_zero_sum for fx in a._reductions.values())
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(whole.compute().item())
    # unequal batch sizes: a mean of per-batch values would be wrong here
    per_batch_mean = (metric()(PREDS[:1], TARGET[:1]) + metric()(PREDS[1:], TARGET[1:])) / 2
    assert whole.compute().item() != pytest.approx(per_batch_mean.item())
    whole.reset()
    whole.update(PREDS[3:], TARGET[3:])
    assert whole.compute().item() in (0.0, 100.0)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        CharacterAccuracy().update(PREDS, TARGET[:, :2])
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        WordAccuracy().update(PREDS.flatten(), TARGET.flatten())


def test_task_metrics_names():
    seq = task_metrics("sequence", prefix="val/")
    assert set(seq.keys()) == {"val/char_acc", "val/word_acc"}
    ml = task_metrics("multilabel", prefix="test/")
    ml.update(PREDS, TARGET)
    out = ml.compute()
    assert out["test/hamming_error"].item() == pytest.approx(100 * 4 / 12)
    assert out["test/hamming_count"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sequence"):
        task_metrics("segmentation")

"""Evaluation metrics recomputed by hand from a model's predictions, to check logged values.

Plain Python counting over ``predict_step``'s labels, independent of ``structlight.metrics``:
a target of -100 (padding, an absent position) is not a decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

ABSENT = -100


def _pairs(model: Any, loader: Iterable[dict]) -> list[list[tuple[int, int]]]:
    """Per example, ``(prediction, target)`` of every present position, in loader order."""
    model.eval()
    out = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            preds = model.predict_step(batch, i)["labels"].tolist()
            for pred, target in zip(preds, batch["label"].tolist(), strict=True):
                out.append([(p, t) for p, t in zip(pred, target) if t != ABSENT])
    return out


def sequence_accuracies(model: Any, loader: Iterable[dict]) -> tuple[float, float]:
    """``(character accuracy, word accuracy)`` in percent over ``loader``'s examples."""
    examples = [e for e in _pairs(model, loader) if e]
    positions = [p == t for e in examples for p, t in e]
    words = [all(p == t for p, t in e) for e in examples]
    return 100.0 * sum(positions) / len(positions), 100.0 * sum(words) / len(words)


def hamming_error(model: Any, loader: Iterable[dict]) -> tuple[float, float]:
    """``(wrong decisions in percent of all, mean wrong decisions per example)``."""
    examples = [e for e in _pairs(model, loader) if e]
    wrong = [sum(p != t for p, t in e) for e in examples]
    decisions = sum(len(e) for e in examples)
    return 100.0 * sum(wrong) / decisions, sum(wrong) / len(examples)

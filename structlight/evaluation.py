"""Validation, test and prediction steps of :class:`structlight.DeepStructuredModel`.

Validation, test and prediction pass messages from zero until the dual converges (tolerance
``val_tol``, at most ``val_sweeps`` sweeps; ``val_tol=None``: exactly ``val_sweeps``, the paper's
10), decode each variable's belief and log the loss, the sweeps used and the task's metrics
(:func:`structlight.metrics.task_metrics`): ``val/loss``, ``val/sweeps``, ``val/char_acc`` and
``val/word_acc`` (sequences) or ``val/hamming_error``, ``val/hamming_count`` and
``val/exact_match`` (multi-label), and the same under ``test/``. Variable-size examples: the
head's mask of the batch (:meth:`structlight.StructuredHead.example_mask`) goes to the inference,
the loss and the decoding; targets and predictions at absent positions are -100, which the
metrics skip. Examples with non-finite potentials make that epoch's metrics NaN; they are counted
in ``val/nonfinite_examples`` (``test/...``) and named in a warning at the epoch's end.
``predict_step`` returns ``{"labels", "marginals"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from structlight.head import ExampleMask

__all__ = ["EvaluationSteps"]


class EvaluationSteps:
    """The validation, test and predict hooks of a :class:`~structlight.DeepStructuredModel`.

    A mixin (before ``LightningModule`` in the model's bases). The model provides ``head``,
    ``strategy_spec``, ``val_sweeps``, ``val_tol``, ``input_key`` and ``_input()`` (the backbone's input of
    a batch), ``forward`` (``self(batch)``: the batch's potentials), ``log`` and ``log_dict``,
    the metric collections ``val_metrics`` and ``test_metrics``, and ``_eval_nonfinite = {}``
    (per stage, the examples with non-finite potentials seen in the current epoch).
    """

    def _converge(self, theta: Tensor, mask: ExampleMask | None) -> tuple[Tensor, int]:
        """Messages from zero, run until the dual converges (``val_tol``, ``val_sweeps``)."""
        return self.head.converge(theta, self.val_sweeps, self.val_tol, mask=mask)

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> None:
        # shape errors name the graph before the forward; the mask is read once, here
        labels, mask = self.head.labels_and_mask(batch)
        b = int(labels.shape[0])
        if b == 0:
            return  # every example of the batch was dropped by the data
        theta = self(batch)
        if not self.strategy_spec.uses_structure:
            loss = self.head.independent_loss(theta, labels, mask).loss
            pred, _ = self.head.predict_independent(theta, mask)
        else:
            msgs, sweeps = self._converge(theta, mask)
            pred, _ = self.head.predict(theta, msgs, mask)
            hidden = self.head.unobserved(labels, None if mask is None else mask.variables)
            if self.head.loss_augmentation:
                aug = self.head.augment(theta.detach(), labels, mask, hidden)
                msgs, _ = self._converge(aug, mask)
            clamped = None
            if hidden is not None:  # missing labels: the clamped problem's messages too
                theta_c = self.head.clamped_potentials(theta.detach(), labels)
                clamped, _ = self._converge(theta_c, mask)
            loss = self.head.structured_loss(theta, labels, msgs, mask, clamped)
            self.log(f"{stage}/sweeps", float(sweeps), on_epoch=True, batch_size=b, sync_dist=True)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        finite = torch.isfinite(theta.detach()).all(dim=1)
        metrics.update(pred, labels, finite=finite)
        bad = (~finite).sum()
        self._eval_nonfinite[stage] = self._eval_nonfinite.get(stage, 0) + bad
        self.log(f"{stage}/loss", loss.mean(), on_epoch=True, batch_size=b, sync_dist=True)
        self.log(f"{stage}/nonfinite_examples", bad.float(), on_epoch=True, reduce_fx="sum")
        self.log_dict(metrics, on_epoch=True, batch_size=b)

    def _report_nonfinite(self, stage: str) -> None:
        bad = int(self._eval_nonfinite.pop(stage, 0))
        if bad:
            rank_zero_warn(
                f"{stage}: {bad} examples had non-finite potentials (NaN or infinity), so the "
                f"{stage} metrics of this epoch are NaN and {stage}/loss is not finite. The "
                "weights or those examples' inputs are broken; see docs/reliability.md"
            )

    def on_validation_epoch_end(self) -> None:
        """Warn loudly when validation met non-finite potentials."""
        self._report_nonfinite("val")

    def on_test_epoch_end(self) -> None:
        """Warn loudly when testing met non-finite potentials."""
        self._report_nonfinite("test")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Inference from zero messages to convergence, decoding, metrics, ``val/loss``."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """As :meth:`validation_step`, logged under ``test/``."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Labels and per-variable marginals.

        Returns:
            ``{"labels": (B, N) long, "marginals": (B, N, Kmax)}``; -100 and zeros at the absent
            positions of variable-size examples.
        """
        if isinstance(batch, Mapping) and self.input_key in batch:
            b = int(self._input(batch).shape[0])
            if b == 0:  # every example dropped by the data
                n, k = self.head.graph.num_vars, self.head.max_states
                empty = self._input(batch).new_zeros(0, n, k)
                return {"labels": empty.long()[..., 0], "marginals": empty}
        theta = self(batch)
        mask = self.head.example_mask(batch, int(theta.shape[0]))
        if not self.strategy_spec.uses_structure:
            labels, marg = self.head.predict_independent(theta, mask)
        else:
            msgs, _ = self._converge(theta, mask)
            labels, marg = self.head.predict(theta, msgs, mask)
        return {"labels": labels, "marginals": marg}

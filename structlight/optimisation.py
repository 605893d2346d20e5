"""The optimizer step of :class:`structlight.DeepStructuredModel`: optimizer, scheduler, norms.

* **Optimizer and scheduler.** The model's ``optimizer`` factory over the trainable parameters
  (None: SGD with the paper's Word50 step size and momentum, :data:`DEFAULT_LR` and
  :data:`DEFAULT_MOMENTUM`), and an optional ``lr_scheduler`` factory, stepped per epoch and
  monitoring ``scheduler_monitor``. Halving the step size when validation accuracy drops (the
  paper's schedule) is a config choice: ``lr_scheduler: ReduceLROnPlateau(mode=max,
  factor=0.5, patience=0)``, monitoring ``scheduler_monitor`` (default:
  :attr:`structlight.DeepStructuredModel.monitor`, ``val/word_acc`` for sequences,
  ``val/hamming_error`` for multi-label tasks).
* **Regularisers.** 2-norm via the optimizer's ``weight_decay`` or ``l2_weight`` (adds
  ``l2_weight / 2 * ||w||^2`` of the trainable parameters to the loss); infinity-norm as a
  constraint ``||w||_inf <= linf_bound``, enforced by clamping after every optimizer step
  (projected subgradient descent) on the pairwise parameters (``linf_scope="pairwise"``) or on
  all trainable ones.
* **Non-finite guard.** Before each step the guard (:mod:`structlight.guard`) decides on it:
  the batch's new messages are written, or the step is skipped (``train/skipped_steps``); after
  it, the deferred guard undoes a bad step on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_LR", "DEFAULT_MOMENTUM", "OptimisationHooks"]

#: The paper's Word50 optimiser, used when no ``optimizer`` is configured.
DEFAULT_LR = 0.01
DEFAULT_MOMENTUM = 0.95


class OptimisationHooks:
    """Lightning's optimizer hooks of a :class:`~structlight.DeepStructuredModel`.

    A mixin (before ``LightningModule`` in the model's bases). The model provides ``head``,
    ``guard`` (its :class:`~structlight.guard.NonFiniteGuard`), ``training_strategy``,
    ``optimizer_factory``, ``lr_scheduler_factory``, ``scheduler_monitor``, ``l2_weight``,
    ``linf_bound`` and ``linf_scope`` (see the model's arguments).
    """

    def _regulariser(self) -> Tensor | None:
        """``l2_weight / 2 * ||w||^2`` of the trainable parameters; None when ``l2_weight`` is 0."""
        if self.l2_weight == 0.0:
            return None
        sq = sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad)
        return 0.5 * self.l2_weight * sq

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The non-finite guard decides on the step: write the batch's messages, or skip."""
        params = [p for p in self.parameters() if p.requires_grad]
        self.guard.before_step(params, optimizer, int(self.global_step))
        if self.guard.enabled:
            self.log("train/skipped_steps", self.guard.skipped, on_step=True, on_epoch=False)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """The optimizer step (undone on the device if the deferred guard found it bad), then
        the infinity-norm projection (if ``linf_bound``)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.guard.after_step()
        if self.linf_bound is None:
            return
        params = (
            self.head.pairwise_parameters() if self.linf_scope == "pairwise" else self.parameters()
        )
        with torch.no_grad():
            for p in params:
                if p.requires_grad:
                    p.clamp_(-self.linf_bound, self.linf_bound)

    def configure_optimizers(self) -> Any:
        """The injected optimizer (and scheduler) over the trainable parameters.

        Raises:
            ValueError: no parameter is trainable.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"strategy={self.training_strategy!r} leaves no trainable parameter (is the head "
                "without pairwise terms under 'piecewise'?)"
            )
        if self.optimizer_factory is None:
            opt = torch.optim.SGD(params, lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)
        else:
            opt = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": self.scheduler_monitor},
        }

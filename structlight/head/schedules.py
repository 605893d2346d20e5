"""Message schedules: how a training step moves the batch's messages before the loss.

A schedule is chosen once per head from its :class:`~structlight.head.InferenceSettings`
(:meth:`~structlight.head.InferenceSettings.schedule`):

* :class:`Blended` (the paper's algorithm): the batch's stored messages get ``sweeps_per_step``
  sweeps and are written back, so inference and learning advance together;
* :class:`DoubleLoop` (the baseline the paper improves on): messages restart at zero every step
  and run up to ``max_sweeps`` sweeps, or until the dual moves less than ``tol``; nothing is
  stored.

Both run on potentials prepared once (:meth:`structlight.ConvexBP.prepare`) and without
gradients; :meth:`structlight.StructuredHead.training_loss` then takes the dual of the result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from structlight.inference import ConvexBP, PreparedPotentials

__all__ = ["Blended", "DoubleLoop", "MessageSchedule"]


class MessageSchedule(ABC):
    """The message updates of one training step.

    Attributes:
        uses_store: True if the step starts from the example's stored messages and writes the
            new ones back (the message store must then hold every training example); False if
            it starts from zero messages and keeps nothing.
    """

    uses_store: bool

    @abstractmethod
    def run(self, bp: ConvexBP, prepared: PreparedPotentials, msgs: Tensor) -> tuple[Tensor, int]:
        """Update the messages (no gradient).

        Args:
            bp: the head's engine.
            prepared: the batch's potentials, prepared by ``bp``.
            msgs: ``(B, M)`` starting messages: the stored ones (:attr:`uses_store`) or zeros.

        Returns:
            ``(msgs, num_sweeps)``: the new ``(B, M)`` messages and the sweeps run.
        """


@dataclass(frozen=True)
class Blended(MessageSchedule):
    """``sweeps_per_step`` sweeps on the stored messages, written back (blending).

    Raises:
        TypeError: ``sweeps_per_step`` is not an int.
        ValueError: ``sweeps_per_step < 1``.
    """

    sweeps_per_step: int = 1
    uses_store = True

    def __post_init__(self) -> None:
        n = self.sweeps_per_step
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"sweeps_per_step must be an int, got {n!r}")
        if n < 1:
            raise ValueError(f"sweeps_per_step must be >= 1, got {n}")

    def run(self, bp: ConvexBP, prepared: PreparedPotentials, msgs: Tensor) -> tuple[Tensor, int]:
        """``sweeps_per_step`` sweeps from ``msgs``; see :meth:`MessageSchedule.run`."""
        with torch.no_grad():
            for _ in range(self.sweeps_per_step):
                msgs = bp.sweep(prepared, msgs)
        return msgs, self.sweeps_per_step


@dataclass(frozen=True)
class DoubleLoop(MessageSchedule):
    """Up to ``max_sweeps`` sweeps from zero messages, stopping once the dual of every example
    moves less than ``tol`` in a sweep (None: always ``max_sweeps``); nothing stored.

    Raises:
        ValueError: ``max_sweeps`` is not an int ``>= 1``, or ``tol`` is negative.
    """

    max_sweeps: int = 20
    tol: float | None = 1e-4
    uses_store = False

    def __post_init__(self) -> None:
        n = self.max_sweeps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_sweeps must be an int >= 1, got {n!r}")
        if self.tol is not None and not self.tol >= 0:
            raise ValueError(f"tol must be >= 0 or None, got {self.tol}")

    def run(self, bp: ConvexBP, prepared: PreparedPotentials, msgs: Tensor) -> tuple[Tensor, int]:
        """Run to ``tol`` or ``max_sweeps`` from ``msgs``; see :meth:`MessageSchedule.run`."""
        msgs, duals = bp.run(prepared, msgs, num_sweeps=self.max_sweeps, tol=self.tol)
        num = int(duals.shape[0]) if self.tol is not None else self.max_sweeps
        return msgs, num

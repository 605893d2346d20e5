"""How a head runs message passing: temperature, schedule and loss augmentation, in one object.

Every head takes one :class:`InferenceSettings` (``inference=...``); from YAML it is a nested
mapping of the head's ``init_args``::

    head:
      class_path: structlight.head.ChainHead
      init_args:
        num_vars: 5
        num_states: 26
        in_features: 512
        inference:
          eps: 1.0
          sweeps_per_step: 1
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from structlight.head.schedules import Blended, DoubleLoop, MessageSchedule

__all__ = ["InferenceSettings", "check_head_kwargs"]


@dataclass(frozen=True)
class InferenceSettings:
    """The message-passing settings of a :class:`structlight.StructuredHead`.

    Frozen: change one with :func:`dataclasses.replace` and build a new head, so that the head,
    its engine and its schedule never disagree.

    Args:
        eps: temperature ``eps >= 0`` (1: CRF likelihood; 0: structured hinge loss).
        sweeps_per_step: message-passing sweeps per training step when blending (default 1).
        blend: True (default): keep each example's messages between steps (the paper's
            algorithm, :class:`~structlight.head.schedules.Blended`); False: the double-loop
            baseline, restarting from zero messages every step
            (:class:`~structlight.head.schedules.DoubleLoop`).
        max_sweeps: sweeps per step of the double loop (``blend=False``).
        tol: the double loop stops early once the dual moves less than ``tol`` (absolute, for
            every example of the batch) in a sweep; None: always ``max_sweeps``.
        loss_augmentation: add the Hamming loss to the unaries during training inference; None
            (default): on exactly when ``eps == 0`` (see :attr:`augments_loss`).
        compile_sweeps: run message passing through ``ConvexBP(compile=True)`` (the whole sweep
            under :func:`torch.compile`; where it applies, see
            :attr:`structlight.ConvexBP.uses_compiled_sweeps`): worth it for many small blocks
            (fully connected graphs), at the price of compiling on first use and for each new
            batch size (keep batches equal, e.g. ``drop_last``).

    Raises:
        TypeError: a setting of the wrong type (``sweeps_per_step`` not an int, ``eps`` not a
            number, ``compile_sweeps`` not a bool).
        ValueError: a number out of range.
    """

    eps: float = 1.0
    sweeps_per_step: int = 1
    blend: bool = True
    max_sweeps: int = 20
    tol: float | None = 1e-4
    loss_augmentation: bool | None = None
    compile_sweeps: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, numbers.Real):
            raise TypeError(f"eps must be a number, got {self.eps!r}")
        eps = float(self.eps)
        if not eps >= 0.0 or math.isinf(eps):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        if not isinstance(self.compile_sweeps, bool):
            raise TypeError(f"compile_sweeps must be True or False, got {self.compile_sweeps!r}")
        # the schedules check their own numbers (both, whichever is used)
        Blended(self.sweeps_per_step)
        DoubleLoop(self.max_sweeps, self.tol)
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "blend", bool(self.blend))
        if self.loss_augmentation is not None:
            object.__setattr__(self, "loss_augmentation", bool(self.loss_augmentation))

    @property
    def augments_loss(self) -> bool:
        """Whether training inference adds the Hamming loss: ``loss_augmentation``, or, when
        that is None, ``eps == 0``."""
        if self.loss_augmentation is None:
            return self.eps == 0.0
        return self.loss_augmentation

    def schedule(self) -> MessageSchedule:
        """The training step's message schedule: :class:`Blended` (``blend=True``) or
        :class:`DoubleLoop`."""
        if self.blend:
            return Blended(self.sweeps_per_step)
        return DoubleLoop(self.max_sweeps, self.tol)


_SETTING_NAMES = tuple(f.name for f in fields(InferenceSettings))


def check_head_kwargs(head: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse inference settings passed as a head's own keyword arguments.

    Args:
        head: the head's class name, for the message.
        kwargs: the keyword arguments a head passes on to :class:`StructuredHead`.

    Raises:
        TypeError: naming the settings and how to pass them (``inference=InferenceSettings(...)``).
    """
    moved = [k for k in kwargs if k in _SETTING_NAMES]
    if moved:
        args = ", ".join(f"{k}={kwargs[k]!r}" for k in moved)
        raise TypeError(
            f"{head} got {', '.join(moved)} as keyword arguments; they are inference settings: "
            f"pass inference=InferenceSettings({args}) (in YAML, a nested 'inference:' mapping)"
        )

"""Inference and decoding of a :class:`~structlight.head.StructuredHead`.

:class:`HeadDecoding` is a mixin: message passing for a fixed number of sweeps
(:meth:`~HeadDecoding.infer`) or until the dual converges (:meth:`~HeadDecoding.converge`), and
marginal decoding through the engine (:meth:`~HeadDecoding.predict`), or from the unaries alone
(:meth:`~HeadDecoding.predict_independent`). The head must provide ``bp``, ``_plan()`` and
``unary_scores()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structlight.head.examples import ExampleMask
from structlight.head.labels import IGNORE_LABEL
from structlight.inference.tempered import soft_or_hard

__all__ = ["HeadDecoding"]


class HeadDecoding:
    """Inference and decoding of a :class:`StructuredHead`."""

    def infer(
        self,
        theta: Tensor,
        num_sweeps: int = 10,
        msgs: Tensor | None = None,
        tol: float | None = None,
        mask: ExampleMask | None = None,
    ) -> Tensor:
        """Messages after ``num_sweeps`` sweeps (from zero unless ``msgs`` is given).

        Args:
            theta: ``(B, T)``; detached.
            num_sweeps: sweeps to run (the paper uses 10 at prediction).
            msgs: ``(B, M)`` starting messages; None for zeros.
            tol: stop early once no example's dual moves by more than ``tol`` (absolute) in a
                sweep.
            mask: the batch's :class:`ExampleMask` (None: every variable present); absent
                regions' messages come out 0.

        Returns:
            ``(B, M)`` messages.
        """
        region = None if mask is None else mask.regions
        out, _ = self.bp.run(theta.detach(), msgs, num_sweeps=num_sweeps, tol=tol, mask=region)
        return out

    def converge(
        self,
        theta: Tensor,
        max_sweeps: int = 100,
        tol: float | None = 1e-4,
        msgs: Tensor | None = None,
        mask: ExampleMask | None = None,
    ) -> tuple[Tensor, int]:
        """Message passing until the dual converges: sweeps from zero messages (or ``msgs``)
        until no example's dual moves by more than ``tol`` in a sweep, at most ``max_sweeps``
        of them.

        The tolerance is absolute, as the double loop's (:class:`InferenceSettings`), but never
        below the rounding of the dual in its dtype (``4 * finfo.eps * |D|``), so that a large
        float32 dual (a fully connected graph's) still stops. ``tol=None`` runs exactly
        ``max_sweeps`` sweeps (:meth:`infer`).

        Args:
            theta: ``(B, T)``; detached.
            max_sweeps: the cap (``>= 0``).
            tol: the tolerance (``>= 0``), or None.
            msgs: ``(B, M)`` starting messages; None for zeros.
            mask: the batch's :class:`ExampleMask` (None: every variable present).

        Returns:
            ``(msgs, num_sweeps)``: the ``(B, M)`` messages and the sweeps run.
        """
        if tol is None:
            return self.infer(theta, max_sweeps, msgs, mask=mask), max_sweeps
        with torch.no_grad():
            region = None if mask is None else mask.regions.to(theta.device)
            prep = self.bp.prepare(theta.detach(), mask=region)
            if msgs is None:
                msgs = self.bp.init_messages(prep.batch_size, prep.dtype, prep.device)
            rounding = 4 * torch.finfo(prep.dtype).eps
            prev = self.bp.dual(prep, msgs)
            done = 0
            while done < max_sweeps:
                msgs = self.bp.sweep(prep, msgs)
                done += 1
                dual = self.bp.dual(prep, msgs)
                if bool(((prev - dual).abs() <= (dual.abs() * rounding).clamp_min(tol)).all()):
                    break
                prev = dual
        return msgs, done

    def predict(
        self, theta: Tensor, msgs: Tensor, mask: ExampleMask | None = None
    ) -> tuple[Tensor, Tensor]:
        """Marginal decoding: the arg-max of each variable's belief (first state on ties).

        Args:
            theta: ``(B, T)``.
            msgs: ``(B, M)``.
            mask: the batch's :class:`ExampleMask` (None: every variable present).

        Returns:
            ``(labels, marginals)``: ``(B, N)`` long and ``(B, N, Kmax)`` beliefs; -100 and
            zeros at absent positions.
        """
        region = None if mask is None else mask.regions.to(theta.device)
        with torch.no_grad():
            return self.bp.predict(theta.detach(), msgs, mask=region)

    def predict_independent(
        self, theta: Tensor, mask: ExampleMask | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-variable decoding from the singleton tables alone (the ``unary_only`` model).

        Args:
            theta: ``(B, T)``.
            mask: the batch's :class:`ExampleMask` (None: every variable present).

        Returns:
            ``(labels, marginals)``: ``(B, N)`` and ``(B, N, Kmax)`` softmax of the unaries
            (one-hot argmax where ``ĉ_i = 0``); -100 and zeros at absent positions.
        """
        with torch.no_grad():
            u = self.unary_scores(theta.detach())
            plan = self._plan(u.device, u.dtype)
            labels, marginals = u.argmax(-1), soft_or_hard(u, plan.temper, -1)
            if mask is None:
                return labels, marginals
            present = mask.variables.to(u.device)
            labels = labels.masked_fill(~present, IGNORE_LABEL)
            return labels, marginals.masked_fill(~present[..., None], 0.0)

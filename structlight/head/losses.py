"""The learning step of a :class:`~structlight.StructuredHead` (docs/design.md §2, the paper's
Fig. 3).

* :meth:`HeadLosses.training_loss`: the batch's messages move by the head's message schedule
  (:mod:`.schedules`) on the detached potentials, then ``loss_b = D(theta_b, lam_b) - F(x_b,
  y*_b)`` with ``lam`` detached: ``loss_b >= 0`` always, and its gradient is the paper's
  ``sum_r sum_{y_r} b_r(y_r) grad f_r(y_r) - grad F(x, y*)``;
* :meth:`HeadLosses.structured_loss`: the same loss for given messages;
* :meth:`HeadLosses.independent_loss`: the loss of the unaries alone (``unary_only``).

With Hamming loss augmentation (on by default when ``eps = 0``) the unary tables get ``+1`` on
every wrong state of each variable before inference, so the loss is the structured hinge loss.

Every loss takes the batch's :class:`~structlight.head.base.ExampleMask` (variable-size
examples): the dual, the score, the augmentation and the unary-only terms then run over each
example's present regions and variables alone, and the labels at absent positions are not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from structlight.guard import PendingWrite
from structlight.inference.tempered import soft_max
from structlight.store import MessageStore

if TYPE_CHECKING:
    from structlight.head.base import ExampleMask

__all__ = ["HeadLosses", "StructuredLoss"]


@dataclass
class StructuredLoss:
    """Per-example results of one loss evaluation.

    Attributes:
        loss: ``(B,)`` per-example loss ``D - F(y*)``, differentiable w.r.t. the potentials.
        dual: ``(B,)`` the dual ``D`` in the loss (detached).
        dual_change: ``(B,)`` mean change of the dual per sweep in this step (after minus before;
            ``<= 0``), or None when not tracked / no sweeps ran.
        num_sweeps: sweeps run in this step.
        pending: the batch's updated messages when :meth:`StructuredHead.training_loss` was
            asked not to write them back (``write_back=False``), for the caller to write once the
            step is known to be finite: one :class:`PendingWrite`, or a tuple of two with
            missing labels (the clamped problem's messages too); None otherwise.
    """

    loss: Tensor
    dual: Tensor
    dual_change: Tensor | None
    num_sweeps: int
    pending: PendingWrite | tuple[PendingWrite, ...] | None = None


class HeadLosses:
    """The losses of :class:`~structlight.StructuredHead`.

    A mixin (before ``nn.Module`` in the head's bases). The head provides ``bp`` (its
    :class:`~structlight.ConvexBP`), ``schedule``, ``store``, ``index_key``,
    ``loss_augmentation``, ``labels_and_mask``, ``example_mask``, ``augment``,
    ``unary_scores`` and ``_plan`` (its packing on a device and dtype).
    """

    def structured_loss(
        self,
        theta: Tensor,
        labels: Tensor,
        msgs: Tensor,
        mask: ExampleMask | None = None,
        clamped_msgs: Tensor | None = None,
    ) -> Tensor:
        """``L = D(theta~, lam) - F(theta, y*)`` with ``lam`` held fixed.

        ``theta~`` is ``theta`` augmented with the Hamming loss when ``loss_augmentation`` is on.

        Args:
            theta: ``(B, T)`` potentials.
            labels: ``(B, N)`` ground truth (not read at absent positions).
            msgs: ``(B, M)`` messages (detached here).
            mask: the batch's :class:`~structlight.head.base.ExampleMask` (None: every
                variable present).
            clamped_msgs: ``(B, M)`` messages of the clamped problem
                (:meth:`clamped_potentials`), needed when some present label is -100
                (unobserved): the loss is then ``D(theta~, lam) - D(theta_clamped, mu)``.

        Returns:
            ``(B,)``, ``>= 0`` (at converged messages).

        Raises:
            ValueError: unobserved labels without ``clamped_msgs``.
        """
        hidden = self.unobserved(labels, None if mask is None else mask.variables)
        if hidden is not None:
            return self._latent_structured_loss(theta, labels, msgs, mask, hidden, clamped_msgs)
        if mask is None:
            theta_inf = self.augment(theta, labels) if self.loss_augmentation else theta
            return self.bp.dual(theta_inf, msgs.detach()) - self.bp.score(theta, labels)
        mask = mask.to(theta.device)
        theta_inf = self.augment(theta, labels, mask) if self.loss_augmentation else theta
        prep = self.bp.prepare(theta_inf, mask=mask.regions)  # masks built once, for both
        return self.bp.dual(prep, msgs.detach()) - self.bp.score(theta, labels, mask=prep.masks)

    def _latent_structured_loss(
        self,
        theta: Tensor,
        labels: Tensor,
        msgs: Tensor,
        mask: ExampleMask | None,
        hidden: Tensor,
        clamped_msgs: Tensor | None,
    ) -> Tensor:
        if clamped_msgs is None:
            raise ValueError(
                f"batch[{self.label_key!r}] has unobserved labels (-100 at present positions): "
                "pass clamped_msgs, the messages of head.clamped_potentials(theta, labels) (e.g. "
                "from head.converge)"
            )
        region = None if mask is None else mask.to(theta.device).regions
        theta_inf = self.augment(theta, labels, mask, hidden) if self.loss_augmentation else theta
        dual = self.bp.dual(theta_inf, msgs.detach(), mask=region)
        clamped = self.clamped_potentials(theta, labels)
        clamped_dual = self.bp.dual(clamped, clamped_msgs.detach(), mask=region)
        target = self.latent_target(theta, labels, hidden, clamped_dual, region)
        return self.observed_only(dual - target, labels)

    def training_loss(
        self,
        theta: Tensor,
        batch: Mapping[str, Any],
        track_dual_change: bool = True,
        write_back: bool = True,
        labels: Tensor | None = None,
        mask: ExampleMask | None = None,
    ) -> StructuredLoss:
        """One step of the paper's algorithm on a batch: message passing, store update, loss.

        The messages move by :attr:`schedule` on the detached potentials: blending
        (``blend=True``) reads the batch's messages from the store, runs ``sweeps_per_step``
        sweeps and writes them back; the double loop starts from zero messages, runs up to
        ``max_sweeps`` sweeps (early stop at ``tol``) and stores nothing. The store never takes
        a non-finite row: an example whose new messages hold a NaN or an infinity keeps its old
        ones. For variable-size examples the potentials are prepared with the batch's region
        mask, so absent regions have no messages (they are stored as 0) and no dual term.

        Args:
            theta: ``(B, T)`` potentials from :meth:`forward`.
            batch: the batch (labels, and the example indices when blending).
            track_dual_change: compute the dual before the sweeps too (one more dual
                evaluation), for :attr:`StructuredLoss.dual_change`.
            write_back: write the new messages to the store now (default); False: return them
                as :attr:`StructuredLoss.pending` instead, for the caller to write once the
                whole step (gradients included) is known to be finite, as
                :class:`structlight.DeepStructuredModel` does.
            labels: ``(B, N)`` labels already checked by :meth:`labels_from` (the caller's own
                check of this step); None: read and check ``batch[label_key]`` here.
            mask: the batch's :class:`~structlight.head.base.ExampleMask`, computed once by the
                caller; None: read from the batch here (:meth:`example_mask`; None again when
                every variable is present).

        Returns:
            :class:`StructuredLoss` with the ``(B,)`` loss.

        Raises:
            ValueError: ``labels`` of another batch size than ``theta``.
        """
        b = theta.shape[0]
        if labels is None:
            labels, read = self.labels_and_mask(batch, b)
            mask = read if mask is None else mask
        elif labels.shape[0] != b:
            raise ValueError(
                f"labels have batch size {labels.shape[0]} but the potentials {b}: pass the "
                "labels of this batch"
            )
        elif mask is None:
            mask = self.example_mask(batch, b)
        region = None
        if mask is not None:
            mask = mask.to(theta.device)
            region = mask.regions
        hidden = self.unobserved(labels, None if mask is None else mask.variables)
        if hidden is not None and self.schedule.uses_store:
            self.require_clamped_store()
        if self.loss_augmentation:
            theta_inf = self.augment(theta, labels, mask, hidden)
        else:
            theta_inf = theta
        # prepared once: the sweeps (no gradient) and the final dual (gradient to theta_inf)
        # share its tables (and the region mask)
        fixed = (
            self.bp.prepare(theta_inf)
            if region is None
            else self.bp.prepare(theta_inf, mask=region)
        )
        index = None
        if self.schedule.uses_store:
            index = MessageStore.index_from(batch, self.index_key)
            if index.dim() != 1 or index.shape[0] != b:
                raise ValueError(
                    f"batch[{self.index_key!r}] must have shape ({b},), got {tuple(index.shape)}"
                )
            start = self.store.gather(index, device=theta.device).to(dtype=theta.dtype)
        else:
            start = self.bp.init_messages(b, theta.dtype, theta.device)
        dual_before = None
        if track_dual_change:
            with torch.no_grad():
                dual_before = self.bp.dual(fixed, start)
        msgs, num = self.schedule.run(self.bp, fixed, start)
        writes = []
        if self.schedule.uses_store:
            writes.append(PendingWrite(self.store, index, start, msgs))
        dual = self.bp.dual(fixed, msgs.detach())
        if hidden is None:  # (the masks the sweeps used, not built again)
            loss = dual - self.bp.score(theta, labels, mask=fixed.masks)
        else:  # missing labels: D(theta~; lam) - D(theta_clamped; mu)
            target, write = self.blended_latent_target(theta, labels, hidden, region, index)
            loss = self.observed_only(dual - target, labels)
            writes += [write] if write is not None else []
        pending = None
        if writes and write_back:
            for w in writes:  # a non-finite row keeps its old messages
                w.write()
        elif writes:
            pending = writes[0] if len(writes) == 1 else tuple(writes)
        change = None
        if dual_before is not None and num > 0:
            change = (dual.detach() - dual_before) / num
        return StructuredLoss(
            loss=loss, dual=dual.detach(), dual_change=change, num_sweeps=num, pending=pending
        )

    def independent_loss(
        self, theta: Tensor, labels: Tensor, mask: ExampleMask | None = None
    ) -> StructuredLoss:
        """The loss of the model without its pairwise and higher-order regions (``unary_only``).

        Per variable ``ĉ_i log sum exp(u_i / ĉ_i) - u_i(y*_i)`` (``max`` for ``ĉ_i = 0``, with the
        Hamming augmentation when ``loss_augmentation``): for ``eps = c_i = 1`` the sum of the
        per-variable cross-entropies. (With the pairwise tables merely set to zero the dual with
        ``c_r = 1`` would instead be a tempered loss: variable ``i`` with ``d_i`` edges enters as
        ``(1 + d_i) log sum exp(u_i / (1 + d_i))``.)

        Args:
            theta: ``(B, T)``; only the singleton tables are read.
            labels: ``(B, N)`` (not read at absent positions).
            mask: the batch's :class:`~structlight.head.base.ExampleMask` (None: every
                variable present); the sums run over the present variables whose label is
                observed (not -100).

        Returns:
            :class:`StructuredLoss` (no messages, ``num_sweeps = 0``).
        """
        labels = labels.to(theta.device)
        present = None
        if mask is not None:
            present = mask.variables.to(theta.device)
        hidden = self.unobserved(labels, present)
        if hidden is not None:  # missing labels: the sums run over observed variables
            present = ~hidden if present is None else present & ~hidden
        if present is not None:
            labels = torch.where(present, labels, 0)
        u = self.unary_scores(theta)
        score = u.gather(2, labels[..., None]).squeeze(2)
        if self.loss_augmentation:
            u = self.unary_scores(self.augment(theta, labels, mask, hidden))
        plan = self._plan(theta.device, theta.dtype)
        per_var = soft_max(u, plan.temper, -1)
        if present is not None:
            per_var = torch.where(present, per_var, 0.0)
            score = torch.where(present, score, 0.0)
        dual = per_var.sum(1)
        return StructuredLoss(
            loss=dual - score.sum(1), dual=dual.detach(), dual_change=None, num_sweeps=0
        )

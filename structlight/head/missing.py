"""Learning with missing labels: a present variable labelled -100 is unobserved.

For observed labels ``y_o`` the negative log-likelihood is ``eps log Z(x) - eps log Z(x, y_o)``;
both terms are approximated by the same dual, so the loss of an example with unobserved labels
is ``D(theta~; lam) - D(theta_clamped; mu)`` (Schwing, Hazan, Pollefeys and Urtasun, ICML 2012):

* ``theta~``: the potentials, with the Hamming augmentation on observed variables when
  ``loss_augmentation`` is on;
* ``theta_clamped``: :meth:`HeadMissingLabels.clamped_potentials`, every state that disagrees
  with an observed label forbidden in the singleton tables (the same dual minimum as forbidding
  every entry that disagrees, and the batch keeps sharing its pair tables);
* ``lam`` and ``mu``: the example's two message sets. Blending keeps ``mu`` in a second
  :class:`~structlight.MessageStore`, :attr:`HeadMissingLabels.clamped_store`, moved by the
  same schedule as ``lam``.

An example whose labels are all observed keeps the supervised loss ``D(theta~; lam) - F(y*)``
exactly (its clamped dual would be ``F(y*)`` too, up to rounding), so a data set without
unobserved labels trains bit for bit as before and needs no second store. See
``docs/missing-labels.md``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from structlight.guard import PendingWrite
from structlight.head.labels import unobserved_positions
from structlight.store import MessageStore

__all__ = ["HeadMissingLabels"]


class HeadMissingLabels:
    """The second message store and the clamped dual of :class:`StructuredHead`.

    A mixin; the head provides ``bp``, ``store``, ``schedule``, ``index_key`` and
    ``label_key``, and sets :attr:`clamped_store` (None until :meth:`enable_missing_labels`).
    """

    clamped_store: MessageStore | None

    @property
    def missing_labels(self) -> bool:
        """Whether the head keeps the second message store for unobserved labels."""
        return self.clamped_store is not None

    def enable_missing_labels(self) -> bool:
        """Allocate the second message store (``mu``, the clamped problem's messages), with as
        many slots, the same shard and the same location as :attr:`store`. Idempotent.

        Returns:
            True if the store was allocated now.
        """
        if self.clamped_store is not None:
            return False
        main = self.store
        store = MessageStore(main.num_message_entries, 0, main.location)
        store.world_size, store.rank = main.world_size, main.rank
        store.resize(main.num_examples)
        if main.location == "device":
            store.messages = store.messages.to(main.messages.device)
        self.clamped_store = store
        rank_zero_info(
            "Missing labels: keeping a second message store for the clamped problem "
            f"({store.num_message_entries} entries, {4 * store.num_message_entries} bytes per "
            "example in float32)"
        )
        return True

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """A checkpoint of a run with missing labels holds the second store: load it into a
        head built without it (for ``structlight test --ckpt_path``, say)."""
        if self.clamped_store is None and f"{prefix}clamped_store.messages" in state_dict:
            self.enable_missing_labels()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def require_clamped_store(self) -> None:
        """Blending with unobserved labels needs :attr:`clamped_store`.

        Raises:
            ValueError: there is none; the message names the remedy.
        """
        if self.clamped_store is None:
            raise ValueError(
                f"batch[{self.label_key!r}] has unobserved labels (-100 at present positions), "
                "and blended learning with missing labels keeps a second message store: build "
                "the head with missing_labels=True (or give the datamodule "
                "has_missing_labels = True)"
            )

    def unobserved(self, labels: Tensor, present: Tensor | None = None) -> Tensor | None:
        """``(B, N)`` bool, the present variables with an unobserved label (-100), or None when
        every present label of the batch is observed (one host read)."""
        return unobserved_positions(labels, present)

    def clamped_potentials(self, theta: Tensor, labels: Tensor) -> Tensor:
        """``theta_clamped``, the potentials of the clamped problem: every state of an observed
        variable other than its label forbidden in its singleton table
        (:meth:`structlight.ConvexBP.clamp_to_observed` with ``singletons_only=True``).

        Its dual has the minimum of the fully clamped problem, and pair tables shared by the
        batch (a head's tables) stay shared, so the clamped sweeps cost what the free ones do.

        Args:
            theta: ``(B, T)`` potentials.
            labels: ``(B, N)``, -100 at unobserved and absent positions.

        Returns:
            ``(B, T)``, differentiable at the allowed entries.
        """
        return self.bp.clamp_to_observed(theta, labels, singletons_only=True)

    def clamped_dual(
        self, theta: Tensor, labels: Tensor, region: Tensor | None, index: Tensor | None
    ) -> tuple[Tensor, PendingWrite | None]:
        """``D(theta_clamped; mu)`` after the schedule's sweeps on ``mu``.

        Args:
            theta: ``(B, T)`` potentials (the gradient flows at fixed ``mu``).
            labels: ``(B, N)``, -100 at unobserved and absent positions.
            region: ``(B, R)`` region mask, or None.
            index: ``(B,)`` example indices when blending, else None.

        Returns:
            ``(dual, pending)``: the ``(B,)`` dual, and the new messages' :class:`PendingWrite`
            to :attr:`clamped_store` (None without blending).

        Raises:
            ValueError: blending without the second store (the remedy is named).
        """
        clamped = self.clamped_potentials(theta, labels)
        fixed = self.bp.prepare(clamped) if region is None else self.bp.prepare(clamped, region)
        if index is not None:
            self.require_clamped_store()
            start = self.clamped_store.gather(index, device=theta.device).to(dtype=theta.dtype)
        else:
            start = self.bp.init_messages(theta.shape[0], theta.dtype, theta.device)
        mu, _ = self.schedule.run(self.bp, fixed, start)
        pending = None if index is None else PendingWrite(self.clamped_store, index, start, mu)
        return self.bp.dual(fixed, mu.detach()), pending

    def latent_target(
        self,
        theta: Tensor,
        labels: Tensor,
        hidden: Tensor,
        clamped_dual: Tensor,
        region: Tensor | None,
    ) -> Tensor:
        """The subtracted term of the loss: ``F(y*)`` for fully observed examples,
        ``clamped_dual`` (``D(theta_clamped; mu)``) for the others.

        Args:
            hidden: ``(B, N)`` bool, the unobserved present variables (:meth:`unobserved`).
            clamped_dual: ``(B,)``.

        Returns:
            ``(B,)``.
        """
        score = self.bp.score(theta, labels.clamp(min=0), mask=region)
        return torch.where(hidden.any(1).to(theta.device), clamped_dual, score)

    def blended_latent_target(
        self,
        theta: Tensor,
        labels: Tensor,
        hidden: Tensor,
        region: Tensor | None,
        index: Tensor | None,
    ) -> tuple[Tensor, PendingWrite | None]:
        """:meth:`latent_target` after the schedule's sweeps on ``mu`` (:meth:`clamped_dual`);
        only partly labelled examples get new clamped messages.

        Returns:
            ``((B,) target, pending write of mu or None)``.
        """
        dual, pending = self.clamped_dual(theta, labels, region, index)
        if pending is not None:
            latent = hidden.any(1).to(theta.device)
            pending.new = torch.where(latent[:, None], pending.new, pending.old)
        return self.latent_target(theta, labels, hidden, dual, region), pending

    def observed_only(self, loss: Tensor, labels: Tensor) -> Tensor:
        """``loss`` with 0 for examples without a single observed label (they carry no
        information); warns, naming the label key, when that is the whole batch.

        Args:
            loss: ``(B,)`` per-example losses.
            labels: ``(B, N)``, -100 at unobserved and absent positions.
        """
        seen = (labels >= 0).any(1).to(loss.device)
        if not bool(seen.any()):
            warnings.warn(
                f"every label of this batch is unobserved (batch[{self.label_key!r}] is -100 at "
                "every present position): it contributes 0 to the loss and is skipped",
                stacklevel=3,
            )
        return torch.where(seen, loss, 0.0)

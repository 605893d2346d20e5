"""``ConvexBP``: the engine's facade. It picks the plan and the kernels once per graph, device
and dtype, and hands every call to the functions of the package (see ``docs/inference.md``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference import dual as _dual
from structlight.inference import readout
from structlight.inference.layout import MSGS_HINT, NEG_INF, PackedLayout, Potentials, check_dtype
from structlight.inference.masks import (
    Masks,
    build_masks,
    checked_region_mask,
    region_mask_from_variables,
)
from structlight.inference.observed import ObservedIndex, clamp_to_observed
from structlight.inference.plan import Plan, build_plan
from structlight.inference.prepared import PreparedPotentials, clamp, version_of
from structlight.inference.sweep import CompiledSweep, sweep_messages

#: Potentials as the methods of :class:`ConvexBP` take them: plain, or prepared once.
PotentialsLike = Potentials | PreparedPotentials


class ConvexBP:
    """Convex belief propagation (block-coordinate descent on the dual) on a region graph.

    Args:
        graph: the region graph.
        eps: temperature ``eps >= 0``; 1 gives the (approximate) log-partition of a CRF, 0
            max-product for the structured hinge loss.
        fast_path: on pairwise graphs, run sweeps, the dual and variable beliefs on the dense
            batch-last layout (:mod:`~structlight.inference.pairwise_plan`); same updates, same
            schedule, same results up to rounding (see :attr:`uses_fast_path`).
        compile: sweep through :func:`torch.compile` where it applies (pairwise fast path, one
            state count, all ``ĉ = 1``; :attr:`uses_compiled_sweeps`). Compiling takes seconds
            to a minute on first use and per batch size; if it fails a warning says so and this
            instance sweeps eagerly from then on.

    Potentials: ``num_regions`` tables ``(B or 1, *graph.region_shape(r))``, packed ``(B, T)``
    (:attr:`layout`), or :meth:`prepare`'s object; messages: ``(B, M)``. float32 or float64.
    No method keeps anything of its inputs; the plan per (device, dtype) and the compiled sweeps
    are built once each, never changed, and left out of pickles.
    """

    def __init__(
        self, graph: RegionGraph, eps: float = 1.0, fast_path: bool = True, compile: bool = False
    ) -> None:
        if not isinstance(graph, RegionGraph):
            raise TypeError(f"graph must be a RegionGraph, got {type(graph).__name__}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {compile!r}")
        eps = float(eps)
        if not eps >= 0.0 or np.isinf(eps):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        self.graph, self.eps, self.compile = graph, eps, compile
        self.layout = PackedLayout.of(graph)
        self.num_entries = self.layout.num_entries
        self.num_message_entries = self.layout.num_message_entries
        self._host_plan = build_plan(graph, self.layout, eps, fast_path)
        self._plans: dict[tuple[torch.device, torch.dtype], Plan] = {}
        self._compiled: dict[tuple[torch.device, torch.dtype], CompiledSweep] = {}
        self._compile_failed = False
        self._observed = ObservedIndex.of(self.layout)

    def __getstate__(self) -> dict:
        """Pickle without the per-(device, dtype) plans and compiled sweeps (rebuilt on use)."""
        return {**self.__dict__, "_plans": {}, "_compiled": {}}

    @property
    def uses_fast_path(self) -> bool:
        """True if sweeps run on the dense pairwise layout."""
        return self._host_plan.pairwise is not None

    @property
    def uses_compiled_sweeps(self) -> bool:
        """Whether :meth:`sweep` runs compiled (False again once compiling has failed here)."""
        d = self._host_plan.pairwise
        return self.compile and d is not None and d.compilable and not self._compile_failed

    def _plan(self, device: torch.device, dtype: torch.dtype) -> Plan:
        plan = self._plans.get((device, dtype))
        if plan is None:
            plan = self._plans[(device, dtype)] = self._host_plan.to(device, dtype)
        return plan

    # ------------------------------------------------------------------ inputs
    def pack(self, pots: Potentials, batch_size: int | None = None) -> Tensor:
        """:meth:`PackedLayout.pack`, entries clamped to :data:`NEG_INF`."""
        return self.layout.pack(pots, batch_size).clamp_min(NEG_INF)

    def unpack(self, theta: Tensor) -> list[Tensor]:
        """:meth:`PackedLayout.unpack`: per-region views of ``(B, T)``."""
        return self.layout.unpack(theta)

    def prepare(
        self,
        pots: PotentialsLike,
        batch_size: int | None = None,
        mask: Tensor | Masks | None = None,
    ) -> PreparedPotentials:
        """Pack, check and clamp potentials once, for several calls on them.

        A training step does ``prep = bp.prepare(theta)``, ``msgs = bp.sweep(prep, msgs)`` and
        ``bp.dual(prep, msgs)``: the fast path's sweep tables are built once, by the first sweep,
        and the dual's gradient flows to ``theta``. A prepared object of this instance and batch
        size is returned as it is; ``batch_size`` expands broadcast potentials. ``mask``: the
        ``(B, R)`` bool present regions (:meth:`region_mask`), or another prepared object's
        ``masks`` of the same batch (used as built); it stays with the object.

        Raises:
            TypeError, ValueError: as :meth:`pack`, or a bad mask; ValueError also for a prepared
                object whose potentials were changed in place since, whose batch size does not
                fit, or which holds another mask.
        """
        if isinstance(pots, PreparedPotentials):
            pots.check_fresh()
            held = None if pots.masks is None else pots.masks.region
            if (
                mask is not None
                and held is not None
                and mask is not held
                and mask is not pots.masks
            ):
                raise ValueError("these prepared potentials hold another region mask")
            if pots.owner is self and batch_size in (None, pots.batch_size) and mask is None:
                return pots
            theta, clean = self.layout.pack(pots.theta, batch_size), pots.clean
            mask = held if mask is None else mask
        else:
            theta, clean = clamp(self.layout.pack(pots, batch_size))
        masks = None
        if mask is not None:
            masks = self._masks(mask, theta.shape[0], self._plan(theta.device, theta.dtype))
        return PreparedPotentials(theta, clean, self, version_of(theta), masks)

    def _masks(self, mask: Tensor | Masks, batch_size: int, plan: Plan) -> Masks:
        """The :class:`Masks` of a ``(B, R)`` region mask, checked and built on ``plan``; a
        :class:`Masks` this engine built for the same batch size, device and dtype (a prepared
        object's ``masks``) as it is, its region mask rebuilt otherwise."""
        if isinstance(mask, Masks):
            if (
                mask.region.shape == (batch_size, self.graph.num_regions)
                and mask.weight.dtype == plan.counting.dtype
                and mask.region.device == plan.edge_parent.device
                and (mask.node is None) == (plan.pairwise is None)
            ):
                return mask
            mask = mask.region
        return build_masks(checked_region_mask(mask, batch_size, self.graph, plan), plan)

    def region_mask(self, variable_mask: Tensor) -> Tensor:
        """The ``(B, R)`` region mask of a ``(B, N)`` bool variable mask: a region is present
        when all its variables are.

        Raises:
            TypeError, ValueError: ``variable_mask`` is not a ``(B, N)`` bool tensor.
        """
        plan = self._plan(getattr(variable_mask, "device", None), torch.get_default_dtype())
        return region_mask_from_variables(variable_mask, plan)

    def init_messages(
        self, batch_size: int, dtype: torch.dtype = torch.float32, device: object = None
    ) -> Tensor:
        """Zero messages ``(batch_size, M)``; float32 or float64 (else ``ValueError``)."""
        check_dtype(dtype, "messages", MSGS_HINT)
        return torch.zeros(batch_size, self.num_message_entries, dtype=dtype, device=device)

    def _resolve(
        self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None
    ) -> tuple[PreparedPotentials, Tensor, Plan]:
        """Prepared potentials, messages (absent ones zeroed) and the plan of a call."""
        if not isinstance(msgs, Tensor):
            raise TypeError(f"messages must be a tensor, got {type(msgs).__name__}")
        prep = self.prepare(pots, msgs.shape[0] if msgs.dim() == 2 else None, mask)
        self.layout.check_messages(prep.theta, msgs)
        if prep.masks is not None:  # absent messages are 0, whatever arrived
            msgs = msgs * prep.masks.message
        return prep, msgs, self._plan(prep.device, prep.dtype)

    # ------------------------------------------------------------------ message passing
    def sweep(self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None) -> Tensor:
        """One block-coordinate sweep over all regions that have parents; the dual never rises.

        Potentials are constants here (no gradient). Returns new ``(B, M)`` messages (``msgs``
        is not changed); on the fast path with ``B > 1`` a transposed view of an ``(M, B)``
        tensor, which the next sweep or dual reads without a transpose. ``mask``: ``(B, R)``
        present regions (or held by prepared potentials); absent messages come out 0.
        """
        prep, msgs, plan = self._resolve(pots, msgs, mask)
        with torch.no_grad():
            compiled = None
            if self.uses_compiled_sweeps:
                key = (prep.device, prep.dtype)
                compiled = self._compiled.get(key) or self._compiled.setdefault(
                    key, CompiledSweep(plan.pairwise)
                )
            out = sweep_messages(prep, msgs.detach(), plan, compiled)
            if out is None:  # compiling failed (and warned): eager from now on
                self._compile_failed = True
                out = sweep_messages(prep, msgs.detach(), plan, None)
            return out

    def run(
        self,
        pots: PotentialsLike,
        msgs: Tensor | None = None,
        num_sweeps: int = 10,
        tol: float | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Up to ``num_sweeps`` sweeps (from zero messages if ``msgs`` is None), stopping once
        ``max_b |D_before - D_after| <= tol`` (a dual and a host sync per sweep; None: never).

        Returns:
            ``(msgs, duals)``: the final messages and the ``(num_done, B)`` duals after each
            sweep (``(0, B)`` with ``tol=None``).
        """
        with torch.no_grad():
            prep = self.prepare(pots, None if msgs is None else msgs.shape[0], mask)
            if msgs is None:
                msgs = self.init_messages(prep.batch_size, prep.dtype, prep.device)
            duals: list[Tensor] = []
            prev = self.dual(prep, msgs) if tol is not None else None
            for _ in range(num_sweeps):
                msgs = self.sweep(prep, msgs)
                if tol is not None:
                    duals.append(self.dual(prep, msgs))
                    if float((prev - duals[-1]).abs().max()) <= tol:
                        break
                    prev = duals[-1]
        return msgs, torch.stack(duals) if duals else prep.theta.new_zeros(0, prep.batch_size)

    # ------------------------------------------------------------------ read-outs
    def dual(self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None) -> Tensor:
        """The dual ``D(lam) = sum_r ĉ_r log sum exp(fhat_r / ĉ_r)`` (``max`` where ``ĉ_r = 0``),
        ``(B,)``; differentiable in the potentials and messages, and its gradient with respect
        to each table is the region's belief (:meth:`beliefs`)."""
        prep, msgs, plan = self._resolve(pots, msgs, mask)
        if plan.pairwise is not None:
            return _dual.pair_dual(prep, msgs, plan)
        return _dual.general_dual(prep, msgs, plan)

    def reparameterize(
        self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """``fhat`` of every region, packed ``(B, T)``; differentiable."""
        prep, msgs, plan = self._resolve(pots, msgs, mask)
        return readout.reparameterize(prep.theta, msgs, plan)

    def beliefs(
        self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None
    ) -> list[Tensor]:
        """Region beliefs, region ``r`` ``(B, *region_shape(r))``: the gradients of :meth:`dual`
        (softmax where ``ĉ_r > 0``, parent-implied where ``ĉ_r = 0``; see :mod:`.readout`)."""
        prep, msgs, plan = self._resolve(pots, msgs, mask)
        pad = readout.padded(readout.reparameterize(prep.theta, msgs, plan), plan)
        pad = readout.region_beliefs(pad, prep.theta, msgs, plan, prep.masks)
        return readout.split_regions(pad, plan.regions_by_shape)

    def variable_beliefs(
        self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """Per-variable beliefs ``(B, N, Kmax)`` from the smallest region holding each variable
        (uniform for a variable in no region; entries past ``num_states[i]`` are 0)."""
        prep, msgs, plan = self._resolve(pots, msgs, mask)
        return readout.variable_beliefs(prep.theta, msgs, plan, prep.masks)

    def predict(
        self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(labels, beliefs)``: :meth:`decode` and the :meth:`variable_beliefs` it decodes."""
        prep, msgs, plan = self._resolve(pots, msgs, mask)
        vb = readout.variable_beliefs(prep.theta, msgs, plan, prep.masks)
        return readout.decode(vb, plan, prep.masks), vb

    def decode(self, pots: PotentialsLike, msgs: Tensor, mask: Tensor | None = None) -> Tensor:
        """Marginal decoding: the arg-max of each variable's belief (first state on ties),
        ``(B, N)`` long; a variable in no region decodes to 0, one whose regions are all absent
        to -100."""
        return self.predict(pots, msgs, mask)[0]

    def score(
        self, pots: PotentialsLike, labels: Tensor, mask: Tensor | Masks | None = None
    ) -> Tensor:
        """``F(y) = sum_r f_r(y_r)`` of ``(B, N)`` labels, ``(B,)``; differentiable.

        ``mask``: the ``(B, R)`` present regions, or the :class:`Masks` that prepared potentials
        of the same batch hold (``prep.masks``), used as built: a training step scores the
        labels on the potentials it prepared (augmented) for the sweeps with the same masks.

        Raises:
            ValueError: labels of the wrong shape or batch size, or out of range.
        """
        readout.check_labels(labels, self.graph.num_vars)
        masks = None
        if isinstance(pots, PreparedPotentials):
            prep = self.prepare(pots, mask=mask)  # (the staleness check)
            pots, masks = prep.theta, prep.masks
        theta = self.layout.pack(pots, batch_size=labels.shape[0])
        plan = self._plan(theta.device, theta.dtype)
        if mask is not None and masks is None:
            masks = self._masks(mask, labels.shape[0], plan)
        return readout.score(theta, labels, plan, masks)

    def clamp_to_observed(
        self, pots: Potentials, labels: Tensor, singletons_only: bool = False
    ) -> Tensor:
        """Packed ``(B, T)`` potentials with every entry that disagrees with an observed label
        set to :data:`NEG_INF`; variables labelled ``< 0`` (-100: unobserved or absent) keep all
        their states. Its dual approximates ``eps log Z(x, y_o)``, and with every label observed
        it is ``F(y)`` for any messages (:mod:`~structlight.inference.observed`).

        ``singletons_only``: clamp the singleton tables only (and the tables of regions holding
        a variable without a singleton region). The dual has the same minimum, and pair tables
        shared by the batch stay shared, so its sweeps run as fast as the free problem's; with
        every label observed it is ``F(y)`` at its minimum (not for any messages).

        Raises:
            ValueError: labels of the wrong shape, or at or above a variable's state count.
        """
        labels = torch.as_tensor(labels)
        readout.check_labels(labels, self.graph.num_vars)
        states = torch.as_tensor(self.graph.num_states, device=labels.device)
        if bool((labels >= states).any()):
            b, v = (int(i) for i in (labels >= states).nonzero()[0])
            raise ValueError(
                f"labels[{b}, {v}] = {int(labels[b, v])}, but variable {v} has "
                f"{int(states[v])} states"
            )
        theta = self.layout.pack(pots, batch_size=labels.shape[0])
        return clamp_to_observed(theta, labels, self._observed, singletons_only)

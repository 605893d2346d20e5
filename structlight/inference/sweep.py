"""Sweeps: the loop over the schedule's blocks, each one :mod:`~structlight.inference.update`.

:func:`general_sweep` runs on the general layout. :func:`pair_sweep` runs on the pairwise fast
path's slots; the same function runs eagerly and, wrapped by :class:`CompiledSweep`, under
:func:`torch.compile`. Eagerly it picks the CPU's fastest forms (flat gathers for one example,
matrix products for shared tables) and redoes any block whose exp-space sums underflow in log
space; compiled (``fused``), it keeps to broadcast forms the compiler fuses and reports the
smallest sum instead, and the whole sweep is redone in log space when one underflowed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from structlight.inference.masks import Masks
from structlight.inference.pairwise_plan import PairBlock, PairwisePlan
from structlight.inference.plan import Plan
from structlight.inference.prepared import PreparedPotentials, SweepTables, dense_tables
from structlight.inference.tempered import Temper
from structlight.inference.update import (
    general_block_update,
    pair_mu_exp,
    pair_mu_exp_one,
    pair_mu_log,
    pair_write_back,
)

__all__ = [
    "CompiledSweep",
    "from_slots",
    "general_sweep",
    "pair_sweep",
    "sweep_messages",
    "to_slots",
]


def underflow_limit(dtype: torch.dtype) -> float:
    """Exp-space sums below this (``tiny / eps``) may have lost precision to underflow."""
    return torch.finfo(dtype).tiny / torch.finfo(dtype).eps


def general_sweep(theta: Tensor, msgs: Tensor, plan: Plan, masks: Masks | None = None) -> Tensor:
    """One sweep on the general layout: new ``(B, M)`` messages (``msgs`` is not changed)."""
    lam = msgs.clone()
    # one -inf column at position T: the padding of the mu rows points there
    theta = torch.cat([theta, theta.new_full((theta.shape[0], 1), float("-inf"))], dim=1)
    for blk in plan.blocks:
        general_block_update(theta, lam, blk, masks)
    return lam


def sweep_messages(
    prep: PreparedPotentials, msgs: Tensor, plan: Plan, compiled: CompiledSweep | None
) -> Tensor | None:
    """One sweep of ``msgs`` ``(B, M)`` on the plan's layout, compiled when ``compiled`` is
    given (None back if compiling failed); new messages, ``msgs`` is not changed."""
    d, masks = plan.pairwise, prep.masks
    if d is None:
        return general_sweep(prep.theta.detach(), msgs, plan, masks)
    if compiled is not None:
        return compiled(prep, msgs, d, stacklevel=4)
    lam, theta, tables = to_slots(msgs, d, copy=True), prep.theta.detach(), prep.sweep_tables(d)
    lam, _ = pair_sweep(lam, theta, tables, d.blocks, d, False, masks)
    return from_slots(lam, d)


def to_slots(msgs: Tensor, d: PairwisePlan, copy: bool = False) -> Tensor:
    """Messages ``(B, M)`` as slots ``(S, K, B)``, padded for mixed state counts.

    A new tensor with ``copy`` (a sweep writes into it); otherwise possibly a view of ``msgs``:
    the messages a sweep returns are already laid out ``(M, B)`` underneath (see
    :func:`from_slots`), and then no transpose is needed.
    """
    b = msgs.shape[0]
    if not d.uniform:
        msgs = torch.cat([msgs, msgs.new_zeros(b, 1)], dim=1)
    if b == 1:
        mt = msgs.reshape(-1).index_select(0, d.from_general)
    else:
        mt = msgs.t()
        fresh = not mt.is_contiguous()
        if fresh:
            mt = mt.contiguous()  # a transpose (M, B): a new tensor
        if not d.in_order:
            mt, fresh = mt.index_select(0, d.from_general), True
        if copy and not fresh:  # msgs was (M, B) in memory already
            mt = mt.clone()
    return mt.view(-1, d.kmax, b)


def from_slots(lam: Tensor, d: PairwisePlan) -> Tensor:
    """Slots ``(S, K, B)`` as ``(B, M)`` messages: for ``B > 1`` a transposed view of an
    ``(M, B)`` tensor, so that the next sweep or dual reads them without a transpose and a
    store's scatter copies them in one pass."""
    b = lam.shape[-1]
    lam = lam.reshape(-1, b)
    if b == 1 and not d.in_order:
        return lam.view(-1).index_select(0, d.to_general).view(1, -1)
    return (lam if d.in_order else lam.index_select(0, d.to_general)).t()


def pair_sweep(
    lam: Tensor,
    theta: Tensor,
    tables: SweepTables,
    blocks: Sequence[PairBlock],
    d: PairwisePlan,
    fused: bool,
    masks: Masks | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One sweep on the fast path over the slots ``lam`` ``(S, K, B)``.

    Args:
        lam: the slots; eagerly a copy (:func:`to_slots` with ``copy=True``) updated in place.
        theta: ``(B, T)`` clamped potentials (read only to redo an underflowing block).
        tables: the sweep tables of ``theta``; exp space when ``tables.exp`` is set.
        blocks: the blocks, ``d.blocks`` (compiled: the same blocks as views of one index
            tensor, see :class:`CompiledSweep`).
        d: the fast path's plan (its state count, padding and table rows).
        fused: the forms a compiler fuses (broadcasts, functional writes, no host syncs):
            underflow is reported, not redone.
        masks: the batch's region masks (absent messages send no ``mu`` and come out 0, the
            weights are each example's own), or None.

    Returns:
        ``(lam, low)``: the new slots and, with ``fused`` in exp space, the smallest exp-space
        sum met (below :func:`underflow_limit`, or NaN, the sweep must be redone in log space);
        else None.
    """
    b, k = lam.shape[-1], d.kmax
    flat = b == 1 and not fused
    form = "fused" if fused else "flat" if flat else "rows"
    exp = tables.exp
    tiny = underflow_limit(lam.dtype)
    low = tt = None
    for blk in blocks:
        if flat:
            lo = lam.view(-1).index_select(0, blk.other_flat).view(-1, k, 1)
        else:
            lo = lam.index_select(0, blk.other)  # lam[j->e](y_j), (P, K, B)
        if exp is None:
            mu = pair_mu_log(tables.tabs[blk.start : blk.stop], lo, blk)
        else:
            if flat:
                mu, s_min = pair_mu_exp_one(lo, exp, blk)
            else:
                mu, s_min = pair_mu_exp(lo, exp, blk, matmul=not fused)
            if fused:
                low = s_min if low is None else torch.minimum(low, s_min)
            elif bool(s_min < tiny):  # underflow: this block in log space
                if tt is None:
                    tt = theta.t().contiguous()  # (T, B)
                rows = d.tab_rows[blk.start * k * k : blk.stop * k * k]
                mu = pair_mu_log(tt.index_select(0, rows).view(-1, k, k, b), lo, blk)
        weight = blk.weight
        if masks is not None:
            mu = mu * masks.slot_present[blk.start : blk.stop]
            weight = masks.slot_weight[blk.start : blk.stop]
        lam = pair_write_back(lam, tables.nodes, mu, blk, weight, d.uniform, form)
    return lam, low


class _FusedBlock(NamedTuple):
    """A :class:`PairBlock` of a compiled sweep: its index tensors are views of one tensor, so
    that the compiled function has few inputs to guard (the fields :func:`pair_sweep` reads
    with ``fused``, one state count and every ``ĉ = 1``)."""

    start: int
    stop: int
    other: Tensor
    node_pos: Tensor
    nodes: Tensor
    weight: Tensor
    temper: Temper
    kernel: str
    single: bool


def _fused_sweep(
    lam: Tensor,
    theta: Tensor,
    tables: SweepTables,
    index: Tensor,
    weights: Tensor,
    spans: tuple[tuple[int, int, int, int], ...],
    temper: Temper,
    kernel: str,
    d: PairwisePlan,
    masks: Masks | None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`pair_sweep` with ``fused``, its blocks rebuilt from ``index`` (what is compiled):
    ``spans`` holds each block's slots ``start..stop``, its offset in ``index`` and its number
    of nodes; every block has the same ``temper`` (all ``ĉ = 1``) and ``kernel``."""
    blocks = []
    for start, stop, off, n in spans:
        p = stop - start
        node_pos = index[off + p : off + 2 * p]
        nodes = index[off + 2 * p : off + 2 * p + n]
        w = weights[start:stop]
        blocks.append(
            _FusedBlock(
                start, stop, index[off : off + p], node_pos, nodes, w, temper, kernel, n == 1
            )
        )
    return pair_sweep(lam, theta, tables, blocks, d, True, masks)


class CompiledSweep:
    """:func:`pair_sweep` under :func:`torch.compile`, for one engine, plan, device and dtype.

    The blocks' index tensors are concatenated into one tensor (and their weights into another)
    so that the compiled function guards a handful of inputs, not a few per block. Compiling
    happens on the first call (seconds to a minute; again for a new batch size). Calling returns
    the new messages, or None if compiling failed: the engine then warns once and sweeps eagerly
    from then on.
    """

    def __init__(self, d: PairwisePlan) -> None:
        parts, spans, off = [], [], 0
        for blk in d.blocks:
            p, n = blk.stop - blk.start, int(blk.nodes.numel())
            parts += [blk.other, blk.node_pos, blk.nodes]
            spans.append((blk.start, blk.stop, off, n))
            off += 2 * p + n
        dtype = d.node_valid.dtype
        self._weights = torch.cat(
            [
                blk.weight.to(dtype)
                if isinstance(blk.weight, Tensor)
                else blk.other.new_full((blk.stop - blk.start, 1, 1), blk.weight, dtype=dtype)
                for blk in d.blocks
            ]
        )
        self._index, self._spans = torch.cat(parts), tuple(spans)
        self._temper, self._kernel = d.blocks[0].temper, d.blocks[0].kernel
        # static shapes: one compiled variant per graph and batch size (with automatic dynamic
        # shapes, a second graph's recompile of this shared function gave wrong messages; the
        # test that several graphs in one process stay exact guards this)
        self._fn, self._error = None, None
        try:
            self._fn = torch.compile(_fused_sweep, dynamic=False)
        except Exception as err:  # torch.compile unusable here: reported by the first call
            self._error = err

    def __call__(
        self, prep: PreparedPotentials, msgs: Tensor, d: PairwisePlan, stacklevel: int
    ) -> Tensor | None:
        theta = prep.theta.detach()
        tables = prep.sweep_tables(d)
        consts = (
            self._index,
            self._weights,
            self._spans,
            self._temper,
            self._kernel,
            d,
            prep.masks,
        )
        try:
            if self._error is not None:
                raise self._error
            lam, low = self._fn(to_slots(msgs, d), theta, tables, *consts)
            # underflow somewhere (later blocks may then have met inf - inf: NaN, which fails
            # this test too): the whole sweep again, in log space
            if low is not None and not bool(low >= underflow_limit(theta.dtype)):
                logt = SweepTables(tables.nodes, dense_tables(theta, d, d.tab_rows)[1], None)
                lam, _ = self._fn(to_slots(msgs, d), theta, logt, *consts)
        except Exception as err:  # no working compiler, say
            warnings.warn(
                f"ConvexBP(compile=True): torch.compile failed ({type(err).__name__}: "
                f"{(str(err).splitlines() or [''])[0][:200]}); sweeps run eagerly instead "
                "(same results, slower)",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
            return None
        return from_slots(lam, d)

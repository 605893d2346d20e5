"""Prepared potentials: clamped ``theta`` and the pairwise sweep tables built from it, explicitly.

:meth:`ConvexBP.prepare` packs, checks and clamps potentials once and returns a
:class:`PreparedPotentials`. On the pairwise fast path the first sweep on the object builds its
:class:`SweepTables` (the batch-last pair tables; in exp space ``exp(f_e - max f_e)``) and keeps
them on it, so later sweeps and the dual on the same object reuse them. What is shared is decided
by the caller, by passing the same object; nothing is remembered between calls on plain
potentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from structlight.inference.layout import NEG_INF
from structlight.inference.masks import Masks
from structlight.inference.pairwise_plan import PairwisePlan
from structlight.inference.tempered import tree_max

__all__ = ["PreparedPotentials", "SweepTables", "clamp", "dense_tables", "shared_pairs"]


def clamp(theta: Tensor) -> tuple[Tensor, bool]:
    """``(theta.clamp_min(NEG_INF), False)``; on the CPU ``(theta, True)`` where nothing is below.

    (Skipping the copy saves its time and the backward's mask; on a GPU the check would cost a
    device sync, so the clamp always runs there.)
    """
    if theta.device.type == "cpu":
        if theta.numel() == 0 or not bool(theta.detach().amin() < NEG_INF):
            return theta, True
    return theta.clamp_min(NEG_INF), False


def version_of(t: Tensor) -> int | None:
    """``t``'s version counter (bumped by every in-place change); None for inference tensors."""
    return None if t.is_inference() else t._version


@dataclass(frozen=True, eq=False)
class SweepTables:
    """The per-potentials part of a pairwise sweep, built once per prepared object.

    Log space (``exp`` None): ``tabs[q, y_j, y_i, b] = f_e(y_i, y_j)`` for the q-th message
    ``lam[i->e]`` of the sweep (``e = (i, j)``), the trailing axis 1 where the batch shares its
    pair tables. Exp space (``tabs`` None): see :class:`ExpTables`.

    Attributes:
        nodes: ``(N, K, B)`` singleton tables.
        tabs: log-space oriented pair tables, or None.
        exp: exp-space tables, or None.
    """

    nodes: Tensor
    tabs: Tensor | None
    exp: ExpTables | None


@dataclass(frozen=True, eq=False)
class ExpTables:
    """Exponentiated pair tables, with ``c_e = max f_e`` per pair (and per example).

    Attributes:
        etab: ``(P_all, K, K, bt)`` ``exp(f_e - c_e)`` oriented ``[y_j, y_i]`` per message
            (``bt`` = B, or 1 where the batch shares its pair tables).
        c_msg: ``(P_all, 1, bt)`` the ``c_e`` of each message's table.
        epair: ``(E, K*K, bt)`` ``exp(f_e - c_e)`` in pair order (what the dual reads).
        c_pair: ``(E, 1, bt)``.
        etab_t: shared tables only: ``(P_all, K, K)`` as ``[y_i, y_j]``, the left factor of a
            block's batched matrix products; else None.
    """

    etab: Tensor
    c_msg: Tensor
    epair: Tensor
    c_pair: Tensor
    etab_t: Tensor | None


def dense_tables(theta: Tensor, d: PairwisePlan, rows: Tensor | None = None) -> list[Tensor]:
    """Singleton ``(N, K, B)`` tables, then pair ``(E, K, K, B)`` tables in tuple order or,
    given ``rows``, the ``(n, K, K, B)`` tables at those theta positions; transposes theta once.
    """
    b, k = theta.shape[0], d.kmax
    if d.uniform:
        tt = theta.t().contiguous()  # (T, B)
    else:  # with a NEG_INF row at T for the padding
        tt = torch.cat([theta, theta.new_full((b, 1), NEG_INF)], dim=1).t().contiguous()

    def take(flat: Tensor, span: tuple[int, int] | None) -> Tensor:
        if span is not None:
            return tt[span[0] : span[1]]
        if b == 1:  # a flat gather is far faster than one of rows of 1
            return tt.view(-1).index_select(0, flat)
        return tt.index_select(0, flat)

    nodes = take(d.node_flat, d.node_span).view(-1, k, b)
    pairs = take(d.pair_flat, d.pair_span) if rows is None else take(rows, None)
    return [nodes, pairs.view(-1, k, k, b)]


def shared_pairs(theta: Tensor, d: PairwisePlan) -> tuple[Tensor, Tensor] | None:
    """``(nodes (N, K, B), pairs (E, K*K, 1))`` when every example has the same pair tables.

    Checked on the data (the first and last example first; then every column's max and min over
    the batch must agree, which a NaN never passes); None otherwise, with one example, or when
    the node or pair entries are not contiguous ranges of theta.
    """
    b = theta.shape[0]
    if b == 1 or not d.uniform or d.node_span is None or d.pair_span is None:
        return None
    p0, p1 = d.pair_span
    part = theta[:, p0:p1]
    first = part[:1]
    if not torch.equal(first, part[-1:]) or not torch.equal(part.amax(0), part.amin(0)):
        return None
    n0, n1 = d.node_span
    nodes = theta[:, n0:n1].t().contiguous().view(-1, d.kmax, b)
    return nodes, first.t().reshape(-1, d.kmax * d.kmax, 1)


def build_sweep_tables(theta: Tensor, d: PairwisePlan) -> SweepTables:
    """The :class:`SweepTables` of ``theta`` (detached) on the fast path ``d``."""
    b, k = theta.shape[0], d.kmax
    cpu = theta.device.type == "cpu"
    shared = shared_pairs(theta, d) if cpu else None
    if d.exp_space and cpu:
        if shared is not None:
            # one set of pair tables for the whole batch (e.g. a head's K x K tables): exps
            # once, and each block's sums are (K, K) @ (K, B) products
            nodes, pairs = shared  # (N, K, B), (E, K*K, 1)
        else:
            nodes, pairs = dense_tables(theta, d)
            pairs = pairs.view(pairs.shape[0], -1, b)  # (E, K*K, B)
        bt = pairs.shape[-1]
        c = tree_max(pairs, 1)  # (E, 1, bt)
        epair = (pairs - c).exp_()  # (E, K*K, bt) in tuple order, kept for the dual
        etab = epair.view(-1, bt).index_select(0, d.tab_local).view(-1, k, k, bt)
        c_msg = c.view(-1, bt).index_select(0, d.msg_pair).unsqueeze(1)  # (P_all, 1, bt)
        etab_t = etab[..., 0].transpose(1, 2).contiguous() if shared is not None else None
        return SweepTables(nodes, None, ExpTables(etab, c_msg, epair, c, etab_t))
    if shared is not None:  # log-space tables (two states, say) shared by the batch
        nodes, pairs = shared
        tabs = pairs.view(-1, 1).index_select(0, d.tab_local).view(-1, k, k, 1)
        return SweepTables(nodes, tabs, None)
    nodes, tabs = dense_tables(theta, d, d.tab_rows)
    return SweepTables(nodes, tabs, None)


@dataclass(frozen=True, eq=False)
class PreparedPotentials:
    """Potentials packed, checked and clamped once, with the fast path's tables built from them.

    Made by :meth:`ConvexBP.prepare`; every method of :class:`ConvexBP` that takes potentials
    takes one in their place. On the pairwise fast path the first sweep on the object builds its
    :class:`SweepTables`, and later sweeps and :meth:`ConvexBP.dual` on the same object reuse
    them: a solver loop or a training step prepares once, sweeps under ``no_grad`` and takes the
    dual with gradients, paying for the transpose and the exps once.

    The tables are built without gradient from ``theta.detach()``; :meth:`ConvexBP.dual` on the
    object is still differentiable with respect to the potentials it was prepared from. Where
    ``theta`` is the caller's tensor itself (``clean``), changing it in place afterwards makes
    the object stale: using it then raises a ``ValueError`` (prepare again). Otherwise ``theta``
    is a copy and the object a snapshot of the values at :meth:`ConvexBP.prepare`.

    The table slot is filled at most once, by the first sweep (two threads racing there each
    build identical tables and one set is kept); the object is otherwise immutable.

    Attributes:
        theta: ``(B, T)`` packed potentials, entries below ``NEG_INF`` clamped; it carries the
            autograd graph of the input.
        clean: nothing needed clamping and ``theta`` is the input itself (checked on the CPU;
            on a GPU the check would cost a device sync, so the clamp always runs and this is
            False).
        masks: the batch's :class:`~structlight.inference.masks.Masks`, or None: every region
            present. Absent regions' entries of ``theta`` are never part of a result, but they
            are multiplied by 0 on the way, so they must be finite (the heads' potentials are;
            the non-finite guard checks every entry).
    """

    theta: Tensor
    clean: bool
    owner: object = field(repr=False)  # the ConvexBP whose layout the tables follow
    version: int | None = field(repr=False)  # theta's version counter when prepared
    masks: Masks | None = field(default=None, repr=False)  # the batch's region mask, if any
    _tables: list[SweepTables] = field(default_factory=list, repr=False)

    @property
    def device(self) -> torch.device:
        """The device of :attr:`theta`."""
        return self.theta.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of :attr:`theta`."""
        return self.theta.dtype

    @property
    def batch_size(self) -> int:
        """``B``, the batch size of :attr:`theta`."""
        return int(self.theta.shape[0])

    def check_fresh(self) -> None:
        """Raise if :attr:`theta` was changed in place since it was prepared.

        Raises:
            ValueError: the potentials were changed in place after :meth:`ConvexBP.prepare`.
        """
        if self.version is not None and self.version != self.theta._version:
            raise ValueError(
                "the potentials were changed in place after ConvexBP.prepare(): prepare them "
                "again (a prepared object holds tables built from the old values)"
            )

    def sweep_tables(self, d: PairwisePlan) -> SweepTables:
        """The fast path's :class:`SweepTables` of these potentials, built on first use."""
        if not self._tables:
            with torch.no_grad():
                tables = build_sweep_tables(self.theta.detach(), d)
            if not self._tables:  # (a racing thread's identical tables may have landed)
                self._tables.append(tables)
        return self._tables[0]

    def built_tables(self) -> SweepTables | None:
        """The tables a sweep on this object built, or None (the dual never builds them)."""
        return self._tables[0] if self._tables else None

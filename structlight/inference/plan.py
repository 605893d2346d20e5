"""Plans: a region graph turned once into frozen index arrays for the engine.

:func:`build_plan` walks the graph (its schedule, projections and counting numbers) once and
returns a :class:`Plan` of NumPy arrays; :meth:`Plan.to` gives the same plan as tensors on a
device and dtype (the engine keeps one per device and dtype). Every step of a block update is then
one gather, one ``index_add`` or one reduction over all regions of the block at once. Pairwise
graphs also get a :class:`~structlight.inference.pairwise_plan.PairwisePlan` (the fast path).

The general layout of a block (see :func:`structlight.inference.update.general_block_update`):
for every parent ``p`` of a block region ``r``, one copy of ``p``'s table is gathered from
``theta`` into ``x`` (positions ``xpos``), the messages into ``p`` from its other children are
added (``xadd``) and those out of ``p`` subtracted (``xsub``); then each entry of
``mu[p->r](y_r)`` reduces the row ``mu_idx`` of ``x`` (the parent states projecting onto
``y_r``, padded with the ``-inf`` column at the end of ``x``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference.layout import PackedLayout
from structlight.inference.pairwise_plan import PairwisePlan, build_pairwise_plan
from structlight.inference.tempered import Temper

__all__ = ["GeneralBlock", "Plan", "ZeroLevel", "build_plan", "cat_int"]


def cat_int(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenated int64 arrays (an empty int64 array for no parts)."""
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def to_tensors(obj: object, device: torch.device, dtype: torch.dtype) -> object:
    """``obj`` with every NumPy array a tensor (float arrays in ``dtype``, int arrays int64),
    through dataclasses, lists and tuples; everything else as it is."""
    if isinstance(obj, np.ndarray):
        want = dtype if obj.dtype.kind == "f" else torch.long
        return torch.as_tensor(obj, dtype=want, device=device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj,
            **{
                f.name: to_tensors(getattr(obj, f.name), device, dtype)
                for f in dataclasses.fields(obj)
                if f.init
            },
        )
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_tensors(v, device, dtype) for v in obj)
    return obj


@dataclass(frozen=True, eq=False)
class GeneralBlock:
    """Index arrays of one parallel block on the general layout."""

    xpos: Tensor  # (n_x + 1,) theta positions of the parents' tables (one copy per block edge),
    # then T, the -inf column appended to theta
    xadd_tgt: Tensor  # x positions / message positions: messages into the parents from their
    xadd_src: Tensor  # other children
    xsub_tgt: Tensor  # x positions / message positions: messages out of the parents
    xsub_src: Tensor
    mu_idx: Tensor  # (n_mu, K) x positions reduced into each mu entry; n_x = padding (-inf)
    mu_temper: Temper  # ĉ of the parent of each mu entry: (n_mu,), inv (n_mu, 1)
    apos: Tensor  # (n_a,) theta positions of the block regions' tables
    aadd_tgt: Tensor  # a positions / message positions: messages into the block regions
    aadd_src: Tensor
    mu_tgt: Tensor  # (n_mu,) position in a of the region state of each mu entry
    weight: Tensor  # (n_mu,) c_p / (c_r + sum_p' c_p')
    msg_pos: Tensor  # (n_mu,) position in lam of each mu entry
    mu_edge: Tensor  # (n_mu,) edge (message) of each mu entry


@dataclass(frozen=True, eq=False)
class ZeroLevel:
    """One depth of ĉ = 0 regions with parents, whose beliefs come from their parents'."""

    regions: Tensor  # (G,) the regions
    src: Tensor  # parent-belief entries of the flat (B, R*Smax) beliefs
    tgt: Tensor  # their entries in the level's flat (B, G*Smax) parent marginals


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything the engine computes with, for one graph and temperature.

    Built once by :func:`build_plan` (NumPy), converted per device and dtype by :meth:`to`.
    """

    blocks: list[GeneralBlock]
    fhat_tgt_in: Tensor  # fhat = theta + lam[in_src] at in_tgt - lam[out_src] at out_tgt
    fhat_src_in: Tensor
    fhat_tgt_out: Tensor
    fhat_src_out: Tensor
    pad_idx: Tensor  # (R, Smax) theta positions; T = padding
    temper: Temper  # ĉ_r: (R,), inv (R, 1)
    has_zero: bool  # some ĉ_r = 0: beliefs need the parent-implied ones of those regions
    var_src: Tensor  # padded-belief positions summed into each variable state
    var_tgt: Tensor
    var_pad_idx: Tensor  # (N, Kmax) positions in the flat variable-belief vector; V = padding
    var_fill: Tensor  # (V + 1,) 1 / K_v at the states of variables in no region, else 0
    has_missing_vars: bool  # some variable is in no region
    score_base: Tensor  # (R,) offsets o_r
    score_vars: Tensor  # (R, L) variables of each region (padded with 0)
    score_strides: Tensor  # (R, L) row-major strides (0 in padding)
    edge_child: Tensor  # (E,) child region of each message
    edge_parent: Tensor  # (E,) parent region of each message
    zero_levels: list[ZeroLevel]  # ĉ = 0 regions with parents, top-down
    num_states: Tensor  # (N,) state counts
    counting: Tensor  # (R,) c_r (per-example message weights of masked batches)
    msg_edge: Tensor  # (M,) edge of each message entry
    score_valid: Tensor  # (R, L) 1 where score_vars holds one of the region's variables
    regions_by_shape: dict[tuple[int, ...], list[int]]  # region indices by region shape
    pairwise: PairwisePlan | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> Plan:
        """The plan as tensors on ``device`` (float arrays in ``dtype``)."""
        return to_tensors(self, device, dtype)  # type: ignore[return-value]


def _zero_levels(graph: RegionGraph, c_hat: np.ndarray, sizes: np.ndarray) -> list[ZeroLevel]:
    """The ĉ = 0 regions that have parents, by depth (top-down).

    Such a region's belief is the sum of its parents' beliefs marginalised onto it (then
    restricted to its arg-max face, :func:`structlight.inference.readout.face_beliefs`), so a
    region can only be done after its parents: one vectorised step per depth in the Hasse
    diagram (no parents: depth 0). ``src``/``tgt``: every parent-belief entry ``p * Smax + y_p``
    of the padded ``(B, R, Smax)`` beliefs and the entry ``j * Smax + y_r`` of the level's
    ``(B, G, Smax)`` sums it goes to.
    """
    g = graph
    smax = int(sizes.max())
    zero = c_hat == 0
    if not any(zero[r] and g.parents(r) for r in range(g.num_regions)):
        return []
    depth = np.zeros(g.num_regions, dtype=np.int64)
    # parents are strict supersets: larger regions first gives every parent its depth first
    for r in sorted(range(g.num_regions), key=lambda r: -len(g.regions[r])):
        ps = g.parents(r)
        depth[r] = 1 + max(depth[p] for p in ps) if ps else 0
    todo = [r for r in range(g.num_regions) if zero[r] and g.parents(r)]
    levels = []
    for lvl in sorted({int(depth[r]) for r in todo}):
        regs = [r for r in todo if depth[r] == lvl]
        src, tgt = [], []
        for j, r in enumerate(regs):
            for p in g.parents(r):
                src.append(p * smax + np.arange(sizes[p]))
                tgt.append(j * smax + g.projection(r, p))
        levels.append(ZeroLevel(np.array(regs, dtype=np.int64), cat_int(src), cat_int(tgt)))
    return levels


def _general_blocks(
    graph: RegionGraph, layout: PackedLayout, c_hat: np.ndarray
) -> list[GeneralBlock]:
    g, sizes, off, msg_off = graph, layout.sizes, layout.offsets, layout.message_offsets
    edge_id = {e: i for i, e in enumerate(g.edges)}
    counting = g.counting_numbers
    blocks = []
    for block in g.schedule():
        xpos, add_tgt, add_src, sub_tgt, sub_src = [], [], [], [], []
        mu_rows, mu_c_hat, mu_tgt, weight, msg_pos, mu_edge = [], [], [], [], [], []
        apos, aat, aas = [], [], []
        n_x = n_a = 0
        a_off: dict[int, int] = {}
        for r in block:
            a_off[r] = n_a
            sr = int(sizes[r])
            apos.append(off[r] + np.arange(sr))
            for c in g.children(r):
                aat.append(n_a + np.arange(sr))
                aas.append(msg_off[edge_id[(c, r)]] + g.projection(c, r))
            n_a += sr
        for r in block:
            sr = int(sizes[r])
            parents = g.parents(r)
            denom = counting[r] + sum(counting[p] for p in parents)
            for p in parents:
                sp = int(sizes[p])
                xpos.append(off[p] + np.arange(sp))
                for c in g.children(p):
                    if c != r:
                        add_tgt.append(n_x + np.arange(sp))
                        add_src.append(msg_off[edge_id[(c, p)]] + g.projection(c, p))
                for q in g.parents(p):
                    sub_tgt.append(n_x + np.arange(sp))
                    sub_src.append(msg_off[edge_id[(p, q)]] + np.arange(sp))
                # mu rows: for each child state, the parent states projecting onto it
                order = np.argsort(g.projection(r, p), kind="stable")
                mu_rows.append((n_x + order).reshape(sr, sp // sr))
                mu_c_hat.append(np.full(sr, c_hat[p]))
                mu_tgt.append(a_off[r] + np.arange(sr))
                w = counting[p] / denom if denom > 0 else 1.0 / (len(parents) + 1)
                weight.append(np.full(sr, w))
                msg_pos.append(msg_off[edge_id[(r, p)]] + np.arange(sr))
                mu_edge.append(np.full(sr, edge_id[(r, p)]))
                n_x += sp
        kmax = max(rw.shape[1] for rw in mu_rows)
        mu_idx = np.full((sum(rw.shape[0] for rw in mu_rows), kmax), n_x, dtype=np.int64)
        i = 0
        for rw in mu_rows:
            mu_idx[i : i + rw.shape[0], : rw.shape[1]] = rw
            i += rw.shape[0]
        c = np.concatenate(mu_c_hat)
        blocks.append(
            GeneralBlock(
                xpos=cat_int([*xpos, np.array([layout.num_entries])]),  # + the -inf column
                xadd_tgt=cat_int(add_tgt),
                xadd_src=cat_int(add_src),
                xsub_tgt=cat_int(sub_tgt),
                xsub_src=cat_int(sub_src),
                mu_idx=mu_idx,
                mu_temper=Temper.numpy(c, (c.size,), -1),
                apos=cat_int(apos),
                aadd_tgt=cat_int(aat),
                aadd_src=cat_int(aas),
                mu_tgt=cat_int(mu_tgt),
                weight=np.concatenate(weight),
                msg_pos=cat_int(msg_pos),
                mu_edge=cat_int(mu_edge),
            )
        )
    return blocks


def build_plan(graph: RegionGraph, layout: PackedLayout, eps: float, fast_path: bool) -> Plan:
    """The plan of ``graph`` at temperature ``eps`` (NumPy arrays; see :meth:`Plan.to`).

    Args:
        graph: the region graph.
        layout: its packed layout.
        eps: the temperature; ``ĉ_r = eps * c_r``.
        fast_path: also build the pairwise fast path where the graph is pairwise.
    """
    g, sizes, off, msg_off = graph, layout.sizes, layout.offsets, layout.message_offsets
    c_hat = np.array([eps * c for c in g.counting_numbers], dtype=np.float64)
    # reparameterised scores of all regions
    in_tgt, in_src, out_tgt, out_src = [], [], [], []
    for e, (c, p) in enumerate(g.edges):
        in_tgt.append(off[p] + np.arange(sizes[p]))
        in_src.append(msg_off[e] + g.projection(c, p))
        out_tgt.append(off[c] + np.arange(sizes[c]))
        out_src.append(msg_off[e] + np.arange(sizes[c]))
    smax = int(sizes.max())
    num_r = g.num_regions
    pad_idx = np.full((num_r, smax), layout.num_entries, dtype=np.int64)
    for r in range(num_r):
        pad_idx[r, : sizes[r]] = off[r] + np.arange(sizes[r])
    # variable beliefs: from the smallest region holding each variable
    ks = np.array(g.num_states, dtype=np.int64)
    var_off = np.concatenate([[0], np.cumsum(ks)[:-1]])
    holder: dict[int, int] = {}
    for r, reg in enumerate(g.regions):
        for v in reg:
            if v not in holder or sizes[r] < sizes[holder[v]]:
                holder[v] = r
    missing = [v for v in range(g.num_vars) if v not in holder]
    vsrc, vtgt = [], []
    for v, r in sorted(holder.items()):
        reg = g.regions[r]
        states = np.indices(g.region_shape(r)).reshape(len(reg), -1)[reg.index(v)]
        vsrc.append(r * smax + np.arange(sizes[r]))
        vtgt.append(var_off[v] + states)
    var_pad = np.full((g.num_vars, int(ks.max())), int(ks.sum()), dtype=np.int64)
    for v in range(g.num_vars):
        var_pad[v, : ks[v]] = var_off[v] + np.arange(ks[v])
    # variables in no region: the model puts no factor on them, so their belief is uniform
    var_fill = np.zeros(int(ks.sum()) + 1)
    for v in missing:
        var_fill[var_off[v] : var_off[v] + ks[v]] = 1.0 / ks[v]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for r in range(num_r):
        by_shape.setdefault(tuple(g.region_shape(r)), []).append(r)
    lmax = max(len(r) for r in g.regions)
    svars = np.zeros((num_r, lmax), dtype=np.int64)
    sstr = np.zeros((num_r, lmax), dtype=np.int64)
    for r, reg in enumerate(g.regions):
        shape = g.region_shape(r)
        svars[r, : len(reg)] = reg
        sstr[r, : len(reg)] = np.cumprod((list(shape[1:]) + [1])[::-1])[::-1]
    return Plan(
        blocks=_general_blocks(g, layout, c_hat),
        fhat_tgt_in=cat_int(in_tgt),
        fhat_src_in=cat_int(in_src),
        fhat_tgt_out=cat_int(out_tgt),
        fhat_src_out=cat_int(out_src),
        pad_idx=pad_idx,
        temper=Temper.numpy(c_hat, (num_r,), -1),
        has_zero=bool((c_hat == 0).any()),
        var_src=cat_int(vsrc),
        var_tgt=cat_int(vtgt),
        var_pad_idx=var_pad,
        var_fill=var_fill,
        has_missing_vars=bool(missing),
        score_base=off.copy(),
        score_vars=svars,
        score_strides=sstr,
        edge_child=np.array([c for c, _ in g.edges], dtype=np.int64),
        edge_parent=np.array([p for _, p in g.edges], dtype=np.int64),
        zero_levels=_zero_levels(g, c_hat, sizes),
        num_states=ks,
        counting=np.array(g.counting_numbers, dtype=np.float64),
        msg_edge=np.repeat(np.arange(len(g.edges)), [sizes[c] for c, _ in g.edges]).astype(
            np.int64
        ),
        score_valid=(
            np.arange(lmax)[None, :] < np.array([len(r) for r in g.regions])[:, None]
        ).astype(np.int64),
        regions_by_shape=by_shape,
        pairwise=build_pairwise_plan(g, layout, c_hat) if fast_path else None,
    )

"""The pairwise fast path's plan: a dense batch-last layout for graphs of singletons and pairs.

Messages live in *slots* ``(S, K, B)``, one slot per message, in sweep order (block by block,
within a block node by node, each node's pairs in parent order), so that a block writes one
contiguous range of slots. Node and pair tables are rows of the transposed packed potentials
``(T, B)``; every elementwise op and every reduction over states then runs over contiguous chunks
of ``K * B`` numbers (batch-first, small state counts would leave innermost axes of 2..26
entries, where CPU kernels crawl), and every gather is an ``index_select`` of whole ``(K, B)`` or
``(K, K, B)`` chunks along dim 0. With mixed state counts everything is padded to ``Kmax``
(padding: ``NEG_INF`` scores, zero messages).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference.layout import PackedLayout
from structlight.inference.tempered import Temper

__all__ = ["EXP_MIN_STATES", "PairBlock", "PairwisePlan", "build_pairwise_plan"]

#: Sweeps on the CPU run the pair updates in exp space (``docs/inference.md``: the log-sum-exp
#: as a product of exponentiated tables and messages) from this many states up. The exponentiated
#: tables are kept between sweeps on one prepared theta, so a block then costs K exps per message
#: instead of K*K; two states keep the log-space two-term formula, which needs no table.
EXP_MIN_STATES = 3


@dataclass(frozen=True, eq=False)
class PairBlock:
    """Index arrays of one parallel block on the pairwise fast path.

    ``P`` counts the (block node, incident pair) messages of the block, ``S`` its nodes. The
    block's own messages are slots ``start..stop``; their oriented pair tables, the same rows of
    the sweep tables.
    """

    start: int
    stop: int
    other: Tensor  # (P,) slot of the message from the pair's other end
    other_flat: Tensor  # (P*K,) the same entries as positions in the flat (S*K,) slots (B = 1)
    nodes: Tensor  # (S,) the block's variables (rows of the node tables)
    node_pos: Tensor  # (P,) position in the block of the node sending each message
    node_pos_flat: Tensor  # (P*K,) the same as positions in the flat block scores (B = 1)
    temper: Temper  # ĉ of each pair: c_hat (P, 1, 1), inv (P, 1, 1, 1)
    kernel: str  # the log-space mu kernel, chosen once: "max" (ĉ = 0), "two_state", "lse"
    weight: Tensor | float  # (P, 1, 1) c_e / (c_i + sum_e' c_e'), or one number for all
    mask: Tensor  # (P, K, 1) 1 for real states of the block variable, 0 for padding
    single: bool  # one node in the block: its messages' sum is a plain sum over dim 0


@dataclass(frozen=True, eq=False)
class PairwisePlan:
    """The pairwise fast path of one graph (see the module docstring)."""

    blocks: list[PairBlock]
    kmax: int
    uniform: bool  # one state count: no padding
    in_order: bool  # uniform, and the sweep order of the slots is the general order
    exp_space: bool  # sweeps may run in exp space (one K >= EXP_MIN_STATES, all ĉ = 1)
    compilable: bool  # one state count and all ĉ = 1: what compiled sweeps support
    tab_rows: Tensor  # (P_all*K*K,) theta positions of the oriented pair tables, block by block
    tab_local: Tensor | None  # (P_all*K*K,) the same as rows of the (E*K*K, B) pair tables
    # (uniform state counts only)
    msg_pair: Tensor  # (P_all,) pair of each message (slot order)
    node_flat: Tensor  # (N*K,) theta positions of the singleton tables (padding: T)
    pair_flat: Tensor  # (E*K*K,) theta positions of the pair tables, in region tuple order
    node_span: tuple[int, int] | None  # (start, stop) if node_flat is a contiguous range
    pair_span: tuple[int, int] | None  # the same for pair_flat
    from_general: Tensor  # (S*K,) positions in [lam, 0] of each (padded) slot entry
    to_general: Tensor  # (M,) (padded) slot position of each general message entry
    slot_var: Tensor  # (S,) variable sending the message of each slot
    end0: Tensor  # (E,) slot of the message from the first variable of each pair
    end1: Tensor  # (E,) slot of the message from the second variable
    node_temper: Temper  # singletons: c_hat (N, 1), inv (N, 1, 1)
    pair_temper: Temper  # pairs: c_hat (E, 1), inv (E, 1, 1)
    pair_var0: Tensor  # (E,) first variable of each pair (rows of the pair tables)
    pair_var1: Tensor  # (E,) second variable (columns)
    node_valid: Tensor  # (N, K, 1) 1 for real states, 0 for padding
    slot_edge: Tensor  # (S,) edge (general message order) of each slot
    node_region: Tensor  # (N,) singleton region of each variable
    pair_region: Tensor  # (E,) region of each pair


def _span(flat: np.ndarray, uniform: bool) -> tuple[int, int] | None:
    start = int(flat[0])
    ok = uniform and np.array_equal(flat, start + np.arange(flat.size))
    return (start, start + flat.size) if ok else None


def build_pairwise_plan(
    graph: RegionGraph, layout: PackedLayout, c_hat: np.ndarray
) -> PairwisePlan | None:
    """The fast path of ``graph`` (NumPy arrays), or None where it does not apply: the graph
    must be pairwise (singletons and pairs, every pair's children its two singletons), with a
    singleton per variable, at least one pair and a non-empty schedule."""
    g = graph
    schedule = g.schedule()
    if not g.is_pairwise() or not schedule:
        return None
    node = {reg[0]: r for r, reg in enumerate(g.regions) if len(reg) == 1}
    pairs = g.regions_of_size(2)
    if len(node) != g.num_vars or not pairs:
        return None
    for p in pairs:
        if sorted(g.children(p)) != sorted(node[v] for v in g.regions[p]):
            return None
    pair_pos = {p: e for e, p in enumerate(pairs)}
    edge_id = {e: i for i, e in enumerate(g.edges)}
    ks = g.num_states
    kmax = max(ks)
    uniform = len(set(ks)) == 1
    t_pad = layout.num_entries  # the NEG_INF column appended to theta (mixed K only)
    off, msg_off = layout.offsets, layout.message_offsets
    m_pad = layout.num_message_entries
    # table of pair e in tuple order, padded to (Kmax, Kmax)
    pair_tab = np.full((len(pairs), kmax, kmax), t_pad, dtype=np.int64)
    for e, p in enumerate(pairs):
        a, b = g.regions[p]
        pair_tab[e, : ks[a], : ks[b]] = off[p] + np.arange(ks[a] * ks[b]).reshape(ks[a], ks[b])
    node_rows = np.full((g.num_vars, kmax), t_pad, dtype=np.int64)
    for v in range(g.num_vars):
        node_rows[v, : ks[v]] = off[node[v]] + np.arange(ks[v])
    # slots: one per message, in sweep order, padded to Kmax for mixed state counts
    order = [edge_id[(r, p)] for block in schedule for r in block for p in g.parents(r)]
    num_slots = len(g.edges)
    from_general = np.full((num_slots, kmax), m_pad, dtype=np.int64)
    to_general = np.zeros(m_pad, dtype=np.int64)
    slot_var = np.zeros(num_slots, dtype=np.int64)
    slot = {}  # (variable, pair region) -> slot
    for q, s in enumerate(order):
        c, p = g.edges[s]
        v = g.regions[c][0]
        start = msg_off[s]
        from_general[q, : ks[v]] = start + np.arange(ks[v])
        to_general[start : start + ks[v]] = q * kmax + np.arange(ks[v])
        slot_var[q] = v
        slot[(v, p)] = q
    counting = g.counting_numbers
    blocks = []
    tab_rows = []  # oriented table of each message: [y_j, y_i], i sending, j the other end
    msg_pair = []
    for block in schedule:
        other, node_pos, c_blk, weight, mask = [], [], [], [], []
        start = len(tab_rows)
        nodes = []
        for i, r in enumerate(block):
            v = g.regions[r][0]
            nodes.append(v)
            parents = g.parents(r)
            denom = counting[r] + sum(counting[p] for p in parents)
            for p in parents:
                e = pair_pos[p]
                side = g.regions[p].index(v)
                tab_rows.append(pair_tab[e].T if side == 0 else pair_tab[e])
                msg_pair.append(e)
                other.append(slot[(g.regions[p][1 - side], p)])
                node_pos.append(i)
                c_blk.append(c_hat[p])
                weight.append(counting[p] / denom if denom > 0 else 1.0 / (len(parents) + 1))
                mask.append(np.arange(kmax) < ks[v])
        c_a = np.array(c_blk, dtype=np.float64)
        w = np.array(weight, dtype=np.float64)
        temper = Temper.numpy(c_a, (c_a.size, 1, 1), 1)
        other_a, pos_a = np.array(other, dtype=np.int64), np.array(node_pos, dtype=np.int64)
        blocks.append(
            PairBlock(
                start=start,
                stop=len(tab_rows),
                other=other_a,
                other_flat=(other_a[:, None] * kmax + np.arange(kmax)).reshape(-1),
                nodes=np.array(nodes, dtype=np.int64),
                node_pos=pos_a,
                node_pos_flat=(pos_a[:, None] * kmax + np.arange(kmax)).reshape(-1),
                temper=temper,
                kernel="max" if temper.all_zero else "two_state" if kmax == 2 else "lse",
                weight=float(w[0]) if np.all(w == w[0]) else w[:, None, None],
                mask=np.stack(mask)[:, :, None].astype(np.float64),
                single=len(block) == 1,
            )
        )
    tab_all = np.stack(tab_rows).reshape(-1)
    pair_flat = pair_tab.reshape(-1)
    tab_local = None
    if uniform:  # one K: pair_flat is then a permutation of a range
        tab_local = np.argsort(pair_flat)[np.searchsorted(np.sort(pair_flat), tab_all)]
    node_c = c_hat[[node[v] for v in range(g.num_vars)]]
    pair_c = c_hat[pairs]
    unit = bool((c_hat[pairs] == 1).all())
    return PairwisePlan(
        blocks=blocks,
        kmax=kmax,
        uniform=uniform,
        in_order=uniform and order == list(range(num_slots)),
        exp_space=uniform and kmax >= EXP_MIN_STATES and unit,
        compilable=uniform and all(b.temper.unit for b in blocks),
        tab_rows=tab_all,
        tab_local=tab_local,
        msg_pair=np.array(msg_pair, dtype=np.int64),
        node_flat=node_rows.reshape(-1),
        pair_flat=pair_flat,
        node_span=_span(node_rows.reshape(-1), uniform),
        pair_span=_span(pair_flat, uniform),
        from_general=from_general.reshape(-1),
        to_general=to_general,
        slot_var=slot_var,
        end0=np.array([slot[(g.regions[p][0], p)] for p in pairs], dtype=np.int64),
        end1=np.array([slot[(g.regions[p][1], p)] for p in pairs], dtype=np.int64),
        node_temper=Temper.numpy(node_c, (node_c.size, 1), 1),
        pair_temper=Temper.numpy(pair_c, (pair_c.size, 1), 1),
        pair_var0=np.array([g.regions[p][0] for p in pairs], dtype=np.int64),
        pair_var1=np.array([g.regions[p][1] for p in pairs], dtype=np.int64),
        node_valid=(np.arange(kmax)[None, :] < np.array(ks)[:, None])[:, :, None].astype(
            np.float64
        ),
        slot_edge=np.array(order, dtype=np.int64),
        node_region=np.array([node[v] for v in range(g.num_vars)], dtype=np.int64),
        pair_region=np.array(pairs, dtype=np.int64),
    )

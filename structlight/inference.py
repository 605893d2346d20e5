"""Convex message passing in the dual (the paper's Fig. 3 inner loop), batched and vectorised.

Notation (DESIGN §1): regions ``r`` with score tables ``f_r``, counting numbers ``c_r``,
temperature ``eps`` and ``ĉ_r = eps * c_r``; one message ``lam[r->p](y_r)`` per (region, parent)
pair and per example. The reparameterised scores are

    fhat_r = f_r + sum_{c in C(r)} lam[c->r] - sum_{p in P(r)} lam[r->p]

and the dual is ``D(lam) = sum_r ĉ_r log sum exp(fhat_r / ĉ_r)`` (``max fhat_r`` if ``ĉ_r = 0``).
A sweep updates the messages of every region with parents, block by block, each block an exact
minimisation of ``D`` over its messages, so ``D`` never increases.

Layout. A graph is turned once (per device and dtype) into a plan of flat index tensors:

* potentials ``theta``: ``(B, T)``, the region tables flattened row-major and concatenated in
  region order (``T = sum_r |Y_r|``); :meth:`ConvexBP.pack` builds it from a list of tables;
* messages ``lam``: ``(B, M)``, one segment of ``|Y_c|`` entries per (child c, parent p) pair in
  :attr:`RegionGraph.edges` order.

Every step of a block update is then one gather, one ``index_add`` or one reduction over all
regions of the block at once; there is no Python loop over examples or over the edges of a block.
All gathers are ``index_select`` on flat or row layouts (advanced indexing is several times slower,
and so is its backward). Pairwise graphs have a faster layout of their own (``fast_path``).

Explicit state. :meth:`ConvexBP.prepare` packs, checks and clamps potentials once and returns a
:class:`PreparedPotentials`; every method that takes potentials takes one in their place. The
per-potentials tables of the fast path (transposed and exponentiated pair tables) live on that
object, so repeated sweeps and the dual after them share them exactly when the caller passes the
same object. Nothing is remembered between calls on plain potentials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from structlight.graph import RegionGraph

__all__ = ["ConvexBP", "NEG_INF", "Potentials", "PreparedPotentials"]

#: Forbidden states: potentials below this value (``-inf`` included) are clamped to it. A finite
#: sentinel keeps ``inf - inf`` (and hence NaN) out of the message updates; ``exp`` of it is 0 in
#: float32 and float64, and it is far from float32's limit (3.4e38), so sums of a few hundred such
#: terms stay finite.
NEG_INF = -1e30

#: Sweeps on the CPU run the pair updates in exp space (DESIGN §1's log-sum-exp as a product of
#: exponentiated tables and messages) from this many states up. The exponentiated tables are kept
#: between sweeps on one theta, so a block then costs K exps per message instead of K*K; two
#: states keep the log-space two-term formula, which needs no table.
EXP_MIN_STATES = 3

#: The dtypes the engine computes in. Half precision (float16, bfloat16) is refused: with 3 and 8
#: significant bits the block updates' cancellations (``w_p a - mu_p``, then ``f_r - sum_p lam``)
#: lose every digit, so the dual rises and the beliefs are noise; float16 cannot even hold
#: :data:`NEG_INF`. Heads upcast half-precision potentials to float32 before calling the engine.
COMPUTE_DTYPES = (torch.float32, torch.float64)

#: Ties of a ĉ = 0 region's reparameterised scores, relative to the magnitude of the numbers
#: that make each score up. A ĉ = 0 region's dual term is ``max fhat_r``; at convergence (and,
#: for a region without children, right after its own block update, which makes ``fhat_r``
#: constant: ``sum_p w_p = 1`` when ``c_r = 0 < sum_p c_p``) its states tie up to rounding, and
#: the parents' marginals say how the belief spreads over them. The rounding error of
#: ``fhat_r(y)`` is at most a few dozen rounding units times ``s_r(y) = 1 + |f_r(y)| + sum |lam|
#: over the messages summed into fhat_r(y) + sum_{p in P(r)} |max fhat_p|`` (the last term bounds
#: the ``mu[p->r]`` the update cancelled), so states within ``TIE_RTOL * s_r(y)`` of each other
#: count as tied: about 800 float32 rounding units (a wide margin over a fully connected node's
#: ~40 terms; float32 ties measure about 1e-6 relative), and in float64 about 4e6 units, which
#: also absorbs a run stopped at a tolerance short of full convergence. Wider ties only make the
#: gradient an epsilon-subgradient (tied states are within ``TIE_RTOL * s`` of the max);
#: narrower ones let rounding noise pick a state.
TIE_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}

Potentials = Sequence[Tensor] | Tensor


def _log_sweep(
    lam: Tensor, tabs: Tensor, nodes: Tensor, index: Tensor, weights: Tensor, blocks: tuple
) -> Tensor:
    """One fast-path sweep in log space with all ĉ = 1, as plain tensor code (compiled).

    ``lam`` (S, K, B) slots, ``tabs`` (P_all, K, K, B) oriented tables ``[y_j, y_i]``,
    ``nodes`` (N, K, B). ``index`` holds, block after block, each block's ``other`` (P) then
    ``node_pos`` (P) then its variables; ``weights`` (P_all, 1, 1) the message weights;
    ``blocks``: ``(start, stop, offset, num_nodes)`` per block, plain ints (so that a compiled
    sweep guards on two tensors, not on three per block). Returns new slots (``lam`` is kept).
    """
    k = tabs.shape[1]
    for start, stop, off, num_nodes in blocks:
        other, node_pos, bnodes = _block_index(index, off, stop - start, num_nodes)
        v = tabs[start:stop] + lam.index_select(0, other).unsqueeze(2)
        if k == 2:  # max + log(1 + exp(min - max)): half the exps of the general form
            v0, v1 = v[:, 0], v[:, 1]
            m = torch.maximum(v0, v1)
            mu = m + torch.log(torch.exp(torch.minimum(v0, v1) - m) + 1)
        else:
            m = v.amax(1)
            mu = m + torch.log(torch.exp(v - m.unsqueeze(1)).sum(1))
        lam = _write_block(lam, nodes, mu, bnodes, node_pos, weights, start, stop)
    return lam


def _block_index(index: Tensor, off: int, p: int, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """A block's ``other`` (P), ``node_pos`` (P) and variables, from the compiled sweeps'
    concatenated ``index`` at offset ``off``."""
    return (
        index[off : off + p],
        index[off + p : off + 2 * p],
        index[off + 2 * p : off + 2 * p + num_nodes],
    )


def _write_block(
    lam: Tensor,
    nodes: Tensor,
    mu: Tensor,
    bnodes: Tensor,
    node_pos: Tensor,
    weights: Tensor,
    start: int,
    stop: int,
) -> Tensor:
    """``a_i = f_i + sum_{e at i} mu[e->i]``, ``lam[i->e] = w_e a_i - mu[e->i]`` for slots
    ``start..stop``; returns the new slots (functional, for the compiled sweeps)."""
    if bnodes.shape[0] == 1:
        a = nodes.index_select(0, bnodes) + mu.sum(0, keepdim=True)
    else:
        a = nodes.index_select(0, bnodes).index_add(0, node_pos, mu)
        a = a.index_select(0, node_pos)
    pos = torch.arange(start, stop, device=lam.device)
    return lam.index_copy(0, pos, a * weights[start:stop] - mu)


def _exp_sweep(
    lam: Tensor,
    etab: Tensor,
    cmsg: Tensor,
    nodes: Tensor,
    index: Tensor,
    weights: Tensor,
    blocks: tuple,
) -> tuple[Tensor, Tensor]:
    """:func:`_log_sweep` in exp space (compiled): ``mu = c + m + log sum_j E x``.

    ``etab`` (P_all, K, K, B or 1) ``exp(f - c)`` oriented ``[y_j, y_i]``, ``cmsg`` (P_all, 1,
    B or 1) the ``c`` of each message's table, ``x = exp(lam[j->e] - m)``. Returns the new slots
    and the smallest sum met: below ``tiny / eps`` (or NaN) the sweep may have lost precision to
    underflow and is redone in log space by the caller.
    """
    low = None
    for start, stop, off, num_nodes in blocks:
        other, node_pos, bnodes = _block_index(index, off, stop - start, num_nodes)
        lo = lam.index_select(0, other)
        m = lo.amax(1, keepdim=True)
        s = (etab[start:stop] * torch.exp(lo - m).unsqueeze(2)).sum(1)
        low = s.amin() if low is None else torch.minimum(low, s.amin())
        mu = torch.log(s) + cmsg[start:stop] + m
        lam = _write_block(lam, nodes, mu, bnodes, node_pos, weights, start, stop)
    return lam, low


def _to(v: object, t: object) -> object:
    """Compiled index arrays become tensors; flags, numbers and spans stay as they are."""
    return t(v) if isinstance(v, np.ndarray) else v


def _clamp(theta: Tensor) -> tuple[Tensor, bool]:
    """``(theta.clamp_min(NEG_INF), False)``; on the CPU ``(theta, True)`` where nothing is below.

    (Skipping the copy saves its time and the backward's mask; on a GPU the check would cost a
    device sync, so the clamp always runs there.)
    """
    if theta.device.type == "cpu":
        if theta.numel() == 0 or not bool(theta.detach().amin() < NEG_INF):
            return theta, True
    return theta.clamp_min(NEG_INF), False


def _version_of(t: Tensor) -> int | None:
    """``t``'s version counter (bumped by every in-place change); None for inference tensors,
    which have none."""
    return None if t.is_inference() else t._version


def _lse_shifted(x: Tensor, m: Tensor, dim: int) -> Tensor:
    """``logsumexp(x, dim)`` given ``m``, the detached max over ``dim`` (kept as a size-1 axis).

    Unlike ``torch.logsumexp`` (whose gradient ``exp(x - lse)`` is unnormalised where ``x``
    is so large, e.g. near :data:`NEG_INF`, that ``x - lse`` rounds to 0) the gradient is the
    softmax computed from ``x - m``, so it always sums to 1; the shift is a constant for autograd.
    """
    m = torch.where(m.isinf(), 0.0, m)  # as torch.logsumexp: no inf - inf
    return (x - m).exp().sum(dim).log() + m.squeeze(dim)


class _MaxWithGrad(torch.autograd.Function):
    """``x.amax(dim)`` whose gradient is the given distribution ``w`` over ``dim``.

    The dual term of a ĉ = 0 region is ``max fhat_r``; any distribution on its arg-max face is a
    subgradient, and the engine's choice is the region's belief (see
    :meth:`ConvexBP._face_beliefs`), so that the dual's gradient is the beliefs on every path.
    ``x`` and ``w`` share their shape; ``w`` is a constant (no gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, dim: int) -> Tensor:
        ctx.save_for_backward(w)
        ctx.dim = dim
        return x.amax(dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        (w,) = ctx.saved_tensors
        return grad.unsqueeze(ctx.dim) * w, None, None


_POTS_HINT = "pass theta.float() (StructuredHead.forward does this)"
_MSGS_HINT = "pass msgs.float() (init_messages makes float32 messages by default)"


#: Rows up to this long get :func:`_softmax_last`'s four plain ops instead of ``torch.softmax``:
#: on the CPU its per-row overhead makes it 3-5x slower on rows of 2..8 entries (binary
#: singletons and pairs), while it wins from about 16 entries on.
SHORT_ROWS = 8


def _softmax_last(x: Tensor) -> Tensor:
    """``torch.softmax(x, -1)``; as plain ops for rows of at most :data:`SHORT_ROWS` entries.

    Rows must not be all ``-inf`` (potentials are clamped to :data:`NEG_INF`).
    """
    if x.shape[-1] > SHORT_ROWS:
        return torch.softmax(x, dim=-1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _one_hot_argmax(x: Tensor, dim: int) -> Tensor:
    """One-hot of the first maximum of ``x`` along ``dim``, in ``x``'s shape and dtype.

    (``max(dim).indices``: the first maximal index like ``argmax``, several times faster on the
    CPU when ``dim`` is not the innermost axis; a scatter instead of ``one_hot``'s int64 table.)
    """
    idx = x.detach().max(dim, keepdim=True).indices
    return torch.zeros_like(x, memory_format=torch.contiguous_format).scatter_(dim, idx, 1.0)


def _check_dtype(dtype: torch.dtype, what: str, hint: str) -> None:
    """Refuse anything but :data:`COMPUTE_DTYPES` for potentials or messages.

    Raises:
        TypeError: not a floating-point dtype.
        ValueError: a floating-point dtype the engine does not compute in (half precision).
    """
    if dtype in COMPUTE_DTYPES:
        return
    if not dtype.is_floating_point:
        raise TypeError(f"{what} must be floating point, got {dtype}")
    raise ValueError(
        f"ConvexBP computes in float32 or float64; got {what} of dtype {dtype}: {hint}"
    )


def _cat_int(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class _Block:
    """Index tensors of one parallel block (see :meth:`ConvexBP._plan_numpy`)."""

    xpos: Tensor  # (n_x + 1,) theta positions of the parents' tables, one copy per block edge,
    # then T (the -inf column appended to theta)
    xadd_tgt: Tensor  # incoming messages of the parents (except from the block region)
    xadd_src: Tensor
    xsub_tgt: Tensor  # outgoing messages of the parents
    xsub_src: Tensor
    mu_idx: Tensor  # (n_mu, K) x positions reduced into each mu entry; n_x = padding (-inf)
    mu_c_hat: Tensor  # (n_mu,) ĉ of the parent of each mu entry
    mu_inv: Tensor  # (n_mu, 1) 1 / ĉ (1 where ĉ = 0)
    mu_all_pos: bool  # all ĉ_p > 0: pure log-sum-exp
    mu_all_zero: bool  # all ĉ_p = 0: pure max
    apos: Tensor  # (n_a,) theta positions of the block regions' tables
    aadd_tgt: Tensor  # incoming messages of the block regions
    aadd_src: Tensor
    mu_tgt: Tensor  # (n_mu,) position in a of the region state of each mu entry
    weight: Tensor  # (n_mu,) c_p / (c_r + sum_p' c_p')
    msg_pos: Tensor  # (n_mu,) position in lam of each mu entry


@dataclass
class _DenseBlock:
    """Index tensors of one parallel block on the pairwise fast path.

    ``P`` counts the (block node, incident pair) messages of the block, ``S`` its nodes. Slots
    are in sweep order (see :class:`_Dense`), so the block's own messages are slots start..stop.
    """

    start: int  # the block writes slots start..stop; its pair tables: the same rows of tabs
    stop: int
    other: Tensor  # (P,) slot of the message from the pair's other end
    other_flat: Tensor  # (P*K,) the same entries as positions in the flat (S*K,) messages (B = 1)
    nodes: Tensor  # (S,) the block's variables (rows of the node tables)
    node_pos: Tensor  # (P,) position in the block of the node sending each message
    node_pos_flat: Tensor  # (P*K,) the same as positions in the flat (S_block*K,) scores (B = 1)
    c_hat: Tensor  # (P, 1, 1) ĉ of each pair
    inv: Tensor  # (P, 1, 1, 1) 1 / ĉ (1 where ĉ = 0)
    weight: Tensor | float  # (P, 1, 1) c_e / (c_i + sum_e' c_e'), or one number for all
    mask: Tensor  # (P, K, 1) 1 for real states of the block variable, 0 for padding
    all_pos: bool
    all_zero: bool
    unit: bool  # all ĉ = 1: no temperature scaling needed
    single: bool  # one node in the block: its messages' sum is a plain sum over dim 0


@dataclass
class _Dense:
    """The pairwise fast path: batch-last messages ``(S, K, B)``, one slot per message.

    Slots are in sweep order: block by block, within a block node by node, each node's pairs in
    parent order; ``from_general``/``to_general`` convert from/to the general ``(B, M)`` layout
    (a plain transpose where the orders agree, ``in_order``). Node and pair tables are rows of
    the transposed packed potentials ``(T, B)``. With mixed state counts everything is padded to
    ``Kmax`` (padding: ``NEG_INF`` scores, zero messages).
    """

    blocks: list[_DenseBlock]
    uniform: bool  # one state count: no padding
    in_order: bool  # uniform, and the sweep order of the slots is the general order
    tab_rows: Tensor  # (P_all*K*K,) theta positions of the oriented pair tables, block by block
    tab_local: Tensor | None  # (P_all*K*K,) the same as rows of the (E*K*K, B) pair tables;
    # None with mixed state counts (only the uniform paths read it)
    msg_pair: Tensor  # (P_all,) pair of each message (slot order)
    exp_space: bool  # sweeps may run in exp space (one K >= EXP_MIN_STATES, all ĉ = 1)
    node_flat: Tensor  # (N*K,) theta positions of the singleton tables (padding: T)
    pair_flat: Tensor  # (E*K*K,) theta positions of the pair tables, in region tuple order
    node_span: tuple[int, int] | None  # (start, stop) if node_flat is a contiguous range
    pair_span: tuple[int, int] | None  # the same for pair_flat
    from_general: Tensor  # (S*K,) positions in [lam, 0] of each (padded) slot entry
    to_general: Tensor  # (M,) (padded) slot position of each general message entry
    slot_var: Tensor  # (S,) variable sending the message of each slot
    end0: Tensor  # (E,) slot of the message from the first variable of each pair
    end1: Tensor  # (E,) slot of the message from the second variable
    kmax: int
    node_c_hat: Tensor  # (N,)
    node_inv: Tensor  # (N, 1)
    pair_c_hat: Tensor  # (E,)
    pair_inv: Tensor  # (E, 1)
    node_flags: tuple[bool, bool, bool]  # (all ĉ > 0, all ĉ = 0, all ĉ = 1) over singletons
    pair_flags: tuple[bool, bool, bool]  # the same over pairs
    pair_var0: Tensor  # (E,) first variable of each pair (rows of the pair tables)
    pair_var1: Tensor  # (E,) second variable (columns)
    node_valid: Tensor  # (N, K, 1) 1 for real states, 0 for padding


class _DenseDual(torch.autograd.Function):
    """The fast path's dual for one state count and all ĉ = 1, with the beliefs as its gradient.

    Forward: ``sum_i lse(fhat_i) + sum_e lse(fhat_e)`` (the reparameterised tables of
    :meth:`ConvexBP._dense_fhat`), no autograd graph. The beliefs ``b = softmax(fhat)`` come out
    of the same exps and are kept; backward is then ``dD/df_r = b_r`` and
    ``dD/dlam[i->e](y_i) = sum_{y_j} b_e(y_i, y_j) - b_i(y_i)`` (DESIGN §1), times the output
    gradient, with no graph of a dozen (E, K, K, B) ops to walk back.
    """

    @staticmethod
    def forward(ctx, theta: Tensor, msgs: Tensor, d: _Dense, tables: tuple | None) -> Tensor:
        b, k = theta.shape[0], d.kmax
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        lam = ConvexBP._slots(msgs, d)  # (S, K, B)
        la, lb = lam.index_select(0, d.end0), lam.index_select(0, d.end1)
        out = None
        bels = []
        pair_done = None
        if tables is not None:
            # the sweep's exp tables (same theta data): exp(fhat_e - c_e - m_a - m_b) =
            # E_e(y_a, y_b) x_a(y_a) x_b(y_b), x = exp(lam - max lam); log space where it
            # underflows (the sweep's test)
            nodes, epair, c = tables[0], tables[4], tables[5]
            ma, mb = ConvexBP._tree_max(la, 1), ConvexBP._tree_max(lb, 1)
            xa, xb = (la - ma).exp_(), (lb - mb).exp_()
            tiny = torch.finfo(theta.dtype).tiny / torch.finfo(theta.dtype).eps
            if epair.shape[-1] == 1 and b > 1:
                # one (E, K, K) table set for the batch: sum_{a,c} E(a,c) x_a(a) x_b(c) as
                # x_a . (E @ x_b), no (E, K, K, B) tensor; the backward builds the beliefs
                e4 = epair.view(-1, k, k)
                t = torch.bmm(e4, xb)  # (E, K, B)
                s = torch.mul(xa, t).sum(1, keepdim=True)
                if not bool(s.amin() < tiny):
                    val = s.log().add_(c).add_(ma).add_(mb)
                    pair_done = (None, s, val.sum(0)[0], (e4, xa, xb, t))
            else:
                e = torch.mul(epair.view(-1, k, k, b), xa.unsqueeze(2))
                e = e.mul_(xb.unsqueeze(1))
                e = e.view(-1, k * k, b)
                s = e.sum(1, keepdim=True)
                if not bool(s.amin() < tiny):
                    val = s.log().add_(c).add_(ma).add_(mb)
                    pair_done = (e, s, val.sum(0)[0], None)
        pairs = None
        if tables is None:
            shared = ConvexBP._shared_pairs(theta, d) if theta.device.type == "cpu" else None
            if shared is not None:  # (E, K, K, 1): broadcast over the batch below
                nodes, pairs = shared[0], shared[1].view(-1, k, k, 1)
            else:  # one transpose of theta for both
                nodes, pairs = ConvexBP._dense_tables(theta, d)
        xs = [nodes.index_add(0, d.slot_var, lam, alpha=-1)]
        if pair_done is None:
            if pairs is None:
                pairs = ConvexBP._dense_tables(theta, d)[1]
            # (f + lam_a) + lam_b: the general path's order of additions (same rounding)
            fpair = pairs + la.unsqueeze(2)
            fpair += lb.unsqueeze(1)
            xs.append(fpair.view(-1, k * k, b))
        for x in xs:
            m = ConvexBP._tree_max(x, 1)
            m.masked_fill_(m.isinf(), 0.0)  # as torch.logsumexp: no inf - inf
            e = x.sub_(m).exp_()  # x is ours: reuse it
            s = e.sum(1, keepdim=True)
            val = s.log().add_(m).sum(0)[0]  # (B,)
            out = val if out is None else out.add_(val)
            if want:
                bels.append(e.div_(s))
        ctx.shared = False
        if pair_done is not None:
            e, s, val, shared = pair_done
            out = out.add_(val)
            if want and shared is not None:
                bels.extend([*shared, s])
                ctx.shared = True
            elif want:
                bels.append(e.div_(s))
        if want:
            ctx.save_for_backward(*bels)
            ctx.d = d
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        d = ctx.d
        b, k = grad.shape[0], d.kmax
        if ctx.shared:  # the batch shared its pair tables E: no pair beliefs were kept
            bn, e4, xa, xb, t, s = ctx.saved_tensors
            num_pairs = e4.shape[0]
        else:
            bn, bp = ctx.saved_tensors  # (N, K, B), (E, K*K, B)
            num_pairs = bp.shape[0]
        g_theta = g_msgs = None
        if ctx.needs_input_grad[0]:
            n_node, ne = bn.shape[0] * k, num_pairs * k * k
            gt = grad.new_empty(n_node + ne, b)
            torch.mul(bn.view(-1, b), grad, out=gt[:n_node])
            if ctx.shared:  # the pair beliefs E(a, c) x_a(a) x_b(c) / s, built once, in place
                gp = gt[n_node:].view(-1, k, k, b)
                torch.mul(e4.unsqueeze(-1), (xa * (grad / s)).unsqueeze(2), out=gp)
                gp.mul_(xb.unsqueeze(1))
            else:
                torch.mul(bp.view(-1, b), grad, out=gt[n_node:])
            span = (d.node_span, d.pair_span)
            if span == ((0, n_node), (n_node, n_node + ne)):
                g_theta = gt.t()
            else:  # scatter to the packed positions (region order may interleave)
                pos = torch.cat([d.node_flat, d.pair_flat])
                g_theta = gt.new_zeros(gt.shape[0], b).index_copy_(0, pos, gt).t()
        if ctx.needs_input_grad[1]:
            # the pair beliefs summed over the second and over the first variable
            if ctx.shared:
                inv = s.reciprocal()
                over_b = xa * t * inv
                over_a = torch.bmm(e4.transpose(1, 2), xa).mul_(xb).mul_(inv)
            else:
                bp4 = bp.view(-1, k, k, b)
                over_b, over_a = bp4.sum(2), bp4.sum(1)
            gm = bn.index_select(0, d.slot_var).neg_()  # (S, K, B)
            gm.index_add_(0, d.end0, over_b)
            gm.index_add_(0, d.end1, over_a)
            gm = gm.view(-1, b).mul_(grad)
            g_msgs = (gm if d.in_order else gm.index_select(0, d.to_general)).t()
        return g_theta, g_msgs, None, None


@dataclass
class _ZeroLevel:
    """One depth of ĉ = 0 regions with parents (see :meth:`ConvexBP._plan_zero_levels`)."""

    regions: Tensor  # (G,) the regions
    src: Tensor  # parent-belief entries of the flat (B, R*Smax) beliefs
    tgt: Tensor  # their entries in the level's flat (B, G*Smax) parent marginals


@dataclass
class _Plan:
    blocks: list[_Block]
    fhat_tgt_in: Tensor  # fhat = theta + lam[in_src] at in_tgt - lam[out_src] at out_tgt
    fhat_src_in: Tensor
    fhat_tgt_out: Tensor
    fhat_src_out: Tensor
    pad_idx: Tensor  # (R, Smax) theta positions; T = padding
    c_hat: Tensor  # (R,) ĉ_r
    inv: Tensor  # (R, 1)
    all_pos: bool
    all_zero: bool
    var_src: Tensor  # padded-belief positions summed into each variable state
    var_tgt: Tensor
    var_pad_idx: Tensor  # (N, Kmax) positions in the flat variable-belief vector; V = padding
    score_base: Tensor  # (R,) offsets o_r
    score_vars: Tensor  # (R, L) variables of each region (padded with 0)
    score_strides: Tensor  # (R, L) row-major strides (0 in padding)
    var_fill: Tensor  # (V + 1,) 1 / K_v at the states of variables in no region, else 0
    edge_child: Tensor  # (E,) child region of each message
    edge_parent: Tensor  # (E,) parent region of each message
    zero_levels: list[_ZeroLevel]  # ĉ = 0 regions with parents, top-down
    dense: _Dense | None = None


@dataclass(frozen=True, eq=False)
class PreparedPotentials:
    """Potentials packed, checked and clamped once, with the fast path's tables built from them.

    Made by :meth:`ConvexBP.prepare`; :meth:`ConvexBP.sweep`, :meth:`~ConvexBP.run`,
    :meth:`~ConvexBP.dual`, :meth:`~ConvexBP.beliefs`, :meth:`~ConvexBP.variable_beliefs`,
    :meth:`~ConvexBP.decode`, :meth:`~ConvexBP.reparameterize` and :meth:`~ConvexBP.score` take
    one in place of the potentials. On the pairwise fast path the first sweep on the object
    builds its sweep tables (the batch-last pair tables; in exp space ``exp(f_e - max f_e)``),
    and later sweeps and :meth:`~ConvexBP.dual` on the same object reuse them: a solver loop or
    a training step prepares once, sweeps under ``no_grad`` and takes the dual with gradients,
    paying for the transpose and the exps once. What is shared is decided by the caller, by
    passing the same object; nothing is remembered between calls on plain potentials.

    The tables are built without gradient from ``theta.detach()``; :meth:`ConvexBP.dual` on the
    object is still differentiable with respect to the potentials it was prepared from. Where
    ``theta`` is the caller's tensor itself (``clean``), changing it in place afterwards makes
    the object stale: using it then raises a ``ValueError`` (prepare again). Otherwise ``theta``
    is a copy and the object a snapshot of the values at :meth:`ConvexBP.prepare`.

    The table slot is filled at most once, by the first sweep (two threads racing there each
    build identical tables and one set is kept); the object is otherwise immutable.

    Attributes:
        theta: ``(B, T)`` packed potentials, entries below :data:`NEG_INF` clamped; it carries
            the autograd graph of the input.
        clean: nothing needed clamping and ``theta`` is the input itself (checked on the CPU;
            on a GPU the check would cost a device sync, so the clamp always runs and this is
            False).
    """

    theta: Tensor
    clean: bool
    _owner: object = field(repr=False)  # the ConvexBP whose layout the tables follow
    _version: int | None = field(repr=False)  # theta's version counter when prepared
    _tables: list = field(default_factory=list, repr=False)  # [sweep tables] once built

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


#: Potentials as the methods of :class:`ConvexBP` take them: plain, or prepared once.
PotentialsLike = Potentials | PreparedPotentials


class ConvexBP:
    """Convex belief propagation (block-coordinate descent on the dual) on a region graph.

    Args:
        graph: the region graph.
        eps: temperature ``eps >= 0``; ``eps = 1`` gives the (approximate) log-partition of a CRF,
            ``eps = 0`` max-product for the structured hinge loss.
        fast_path: on pairwise graphs (singletons and pairs, every pair's children its two
            singletons), run sweeps, the dual and variable beliefs on a dense batch-last layout
            (messages ``(S, K, B)``, oriented pair tables ``(P, K, K, B)``) instead of the general
            index layout; on the CPU, with ``K >= EXP_MIN_STATES`` states and ``ĉ = 1``, sweeps
            run in exp space (with a log-space redo of any block where that would underflow).
            Same updates, same schedule, same results (up to rounding); see
            :attr:`uses_fast_path`.
        compile: compile each sweep with :func:`torch.compile` (pairwise fast path, one state
            count, all ĉ = 1; see :attr:`uses_compiled_sweeps`): the whole sweep becomes a few
            fused kernels per block instead of about fifteen eager tensor ops, so graphs with
            many small blocks gain most (fully connected graphs, grids with one example). Blocks
            run in exp space where the eager sweep would (CPU, ``K >= EXP_MIN_STATES``), the
            whole sweep redone in log space if any sum underflows, and in log space otherwise. Compiling takes seconds to a minute on first use, and
            again for a new batch size; if it fails (no C++ compiler, say) a warning says so and
            this instance's sweeps run eagerly from then on (see :attr:`uses_compiled_sweeps`).

    All methods take potentials either as a list of ``num_regions`` tensors, region ``r`` of
    shape ``(B, *graph.region_shape(r))`` (a leading 1 broadcasts over the batch, e.g. a shared
    pairwise table), or pre-packed as one ``(B, T)`` tensor from :meth:`pack`. Messages are a
    ``(B, M)`` tensor (:meth:`init_messages`). float32 and float64, CPU and CUDA; half precision
    is refused with a ``ValueError`` (see :data:`COMPUTE_DTYPES`). Any of them takes a
    :class:`PreparedPotentials` (:meth:`prepare`) in place of the potentials: the way to share
    the fast path's tables between sweeps and the dual on the same potentials.

    State and threads: no method keeps anything of its inputs. The mutable members are caches
    of the graph's index tensors and compiled sweeps, one per (device, dtype), each built on
    first use and never changed afterwards (two threads racing there build identical entries
    and one is kept), and the compile-failure flag of this instance, set at most once. One
    instance may serve several threads; it pickles without those caches.

    Cost: one :meth:`sweep` is ``O(B * sum_{(r,p)} |Y_p| * (|C(p)| + |P(p)|))`` work in
    ``len(graph.schedule())`` sequential block steps of about a dozen tensor ops each.
    """

    def __init__(
        self, graph: RegionGraph, eps: float = 1.0, fast_path: bool = True, compile: bool = False
    ) -> None:
        if not isinstance(graph, RegionGraph):
            raise TypeError(f"graph must be a RegionGraph, got {type(graph).__name__}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        # compiled whole sweeps, per (device, dtype), built once: see _sweep_compiled
        self._sweep_fns: dict[tuple[torch.device, torch.dtype], object] = {}
        # set when torch.compile failed for this instance: its sweeps then run eagerly
        self._compile_failed = False
        eps = float(eps)
        if not eps >= 0.0 or np.isinf(eps):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        self.graph = graph
        self.eps = eps
        g = graph
        self._sizes = np.array([g.region_size(r) for r in range(g.num_regions)], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(np.int64)
        self.num_entries = int(self._sizes.sum())
        self._edges = g.edges
        self._edge_id = {e: i for i, e in enumerate(self._edges)}
        msz = np.array([self._sizes[c] for c, _ in self._edges], dtype=np.int64)
        self._msg_offsets = np.concatenate([[0], np.cumsum(msz)[:-1]]).astype(np.int64)
        self.num_message_entries = int(msz.sum())
        self._proj = {e: g.projection(*e) for e in self._edges}
        self._schedule = g.schedule()
        self._c_hat = np.array([eps * c for c in g.counting_numbers], dtype=np.float64)
        # any ĉ = 0 region: beliefs and the dual's gradient then need the parent-implied beliefs
        # of those regions (decided once here; graphs with every ĉ > 0 never look at them)
        self._has_zero_regions = bool((self._c_hat == 0).any())
        self._np = self._plan_numpy()
        self._np_dense = self._plan_dense() if fast_path else None
        d = self._np_dense  # what compile=True needs of the graph (checked once, not per sweep)
        self._compilable = bool(
            d is not None and d["uniform"] and all(b["unit"] for b in d["blocks"])
        )
        # the graph's index tensors per (device, dtype), built once: see _plan
        self._cache: dict[tuple[torch.device, torch.dtype], _Plan] = {}

    def __getstate__(self) -> dict:
        """Pickle without the per-(device, dtype) caches (index tensors, compiled sweeps): they
        are rebuilt on first use. The compile-failure flag travels with the instance."""
        state = dict(self.__dict__)
        state.update(_cache={}, _sweep_fns={})
        return state

    # ------------------------------------------------------------------ compilation
    def _plan_numpy(self) -> dict:
        g = self.graph
        off, msg_off, proj = self._offsets, self._msg_offsets, self._proj
        counting = g.counting_numbers
        blocks = []
        for block in self._schedule:
            xpos, add_tgt, add_src, sub_tgt, sub_src = [], [], [], [], []
            mu_rows, mu_c_hat, mu_tgt, weight, msg_pos = [], [], [], [], []
            apos, aat, aas = [], [], []
            n_x = 0
            n_a = 0
            a_off: dict[int, int] = {}
            for r in block:
                a_off[r] = n_a
                sr = int(self._sizes[r])
                apos.append(off[r] + np.arange(sr))
                for c in g.children(r):
                    e = self._edge_id[(c, r)]
                    aat.append(n_a + np.arange(sr))
                    aas.append(msg_off[e] + proj[(c, r)])
                n_a += sr
            for r in block:
                sr = int(self._sizes[r])
                parents = g.parents(r)
                denom = counting[r] + sum(counting[p] for p in parents)
                for p in parents:
                    sp = int(self._sizes[p])
                    e = self._edge_id[(r, p)]
                    xpos.append(off[p] + np.arange(sp))
                    for c in g.children(p):
                        if c == r:
                            continue
                        add_tgt.append(n_x + np.arange(sp))
                        add_src.append(msg_off[self._edge_id[(c, p)]] + proj[(c, p)])
                    for q in g.parents(p):
                        sub_tgt.append(n_x + np.arange(sp))
                        sub_src.append(msg_off[self._edge_id[(p, q)]] + np.arange(sp))
                    # mu rows: for each child state, the parent states projecting onto it
                    order = np.argsort(proj[(r, p)], kind="stable")
                    rows = (n_x + order).reshape(sr, sp // sr)
                    mu_rows.append(rows)
                    mu_c_hat.append(np.full(sr, self._c_hat[p]))
                    mu_tgt.append(a_off[r] + np.arange(sr))
                    w = counting[p] / denom if denom > 0 else 1.0 / (len(parents) + 1)
                    weight.append(np.full(sr, w))
                    msg_pos.append(msg_off[e] + np.arange(sr))
                    n_x += sp
            kmax = max(rw.shape[1] for rw in mu_rows)
            mu_idx = np.full((sum(rw.shape[0] for rw in mu_rows), kmax), n_x, dtype=np.int64)
            i = 0
            for rw in mu_rows:
                mu_idx[i : i + rw.shape[0], : rw.shape[1]] = rw
                i += rw.shape[0]
            c_hat = np.concatenate(mu_c_hat)
            blocks.append(
                dict(
                    xpos=_cat_int([*xpos, np.array([self.num_entries])]),  # + -inf pad
                    xadd_tgt=_cat_int(add_tgt),
                    xadd_src=_cat_int(add_src),
                    xsub_tgt=_cat_int(sub_tgt),
                    xsub_src=_cat_int(sub_src),
                    mu_idx=mu_idx,
                    mu_c_hat=c_hat,
                    mu_inv=np.where(c_hat > 0, 1.0 / np.where(c_hat > 0, c_hat, 1.0), 1.0)[:, None],
                    mu_all_pos=bool((c_hat > 0).all()),
                    mu_all_zero=bool((c_hat == 0).all()),
                    apos=_cat_int(apos),
                    aadd_tgt=_cat_int(aat),
                    aadd_src=_cat_int(aas),
                    mu_tgt=_cat_int(mu_tgt),
                    weight=np.concatenate(weight),
                    msg_pos=_cat_int(msg_pos),
                )
            )
        # reparameterised scores of all regions
        in_tgt, in_src, out_tgt, out_src = [], [], [], []
        for e, (c, p) in enumerate(self._edges):
            in_tgt.append(off[p] + np.arange(self._sizes[p]))
            in_src.append(msg_off[e] + proj[(c, p)])
            out_tgt.append(off[c] + np.arange(self._sizes[c]))
            out_src.append(msg_off[e] + np.arange(self._sizes[c]))
        smax = int(self._sizes.max())
        num_r = g.num_regions
        pad_idx = np.full((num_r, smax), self.num_entries, dtype=np.int64)
        for r in range(num_r):
            pad_idx[r, : self._sizes[r]] = off[r] + np.arange(self._sizes[r])
        # variable beliefs: from the smallest region holding each variable
        ks = np.array(g.num_states, dtype=np.int64)
        var_off = np.concatenate([[0], np.cumsum(ks)[:-1]])
        holder: dict[int, int] = {}
        for r, reg in enumerate(g.regions):
            for v in reg:
                if v not in holder or self._sizes[r] < self._sizes[holder[v]]:
                    holder[v] = r
        missing = [v for v in range(g.num_vars) if v not in holder]
        vsrc, vtgt = [], []
        for v in range(g.num_vars):
            if v in holder:
                r = holder[v]
                reg = g.regions[r]
                states = np.indices(g.region_shape(r)).reshape(len(reg), -1)[reg.index(v)]
                vsrc.append(r * smax + np.arange(self._sizes[r]))
                vtgt.append(var_off[v] + states)
        kmax = int(ks.max())
        var_pad = np.full((g.num_vars, kmax), int(ks.sum()), dtype=np.int64)
        for v in range(g.num_vars):
            var_pad[v, : ks[v]] = var_off[v] + np.arange(ks[v])
        # variables in no region: the model puts no factor on them, so their belief is uniform
        var_fill = np.zeros(int(ks.sum()) + 1)
        for v in missing:
            var_fill[var_off[v] : var_off[v] + ks[v]] = 1.0 / ks[v]
        lmax = max(len(r) for r in g.regions)
        svars = np.zeros((num_r, lmax), dtype=np.int64)
        sstr = np.zeros((num_r, lmax), dtype=np.int64)
        for r, reg in enumerate(g.regions):
            shape = g.region_shape(r)
            strides = np.cumprod((list(shape[1:]) + [1])[::-1])[::-1]
            svars[r, : len(reg)] = reg
            sstr[r, : len(reg)] = strides
        return dict(
            blocks=blocks,
            fhat_tgt_in=_cat_int(in_tgt),
            fhat_src_in=_cat_int(in_src),
            fhat_tgt_out=_cat_int(out_tgt),
            fhat_src_out=_cat_int(out_src),
            pad_idx=pad_idx,
            c_hat=self._c_hat,
            inv=np.where(self._c_hat > 0, 1.0 / np.where(self._c_hat > 0, self._c_hat, 1.0), 1.0)[
                :, None
            ],
            all_pos=bool((self._c_hat > 0).all()),
            all_zero=bool((self._c_hat == 0).all()),
            var_src=_cat_int(vsrc),
            var_tgt=_cat_int(vtgt),
            var_pad_idx=var_pad,
            missing_vars=missing,
            var_fill=var_fill,
            edge_child=np.array([c for c, _ in self._edges], dtype=np.int64),
            edge_parent=np.array([p for _, p in self._edges], dtype=np.int64),
            zero_levels=self._plan_zero_levels(smax),
            score_base=self._offsets.copy(),
            score_vars=svars,
            score_strides=sstr,
        )

    def _plan_zero_levels(self, smax: int) -> list[dict]:
        """Index arrays for the beliefs of the ĉ = 0 regions that have parents, top-down.

        Such a region's belief is the sum of its parents' beliefs marginalised onto it (then
        restricted to its arg-max face and renormalised, :meth:`ConvexBP._face_beliefs`), so a
        region can only be done after its parents: regions are grouped by depth in the Hasse
        diagram (no parents: depth 0), one vectorised step per depth. Each level holds
        ``regions`` (G,), and ``src``/``tgt``: every parent-belief entry ``p * Smax + y_p`` of
        the padded ``(B, R, Smax)`` beliefs and the entry ``j * Smax + y_r`` of the level's
        ``(B, G, Smax)`` sums it goes to. Empty where every ĉ > 0 (or no ĉ = 0 region has a
        parent).
        """
        g = self.graph
        zero = self._c_hat == 0
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
                    src.append(p * smax + np.arange(self._sizes[p]))
                    tgt.append(j * smax + self._proj[(r, p)])
            levels.append(
                dict(regions=np.array(regs, dtype=np.int64), src=_cat_int(src), tgt=_cat_int(tgt))
            )
        return levels

    @property
    def uses_fast_path(self) -> bool:
        """True if sweeps run on the dense pairwise layout."""
        return self._np_dense is not None

    @property
    def uses_compiled_sweeps(self) -> bool:
        """Whether :meth:`sweep` runs compiled (``compile=True`` on a pairwise graph with one
        state count and all ĉ = 1; False again once compiling has failed for this instance)."""
        return self.compile and self._compilable and not self._compile_failed

    def _plan_dense(self) -> dict | None:
        g = self.graph
        if not g.is_pairwise() or not self._schedule:
            return None
        node = {reg[0]: r for r, reg in enumerate(g.regions) if len(reg) == 1}
        pairs = g.regions_of_size(2)
        if len(node) != g.num_vars or not pairs:
            return None
        for p in pairs:
            if sorted(g.children(p)) != sorted(node[v] for v in g.regions[p]):
                return None
        pair_pos = {p: e for e, p in enumerate(pairs)}
        ks = g.num_states
        kmax = max(ks)
        uniform = len(set(ks)) == 1
        t_pad = self.num_entries  # the NEG_INF column appended to theta (mixed K only)
        off = self._offsets
        num_slots = len(self._edges)
        # table of pair e in tuple order, padded to (Kmax, Kmax)
        pair_tab = np.full((len(pairs), kmax, kmax), t_pad, dtype=np.int64)
        for e, p in enumerate(pairs):
            a, b = g.regions[p]
            pair_tab[e, : ks[a], : ks[b]] = off[p] + np.arange(ks[a] * ks[b]).reshape(ks[a], ks[b])
        node_rows = np.full((g.num_vars, kmax), t_pad, dtype=np.int64)
        for v in range(g.num_vars):
            node_rows[v, : ks[v]] = off[node[v]] + np.arange(ks[v])

        def span(flat: np.ndarray) -> tuple[int, int] | None:
            start = int(flat[0])
            ok = uniform and np.array_equal(flat, start + np.arange(flat.size))
            return (start, start + flat.size) if ok else None

        # slots: one per message, in sweep order (block by block, so that the messages a block
        # writes are one contiguous range); padded to Kmax for mixed state counts
        order = [
            self._edge_id[(r, p)] for block in self._schedule for r in block for p in g.parents(r)
        ]
        from_general = np.full((num_slots, kmax), self.num_message_entries, dtype=np.int64)
        to_general = np.zeros(self.num_message_entries, dtype=np.int64)
        slot_var = np.zeros(num_slots, dtype=np.int64)
        slot = {}  # (variable, pair region) -> slot
        for q, s in enumerate(order):
            c, p = self._edges[s]
            v = g.regions[c][0]
            k = ks[v]
            start = self._msg_offsets[s]
            from_general[q, :k] = start + np.arange(k)
            to_general[start : start + k] = q * kmax + np.arange(k)
            slot_var[q] = v
            slot[(v, p)] = q
        end0 = np.array([slot[(g.regions[p][0], p)] for p in pairs], dtype=np.int64)
        end1 = np.array([slot[(g.regions[p][1], p)] for p in pairs], dtype=np.int64)
        counting = g.counting_numbers
        blocks = []
        tab_rows = []  # oriented table of each message: [y_j, y_i], i sending, j the other end
        msg_pair = []
        for block in self._schedule:
            other, node_pos, c_hat, weight, mask = [], [], [], [], []
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
                    u = g.regions[p][1 - side]
                    tab_rows.append(pair_tab[e].T if side == 0 else pair_tab[e])
                    msg_pair.append(e)
                    assert slot[(v, p)] == len(tab_rows) - 1  # own slots: start..stop
                    other.append(slot[(u, p)])
                    node_pos.append(i)
                    c_hat.append(self._c_hat[p])
                    weight.append(counting[p] / denom if denom > 0 else 1.0 / (len(parents) + 1))
                    mask.append(np.arange(kmax) < ks[v])
            c_hat_a = np.array(c_hat, dtype=np.float64)
            inv = np.where(c_hat_a > 0, 1.0 / np.where(c_hat_a > 0, c_hat_a, 1.0), 1.0)
            w = np.array(weight, dtype=np.float64)
            blocks.append(
                dict(
                    start=start,
                    stop=len(tab_rows),
                    other=np.array(other, dtype=np.int64),
                    other_flat=(
                        np.array(other, dtype=np.int64)[:, None] * kmax + np.arange(kmax)
                    ).reshape(-1),
                    nodes=np.array(nodes, dtype=np.int64),
                    node_pos=np.array(node_pos, dtype=np.int64),
                    node_pos_flat=(
                        np.array(node_pos, dtype=np.int64)[:, None] * kmax + np.arange(kmax)
                    ).reshape(-1),
                    c_hat=c_hat_a[:, None, None],
                    inv=inv[:, None, None, None],
                    weight=float(w[0]) if np.all(w == w[0]) else w[:, None, None],
                    mask=np.stack(mask)[:, :, None].astype(np.float64),
                    all_pos=bool((c_hat_a > 0).all()),
                    all_zero=bool((c_hat_a == 0).all()),
                    unit=bool((c_hat_a == 1).all()),
                    single=len(block) == 1,
                )
            )
        node_c_hat = self._c_hat[[node[v] for v in range(g.num_vars)]]
        pair_c_hat = self._c_hat[pairs]

        def inv(c: np.ndarray) -> np.ndarray:
            return np.where(c > 0, 1.0 / np.where(c > 0, c, 1.0), 1.0)[:, None]

        tab_all = np.stack(tab_rows).reshape(-1)
        pair_flat = pair_tab.reshape(-1)
        tab_local = None
        if uniform:  # one K: pair_tab is then a permutation of a range
            pair_sorted = np.sort(pair_flat)
            order_pf = np.argsort(pair_flat)
            tab_local = order_pf[np.searchsorted(pair_sorted, tab_all)]
            assert np.array_equal(pair_flat[tab_local], tab_all)

        def flags(c: np.ndarray) -> tuple[bool, bool, bool]:
            return bool((c > 0).all()), bool((c == 0).all()), bool((c == 1).all())

        return dict(
            blocks=blocks,
            uniform=uniform,
            tab_local=tab_local,
            msg_pair=np.array(msg_pair, dtype=np.int64),
            exp_space=uniform and kmax >= EXP_MIN_STATES and bool((self._c_hat[pairs] == 1).all()),
            in_order=uniform and order == list(range(num_slots)),
            tab_rows=tab_all,
            node_flat=node_rows.reshape(-1),
            pair_flat=pair_tab.reshape(-1),
            node_span=span(node_rows.reshape(-1)),
            pair_span=span(pair_tab.reshape(-1)),
            from_general=from_general.reshape(-1),
            to_general=to_general,
            slot_var=slot_var,
            end0=end0,
            end1=end1,
            kmax=kmax,
            node_c_hat=node_c_hat,
            node_inv=inv(node_c_hat),
            pair_c_hat=pair_c_hat,
            pair_inv=inv(pair_c_hat),
            node_flags=flags(node_c_hat),
            pair_flags=flags(pair_c_hat),
            pair_var0=np.array([g.regions[p][0] for p in pairs], dtype=np.int64),
            pair_var1=np.array([g.regions[p][1] for p in pairs], dtype=np.int64),
            node_valid=(np.arange(kmax)[None, :] < np.array(ks)[:, None])[:, :, None].astype(
                np.float64
            ),
        )

    def _plan(self, device: torch.device, dtype: torch.dtype) -> _Plan:
        key = (device, dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit

        def t(a: np.ndarray) -> Tensor:
            if a.dtype.kind == "f":
                return torch.as_tensor(a, dtype=dtype, device=device)
            return torch.as_tensor(a, dtype=torch.long, device=device)

        nb = self._np
        blocks = [
            _Block(
                **{k: (v if isinstance(v, bool) else t(v)) for k, v in b.items()},
            )
            for b in nb["blocks"]
        ]
        dense = None
        if self._np_dense is not None:
            nd = self._np_dense
            dense = _Dense(
                blocks=[_DenseBlock(**{k: _to(v, t) for k, v in b.items()}) for b in nd["blocks"]],
                **{k: _to(v, t) for k, v in nd.items() if k != "blocks"},
            )
        plan = _Plan(
            blocks=blocks,
            dense=dense,
            zero_levels=[
                _ZeroLevel(**{k: t(v) for k, v in lv.items()}) for lv in nb["zero_levels"]
            ],
            **{
                k: (v if isinstance(v, bool) else t(v))
                for k, v in nb.items()
                if k not in ("blocks", "missing_vars", "zero_levels")
            },
        )
        self._cache[key] = plan
        return plan

    # ------------------------------------------------------------------ inputs
    def pack(self, pots: Potentials, batch_size: int | None = None) -> Tensor:
        """Flatten and concatenate region tables into the ``(B, T)`` layout.

        Args:
            pots: a list of ``num_regions`` tensors, region ``r`` of shape
                ``(B, *region_shape(r))`` or ``(1, *region_shape(r))`` (broadcast), or an already
                packed ``(B, T)`` / ``(1, T)`` tensor.
            batch_size: expand a broadcast (leading 1) input to this batch size.

        Returns:
            ``(B, T)`` tensor, ``T = sum_r |Y_r|``, with entries below :data:`NEG_INF` (``-inf``
            for forbidden states) clamped to it.

        Raises:
            TypeError: ``pots`` is neither a tensor nor a sequence of tensors, or not floating
                point.
            ValueError: wrong number of tables, wrong shape, inconsistent batch sizes, or a
                dtype other than float32 and float64 (half precision).
        """
        return self._pack(pots, batch_size).clamp_min(NEG_INF)

    def _pack(self, pots: Potentials, batch_size: int | None = None) -> Tensor:
        g = self.graph
        if isinstance(pots, Tensor):
            if pots.dim() != 2 or pots.shape[1] != self.num_entries:
                raise ValueError(
                    f"packed potentials must have shape (B, {self.num_entries}) for this graph, "
                    f"got {tuple(pots.shape)}"
                )
            theta = pots
        else:
            if not isinstance(pots, (list, tuple)):
                raise TypeError(
                    f"potentials must be a list of {g.num_regions} tensors or a packed tensor, "
                    f"got {type(pots).__name__}"
                )
            if len(pots) != g.num_regions:
                raise ValueError(
                    f"expected {g.num_regions} potential tables (one per region), got {len(pots)}"
                )
            batch = {int(p.shape[0]) for p in pots if isinstance(p, Tensor) and p.dim() > 0} - {1}
            if len(batch) > 1:
                raise ValueError(
                    f"potential tables have different batch sizes {sorted(batch)}; "
                    "use one batch size B (or 1 to share a table across the batch)"
                )
            b = batch.pop() if batch else 1
            flat = []
            for r, p in enumerate(pots):
                want = g.region_shape(r)
                if not isinstance(p, Tensor):
                    raise TypeError(f"potential {r} must be a tensor, got {type(p).__name__}")
                if tuple(p.shape[1:]) != want or p.dim() != len(want) + 1:
                    raise ValueError(
                        f"potential {r} (region {g.regions[r]}) must have shape (B, "
                        f"{', '.join(map(str, want))}), got {tuple(p.shape)}"
                    )
                _check_dtype(p.dtype, f"potential {r}", _POTS_HINT)
                flat.append(p.reshape(p.shape[0], -1).expand(b, -1))
            theta = torch.cat(flat, dim=1)
        _check_dtype(theta.dtype, "potentials", _POTS_HINT)
        if batch_size is not None and theta.shape[0] != batch_size:
            if theta.shape[0] != 1:
                raise ValueError(
                    f"potentials have batch size {theta.shape[0]}, messages {batch_size}"
                )
            theta = theta.expand(batch_size, -1)
        return theta

    def prepare(self, pots: PotentialsLike, batch_size: int | None = None) -> PreparedPotentials:
        """Pack, check and clamp potentials once, for several calls on them.

        Pass the result to :meth:`sweep`, :meth:`run`, :meth:`dual` and the read-outs in place
        of the potentials: the fast path's sweep tables are built by the first sweep on it and
        reused by every later sweep and dual on it (see :class:`PreparedPotentials`). A training
        step does ``prep = bp.prepare(theta)``, ``msgs = bp.sweep(prep, msgs)`` (no gradient
        needed) and ``bp.dual(prep, msgs)``, whose gradient flows to ``theta``.

        Args:
            pots: potentials (see the class docstring), or a prepared object (returned as it is
                when it was made by this instance for this batch size).
            batch_size: expand broadcast (batch size 1) potentials to this batch size; prepare
                for the messages' batch size to share the tables (a batch-1 object used with
                ``B > 1`` messages is expanded per call, without tables).

        Returns:
            The prepared potentials; ``theta`` keeps the autograd graph of ``pots``.

        Raises:
            TypeError, ValueError: as :meth:`pack`; ValueError also for a prepared object whose
                potentials were changed in place since, or whose batch size does not fit.
        """
        if isinstance(pots, PreparedPotentials):
            theta = pots.theta
            if pots._version is not None and pots._version != theta._version:
                raise ValueError(
                    "the potentials were changed in place after ConvexBP.prepare(): prepare them "
                    "again (a prepared object holds tables built from the old values)"
                )
            fits = batch_size is None or theta.shape[0] == batch_size
            if pots._owner is self and fits:
                return pots
            theta = self._pack(theta, batch_size)  # another instance's, or broadcast: no tables
            return PreparedPotentials(theta, pots.clean, self, _version_of(theta))
        theta, clean = _clamp(self._pack(pots, batch_size))
        return PreparedPotentials(theta, clean, self, _version_of(theta))

    def init_messages(
        self,
        batch_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Zero messages, ``(batch_size, M)`` with ``M = num_message_entries``.

        Raises:
            ValueError: ``dtype`` is not float32 or float64.
        """
        _check_dtype(dtype, "messages", _MSGS_HINT)
        return torch.zeros(batch_size, self.num_message_entries, dtype=dtype, device=device)

    def _check_msgs(self, theta: Tensor, msgs: Tensor) -> None:
        if not isinstance(msgs, Tensor):
            raise TypeError(f"messages must be a tensor, got {type(msgs).__name__}")
        if msgs.dim() != 2 or msgs.shape[1] != self.num_message_entries:
            raise ValueError(
                f"messages must have shape (B, {self.num_message_entries}) for this graph, got "
                f"{tuple(msgs.shape)} (messages from another graph?)"
            )
        _check_dtype(msgs.dtype, "messages", _MSGS_HINT)
        if msgs.shape[0] != theta.shape[0]:
            raise ValueError(
                f"messages have batch size {msgs.shape[0]} but potentials {theta.shape[0]}"
            )
        if msgs.dtype != theta.dtype or msgs.device != theta.device:
            raise ValueError(
                f"messages ({msgs.dtype}, {msgs.device}) and potentials ({theta.dtype}, "
                f"{theta.device}) must share dtype and device"
            )

    def _resolve(self, pots: PotentialsLike, msgs: Tensor) -> PreparedPotentials:
        """The methods' input: :meth:`prepare` for the messages' batch size, messages checked."""
        if not isinstance(msgs, Tensor):
            raise TypeError(f"messages must be a tensor, got {type(msgs).__name__}")
        prep = self.prepare(pots, batch_size=msgs.shape[0] if msgs.dim() == 2 else None)
        self._check_msgs(prep.theta, msgs)
        return prep

    def _tables_of(self, prep: PreparedPotentials, d: _Dense) -> tuple:
        """``prep``'s fast-path sweep tables (:meth:`_sweep_tables`), built on first use."""
        if not prep._tables:
            with torch.no_grad():
                tables = self._sweep_tables(prep.theta.detach(), d)
            if not prep._tables:  # (a racing thread's identical tables may have landed)
                prep._tables.append(tables)
        return prep._tables[0]

    # ------------------------------------------------------------------ message passing
    @staticmethod
    def _soft_max(
        v: Tensor,
        c_hat: Tensor,
        inv: Tensor,
        all_pos: bool,
        all_zero: bool,
        bel: Tensor | None = None,
    ) -> Tensor:
        """``ĉ * logsumexp(v / ĉ)`` over the last axis (``max`` where ``ĉ = 0``).

        ``v``: ``(B, n, K)``; ``c_hat``: ``(n,)``; ``inv``: ``(n, 1)``; ``bel``: ``(B, n, K)``
        beliefs, the gradient of the ``max`` rows (None: ``amax``'s own).
        """
        if not all_pos:
            hard = v.amax(dim=-1) if bel is None else _MaxWithGrad.apply(v, bel, -1)
        if all_zero:
            return hard
        xs = v * inv
        lse = _lse_shifted(xs, xs.detach().amax(dim=-1, keepdim=True), -1) * c_hat
        if all_pos:
            return lse
        return torch.where(c_hat > 0, lse, hard)

    def sweep(self, pots: PotentialsLike, msgs: Tensor) -> Tensor:
        """One block-coordinate sweep over all regions that have parents.

        Args:
            pots: potentials (see class docstring) or :meth:`prepare`'s object (whose sweep
                tables are then built once and kept on it); treated as constants: the messages
                are not differentiated through.
            msgs: ``(B, M)`` messages.

        Returns:
            New ``(B, M)`` messages (the input is not modified). The dual never increases. On
            the pairwise fast path with ``B > 1`` they are a transposed view of an ``(M, B)``
            tensor (``out.t()`` is contiguous): the next sweep or dual reads them without a
            transpose. Call ``.contiguous()`` where a flat row-major layout is needed.
        """
        prep = self._resolve(pots, msgs)
        with torch.no_grad():
            theta = prep.theta.detach()
            plan = self._plan(theta.device, theta.dtype)
            if plan.dense is not None:
                return self._sweep_dense(prep, msgs.detach(), plan.dense)
            lam = msgs.detach().clone()
            b = theta.shape[0]
            # one -inf column at position T: the padding of the mu rows points there
            theta = torch.cat([theta, theta.new_full((b, 1), float("-inf"))], dim=1)
            for blk in plan.blocks:
                # x = fhat_p - lam[r->p] for every parent p of a block region r (DESIGN §1),
                # one copy of the parent's table per (r, p), then the -inf padding entry
                x = theta.index_select(1, blk.xpos)
                if blk.xadd_tgt.numel():
                    x.index_add_(1, blk.xadd_tgt, lam.index_select(1, blk.xadd_src))
                if blk.xsub_tgt.numel():
                    x.index_add_(1, blk.xsub_tgt, lam.index_select(1, blk.xsub_src), alpha=-1)
                # mu[p->r](y_r): soft-max of x over the parent states projecting onto y_r
                rows = x.index_select(1, blk.mu_idx.view(-1)).view(b, *blk.mu_idx.shape)
                mu = self._soft_max(rows, blk.mu_c_hat, blk.mu_inv, blk.mu_all_pos, blk.mu_all_zero)
                # a = f_r + sum_c lam[c->r] + sum_p mu[p->r]; lam[r->p] = w_p a - mu[p->r]
                a = theta.index_select(1, blk.apos)
                if blk.aadd_tgt.numel():
                    a.index_add_(1, blk.aadd_tgt, lam.index_select(1, blk.aadd_src))
                a.index_add_(1, blk.mu_tgt, mu)
                lam.index_copy_(1, blk.msg_pos, a.index_select(1, blk.mu_tgt) * blk.weight - mu)
        return lam

    # The pairwise fast path works "batch-last": tables (P, K, K, B), messages (S, K, B) and
    # node scores (N, K, B), so that every elementwise op and every reduction over states runs
    # over contiguous chunks of K*B numbers (batch-first, small state counts would leave
    # innermost axes of 2..26 entries, where CPU kernels crawl), and every gather of messages
    # or tables is an index_select of whole (K, B) or (K, K, B) chunks along dim 0.
    @staticmethod
    def _dense_tables(theta: Tensor, d: _Dense, rows: Tensor | None = None) -> list[Tensor]:
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

    @staticmethod
    def _slots(msgs: Tensor, d: _Dense, copy: bool = False) -> Tensor:
        """Messages ``(B, M)`` as slots ``(S, K, B)``, padded for mixed K.

        A new tensor with ``copy`` (the sweep writes into it); otherwise possibly a view of
        ``msgs``: the messages a sweep returns are already laid out ``(M, B)`` underneath (see
        :meth:`ConvexBP.sweep`), and then no transpose is needed.
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

    @staticmethod
    def _tree_max(x: Tensor, dim: int) -> Tensor:
        """``x.amax(dim, keepdim=True)`` by halving with ``maximum`` (far faster on CPU); new."""
        k = x.shape[dim]
        if k == 1:
            return x.clone()
        while k > 1:
            h = (k + 1) // 2
            x = torch.maximum(x.narrow(dim, 0, h), x.narrow(dim, k - h, h))
            k = h
        return x

    def _update_log(self, v: Tensor, lo: Tensor, blk: _DenseBlock, k: int) -> Tensor:
        """``mu[e->i]`` of a block's messages in log space (DESIGN §1).

        ``v[p, y_j, y_i] = f_e(y_i, y_j)`` for the p-th pair ``e = (i, j)`` at a block node
        ``i``, ``lo[p] = lam[j->e]``: ``v + lo`` is the pair's fhat without the block's own message,
        and ``mu[e->i](y_i) = ĉ_e log sum_{y_j} exp((v + lo) / ĉ_e)`` (max if ĉ_e = 0), (P, K, B).
        ``v`` itself is left alone.
        """
        v = v + lo.unsqueeze(2)  # a new tensor: the tables are kept for the next sweep
        if not (blk.unit or blk.all_zero):
            v *= blk.inv
        if k == 2 and not blk.all_zero:
            # two states: m + log(1 + exp(-|v_0 - v_1|)), the same formula with half the exps
            # (min - max = -|v_0 - v_1| exactly, one op fewer than abs and neg)
            v0, v1 = v[:, 0], v[:, 1]
            m = torch.maximum(v0, v1)
            mu = torch.minimum(v0, v1).sub_(m).exp_().add_(1).log_().add_(m)
            m = m.unsqueeze(1)
        else:
            m = self._tree_max(v, 1)
            mu = m.squeeze(1) if blk.all_zero else v.sub_(m).exp_().sum(1).log_().add_(m[:, 0])
        if not blk.all_zero:
            if not blk.unit:
                mu = mu * blk.c_hat
            if not blk.all_pos:
                mu = torch.where(blk.c_hat > 0, mu, m.squeeze(1))
        return mu

    def _sweep_tables(self, theta: Tensor, d: _Dense) -> tuple:
        """The per-theta part of a fast-path sweep: ``(nodes, tabs, etab, c_msg)``.

        Log space (``etab`` None): ``tabs[q, y_j, y_i, b] = f_e(y_i, y_j)`` for the q-th message
        ``lam[i->e]`` of the sweep (``e = (i, j)``). Exp space (``tabs`` None): with
        ``c_e = max f_e``, ``etab = exp(f_e - c_e)`` oriented as ``tabs``, ``c_msg[q] = c_e``.
        Read-only for the sweep; kept on the :class:`PreparedPotentials` they were built for
        (:meth:`_tables_of`), for later sweeps and the dual on it.
        """
        b = theta.shape[0]
        if d.exp_space and theta.device.type == "cpu":
            shared = self._shared_pairs(theta, d)
            if shared is not None:
                # one set of pair tables for the whole batch (e.g. a head's K x K tables):
                # exps once, and each block's sums are (K, K) @ (K, B) products
                nodes, pairs = shared  # (N, K, B), (E, K*K, 1)
                bt = 1
            else:
                nodes, pairs = self._dense_tables(theta, d)
                pairs = pairs.view(pairs.shape[0], -1, b)  # (E, K*K, B)
                bt = b
            c = self._tree_max(pairs, 1)  # (E, 1, bt)
            epair = (pairs - c).exp_()  # (E, K*K, bt) in tuple order, kept for the dual
            etab = epair.view(-1, bt).index_select(0, d.tab_local)
            etab = etab.view(-1, d.kmax, d.kmax, bt)  # [q, y_j, y_i]
            c_msg = c.view(-1, bt).index_select(0, d.msg_pair).unsqueeze(1)  # (P_all, 1, bt)
            # shared: [q, y_i, y_j], the left factor of the block's batched matrix products
            etab_t = etab[..., 0].transpose(1, 2).contiguous() if shared is not None else None
            return nodes, None, etab, c_msg, epair, c, etab_t
        shared = self._shared_pairs(theta, d) if theta.device.type == "cpu" else None
        if shared is not None:  # log-space tables (two states, say) shared by the batch
            nodes, pairs = shared
            tabs = pairs.view(-1, 1).index_select(0, d.tab_local)
            return nodes, tabs.view(-1, d.kmax, d.kmax, 1), None, None, None, None, None
        nodes, tabs = self._dense_tables(theta, d, d.tab_rows)
        return nodes, tabs, None, None, None, None, None

    def _sweep_compiled(self, prep: PreparedPotentials, msgs: Tensor, d: _Dense) -> Tensor | None:
        """:meth:`sweep` through a compiled :func:`_exp_sweep` (where the eager sweep would run
        in exp space) or :func:`_log_sweep`; None if compiling failed (this instance then
        sweeps eagerly from now on)."""
        theta = prep.theta.detach()
        b = theta.shape[0]
        fkey = (theta.device, theta.dtype)
        fns = self._sweep_fns.get(fkey)
        if fns is None:
            parts, spans, off = [], [], 0
            for blk in d.blocks:
                parts += [blk.other, blk.node_pos, blk.nodes]
                spans.append((blk.start, blk.stop, off, int(blk.nodes.numel())))
                off += 2 * (blk.stop - blk.start) + int(blk.nodes.numel())
            weights = torch.cat(
                [
                    blk.weight
                    if isinstance(blk.weight, Tensor)
                    else blk.other.new_full(
                        (blk.stop - blk.start, 1, 1), blk.weight, dtype=theta.dtype
                    )
                    for blk in d.blocks
                ]
            )
            consts = (torch.cat(parts), weights, tuple(spans))
            fns = (torch.compile(_log_sweep), torch.compile(_exp_sweep), consts)
            self._sweep_fns[fkey] = fns
        log_fn, exp_fn, consts = fns
        nodes, tabs, etab, c_msg = self._tables_of(prep, d)[:4]
        lam = self._slots(msgs, d)  # not modified by the compiled sweeps
        try:
            out = None
            if etab is not None:
                out, low = exp_fn(lam, etab, c_msg, nodes, *consts)
                tiny = torch.finfo(theta.dtype).tiny / torch.finfo(theta.dtype).eps
                # underflow somewhere (then later blocks may have met inf - inf: NaN, which
                # fails this test too): the whole sweep again, in log space
                if not bool(low >= tiny):
                    out = None
                    tabs = self._dense_tables(theta, d, d.tab_rows)[1]
            if out is None:
                out = log_fn(lam, tabs, nodes, *consts)
        except Exception as err:  # no working compiler: this instance sweeps eagerly from now on
            self._compile_failed = True
            warnings.warn(
                f"ConvexBP(compile=True): torch.compile failed ({type(err).__name__}: "
                f"{(str(err).splitlines() or [''])[0][:200]}); sweeps run eagerly instead "
                "(same results, slower)",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        lam = out.view(-1, b)
        if b == 1 and not d.in_order:
            return lam.view(-1).index_select(0, d.to_general).view(1, -1)
        return (lam if d.in_order else lam.index_select(0, d.to_general)).t()

    @staticmethod
    def _shared_pairs(theta: Tensor, d: _Dense) -> tuple[Tensor, Tensor] | None:
        """``(nodes (N, K, B), pairs (E, K*K, 1))`` when every example has the same pair tables.

        Checked on the data (the first and last example first; then every column's max and min
        over the batch must agree, which a NaN never passes); None otherwise, with one example,
        or when the node or pair entries are not contiguous ranges of theta.
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

    def _sweep_dense(self, prep: PreparedPotentials, msgs: Tensor, d: _Dense) -> Tensor:
        """The sweep of :meth:`sweep` on the pairwise fast path (same schedule and updates)."""
        theta = prep.theta.detach()
        b = theta.shape[0]
        if self.uses_compiled_sweeps:
            out = self._sweep_compiled(prep, msgs, d)
            if out is not None:
                return out
        lam = self._slots(msgs, d, copy=True)  # (S, K, B), a copy: the input stays as is
        # exp space (CPU, one K >= EXP_MIN_STATES, all ĉ = 1): with c_e = max f_e and
        # m = max_{y_j} lam[j->e],
        #   mu[e->i](y_i) = c_e + m + log sum_{y_j} E_e(y_i, y_j) x(y_j),
        # E_e = exp(f_e - c_e) once per theta, x = exp(lam[j->e] - m) per block. Where a sum
        # comes out too small to be exact (exp underflow), the block redoes it in log space.
        tables = self._tables_of(prep, d)
        nodes, tabs, etab, c_msg = tables[:4]
        etab_t = tables[6]  # shared pair tables: [q, y_i, y_j] (else None)
        tiny = torch.finfo(theta.dtype).tiny / torch.finfo(theta.dtype).eps
        tt = None
        if etab is not None and b == 1:
            etab1, c_msg1 = etab[..., 0], c_msg[..., 0]
        k2 = d.kmax * d.kmax
        for blk in d.blocks:
            # lam[j->e](y_j), (P, K, B); with B = 1 a flat gather (rows of K are slow)
            if b == 1:
                lo = lam.view(-1).index_select(0, blk.other_flat).view(-1, d.kmax, 1)
            else:
                lo = lam.index_select(0, blk.other)
            mu = None
            if etab is not None:
                # with B = 1 the trailing batch axis is dropped: broadcasting against a size-1
                # innermost axis is several times slower on the CPU than on (P, K) rows
                lo1, e1, c1 = (lo[..., 0], etab1, c_msg1) if b == 1 else (lo, etab, c_msg)
                m = self._tree_max(lo1, 1)
                x = (lo1 - m).exp_()
                if b == 1:  # sum_{y_j} E[p, y_j, y_i] x[p, y_j] as P tiny (1, K) @ (K, K)
                    s = torch.bmm(x.unsqueeze(1), e1[blk.start : blk.stop]).squeeze(1)
                elif etab_t is not None:  # one table for the batch: P (K, K) @ (K, B)
                    s = torch.bmm(etab_t[blk.start : blk.stop], x)
                else:
                    s = torch.mul(e1[blk.start : blk.stop], x.unsqueeze(2)).sum(1)
                if not bool(s.amin() < tiny):
                    mu = s.log_().add_(c1[blk.start : blk.stop]).add_(m)
                    mu = mu.unsqueeze(-1) if b == 1 else mu
                else:  # the log-space update below, on this block's tables
                    if tt is None:
                        tt = theta.t().contiguous()  # (T, B)
                    rows = d.tab_rows[blk.start * k2 : blk.stop * k2]
                    v = tt.index_select(0, rows).view(-1, d.kmax, d.kmax, b)
            else:
                v = tabs[blk.start : blk.stop]
            if mu is None:
                mu = self._update_log(v, lo, blk, d.kmax)
            # a_i = f_i + sum_{e at i} mu[e->i];  lam[i->e] = w_e a_i - mu[e->i]
            # (written straight into the block's slots: they are not read again this block)
            a = nodes.index_select(0, blk.nodes)
            out = lam[blk.start : blk.stop]
            if blk.single:
                a.add_(mu.sum(0, keepdim=True))
                if isinstance(blk.weight, float):
                    torch.sub(a.mul_(blk.weight), mu, out=out)
                else:
                    torch.sub(a * blk.weight, mu, out=out)
            elif b == 1:  # flat gathers: far faster than rows of (K, 1)
                af, pf = a.view(-1), blk.node_pos_flat
                af.index_add_(0, pf, mu.view(-1))
                torch.index_select(af, 0, pf, out=out.view(-1))
                out.mul_(blk.weight).sub_(mu)
            else:
                a.index_add_(0, blk.node_pos, mu)
                torch.index_select(a, 0, blk.node_pos, out=out).mul_(blk.weight).sub_(mu)
            if not d.uniform:
                out *= blk.mask  # padding states send 0
        lam = lam.view(-1, b)
        # (B, M) as a transposed view of (M, B): the next sweep or dual on these messages reads
        # them without a transpose, and a store's scatter copies them in one pass
        if b == 1 and not d.in_order:
            return lam.view(-1).index_select(0, d.to_general).view(1, -1)
        return (lam if d.in_order else lam.index_select(0, d.to_general)).t()

    def run(
        self,
        pots: PotentialsLike,
        msgs: Tensor | None = None,
        num_sweeps: int = 10,
        tol: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Several sweeps, stopping early once the dual moves less than ``tol`` for every example.

        Args:
            pots: potentials (see class docstring) or :meth:`prepare`'s object; all sweeps and
                duals of the run share one prepared object (the caller's, when given).
            msgs: ``(B, M)`` starting messages; zeros if None.
            num_sweeps: maximum number of sweeps.
            tol: stop when ``max_b |D_before - D_after| <= tol`` (checked once per sweep; costs a
                dual evaluation and a device sync per sweep). None: always ``num_sweeps``.

        Returns:
            ``(msgs, duals)``: the final ``(B, M)`` messages and the duals after each sweep,
            ``(num_done, B)``; with ``tol=None`` the duals are not computed (``(0, B)``).
        """
        with torch.no_grad():
            prep = self.prepare(pots, batch_size=None if msgs is None else msgs.shape[0])
            theta = prep.theta
            if msgs is None:
                msgs = self.init_messages(theta.shape[0], theta.dtype, theta.device)
            duals = []
            prev = self.dual(prep, msgs) if tol is not None else None
            for _ in range(num_sweeps):
                msgs = self.sweep(prep, msgs)
                if tol is not None:
                    d = self.dual(prep, msgs)
                    duals.append(d)
                    if float((prev - d).abs().max()) <= tol:
                        break
                    prev = d
        stacked = torch.stack(duals) if duals else theta.new_zeros(0, theta.shape[0])
        return msgs, stacked

    # ------------------------------------------------------------------ read-outs
    def reparameterize(self, pots: PotentialsLike, msgs: Tensor) -> Tensor:
        """``fhat`` for all regions in the packed ``(B, T)`` layout; differentiable."""
        theta = self._resolve(pots, msgs).theta
        plan = self._plan(theta.device, theta.dtype)
        fhat = theta.index_add(1, plan.fhat_tgt_in, msgs.index_select(1, plan.fhat_src_in))
        return fhat.index_add(
            1, plan.fhat_tgt_out, msgs.index_select(1, plan.fhat_src_out), alpha=-1
        )

    def _padded(self, fhat: Tensor) -> tuple[Tensor, _Plan]:
        plan = self._plan(fhat.device, fhat.dtype)
        neg = fhat.new_full((fhat.shape[0], 1), float("-inf"))
        pad = torch.cat([fhat, neg], dim=1).index_select(1, plan.pad_idx.view(-1))
        return pad.view(fhat.shape[0], *plan.pad_idx.shape), plan

    def dual(self, pots: PotentialsLike, msgs: Tensor) -> Tensor:
        """The dual ``D(lam) = sum_r ĉ_r log sum_{y_r} exp(fhat_r(y_r) / ĉ_r)``.

        Args:
            pots: potentials, or :meth:`prepare`'s object (its sweep tables, where a sweep on
                it built them, are reused); gradients flow to the potentials (and to ``msgs``).
            msgs: ``(B, M)`` messages.

        Returns:
            ``(B,)``; ``d.sum().backward()`` gives each table the beliefs of its region
            (:meth:`beliefs`): the softmax where ``ĉ_r > 0``; where ``ĉ_r = 0`` the term is
            ``max fhat_r`` and its gradient the belief on its arg-max face, a subgradient.
        """
        prep = self._resolve(pots, msgs)
        theta = prep.theta
        plan = self._plan(theta.device, theta.dtype)
        if plan.dense is not None:
            d = plan.dense
            if d.uniform and d.node_flags[2] and d.pair_flags[2]:
                # every ĉ = 1 (no ĉ = 0 region): the custom Function and its shared-table forms,
                # on the exp tables a sweep on this prepared object built (if any)
                tables = prep._tables[0] if prep._tables else None
                if tables is not None and tables[4] is None:  # log-space tables: not of use
                    tables = None
                return _DenseDual.apply(theta, msgs, d, tables)
            nodes, pairs, raw, lam = self._dense_fhat(theta, msgs, d)
            node_b = pair_b = None
            if self._has_zero_regions:
                node_b, pair_b = self._dense_beliefs(d, nodes, pairs, raw, lam)
            k = d.kmax
            pairs = pairs.view(pairs.shape[0], k * k, -1)
            node_d = self._soft_max1(
                nodes, d.node_c_hat[:, None], d.node_inv[..., None], d.node_flags, node_b
            )
            pair_d = self._soft_max1(
                pairs, d.pair_c_hat[:, None], d.pair_inv[..., None], d.pair_flags, pair_b
            )
            return node_d.sum(0) + pair_d.sum(0)
        pad, plan = self._padded(self.reparameterize(prep, msgs))
        bel = None
        if self._has_zero_regions:
            bel = self._region_beliefs(pad.detach(), theta, msgs, plan)
        per_region = self._soft_max(pad, plan.c_hat, plan.inv, plan.all_pos, plan.all_zero, bel)
        return per_region.sum(dim=1)

    @classmethod
    def _soft_max1(
        cls,
        x: Tensor,
        c_hat: Tensor,
        inv: Tensor,
        flags: tuple[bool, bool, bool],
        bel: Tensor | None = None,
    ) -> Tensor:
        """``ĉ * logsumexp(x / ĉ)`` over dim 1 (``max`` where ``ĉ = 0``), differentiable.

        ``x``: ``(n, K, B)``; ``c_hat``: ``(n, 1)``; ``inv``: ``(n, 1, 1)``; ``flags``: all ĉ > 0,
        all ĉ = 0, all ĉ = 1; ``bel``: ``(n, K, B)`` beliefs, the gradient of the ``max`` rows
        (None: ``amax``'s own).
        """
        all_pos, all_zero, unit = flags
        if not all_pos:
            hard = x.amax(dim=1) if bel is None else _MaxWithGrad.apply(x, bel, 1)
        if all_zero:
            return hard
        xs = x if unit else x * inv
        lse = _lse_shifted(xs, cls._tree_max(xs.detach(), 1), 1)
        if unit:
            return lse
        lse = lse * c_hat
        return lse if all_pos else torch.where(c_hat > 0, lse, hard)

    def _dense_fhat(
        self, theta: Tensor, msgs: Tensor, d: _Dense
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reparameterised singleton ``(N, K, B)`` and pair ``(E, K, K, B)`` tables (fast path).

        ``fhat_i = f_i - sum_{e at i} lam[i->e]`` and ``fhat_e(y_a, y_b) = f_e(y_a, y_b)
        + lam[a->e](y_a) + lam[b->e](y_b)`` (DESIGN §1), batch-last; differentiable. Then what
        they were made of: the singleton tables ``f_i`` ``(N, K, B)`` and the slots ``(S, K, B)``.
        """
        nodes, pairs = self._dense_tables(theta, d)
        lam = self._slots(msgs, d)  # (S, K, B)
        # (f + lam_a) + lam_b, the general path's order of additions (same rounding)
        fpair = pairs + lam.index_select(0, d.end0).unsqueeze(2)
        fpair = fpair + lam.index_select(0, d.end1).unsqueeze(1)
        fnode = nodes.index_add(0, d.slot_var, lam, alpha=-1)
        return fnode, fpair, nodes, lam

    @staticmethod
    def _soft_or_hard(
        x: Tensor, c_hat: Tensor, inv: Tensor, flags: tuple[bool, bool, bool], dim: int
    ) -> Tensor:
        """``softmax(x / ĉ)`` over ``dim``, one-hot argmax where ``ĉ = 0``.

        ``c_hat`` and ``inv`` broadcast against ``x`` (size 1 along ``dim``); ``flags``: all
        ĉ > 0, all ĉ = 0, all ĉ = 1 (only the kind needed is computed).
        """
        all_pos, all_zero, _ = flags
        if all_zero:
            return _one_hot_argmax(x, dim)
        soft = torch.softmax(x * inv, dim=dim)
        return soft if all_pos else torch.where(c_hat > 0, soft, _one_hot_argmax(x, dim))

    @staticmethod
    def _face_beliefs(q: Tensor, fhat: Tensor, mags: Tensor, hard: Tensor, dim: int) -> Tensor:
        """Beliefs of ĉ = 0 regions: their parents' marginals on the arg-max face, renormalised.

        A state is on the face when it ties with the best one up to rounding: with
        ``tol = TIE_RTOL * mags`` (``mags`` bounds the numbers summed into each score), when its
        interval ``fhat +- tol`` reaches the highest lower end ``max (fhat - tol)``. Any
        distribution on the face is a subgradient of ``max fhat``; at convergence every state
        the parents give mass to ties, and the result is the parents' marginal. Where the
        parents give the face no mass (away from convergence, say), the one-hot ``hard``.

        Args:
            q: parent marginals (summed over parents), ``>= 0``.
            fhat: the regions' reparameterised scores (``-inf`` padding allowed).
            mags: ``s_r(y)`` of :data:`TIE_RTOL`, finite.
            hard: one-hot argmax beliefs.
            dim: the state axis; all four tensors share their shape.

        Returns:
            Beliefs, the shape of ``q``.
        """
        tol = mags * TIE_RTOL[fhat.dtype]
        q = q * (fhat + tol >= (fhat - tol).amax(dim, keepdim=True))
        mass = q.sum(dim, keepdim=True)
        some = mass > 0
        return torch.where(some, q / torch.where(some, mass, 1.0), hard)

    def _dense_beliefs(
        self, d: _Dense, fnode: Tensor, fpair: Tensor, f_raw: Tensor, lam: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Node ``(N, K, B)`` and pair ``(E, K*K, B)`` beliefs on the fast path, no gradient.

        Softmax where ``ĉ > 0``; a ĉ = 0 pair (no parents) gets the one-hot argmax, a ĉ = 0 node
        the sum of its pairs' beliefs marginalised onto it, restricted to its arg-max face
        (:meth:`_face_beliefs`): what :meth:`_region_beliefs` gives on the general layout.
        ``fnode``, ``fpair``, ``f_raw``, ``lam``: :meth:`_dense_fhat`'s four tensors.
        """
        with torch.no_grad():
            k = d.kmax
            fn = fnode.detach()
            fp = fpair.detach().reshape(fpair.shape[0], k * k, -1)
            pair_b = self._soft_or_hard(
                fp, d.pair_c_hat[:, None, None], d.pair_inv[..., None], d.pair_flags, 1
            )
            node_b = self._soft_or_hard(
                fn, d.node_c_hat[:, None, None], d.node_inv[..., None], d.node_flags, 1
            )
            if d.node_flags[0]:
                return node_b, pair_b
            b = fn.shape[-1]
            p4 = pair_b.view(-1, k, k, b)
            q = torch.zeros_like(fn).index_add_(0, d.pair_var0, p4.sum(2))
            q = q.index_add_(0, d.pair_var1, p4.sum(1)).mul_(d.node_valid)
            mags = f_raw.detach().abs().index_add_(0, d.slot_var, lam.detach().abs())
            top = fp.amax(1).abs_().index_select(0, d.msg_pair)  # (S, B): |max fhat_e| per slot
            up = top.new_zeros(fn.shape[0], b).index_add_(0, d.slot_var, top)
            mags += up.add_(1).unsqueeze(1)
            node_b = torch.where(
                (d.node_c_hat == 0)[:, None, None],
                self._face_beliefs(q, fn, mags, node_b, 1),
                node_b,
            )
        return node_b, pair_b

    def _region_beliefs(self, pad: Tensor, theta: Tensor, msgs: Tensor, plan: _Plan) -> Tensor:
        """Beliefs of all regions from their padded reparameterised scores ``(B, R, Smax)``.

        ``softmax(fhat_r / ĉ_r)`` where ``ĉ_r > 0`` (differentiable); where ``ĉ_r = 0``, regions
        with parents get :meth:`_face_beliefs` of their parents' beliefs (top-down, so a ĉ = 0
        parent is done first), those without the one-hot argmax (no gradient either way).
        ``theta`` ``(B, T)`` (clamped) and ``msgs`` ``(B, M)``: what ``pad`` was computed from
        (read only for ĉ = 0 regions with parents).
        """
        soft = _softmax_last(pad * plan.inv) if not plan.all_zero else None
        if plan.all_pos:
            return soft
        hard = _one_hot_argmax(pad, -1)
        bel = hard if soft is None else torch.where((plan.c_hat > 0)[:, None], soft, hard)
        if not plan.zero_levels:
            return bel
        with torch.no_grad():
            b, smax = pad.shape[0], pad.shape[2]
            fh = pad.detach()
            # s_r(y) of TIE_RTOL: |f_r| + the |lam| summed into fhat_r + sum_p |max fhat_p| + 1
            ma = msgs.detach().abs()
            mags = theta.detach().abs()
            mags = mags.index_add(1, plan.fhat_tgt_in, ma.index_select(1, plan.fhat_src_in))
            mags = mags.index_add_(1, plan.fhat_tgt_out, ma.index_select(1, plan.fhat_src_out))
            mags = torch.cat([mags, mags.new_zeros(b, 1)], dim=1)
            mags = mags.index_select(1, plan.pad_idx.view(-1)).view(b, -1, smax)
            top = fh.amax(-1).abs_()  # (B, R)
            up = torch.zeros_like(top).index_add_(
                1, plan.edge_child, top.index_select(1, plan.edge_parent)
            )
            mags += up.add_(1).unsqueeze(-1)
            out = bel.detach()
            for lvl in plan.zero_levels:
                q = out.new_zeros(b, lvl.regions.numel() * smax)
                q.index_add_(1, lvl.tgt, out.reshape(b, -1).index_select(1, lvl.src))
                new = self._face_beliefs(
                    q.view(b, -1, smax),
                    fh.index_select(1, lvl.regions),
                    mags.index_select(1, lvl.regions),
                    out.index_select(1, lvl.regions),
                    -1,
                )
                out = out.index_copy(1, lvl.regions, new)
            zero = torch.cat([lvl.regions for lvl in plan.zero_levels])
            new = out.index_select(1, zero)
        return bel.index_copy(1, zero, new)

    def _padded_beliefs(self, prep: PreparedPotentials, msgs: Tensor) -> tuple[Tensor, _Plan]:
        pad, plan = self._padded(self.reparameterize(prep, msgs))
        return self._region_beliefs(pad, prep.theta, msgs, plan), plan

    def beliefs(self, pots: PotentialsLike, msgs: Tensor) -> list[Tensor]:
        """Region beliefs: ``b_r = softmax(fhat_r / ĉ_r)`` where ``ĉ_r > 0``.

        A ĉ = 0 region's scores tie at convergence (to rounding), so the argmax of ``fhat_r``
        would be noise; its belief is the one its parents imply: the sum of their beliefs
        marginalised onto it, restricted to its arg-max face (states within :data:`TIE_RTOL`
        of the max) and renormalised, parents first (top-down). With no parent, or no parent
        mass on the face, the one-hot argmax. These are the gradients of :meth:`dual`.

        Returns:
            A list of ``num_regions`` tensors, region ``r`` of shape ``(B, *region_shape(r))``.
        """
        pad, _ = self._padded_beliefs(self._resolve(pots, msgs), msgs)
        b = pad.shape[0]
        out: list[Tensor] = [pad] * self.graph.num_regions  # every entry replaced below
        # regions of one shape at once: one gather, then views (a loop of thousands of
        # per-region slices is slow on large graphs)
        for shape, regs in self._regions_by_shape().items():
            idx = torch.as_tensor(regs, device=pad.device)
            sub = pad.index_select(1, idx)[:, :, : math.prod(shape)]
            for r, t in zip(regs, sub.reshape(b, len(regs), *shape).unbind(1), strict=True):
                out[r] = t
        return out

    def _regions_by_shape(self) -> dict[tuple[int, ...], list[int]]:
        """Region indices grouped by region shape (cached)."""
        groups = getattr(self, "_shape_groups", None)
        if groups is None:
            groups = {}
            for r in range(self.graph.num_regions):
                groups.setdefault(tuple(self.graph.region_shape(r)), []).append(r)
            self._shape_groups = groups
        return groups

    def variable_beliefs(self, pots: PotentialsLike, msgs: Tensor) -> Tensor:
        """Per-variable beliefs, marginalised from the smallest region holding each variable.

        A variable in no region has no factor: its belief is uniform, ``1 / K_v`` per state.
        Regions with ``ĉ_r = 0`` contribute the beliefs of :meth:`beliefs`.

        Returns:
            ``(B, N, Kmax)``; entries past ``num_states[i]`` are 0.
        """
        prep = self._resolve(pots, msgs)
        theta = prep.theta
        plan = self._plan(theta.device, theta.dtype)
        if plan.dense is not None:
            d = plan.dense
            fnode, fpair, raw, lam = self._dense_fhat(theta, msgs, d)
            nodes = fnode.permute(2, 0, 1)
            all_pos, all_zero, _ = d.node_flags
            soft = torch.softmax(nodes * d.node_inv, dim=-1) if not all_zero else None
            if all_pos:
                return soft
            other = self._dense_beliefs(d, fnode, fpair, raw, lam)[0].permute(2, 0, 1)
            return other if soft is None else torch.where((d.node_c_hat > 0)[:, None], soft, other)
        pad, plan = self._padded_beliefs(prep, msgs)
        b = pad.shape[0]
        flat = pad.reshape(b, -1).index_select(1, plan.var_src)
        nv = int(sum(self.graph.num_states))
        out = pad.new_zeros(b, nv + 1).index_add(1, plan.var_tgt, flat)
        if self._np["missing_vars"]:
            out = out + plan.var_fill
        return out.index_select(1, plan.var_pad_idx.view(-1)).view(b, *plan.var_pad_idx.shape)

    def decode(self, pots: PotentialsLike, msgs: Tensor) -> Tensor:
        """Marginal decoding: argmax of each variable's belief (first state on ties).

        A variable in no region (uniform belief) decodes to state 0.

        Returns:
            ``(B, N)`` long labels.
        """
        vb = self.variable_beliefs(pots, msgs)
        ks = torch.as_tensor(self.graph.num_states, device=vb.device)
        valid = torch.arange(vb.shape[-1], device=vb.device) < ks[:, None]
        return vb.masked_fill(~valid, -1.0).argmax(dim=-1)

    def score(self, pots: PotentialsLike, labels: Tensor) -> Tensor:
        """``F(y) = sum_r f_r(y_r)`` of a labelling.

        Args:
            pots: potentials or :meth:`prepare`'s object; differentiable.
            labels: ``(B, N)`` integer labels with ``0 <= labels[:, i] < num_states[i]``.

        Returns:
            ``(B,)``.
        """
        g = self.graph
        if not isinstance(labels, Tensor) or labels.dim() != 2 or labels.shape[1] != g.num_vars:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must have shape (B, {g.num_vars}), got {shape}")
        if isinstance(pots, PreparedPotentials):
            pots = self.prepare(pots).theta  # (the staleness check)
        theta = self._pack(pots, batch_size=labels.shape[0])
        if theta.shape[0] != labels.shape[0]:
            raise ValueError(
                f"labels have batch size {labels.shape[0]} but potentials {theta.shape[0]}"
            )
        plan = self._plan(theta.device, theta.dtype)
        labels = labels.long().to(theta.device)
        ks = torch.as_tensor(g.num_states, device=theta.device)
        bad = ((labels < 0) | (labels >= ks)).any()
        msg = (
            f"labels out of range: variable i takes values 0..num_states[i]-1 = "
            f"{[k - 1 for k in g.num_states]}"
        )
        # One host sync on a GPU: a clear ValueError beats a device-side assert, which would
        # leave the CUDA context unusable.
        if bool(bad):
            raise ValueError(msg)
        picked = labels.index_select(1, plan.score_vars.view(-1)).view(-1, *plan.score_vars.shape)
        idx = plan.score_base + (picked * plan.score_strides).sum(-1)
        # clamping the picked entries equals picking from the clamped table (elementwise)
        return theta.gather(1, idx).clamp_min(NEG_INF).sum(dim=1)

"""The dual ``D(lam) = sum_r ĉ_r log sum_{y_r} exp(fhat_r(y_r) / ĉ_r)`` (``max`` where ``ĉ_r = 0``).

Its gradient with respect to each region table is that region's belief; with respect to a
message ``lam[c->p]`` the parent's belief marginalised onto the child minus the child's belief.
:func:`general_dual` is plain autograd code on the general layout; :func:`pair_dual` runs on the
pairwise fast path and, where every ``ĉ = 1`` and the state count is one, through
:class:`PairDual`, whose hand-written backward reuses the forward's exps (tested equal to the
autograd form on random graphs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from structlight.inference.pairwise_plan import PairwisePlan
from structlight.inference.plan import Plan
from structlight.inference.prepared import (
    PreparedPotentials,
    SweepTables,
    dense_tables,
    shared_pairs,
)
from structlight.inference.readout import (
    padded,
    pair_beliefs,
    pair_fhat,
    region_beliefs,
    reparameterize,
)
from structlight.inference.sweep import to_slots
from structlight.inference.tempered import soft_max, tree_max

__all__ = ["PairDual", "general_dual", "pair_dual"]


class _PairTerm(NamedTuple):
    """The pair part of :class:`PairDual`'s forward, computed from the sweep's exp tables."""

    exps: Tensor | None  # (E, K*K, B) E_e x_a x_b, the unnormalised pair beliefs (or None)
    sums: Tensor  # (E, 1, B) their sums over the states
    value: Tensor  # (B,) the pairs' dual terms, summed
    shared: tuple[Tensor, ...] | None  # batch-shared tables: (E, x_a, x_b, E x_b) instead


class PairDual(torch.autograd.Function):
    """The fast path's dual for one state count and all ĉ = 1, with the beliefs as its gradient.

    Forward: ``sum_i lse(fhat_i) + sum_e lse(fhat_e)`` (the reparameterised tables of
    :func:`~structlight.inference.readout.pair_fhat`), no autograd graph. The beliefs ``b = softmax(fhat)`` come out
    of the same exps and are kept; backward is then ``dD/df_r = b_r`` and
    ``dD/dlam[i->e](y_i) = sum_{y_j} b_e(y_i, y_j) - b_i(y_i)`` (``docs/inference.md``), times the output
    gradient, with no graph of a dozen (E, K, K, B) ops to walk back. With region masks
    (``node_mask`` ``(N, 1, B)``, ``pair_mask`` ``(E, 1, B)``, 1 for present) absent regions
    have no term and zero beliefs.
    """

    @staticmethod
    def forward(
        ctx,
        theta: Tensor,
        msgs: Tensor,
        d: PairwisePlan,
        tables: SweepTables | None,
        node_mask: Tensor | None = None,
        pair_mask: Tensor | None = None,
    ) -> Tensor:
        b, k = theta.shape[0], d.kmax
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        lam = to_slots(msgs, d)  # (S, K, B)
        la, lb = lam.index_select(0, d.end0), lam.index_select(0, d.end1)
        out = None
        bels = []
        pair_done = None
        if tables is not None:
            # the sweep's exp tables (same theta data): exp(fhat_e - c_e - m_a - m_b) =
            # E_e(y_a, y_b) x_a(y_a) x_b(y_b), x = exp(lam - max lam); log space where it
            # underflows (the sweep's test)
            nodes, epair, c = tables.nodes, tables.exp.epair, tables.exp.c_pair
            ma, mb = tree_max(la, 1), tree_max(lb, 1)
            xa, xb = (la - ma).exp_(), (lb - mb).exp_()
            tiny = torch.finfo(theta.dtype).tiny / torch.finfo(theta.dtype).eps
            if epair.shape[-1] == 1 and b > 1:
                # one (E, K, K) table set for the batch: sum_{a,c} E(a,c) x_a(a) x_b(c) as
                # x_a . (E @ x_b), no (E, K, K, B) tensor; the backward builds the beliefs
                # (times the pair mask: absent pairs have no term and zero beliefs)
                e4 = epair.view(-1, k, k)
                t = torch.bmm(e4, xb)  # (E, K, B)
                s = torch.mul(xa, t).sum(1, keepdim=True)
                if not bool(s.amin() < tiny):
                    val = s.log().add_(c).add_(ma).add_(mb)
                    if pair_mask is not None:
                        val.mul_(pair_mask)
                    pair_done = _PairTerm(None, s, val.sum(0)[0], (e4, xa, xb, t))
            else:
                # (the batch may share its tables: a trailing axis of 1 broadcasts)
                e = torch.mul(epair.view(-1, k, k, epair.shape[-1]), xa.unsqueeze(2))
                e = e.mul_(xb.unsqueeze(1))
                e = e.view(-1, k * k, b)
                s = e.sum(1, keepdim=True)
                if not bool(s.amin() < tiny):
                    val = s.log().add_(c).add_(ma).add_(mb)
                    if pair_mask is not None:
                        val.mul_(pair_mask)
                        e.mul_(pair_mask)  # absent pairs: zero beliefs (e / s below)
                    pair_done = _PairTerm(e, s, val.sum(0)[0], None)
        pairs = None
        if tables is None:
            shared = shared_pairs(theta, d) if theta.device.type == "cpu" else None
            if shared is not None:  # (E, K, K, 1): broadcast over the batch below
                nodes, pairs = shared[0], shared[1].view(-1, k, k, 1)
            else:  # one transpose of theta for both
                nodes, pairs = dense_tables(theta, d)
        xs = [nodes.index_add(0, d.slot_var, lam, alpha=-1)]
        if pair_done is None:
            if pairs is None:
                pairs = dense_tables(theta, d)[1]
            # (f + lam_a) + lam_b: the general path's order of additions (same rounding)
            fpair = pairs + la.unsqueeze(2)
            fpair += lb.unsqueeze(1)
            xs.append(fpair.view(-1, k * k, b))
        for x, mask in zip(xs, (node_mask, pair_mask), strict=False):
            m = tree_max(x, 1)
            m.masked_fill_(m.isinf(), 0.0)  # as torch.logsumexp: no inf - inf
            e = x.sub_(m).exp_()  # x is ours: reuse it
            s = e.sum(1, keepdim=True)
            val = s.log().add_(m)
            if mask is not None:  # absent regions: no term, zero beliefs
                val.mul_(mask)
                e.mul_(mask)
            val = val.sum(0)[0]  # (B,)
            out = val if out is None else out.add_(val)
            if want:
                bels.append(e.div_(s))
        ctx.shared = False
        ctx.pair_mask = pair_mask
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
                w = grad / s if ctx.pair_mask is None else (grad / s).mul_(ctx.pair_mask)
                torch.mul(e4.unsqueeze(-1), (xa * w).unsqueeze(2), out=gp)
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
                if ctx.pair_mask is not None:
                    inv.mul_(ctx.pair_mask)
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
        return g_theta, g_msgs, None, None, None, None


def pair_dual(prep: PreparedPotentials, msgs: Tensor, plan: Plan) -> Tensor:
    """The dual on the fast path, ``(B,)``."""
    d, masks = plan.pairwise, prep.masks
    theta = prep.theta
    if d.uniform and d.node_temper.unit and d.pair_temper.unit:
        # every ĉ = 1: the custom Function, on the exp tables a sweep on this prepared object
        # built (if any; log-space tables are not of use)
        tables = prep.built_tables()
        tables = tables if tables and tables.exp else None
        if masks is None:
            return PairDual.apply(theta, msgs, d, tables)
        node_mask = masks.node.unsqueeze(1).to(theta.dtype)
        pair_mask = masks.pair.unsqueeze(1).to(theta.dtype)
        return PairDual.apply(theta, msgs, d, tables, node_mask, pair_mask)
    scores = pair_fhat(theta, msgs, d)
    node_b = pair_b = None
    if plan.has_zero:
        node_b, pair_b = pair_beliefs(d, scores, masks)
    k = d.kmax
    pairs = scores.pair.view(scores.pair.shape[0], k * k, -1)
    node_d = soft_max(scores.node, d.node_temper, 1, node_b)
    pair_d = soft_max(pairs, d.pair_temper, 1, pair_b)
    if masks is not None:  # absent regions: no term
        node_d = torch.where(masks.node, node_d, 0.0)
        pair_d = torch.where(masks.pair, pair_d, 0.0)
    return node_d.sum(0) + pair_d.sum(0)


def general_dual(prep: PreparedPotentials, msgs: Tensor, plan: Plan) -> Tensor:
    """The dual on the general layout, ``(B,)``."""
    masks = prep.masks
    pad = padded(reparameterize(prep.theta, msgs, plan), plan)
    bel = region_beliefs(pad.detach(), prep.theta, msgs, plan, masks) if plan.has_zero else None
    terms = soft_max(pad, plan.temper, -1, bel)
    if masks is not None:  # absent regions: no term
        terms = torch.where(masks.region, terms, 0.0)
    return terms.sum(dim=1)

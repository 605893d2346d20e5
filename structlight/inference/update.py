"""The block update of the paper's Fig. 3, written once per layout.

For a block of regions ``r`` that share no parent, every message ``lam[r->p]`` is set to the
exact minimiser of the dual over the block's messages (``docs/inference.md``):

1. ``mu[p->r](y_r)``: the soft-max (:func:`~structlight.inference.tempered.soft_max`) of the
   parent's reparameterised table without ``r``'s own message, over the parent states that
   project onto ``y_r``;
2. ``a_r = f_r + sum_{c in C(r)} lam[c->r] + sum_{p in P(r)} mu[p->r]``;
3. the write-back ``lam[r->p] = w_p a_r - mu[p->r]``, ``w_p = c_p / (c_r + sum_p' c_p')``.

:func:`general_block_update` does this on the general index layout (any region graph). The
pairwise fast path computes step 1 with one of its ``mu`` kernels, chosen once per plan and
sweep: :func:`pair_mu_log` (log space; two-state, log-sum-exp or max rows) or
:func:`pair_mu_exp` (exp space: a product of the exponentiated table with the exponentiated
messages, as a broadcast or as batched matrix products), then :func:`pair_write_back` (steps 2
and 3). :func:`structlight.inference.sweep.pair_sweep` loops over the blocks, eagerly or under
:func:`torch.compile`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structlight.inference.masks import Masks
from structlight.inference.pairwise_plan import PairBlock
from structlight.inference.plan import GeneralBlock
from structlight.inference.prepared import ExpTables
from structlight.inference.tempered import soft_max, tree_max

__all__ = ["general_block_update", "pair_mu_exp", "pair_mu_log", "pair_write_back", "write_back"]


def write_back(
    a: Tensor, mu: Tensor, pos: Tensor, weight: Tensor | float, dim: int, out: Tensor | None = None
) -> Tensor:
    """``lam[r->p] = w_p a_r - mu[p->r]``: ``a`` gathered at ``pos`` along ``dim`` (into
    ``out`` when given)."""
    return torch.index_select(a, dim, pos, out=out).mul_(weight).sub_(mu)


def general_block_update(
    theta: Tensor, lam: Tensor, blk: GeneralBlock, masks: Masks | None = None
) -> None:
    """One block update on the general layout, in place on ``lam`` ``(B, M)``.

    ``theta`` is ``(B, T + 1)``: the packed potentials with a ``-inf`` column at ``T``, where
    the padding of the ``mu`` rows points. With ``masks``, absent parents send no ``mu`` and the
    weights are the example's own; absent messages come out 0.
    """
    b = theta.shape[0]
    # x = fhat_p - lam[r->p] for every parent p of a block region r, one copy of the parent's
    # table per (r, p), then the -inf padding entry
    x = theta.index_select(1, blk.xpos)
    if blk.xadd_tgt.numel():
        x.index_add_(1, blk.xadd_tgt, lam.index_select(1, blk.xadd_src))
    if blk.xsub_tgt.numel():
        x.index_add_(1, blk.xsub_tgt, lam.index_select(1, blk.xsub_src), alpha=-1)
    rows = x.index_select(1, blk.mu_idx.view(-1)).view(b, *blk.mu_idx.shape)
    mu = soft_max(rows, blk.mu_temper, -1)
    weight = blk.weight
    if masks is not None:
        mu = torch.where(masks.edge.index_select(1, blk.mu_edge), mu, 0.0)
        weight = masks.weight.index_select(1, blk.mu_edge)
    a = theta.index_select(1, blk.apos)
    if blk.aadd_tgt.numel():
        a.index_add_(1, blk.aadd_tgt, lam.index_select(1, blk.aadd_src))
    a.index_add_(1, blk.mu_tgt, mu)
    lam.index_copy_(1, blk.msg_pos, write_back(a, mu, blk.mu_tgt, weight, 1))


def pair_mu_log(v: Tensor, lo: Tensor, blk: PairBlock) -> Tensor:
    """``mu[e->i]`` of a block's messages in log space, ``(P, K, B)``.

    ``v[p, y_j, y_i] = f_e(y_i, y_j)`` for the p-th pair ``e = (i, j)`` at a block node ``i``,
    ``lo[p] = lam[j->e]``: ``v + lo`` is the pair's ``fhat`` without the block's own message,
    and ``mu[e->i](y_i) = ĉ_e log sum_{y_j} exp((v + lo) / ĉ_e)`` (max where ``ĉ_e = 0``). The
    kernel was chosen with the plan: ``"two_state"`` computes ``m + log(1 + exp(min - max))``
    (half the exps), ``"lse"`` the shifted log-sum-exp, ``"max"`` the max. ``v`` is not changed.
    """
    t = blk.temper
    v = v + lo.unsqueeze(2)  # a new tensor: the tables are kept for the next sweep
    if not (t.unit or t.all_zero):
        v *= t.inv
    if blk.kernel == "two_state":
        v0, v1 = v[:, 0], v[:, 1]
        m = torch.maximum(v0, v1)
        # (min - max = -|v_0 - v_1| exactly, one op fewer than abs and neg)
        mu = torch.minimum(v0, v1).sub_(m).exp_().add_(1).log_().add_(m)
    else:
        m = tree_max(v, 1).squeeze(1)
        if blk.kernel == "max":
            return m
        mu = v.sub_(m.unsqueeze(1)).exp_().sum(1).log_().add_(m)
    if not t.unit:
        mu = mu * t.c_hat
        if not t.all_pos:
            mu = torch.where(t.c_hat > 0, mu, m)
    return mu


def pair_mu_exp(
    lo: Tensor, exp: ExpTables, blk: PairBlock, matmul: bool = True
) -> tuple[Tensor, Tensor]:
    """``mu[e->i]`` of a block's messages in exp space (every ``ĉ = 1``), and the sums.

    With ``c_e = max f_e``, ``m = max_{y_j} lam[j->e]`` and ``x = exp(lam[j->e] - m)``:
    ``mu[e->i](y_i) = c_e + m + log sum_{y_j} E_e(y_i, y_j) x(y_j)``, ``E_e = exp(f_e - c_e)``.
    The sum is a broadcast product, or (with ``matmul``) batched ``(K, K) @ (K, B)`` matrix
    products where the batch shares its tables (``exp.etab_t``). Returns ``(mu, low)``, ``low``
    the smallest sum: below ``tiny / eps`` (or NaN) the exps underflowed and ``mu`` may be
    inexact; the caller redoes such a block (or sweep) in log space.
    """
    m = tree_max(lo, 1)
    x = (lo - m).exp_()
    rows = slice(blk.start, blk.stop)
    if matmul and exp.etab_t is not None:  # one table for the batch: P (K, K) @ (K, B)
        s = torch.bmm(exp.etab_t[rows], x)
    else:
        s = torch.mul(exp.etab[rows], x.unsqueeze(2)).sum(1)
    low = s.amin()  # before the log, which is taken in place (no new (P, K, B) tensor)
    return s.log_().add_(exp.c_msg[rows]).add_(m), low


def pair_mu_exp_one(lo: Tensor, exp: ExpTables, blk: PairBlock) -> tuple[Tensor, Tensor]:
    """:func:`pair_mu_exp` for one example (``B = 1``), without the trailing batch axis
    (broadcasting against a size-1 innermost axis is several times slower on the CPU): the sums
    are ``P`` tiny ``(1, K) @ (K, K)`` products."""
    rows = slice(blk.start, blk.stop)
    lo1 = lo[..., 0]
    m = tree_max(lo1, 1)
    x = (lo1 - m).exp_()
    s = torch.bmm(x.unsqueeze(1), exp.etab[rows, ..., 0]).squeeze(1)
    low = s.amin()
    return s.log_().add_(exp.c_msg[rows, ..., 0]).add_(m).unsqueeze(-1), low


def pair_write_back(
    lam: Tensor,
    nodes: Tensor,
    mu: Tensor,
    blk: PairBlock,
    weight: Tensor | float,
    uniform: bool,
    form: str,
) -> Tensor:
    """Steps 2 and 3 of the block update on the fast path: the new slots ``lam``.

    ``a_i = f_i + sum_{e at i} mu[e->i]``; ``lam[i->e] = w_e a_i - mu[e->i]``; padding states
    send 0. ``form``: ``"rows"`` writes in place into the block's slots (they are not read again
    in this block); ``"flat"`` (one example) the same with gathers on the flat ``(S*K,)`` slots,
    far faster than on rows of ``(K, 1)``; ``"fused"`` returns a new tensor (``index_copy``), the
    form a compiler fuses. ``weight``: the block's ``w_e``, ``blk.weight`` or per example.
    """
    a = nodes.index_select(0, blk.nodes)
    if form == "fused":
        if blk.single:
            a = a + mu.sum(0, keepdim=True)
        else:
            a = a.index_add(0, blk.node_pos, mu).index_select(0, blk.node_pos)
        pos = torch.arange(blk.start, blk.stop, device=lam.device)
        return lam.index_copy(0, pos, a * weight - mu)
    out = lam[blk.start : blk.stop]
    if blk.single:
        a = a.add_(mu.sum(0, keepdim=True))
        torch.sub(a.mul_(weight) if isinstance(weight, float) else a * weight, mu, out=out)
    elif form == "flat":
        af = a.view(-1).index_add_(0, blk.node_pos_flat, mu.view(-1))
        torch.index_select(af, 0, blk.node_pos_flat, out=out.view(-1))
        out.mul_(weight).sub_(mu)
    else:
        write_back(a.index_add_(0, blk.node_pos, mu), mu, blk.node_pos, weight, 0, out=out)
    if not uniform:
        out *= blk.mask
    return lam

"""Read-outs: reparameterised scores, region and variable beliefs, decoding and scores.

``fhat_r = f_r + sum_{c in C(r)} lam[c->r] - sum_{p in P(r)} lam[r->p]``; a region's belief is
``softmax(fhat_r / ĉ_r)`` where ``ĉ_r > 0``. A ĉ = 0 region's scores tie at convergence (to
rounding), so their arg-max would be noise: its belief is the one its parents imply, their
beliefs marginalised onto it and restricted to its arg-max face (:func:`face_beliefs`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from structlight.inference.layout import NEG_INF
from structlight.inference.masks import Masks
from structlight.inference.pairwise_plan import PairwisePlan
from structlight.inference.plan import Plan
from structlight.inference.prepared import dense_tables
from structlight.inference.sweep import to_slots
from structlight.inference.tempered import soft_or_hard

__all__ = [
    "TIE_RTOL",
    "check_labels",
    "decode",
    "face_beliefs",
    "padded",
    "PairScores",
    "pair_beliefs",
    "pair_fhat",
    "region_beliefs",
    "reparameterize",
    "score",
    "split_regions",
    "variable_beliefs",
]

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


def reparameterize(theta: Tensor, msgs: Tensor, plan: Plan) -> Tensor:
    """``fhat`` of every region in the packed ``(B, T)`` layout; differentiable."""
    fhat = theta.index_add(1, plan.fhat_tgt_in, msgs.index_select(1, plan.fhat_src_in))
    return fhat.index_add(1, plan.fhat_tgt_out, msgs.index_select(1, plan.fhat_src_out), alpha=-1)


def padded(fhat: Tensor, plan: Plan, fill: float = float("-inf")) -> Tensor:
    """Packed ``(B, T)`` as ``(B, R, Smax)``, each region's entries padded with ``fill``."""
    b = fhat.shape[0]
    pad = torch.cat([fhat, fhat.new_full((b, 1), fill)], dim=1)
    return pad.index_select(1, plan.pad_idx.view(-1)).view(b, *plan.pad_idx.shape)


def face_beliefs(q: Tensor, fhat: Tensor, mags: Tensor, hard: Tensor, dim: int) -> Tensor:
    """Beliefs of ĉ = 0 regions: their parents' marginals on the arg-max face, renormalised.

    A state is on the face when it ties with the best one up to rounding: with
    ``tol = TIE_RTOL * mags`` (``mags`` bounds the numbers summed into each score), when its
    interval ``fhat +- tol`` reaches the highest lower end ``max (fhat - tol)``. Any distribution
    on the face is a subgradient of ``max fhat``; at convergence every state the parents give
    mass to ties, and the result is the parents' marginal. Where the parents give the face no
    mass (away from convergence, say), the one-hot ``hard``.

    Args:
        q: parent marginals (summed over parents), ``>= 0``.
        fhat: the regions' reparameterised scores (``-inf`` padding allowed).
        mags: ``s_r(y)`` of :data:`TIE_RTOL`, finite.
        hard: one-hot arg-max beliefs.
        dim: the state axis; all four tensors share their shape.
    """
    tol = mags * TIE_RTOL[fhat.dtype]
    q = q * (fhat + tol >= (fhat - tol).amax(dim, keepdim=True))
    mass = q.sum(dim, keepdim=True)
    some = mass > 0
    return torch.where(some, q / torch.where(some, mass, 1.0), hard)


def region_beliefs(
    pad: Tensor, theta: Tensor, msgs: Tensor, plan: Plan, masks: Masks | None = None
) -> Tensor:
    """Beliefs of all regions from their padded reparameterised scores ``(B, R, Smax)``.

    ``softmax(fhat_r / ĉ_r)`` where ``ĉ_r > 0`` (differentiable); where ``ĉ_r = 0``, regions with
    parents get :func:`face_beliefs` of their parents' beliefs (top-down, so a ĉ = 0 parent is
    done first), those without the one-hot arg-max (no gradient either way). ``theta`` (clamped)
    and ``msgs``: what ``pad`` was computed from (read only for ĉ = 0 regions with parents).
    Absent regions (``masks``) have zero beliefs.
    """
    bel = soft_or_hard(pad, plan.temper, -1)
    if masks is not None:
        bel = bel * masks.region.unsqueeze(-1)
    if plan.temper.all_pos or not plan.zero_levels:
        return bel
    with torch.no_grad():
        b, smax = pad.shape[0], pad.shape[2]
        fh = pad.detach()
        # s_r(y) of TIE_RTOL: |f_r| + the |lam| summed into fhat_r + sum_p |max fhat_p| + 1
        ma = msgs.detach().abs()
        mags = theta.detach().abs()
        mags = mags.index_add(1, plan.fhat_tgt_in, ma.index_select(1, plan.fhat_src_in))
        mags = mags.index_add_(1, plan.fhat_tgt_out, ma.index_select(1, plan.fhat_src_out))
        mags = padded(mags, plan, fill=0.0)
        top = fh.amax(-1).abs_()  # (B, R)
        up = torch.zeros_like(top).index_add_(
            1, plan.edge_child, top.index_select(1, plan.edge_parent)
        )
        mags += up.add_(1).unsqueeze(-1)
        out = bel.detach()
        for lvl in plan.zero_levels:
            q = out.new_zeros(b, lvl.regions.numel() * smax)
            q.index_add_(1, lvl.tgt, out.reshape(b, -1).index_select(1, lvl.src))
            new = face_beliefs(
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


class PairScores(NamedTuple):
    """The fast path's reparameterised scores and what they were made of (batch-last)."""

    node: Tensor  # (N, K, B) fhat_i
    pair: Tensor  # (E, K, K, B) fhat_e
    node_raw: Tensor  # (N, K, B) f_i
    slots: Tensor  # (S, K, B) the messages


def pair_fhat(theta: Tensor, msgs: Tensor, d: PairwisePlan) -> PairScores:
    """Reparameterised singleton and pair tables on the fast path; differentiable.

    ``fhat_i = f_i - sum_{e at i} lam[i->e]`` and ``fhat_e(y_a, y_b) = f_e(y_a, y_b)
    + lam[a->e](y_a) + lam[b->e](y_b)``.
    """
    nodes, pairs = dense_tables(theta, d)
    lam = to_slots(msgs, d)
    # (f + lam_a) + lam_b, the general path's order of additions (same rounding)
    fpair = pairs + lam.index_select(0, d.end0).unsqueeze(2)
    fpair = fpair + lam.index_select(0, d.end1).unsqueeze(1)
    fnode = nodes.index_add(0, d.slot_var, lam, alpha=-1)
    return PairScores(fnode, fpair, nodes, lam)


def pair_beliefs(
    d: PairwisePlan, scores: PairScores, masks: Masks | None = None
) -> tuple[Tensor, Tensor]:
    """Node ``(N, K, B)`` and pair ``(E, K*K, B)`` beliefs on the fast path, no gradient.

    What :func:`region_beliefs` gives on the general layout: softmax where ``ĉ > 0``; a ĉ = 0
    pair (no parents) gets the one-hot arg-max, a ĉ = 0 node the sum of its pairs' beliefs
    marginalised onto it, on its arg-max face.
    """
    fnode, fpair, f_raw, lam = scores
    with torch.no_grad():
        k = d.kmax
        fn = fnode.detach()
        fp = fpair.detach().reshape(fpair.shape[0], k * k, -1)
        pair_b = soft_or_hard(fp, d.pair_temper, 1)
        node_b = soft_or_hard(fn, d.node_temper, 1)
        if masks is not None:  # absent regions: zero beliefs
            pair_b = pair_b * masks.pair.unsqueeze(1)
            node_b = node_b * masks.node.unsqueeze(1)
        if d.node_temper.all_pos:
            return node_b, pair_b
        b = fn.shape[-1]
        p4 = pair_b.view(-1, k, k, b)
        q = torch.zeros_like(fn).index_add_(0, d.pair_var0, p4.sum(2))
        q = q.index_add_(0, d.pair_var1, p4.sum(1)).mul_(d.node_valid)
        mags = f_raw.detach().abs().index_add_(0, d.slot_var, lam.detach().abs())
        top = fp.amax(1).abs_().index_select(0, d.msg_pair)  # (S, B): |max fhat_e| per slot
        up = top.new_zeros(fn.shape[0], b).index_add_(0, d.slot_var, top)
        mags += up.add_(1).unsqueeze(1)
        zero = d.node_temper.c_hat.unsqueeze(1) == 0
        node_b = torch.where(zero, face_beliefs(q, fn, mags, node_b, 1), node_b)
    return node_b, pair_b


def variable_beliefs(theta: Tensor, msgs: Tensor, plan: Plan, masks: Masks | None = None) -> Tensor:
    """Per-variable beliefs ``(B, N, Kmax)`` (entries past ``num_states[i]`` are 0; all 0 for a
    variable whose regions are all absent)."""
    d = plan.pairwise
    if d is not None:
        scores = pair_fhat(theta, msgs, d)
        t = d.node_temper  # c_hat (N, 1) broadcasts against (B, N, K) as it is; inv (N, 1, 1)
        nodes = scores.node.permute(2, 0, 1)
        soft = None if t.all_zero else torch.softmax(nodes * t.inv[:, 0], dim=-1)
        if soft is not None and masks is not None:
            soft = soft * masks.node.t().unsqueeze(-1)
        if t.all_pos:
            return soft
        other = pair_beliefs(d, scores, masks)[0].permute(2, 0, 1)
        return other if soft is None else torch.where(t.c_hat > 0, soft, other)
    pad = padded(reparameterize(theta, msgs, plan), plan)
    pad = region_beliefs(pad, theta, msgs, plan, masks)
    b = pad.shape[0]
    flat = pad.reshape(b, -1).index_select(1, plan.var_src)
    nv = plan.var_fill.shape[0]
    out = pad.new_zeros(b, nv).index_add(1, plan.var_tgt, flat)
    if plan.has_missing_vars:  # variables in no region: uniform
        out = out + plan.var_fill
    return out.index_select(1, plan.var_pad_idx.view(-1)).view(b, *plan.var_pad_idx.shape)


def decode(vb: Tensor, plan: Plan, masks: Masks | None = None) -> Tensor:
    """The arg-max state of each variable's belief ``(B, N, Kmax)``, first on ties: ``(B, N)``;
    -100 for a variable whose regions are all absent (``masks``)."""
    ks = plan.num_states
    valid = torch.arange(vb.shape[-1], device=vb.device) < ks[:, None]
    labels = vb.masked_fill(~valid, -1.0).argmax(dim=-1)
    if masks is not None:
        labels = labels.masked_fill(vb.sum(-1) == 0, -100)
    return labels


def split_regions(pad: Tensor, by_shape: dict[tuple[int, ...], list[int]]) -> list[Tensor]:
    """Padded ``(B, R, Smax)`` region tables as ``R`` tensors ``(B, *region_shape(r))``;
    ``by_shape`` groups the regions by shape: one gather per shape, then views (a loop of
    thousands of per-region slices is slow on large graphs)."""
    b = pad.shape[0]
    out: list[Tensor] = [pad] * pad.shape[1]  # every entry replaced below
    for shape, regs in by_shape.items():
        sub = pad.index_select(1, torch.as_tensor(regs, device=pad.device))
        sub = sub[:, :, : math.prod(shape)].reshape(b, len(regs), *shape)
        for r, t in zip(regs, sub.unbind(1), strict=True):
            out[r] = t
    return out


def check_labels(labels: object, num_vars: int) -> None:
    """Labels must be a ``(B, N)`` tensor.

    Raises:
        ValueError: anything else, saying what arrived.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 2 or labels.shape[1] != num_vars:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape (B, {num_vars}), got {shape}")


def score(theta: Tensor, labels: Tensor, plan: Plan, masks: Masks | None = None) -> Tensor:
    """``F(y) = sum_r f_r(y_r)`` of ``(B, N)`` labels, ``(B,)``; differentiable in ``theta``.

    With ``masks`` the sum runs over present regions, and labels of variables in no present
    region are not read (they may be anything, ``-100`` included).

    Raises:
        ValueError: batch sizes differ, or a label is outside ``0..num_states[i] - 1`` (one
            host sync on a GPU: a clear error beats a device-side assert, which would leave the
            CUDA context unusable).
    """
    if theta.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels have batch size {labels.shape[0]} but potentials {theta.shape[0]}"
        )
    labels = labels.long().to(theta.device)
    ks = plan.num_states
    bad = (labels < 0) | (labels >= ks)
    if masks is not None:  # only labels read by a present region must be in range
        read = bad.index_select(1, plan.score_vars.view(-1)).view(-1, *plan.score_vars.shape)
        bad = (read & (plan.score_valid == 1)).any(-1) & masks.region
        labels = torch.where((labels < 0) | (labels >= ks), 0, labels)
    if bool(bad.any()):
        raise ValueError(
            f"labels out of range: variable i takes values 0..num_states[i]-1 = {(ks - 1).tolist()}"
        )
    picked = labels.index_select(1, plan.score_vars.view(-1)).view(-1, *plan.score_vars.shape)
    idx = plan.score_base + (picked * plan.score_strides).sum(-1)
    # clamping the picked entries equals picking from the clamped table (elementwise)
    picked = theta.gather(1, idx).clamp_min(NEG_INF)
    if masks is not None:
        picked = torch.where(masks.region, picked, 0.0)
    return picked.sum(dim=1)

"""Convex message passing in the dual (the paper's Fig. 3 inner loop), batched and vectorised.

Regions ``r`` with score tables ``f_r``, counting numbers ``c_r``, temperature ``eps`` and
``ĉ_r = eps * c_r``; one message ``lam[r->p](y_r)`` per (region, parent) pair and per example.
The reparameterised scores are ``fhat_r = f_r + sum_{c in C(r)} lam[c->r] - sum_{p in P(r)}
lam[r->p]`` and the dual is ``D(lam) = sum_r ĉ_r log sum exp(fhat_r / ĉ_r)`` (``max fhat_r``
where ``ĉ_r = 0``). A sweep updates the messages of every region with parents, block by block,
each block an exact minimisation of ``D`` over its messages, so ``D`` never increases.

The package, in the order a reader meets it (``docs/inference.md`` walks through it):

* :mod:`.tempered`: the algebra, ``ĉ log sum exp(x / ĉ)`` (max at ``ĉ = 0``) and its derivative;
* :mod:`.layout`: the packed ``(B, T)`` potentials and ``(B, M)`` messages (:class:`PackedLayout`);
* :mod:`.plan`, :mod:`.pairwise_plan`: a graph turned once into frozen index arrays;
* :mod:`.prepared`: potentials packed and clamped once, with their sweep tables;
* :mod:`.update`: the block update; :mod:`.sweep`: the loop over blocks (eager or compiled);
* :mod:`.dual`, :mod:`.readout`: the dual, beliefs, decoding and scores;
* :mod:`.engine`: :class:`ConvexBP`, the facade.
"""

from structlight.inference.engine import ConvexBP, PotentialsLike
from structlight.inference.layout import COMPUTE_DTYPES, NEG_INF, PackedLayout, Potentials
from structlight.inference.pairwise_plan import EXP_MIN_STATES
from structlight.inference.prepared import PreparedPotentials
from structlight.inference.readout import TIE_RTOL
from structlight.inference.tempered import SHORT_ROWS

__all__ = [
    "COMPUTE_DTYPES",
    "EXP_MIN_STATES",
    "NEG_INF",
    "SHORT_ROWS",
    "TIE_RTOL",
    "ConvexBP",
    "PackedLayout",
    "Potentials",
    "PotentialsLike",
    "PreparedPotentials",
]

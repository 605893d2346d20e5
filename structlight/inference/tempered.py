"""The tempered algebra of convex message passing, written once.

Every update, dual and read-out of the engine (and the heads' unary-only loss) is built from one
operator and its derivative, with ``ĉ = eps * c_r`` the region's tempered counting number:

* :func:`soft_max`: ``ĉ * log sum exp(x / ĉ)``, which is ``max x`` at ``ĉ = 0``;
* :func:`soft_or_hard`: its derivative in ``x``, ``softmax(x / ĉ)``, which is the one-hot
  arg-max at ``ĉ = 0`` (a subgradient there).

``ĉ`` may differ per row. :class:`Temper` holds one set of rows' ``ĉ``, ``1 / ĉ`` (1 where
``ĉ = 0``) and three flags (every ``ĉ > 0``, every ``ĉ = 0``, every ``ĉ = 1``) decided once, so
that only the kind of reduction a set of rows needs is computed. The helpers below are the
fastest exact CPU forms of the reductions the operator is made of (see ``docs/inference.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SHORT_ROWS",
    "MaxWithGrad",
    "Temper",
    "lse_shifted",
    "one_hot_argmax",
    "soft_max",
    "soft_or_hard",
    "softmax_last",
    "tree_max",
]

#: Rows up to this long get :func:`softmax_last`'s four plain ops instead of ``torch.softmax``:
#: on the CPU its per-row overhead makes it 3-5x slower on rows of 2..8 entries (binary
#: singletons and pairs), while it wins from about 16 entries on.
SHORT_ROWS = 8


@dataclass(frozen=True, eq=False)
class Temper:
    """The temperatures of a set of rows, shaped to broadcast against them.

    Attributes:
        c_hat: ``ĉ`` per row, shaped like the rows reduced over their state axis.
        inv: ``1 / ĉ`` (1 where ``ĉ = 0``), shaped like the rows (``c_hat`` with the state axis
            put back as a size-1 axis).
        all_pos: every ``ĉ > 0``: pure log-sum-exp.
        all_zero: every ``ĉ = 0``: pure max.
        unit: every ``ĉ = 1``: no scaling.
    """

    c_hat: Tensor
    inv: Tensor
    all_pos: bool
    all_zero: bool
    unit: bool

    @classmethod
    def numpy(cls, c_hat: np.ndarray, shape: tuple[int, ...], dim: int) -> Temper:
        """The temperatures ``c_hat`` (one per row) as NumPy arrays: ``c_hat`` viewed as
        ``shape`` (the rows' shape after reducing), ``inv`` with a size-1 axis inserted at ``dim``
        (the state axis); :meth:`to` makes tensors of them."""
        c = np.asarray(c_hat, dtype=np.float64).reshape(-1)
        pos = c > 0
        inv = np.where(pos, 1.0 / np.where(pos, c, 1.0), 1.0)
        return cls(
            c_hat=c.reshape(shape),  # type: ignore[arg-type]
            inv=np.expand_dims(inv.reshape(shape), dim),  # type: ignore[arg-type]
            all_pos=bool(pos.all()),
            all_zero=bool((c == 0).all()),
            unit=bool((c == 1).all()),
        )

    def to(self, device: torch.device | str | None, dtype: torch.dtype) -> Temper:
        """The same temperatures as tensors on ``device`` in ``dtype``."""

        def t(x: object) -> Tensor:
            return torch.as_tensor(x, dtype=dtype, device=device)

        return Temper(t(self.c_hat), t(self.inv), self.all_pos, self.all_zero, self.unit)


def tree_max(x: Tensor, dim: int) -> Tensor:
    """``x.amax(dim, keepdim=True)`` by halving with ``maximum`` (far faster on the CPU when
    ``dim`` is not the innermost axis); always a new tensor."""
    k = x.shape[dim]
    if k == 1:
        return x.clone()
    while k > 1:
        h = (k + 1) // 2
        x = torch.maximum(x.narrow(dim, 0, h), x.narrow(dim, k - h, h))
        k = h
    return x


def _row_max(x: Tensor, dim: int) -> Tensor:
    """The max over ``dim`` (kept), by the fastest exact route for that axis."""
    if dim in (-1, x.dim() - 1):
        return x.amax(dim, keepdim=True)
    return tree_max(x, dim)


def lse_shifted(x: Tensor, m: Tensor, dim: int) -> Tensor:
    """``logsumexp(x, dim)`` given ``m``, the detached max over ``dim`` (kept as a size-1 axis).

    Unlike ``torch.logsumexp`` (whose gradient ``exp(x - lse)`` is unnormalised where ``x`` is so
    large, e.g. near ``NEG_INF``, that ``x - lse`` rounds to 0) the gradient is the softmax
    computed from ``x - m``, so it always sums to 1; the shift is a constant for autograd.
    """
    m = torch.where(m.isinf(), 0.0, m)  # as torch.logsumexp: no inf - inf
    return (x - m).exp().sum(dim).log() + m.squeeze(dim)


class MaxWithGrad(torch.autograd.Function):
    """``x.amax(dim)`` whose gradient is the given distribution ``w`` over ``dim``.

    The dual term of a ĉ = 0 region is ``max fhat_r``; any distribution on its arg-max face is a
    subgradient, and the engine's choice is the region's belief (see
    :func:`structlight.inference.readout.face_beliefs`), so that the dual's gradient is the
    beliefs on every path. ``x`` and ``w`` share their shape; ``w`` is a constant.
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


def soft_max(x: Tensor, temper: Temper, dim: int, bel: Tensor | None = None) -> Tensor:
    """``ĉ * log sum exp(x / ĉ)`` over ``dim`` (``max`` where ``ĉ = 0``); differentiable.

    Args:
        x: the rows; ``temper``'s tensors broadcast against ``x`` with ``dim`` removed (for
            ``c_hat``) and kept (for ``inv``).
        temper: the rows' temperatures.
        dim: the axis reduced.
        bel: beliefs shaped as ``x``: the gradient of the ``max`` rows (None: ``amax``'s own).

    Returns:
        ``x`` reduced over ``dim``.
    """
    if not temper.all_pos:
        hard = x.amax(dim) if bel is None else MaxWithGrad.apply(x, bel, dim)
        if temper.all_zero:
            return hard
    xs = x if temper.unit else x * temper.inv
    lse = lse_shifted(xs, _row_max(xs.detach(), dim), dim)
    if temper.unit:
        return lse
    lse = lse * temper.c_hat
    return lse if temper.all_pos else torch.where(temper.c_hat > 0, lse, hard)


def softmax_last(x: Tensor) -> Tensor:
    """``torch.softmax(x, -1)``; as plain ops for rows of at most :data:`SHORT_ROWS` entries.

    Rows must not be all ``-inf`` (potentials are clamped to ``NEG_INF``).
    """
    if x.shape[-1] > SHORT_ROWS:
        return torch.softmax(x, dim=-1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def one_hot_argmax(x: Tensor, dim: int) -> Tensor:
    """One-hot of the first maximum of ``x`` along ``dim``, in ``x``'s shape and dtype.

    (``max(dim).indices``: the first maximal index like ``argmax``, several times faster on the
    CPU when ``dim`` is not the innermost axis; a scatter instead of ``one_hot``'s int64 table.)
    """
    idx = x.detach().max(dim, keepdim=True).indices
    return torch.zeros_like(x, memory_format=torch.contiguous_format).scatter_(dim, idx, 1.0)


def soft_or_hard(x: Tensor, temper: Temper, dim: int) -> Tensor:
    """``softmax(x / ĉ)`` over ``dim``, the one-hot arg-max where ``ĉ = 0``.

    ``temper`` is the one :func:`soft_max` takes for the same rows and ``dim`` (count ``dim``
    from the end when ``c_hat`` has fewer axes than ``x``); only the kind of reduction the rows
    need is computed.
    """
    if temper.all_zero:
        return one_hot_argmax(x, dim)
    xs = x if temper.unit else x * temper.inv
    last = dim in (-1, x.dim() - 1)
    soft = softmax_last(xs) if last else torch.softmax(xs, dim=dim)
    if temper.all_pos:
        return soft
    return torch.where(temper.c_hat.unsqueeze(dim) > 0, soft, one_hot_argmax(x, dim))

"""From the potential terms' outputs to the packed potentials ``theta``, and back to the unaries.

A head's terms each score a set of regions of the same arity; a term returns one table per
region, padded to the element-wise largest shape of its regions. :func:`build_packing` turns the
registered terms into index arrays, once per set of terms:

* ``"identity"``: the terms' concatenated outputs already are ``theta`` (the chain and fully
  connected heads);
* ``"gather"``: every entry of ``theta`` comes from exactly one output entry;
* ``"add"``: several terms score the same region, and their tables add up.

It also records where each variable's singleton table lives, for the unary read-out
(:meth:`StructuredHead.unary_scores`), the Hamming loss augmentation and the unary-only loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from structlight.graph import RegionGraph
from structlight.inference import PackedLayout
from structlight.inference.tempered import Temper

__all__ = ["PackingPlan", "TermSlots", "build_packing", "term_slots"]


@dataclass(frozen=True)
class TermSlots:
    """The regions one potential term scores.

    Attributes:
        regions: the covered region indices, all with the same number of variables.
        pad: the element-wise largest table shape of those regions; the term returns
            ``(B or 1, len(regions), *pad)`` (regions of smaller shape use the leading part of
            each axis).
    """

    regions: tuple[int, ...]
    pad: tuple[int, ...]

    @property
    def num_outputs(self) -> int:
        """Entries per example of the term's output, ``len(regions) * prod(pad)``."""
        return len(self.regions) * math.prod(self.pad)


def term_slots(graph: RegionGraph, name: str, regions: Sequence[int]) -> TermSlots:
    """Check the regions of a new term named ``name`` and work out its output shape.

    Raises:
        ValueError: no region, a region out of range, or regions of different sizes.
    """
    regs = tuple(int(r) for r in regions)
    if not regs:
        raise ValueError(f"potential {name!r} covers no region")
    for r in regs:
        if not 0 <= r < graph.num_regions:
            raise ValueError(
                f"potential {name!r} covers region {r}, but regions are 0..{graph.num_regions - 1}"
            )
    arity = {len(graph.regions[r]) for r in regs}
    if len(arity) != 1:
        raise ValueError(
            f"potential {name!r} covers regions of different sizes {sorted(arity)}; one term "
            "covers regions with the same number of variables"
        )
    shapes = np.array([graph.region_shape(r) for r in regs], dtype=np.int64)
    return TermSlots(regs, tuple(int(s) for s in shapes.max(axis=0)))


@dataclass(frozen=True, eq=False)
class PackingPlan:
    """Index arrays of one head's terms, NumPy on the host (:func:`build_packing`) or tensors on
    a device (:meth:`to`).

    Attributes:
        mode: ``"identity"``, ``"gather"`` or ``"add"`` (see the module).
        src_size: entries per example of the terms' concatenated outputs.
        gather: ``(T,)`` output entry of each ``theta`` entry (``"identity"``, ``"gather"``).
        src, tgt: ``(S,)`` output entries and the ``theta`` entries they add to (``"add"``).
        var_index: ``(N, Kmax)`` ``theta`` entry of each variable's state in its singleton
            table; ``T`` (one past the end) for states past ``num_states[i]`` and variables
            without a singleton.
        aug_base: ``(T,)`` 1 on every singleton entry: the Hamming augmentation before the
            ground truth's ``-1``.
        sing_off: ``(N,)`` start of each variable's singleton table.
        temper: the singletons' ``ĉ_i = eps * c_i`` (1 for a variable without a singleton), for
            :func:`structlight.inference.tempered.soft_max` over ``(B, N, Kmax)`` unaries.
    """

    mode: str
    src_size: int
    gather: np.ndarray | Tensor | None
    src: np.ndarray | Tensor | None
    tgt: np.ndarray | Tensor | None
    var_index: np.ndarray | Tensor
    aug_base: np.ndarray | Tensor
    sing_off: np.ndarray | Tensor
    temper: Temper

    def to(self, device: torch.device, dtype: torch.dtype) -> PackingPlan:
        """The plan as tensors on ``device``: indices long, ``aug_base`` and ``temper`` in
        ``dtype``."""

        def index(a: np.ndarray | Tensor | None) -> Tensor | None:
            return None if a is None else torch.as_tensor(a, dtype=torch.long, device=device)

        return replace(
            self,
            gather=index(self.gather),
            src=index(self.src),
            tgt=index(self.tgt),
            var_index=index(self.var_index),
            aug_base=torch.as_tensor(self.aug_base, dtype=dtype, device=device),
            sing_off=index(self.sing_off),
            temper=self.temper.to(device, dtype),
        )


def build_packing(
    graph: RegionGraph, layout: PackedLayout, eps: float, terms: Mapping[str, TermSlots]
) -> PackingPlan:
    """The packing of ``terms`` (in registration order) into ``layout``'s ``theta``.

    Args:
        graph: the head's region graph.
        layout: its packed layout (the engine's :attr:`structlight.ConvexBP.layout`).
        eps: the temperature (for the singletons' ``ĉ``).
        terms: the registered terms.

    Raises:
        RuntimeError: no term registered.
    """
    if not terms:
        raise RuntimeError("no potential terms; register them with add_potential")
    src_pos, tgt_pos = [], []
    src_size = 0
    for slots in terms.values():
        block = math.prod(slots.pad)
        for j, r in enumerate(slots.regions):
            shape = graph.region_shape(r)
            inner = np.ravel_multi_index(np.indices(shape).reshape(len(shape), -1), slots.pad)
            src_pos.append(src_size + j * block + inner)
            tgt_pos.append(layout.offsets[r] + np.arange(math.prod(shape)))
        src_size += slots.num_outputs
    src = np.concatenate(src_pos).astype(np.int64)
    tgt = np.concatenate(tgt_pos).astype(np.int64)
    t = layout.num_entries
    gather = None
    if (np.bincount(tgt, minlength=t) == 1).all():
        gather = np.empty(t, dtype=np.int64)
        gather[tgt] = src
        mode = "identity" if src_size == t and (gather == np.arange(t)).all() else "gather"
        src = tgt = None
    else:
        mode = "add"
    # singleton bookkeeping (unary read-out, loss augmentation, unary-only loss)
    n, kmax = graph.num_vars, max(graph.num_states)
    var_index = np.full((n, kmax), t, dtype=np.int64)
    aug_base = np.zeros(t, dtype=np.float64)
    sing_off = np.zeros(n, dtype=np.int64)
    sing_chat = np.ones(n, dtype=np.float64)
    for v, r in enumerate(singleton_regions(graph)):
        if r is None:
            continue
        k, start = graph.num_states[v], int(layout.offsets[r])
        var_index[v, :k] = start + np.arange(k)
        aug_base[start : start + k] = 1.0
        sing_off[v] = start
        sing_chat[v] = eps * graph.counting_numbers[r]
    return PackingPlan(
        mode=mode,
        src_size=src_size,
        gather=gather,
        src=src,
        tgt=tgt,
        var_index=var_index,
        aug_base=aug_base,
        sing_off=sing_off,
        temper=Temper.numpy(sing_chat, (n,), 1),
    )


def singleton_regions(graph: RegionGraph) -> list[int | None]:
    """The singleton region of each variable (None for a variable without one)."""
    singleton = {reg[0]: r for r, reg in enumerate(graph.regions) if len(reg) == 1}
    return [singleton.get(v) for v in range(graph.num_vars)]

"""The packed layout of potentials and messages, shared by the engine, the heads and the tests.

* Potentials ``theta``: ``(B, T)``, the region tables flattened row-major and concatenated in
  region order, ``T = sum_r |Y_r|`` (:attr:`PackedLayout.num_entries`).
* Messages ``lam``: ``(B, M)``, one segment of ``|Y_c|`` entries per (child ``c``, parent ``p``)
  pair in :attr:`RegionGraph.edges` order, ``M`` = :attr:`PackedLayout.num_message_entries`
  (the message store holds one such row per training example).

:meth:`PackedLayout.pack` and :meth:`PackedLayout.unpack` convert between a list of region
tables and the packed tensor; :meth:`PackedLayout.region_slice` and
:meth:`PackedLayout.message_slice` say where one region's table or one message lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from structlight.graph import RegionGraph

__all__ = ["COMPUTE_DTYPES", "NEG_INF", "PackedLayout", "Potentials", "check_dtype"]

#: Forbidden states: potentials below this value (``-inf`` included) are clamped to it. A finite
#: sentinel keeps ``inf - inf`` (and hence NaN) out of the message updates; ``exp`` of it is 0 in
#: float32 and float64, and it is far from float32's limit (3.4e38), so sums of a few hundred such
#: terms stay finite.
NEG_INF = -1e30

#: The dtypes the engine computes in. Half precision (float16, bfloat16) is refused: with 3 and 8
#: significant bits the block updates' cancellations (``w_p a - mu_p``, then ``f_r - sum_p lam``)
#: lose every digit, so the dual rises and the beliefs are noise; float16 cannot even hold
#: :data:`NEG_INF`. Heads upcast half-precision potentials to float32 before calling the engine.
COMPUTE_DTYPES = (torch.float32, torch.float64)

#: Potentials as a list of region tables or one packed ``(B, T)`` tensor.
Potentials = Sequence[Tensor] | Tensor

POTS_HINT = "pass theta.float() (StructuredHead.forward does this)"
MSGS_HINT = "pass msgs.float() (init_messages makes float32 messages by default)"


def check_dtype(dtype: torch.dtype, what: str, hint: str) -> None:
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


@dataclass(frozen=True, eq=False)
class PackedLayout:
    """Where each region table and each message lives in the packed tensors of one graph.

    Attributes:
        graph: the region graph.
        sizes: ``(R,)`` ``|Y_r|`` per region.
        offsets: ``(R,)`` start of region ``r``'s table in ``theta``.
        num_entries: ``T``.
        message_offsets: ``(E,)`` start of each message (``graph.edges`` order) in ``lam``.
        num_message_entries: ``M``.
    """

    graph: RegionGraph
    sizes: np.ndarray
    offsets: np.ndarray
    num_entries: int
    message_offsets: np.ndarray
    num_message_entries: int

    @classmethod
    def of(cls, graph: RegionGraph) -> PackedLayout:
        """The layout of ``graph``."""
        sizes = np.array([graph.region_size(r) for r in range(graph.num_regions)], dtype=np.int64)
        msz = np.array([sizes[c] for c, _ in graph.edges], dtype=np.int64)
        return cls(
            graph=graph,
            sizes=sizes,
            offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
            num_entries=int(sizes.sum()),
            message_offsets=np.concatenate([[0], np.cumsum(msz)[:-1]]).astype(np.int64),
            num_message_entries=int(msz.sum()),
        )

    def region_slice(self, r: int) -> slice:
        """The columns of ``theta`` holding region ``r``'s flattened table."""
        start = int(self.offsets[r])
        return slice(start, start + int(self.sizes[r]))

    def message_slice(self, child: int, parent: int) -> slice:
        """The columns of ``lam`` holding the message from ``child`` to ``parent``.

        Raises:
            ValueError: ``(child, parent)`` is not an edge of the graph.
        """
        try:
            e = self.graph.edges.index((child, parent))
        except ValueError:
            raise ValueError(
                f"({child}, {parent}) is not a (child, parent) edge of the graph"
            ) from None
        start = int(self.message_offsets[e])
        return slice(start, start + int(self.sizes[child]))

    def unpack(self, theta: Tensor) -> list[Tensor]:
        """Packed ``(B, T)`` potentials (or beliefs) as ``num_regions`` views, region ``r`` of
        shape ``(B, *region_shape(r))``.

        Raises:
            ValueError: ``theta`` is not ``(B, T)``.
        """
        if not isinstance(theta, Tensor) or theta.dim() != 2 or theta.shape[1] != self.num_entries:
            got = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
            raise ValueError(f"packed tensor must have shape (B, {self.num_entries}), got {got}")
        g = self.graph
        return [
            theta[:, self.region_slice(r)].view(theta.shape[0], *g.region_shape(r))
            for r in range(g.num_regions)
        ]

    def pack(self, pots: Potentials, batch_size: int | None = None) -> Tensor:
        """Flatten and concatenate region tables into ``(B, T)`` (no clamping).

        Args:
            pots: ``num_regions`` tensors, region ``r`` of shape ``(B, *region_shape(r))`` or
                ``(1, *region_shape(r))`` (broadcast), or an already packed ``(B, T)`` /
                ``(1, T)`` tensor.
            batch_size: expand a broadcast (leading 1) input to this batch size.

        Raises:
            TypeError: ``pots`` is neither a tensor nor a sequence of tensors, or not floating
                point.
            ValueError: wrong number of tables, wrong shape, inconsistent batch sizes, or a
                dtype other than float32 and float64 (half precision).
        """
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
                check_dtype(p.dtype, f"potential {r}", POTS_HINT)
                flat.append(p.reshape(p.shape[0], -1).expand(b, -1))
            theta = torch.cat(flat, dim=1)
        check_dtype(theta.dtype, "potentials", POTS_HINT)
        if batch_size is not None and theta.shape[0] != batch_size:
            if theta.shape[0] != 1:
                raise ValueError(
                    f"potentials have batch size {theta.shape[0]}, messages {batch_size}"
                )
            theta = theta.expand(batch_size, -1)
        return theta

    def check_messages(self, theta: Tensor, msgs: Tensor) -> None:
        """Messages must be ``(B, M)`` float32/float64 on ``theta``'s device and dtype.

        Raises:
            TypeError: ``msgs`` is not a tensor, or not floating point.
            ValueError: wrong shape, batch size, dtype or device.
        """
        if not isinstance(msgs, Tensor):
            raise TypeError(f"messages must be a tensor, got {type(msgs).__name__}")
        m = self.num_message_entries
        if msgs.dim() != 2 or msgs.shape[1] != m:
            raise ValueError(
                f"messages must have shape (B, {m}) for this graph, got "
                f"{tuple(msgs.shape)} (messages from another graph?)"
            )
        check_dtype(msgs.dtype, "messages", MSGS_HINT)
        if msgs.shape[0] != theta.shape[0]:
            raise ValueError(
                f"messages have batch size {msgs.shape[0]} but potentials {theta.shape[0]}"
            )
        if msgs.dtype != theta.dtype or msgs.device != theta.device:
            raise ValueError(
                f"messages ({msgs.dtype}, {msgs.device}) and potentials ({theta.dtype}, "
                f"{theta.device}) must share dtype and device"
            )

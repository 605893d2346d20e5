"""The structured head: a region graph, its potential networks and the per-example messages.

A :class:`StructuredHead` turns backbone features into the packed potentials ``theta`` of its
region graph (:meth:`~StructuredHead.forward`), keeps one row of messages per training example
(its :class:`MessageStore`), and decodes. Its learning step (the paper's Fig. 3) is in
:mod:`.losses`, its message-passing settings are one :class:`~structlight.head.InferenceSettings`.

Variable-size examples: a head reads each batch's present variables with
:meth:`~StructuredHead.variable_mask` (None by default: every variable of every example is
there; :class:`~structlight.head.ChainHead` reads lengths, :class:`~structlight.head.FullyConnectedHead`
a boolean mask). :meth:`~StructuredHead.example_mask` adds the region mask (a region is present
when all its variables are), and every loss, inference and read-out of the head takes it: each
example is then its own induced sub-graph (see ``docs/inference.md``). Labels at absent positions
are not read, and predictions there are -100 with zero marginals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from structlight.graph import RegionGraph
from structlight.head.decoding import HeadDecoding
from structlight.head.examples import ExampleMask, HeadExamples
from structlight.head.losses import HeadLosses, StructuredLoss
from structlight.head.missing import HeadMissingLabels
from structlight.head.packing import (
    PackingPlan,
    TermSlots,
    build_packing,
    singleton_regions,
    term_slots,
)
from structlight.head.schedules import MessageSchedule
from structlight.head.settings import InferenceSettings
from structlight.inference import NEG_INF, ConvexBP
from structlight.potentials import RegionPotential
from structlight.store import MessageStore, StoreLocation

__all__ = ["ExampleMask", "StructuredHead", "StructuredLoss", "TaskType"]

TaskType = Literal["sequence", "multilabel"]


class StructuredHead(HeadExamples, HeadDecoding, HeadLosses, HeadMissingLabels, nn.Module):
    """A Markov random field over the outputs, with deep potentials and message storage.

    Subclass it for a new task: build a :class:`RegionGraph`, call ``super().__init__(graph,
    **kwargs)``, then register potential terms with :meth:`add_potential` (one of them marked
    ``unary=True``, covering the singleton regions).

    Args:
        graph: the region graph (counting numbers included).
        inference: the message-passing settings (temperature ``eps``, schedule, loss
            augmentation, compiled sweeps); None: ``InferenceSettings()`` (``eps = 1``, one
            blended sweep per step).
        num_train_examples: slots of the message store; None: sized from the training data by
            :class:`structlight.DeepStructuredModel`.
        label_key: batch key of the labels ``(B, N)``.
        index_key: batch key of the example indices ``(B,)``.
        task_type: ``"sequence"`` (character/word accuracy) or ``"multilabel"`` (Hamming error);
            None: the class attribute.
        store_location: where the message store lives: ``"device"`` (with the module) or
            ``"pinned"`` (page-locked host memory; the batch's messages are copied to the GPU
            and back asynchronously), see :class:`MessageStore`.
        missing_labels: keep a second message store for training examples with unobserved
            labels (-100 at present positions; :mod:`structlight.head.missing`).
            :class:`structlight.DeepStructuredModel` also turns it on when the datamodule has
            ``has_missing_labels = True``.

    Attributes:
        graph: the region graph.
        inference: the :class:`InferenceSettings` (read-only views: :attr:`eps`,
            :attr:`sweeps_per_step`, :attr:`blend`, :attr:`max_sweeps`, :attr:`tol`,
            :attr:`loss_augmentation`).
        schedule: the training step's :class:`~structlight.head.schedules.MessageSchedule`.
        bp: the :class:`ConvexBP` engine on ``graph`` (its :attr:`~ConvexBP.layout` says where
            each region's table lives in ``theta``).
        store: the :class:`MessageStore`.
        clamped_store: the second :class:`MessageStore` (the clamped problem's messages, for
            missing labels), or None.
        potentials: ``nn.ModuleDict`` of the potential terms, in registration order.
    """

    task_type: str = "sequence"

    def __init__(
        self,
        graph: RegionGraph,
        *,
        inference: InferenceSettings | None = None,
        num_train_examples: int | None = None,
        label_key: str = "label",
        index_key: str = "index",
        task_type: TaskType | None = None,
        store_location: StoreLocation = "device",
        missing_labels: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(graph, RegionGraph):
            raise TypeError(f"graph must be a RegionGraph, got {type(graph).__name__}")
        if inference is None:
            inference = InferenceSettings()
        elif not isinstance(inference, InferenceSettings):
            raise TypeError(
                "inference must be an InferenceSettings (None for the defaults), got "
                f"{type(inference).__name__}: pass InferenceSettings(eps=..., ...)"
            )
        if task_type is not None:
            if task_type not in ("sequence", "multilabel"):
                raise ValueError(f"task_type must be 'sequence' or 'multilabel', got {task_type!r}")
            self.task_type = task_type
        self.graph = graph
        self.inference = inference
        self.schedule: MessageSchedule = inference.schedule()
        self.bp = ConvexBP(graph, inference.eps, compile=inference.compile_sweeps)
        self.label_key = label_key
        self.index_key = index_key
        self.store = MessageStore(
            self.bp.num_message_entries, int(num_train_examples or 0), store_location
        )
        self.num_train_examples = num_train_examples
        self.clamped_store = None
        if missing_labels:
            self.enable_missing_labels()
        self.potentials = nn.ModuleDict()
        self._terms: dict[str, TermSlots] = {}
        self._unary_terms: list[str] = []
        self._packing: PackingPlan | None = None
        self._packing_on: dict[tuple[torch.device, str], PackingPlan] = {}
        self._singleton = singleton_regions(graph)
        self.max_states = max(graph.num_states)

    # ------------------------------------------------------------------ settings (read-only)
    @property
    def eps(self) -> float:
        """The temperature (``inference.eps``)."""
        return self.inference.eps

    @property
    def sweeps_per_step(self) -> int:
        """Sweeps per blended training step (``inference.sweeps_per_step``)."""
        return self.inference.sweeps_per_step

    @property
    def blend(self) -> bool:
        """Whether training blends stored messages (``inference.blend``)."""
        return self.inference.blend

    @property
    def max_sweeps(self) -> int:
        """Sweeps per double-loop step (``inference.max_sweeps``)."""
        return self.inference.max_sweeps

    @property
    def tol(self) -> float | None:
        """The double loop's early-stopping tolerance (``inference.tol``)."""
        return self.inference.tol

    @property
    def loss_augmentation(self) -> bool:
        """Whether training inference adds the Hamming loss (``inference.augments_loss``)."""
        return self.inference.augments_loss

    # ------------------------------------------------------------------ potential terms
    def add_potential(
        self, name: str, module: nn.Module, regions: Sequence[int], unary: bool = False
    ) -> None:
        """Register a potential term.

        Args:
            name: a unique name (a valid ``nn.Module`` attribute name).
            module: a :class:`RegionPotential` (called as ``module(features, batch)``) or any
                ``nn.Module`` (called as ``module(features)``). It must return one table per
                covered region: ``(B or 1, n, *pad)`` or flattened ``(B or 1, n * prod(pad))``,
                where ``pad`` is the element-wise largest shape of the covered regions (regions of
                smaller shape use the leading part of each axis).
            regions: the covered region indices, all with the same number of variables.
            unary: mark the term as part of the unary potentials (loaded and frozen by the
                ``piecewise`` and ``pretrain_joint`` strategies; kept by ``unary_only``).

        Raises:
            ValueError: a region is out of range, or the regions differ in size, or the name is
                taken.
        """
        if name in self.potentials:
            raise ValueError(f"a potential term named {name!r} exists already")
        if not isinstance(module, nn.Module):
            raise TypeError(f"potential {name!r} must be an nn.Module, got {type(module).__name__}")
        slots = term_slots(self.graph, name, regions)
        self.potentials[name] = module
        self._terms[name] = slots
        if unary:
            self._unary_terms.append(name)
        self._packing = None
        self._packing_on.clear()

    def term_regions(self, name: str) -> list[int]:
        """The regions scored by the term ``name``, in the order of its output tables.

        Raises:
            KeyError: no term of that name.
        """
        if name not in self._terms:
            raise KeyError(f"no potential term named {name!r}; terms: {list(self._terms)}")
        return list(self._terms[name].regions)

    @property
    def unary_terms(self) -> list[str]:
        """Names of the terms marked unary."""
        return list(self._unary_terms)

    def unary_modules(self) -> Iterator[nn.Module]:
        """The unary terms' modules."""
        return (self.potentials[n] for n in self._unary_terms)

    def unary_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the unary terms."""
        for m in self.unary_modules():
            yield from m.parameters()

    def pairwise_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of all non-unary terms (pairwise tables and MLPs, higher-order tables)."""
        for name, m in self.potentials.items():
            if name not in self._unary_terms:
                yield from m.parameters()

    def packing(self) -> PackingPlan:
        """How :meth:`forward` packs the terms' outputs into ``theta`` (NumPy, built once per
        set of terms; see :mod:`structlight.head.packing`).

        Raises:
            RuntimeError: no term registered.
        """
        if self._packing is None:
            if not self._terms:
                raise RuntimeError(
                    f"{type(self).__name__} has no potential terms; register them with "
                    "add_potential"
                )
            self._packing = build_packing(self.graph, self.bp.layout, self.eps, self._terms)
        return self._packing

    def _plan(self, device: torch.device, dtype: torch.dtype) -> PackingPlan:
        key = (device, str(dtype))
        hit = self._packing_on.get(key)
        if hit is None:
            hit = self._packing_on[key] = self.packing().to(device, dtype)
        return hit

    def _missing_singletons(self) -> list[int]:
        return [v for v, r in enumerate(self._singleton) if r is None]

    # ------------------------------------------------------------------ potentials
    def forward(self, features: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        """Packed potentials ``theta`` of the batch.

        Args:
            features: the backbone's output, ``(B, N, F)`` or ``(B, F)`` (whatever the terms take).
            batch: the batch dict (terms such as :class:`PairwiseMLP` read raw inputs from it).

        Returns:
            ``(B, T)`` potentials in :class:`ConvexBP`'s packed layout (float32 at least).
        """
        batch = {} if batch is None else batch
        if not len(self.potentials):
            raise RuntimeError(
                f"{type(self).__name__} has no potential terms; register them with add_potential"
            )
        if features.dim() < 1:
            raise ValueError("features must have a batch dimension")
        b = int(features.shape[0])
        parts = []
        for name, module in self.potentials.items():
            out = (
                module(features, batch) if isinstance(module, RegionPotential) else module(features)
            )
            slots = self._terms[name]
            n, pad = len(slots.regions), ", ".join(map(str, slots.pad))
            if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] not in (1, b):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"potential {name!r} must return (B={b} or 1, {n}, {pad}), got {got}"
                )
            flat = out.reshape(out.shape[0], -1)
            if flat.shape[1] != slots.num_outputs:
                raise ValueError(
                    f"potential {name!r} covers {n} regions of shape {slots.pad} and must return "
                    f"(B, {n}, {pad}) ({slots.num_outputs} entries per example), got "
                    f"{tuple(out.shape)}"
                )
            parts.append(flat.expand(b, -1) if flat.shape[0] != b else flat)
        src = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if src.dtype in (torch.float16, torch.bfloat16):
            src = src.float()
        plan = self._plan(src.device, src.dtype)
        if plan.mode == "identity":
            return src
        if plan.mode == "gather":
            return src.index_select(1, plan.gather)
        theta = src.new_zeros(b, self.bp.layout.num_entries)
        return theta.index_add(1, plan.tgt, src.index_select(1, plan.src))

    def unary_scores(self, theta: Tensor) -> Tensor:
        """The singleton tables of each variable, read from packed potentials.

        Args:
            theta: ``(B, T)``.

        Returns:
            ``(B, N, Kmax)``; entries past ``num_states[i]`` are ``NEG_INF``.
        """
        missing = self._missing_singletons()
        if missing:
            raise ValueError(f"variables {missing} have no singleton region in the graph")
        plan = self._plan(theta.device, theta.dtype)
        padded = torch.cat([theta, theta.new_full((theta.shape[0], 1), NEG_INF)], dim=1)
        return padded[:, plan.var_index]

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, inference={self.inference!r}, task_type={self.task_type!r}"

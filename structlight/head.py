"""Structured output heads: a region graph, its potential networks and the per-example messages.

A :class:`StructuredHead` turns backbone features into the packed potentials ``theta`` of its
region graph (``forward``), and implements the paper's learning step on them (DESIGN §2, the
paper's Fig. 3):

1. ``lam = store[batch["index"]]``; ``sweeps_per_step`` block-coordinate sweeps of convex belief
   propagation on the detached potentials; write ``lam`` back (*blending*). With
   ``blend=False`` (the double-loop baseline) ``lam`` restarts at zero every step and runs up to
   ``max_sweeps`` sweeps or until the dual moves less than ``tol``.
2. ``loss_b = D(theta_b, lam_b) - F(x_b, y*_b)`` with ``lam`` detached; ``loss_b >= 0`` always, and
   its gradient is the paper's ``sum_r sum_{y_r} b_r(y_r) grad f_r(y_r) - grad F(x, y*)``.

With ``eps = 0`` the unary tables are augmented with the Hamming loss (``+1`` for every wrong
state of each variable) before inference, so the loss is the structured hinge loss.

Ready heads: :class:`ChainHead` (sequences, e.g. Word50: 1st/2nd-order chains with shared,
per-distance or per-edge tables, or the non-linear pairwise MLP) and :class:`FullyConnectedHead`
(multi-label tagging, e.g. Flickr: one table per edge). New tasks subclass :class:`StructuredHead`
and register their terms with :meth:`StructuredHead.add_potential`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from structlight.chain import chain_marginals, chain_potentials, chain_viterbi
from structlight.graph import RegionGraph
from structlight.guard import PendingWrite
from structlight.inference import NEG_INF, ConvexBP
from structlight.potentials import PairwiseMLP, RegionPotential, RegionTable, Unary
from structlight.store import MessageStore, StoreLocation

__all__ = ["ChainHead", "FullyConnectedHead", "StructuredHead", "StructuredLoss"]

TaskType = Literal["sequence", "multilabel"]
Share = Literal["shared", "type", "edge"]


@dataclass
class StructuredLoss:
    """Per-example results of one loss evaluation.

    Attributes:
        loss: ``(B,)`` per-example loss ``D - F(y*)``, differentiable w.r.t. the potentials.
        dual: ``(B,)`` the dual ``D`` in the loss (detached).
        dual_change: ``(B,)`` mean change of the dual per sweep in this step (after minus before;
            ``<= 0``), or None when not tracked / no sweeps ran.
        num_sweeps: sweeps run in this step.
        pending: the batch's updated messages when :meth:`StructuredHead.training_loss` was
            asked not to write them back (``write_back=False``), for the caller to write once the
            step is known to be finite; None otherwise.
    """

    loss: Tensor
    dual: Tensor
    dual_change: Tensor | None
    num_sweeps: int
    pending: PendingWrite | None = None


def _check_share(share: str) -> None:
    if share not in ("shared", "type", "edge"):
        raise ValueError(f"share must be 'shared', 'type' or 'edge', got {share!r}")


class StructuredHead(nn.Module):
    """A Markov random field over the outputs, with deep potentials and message storage.

    Subclass it for a new task: build a :class:`RegionGraph`, call ``super().__init__(graph,
    ...)``, then register potential terms with :meth:`add_potential` (one of them marked
    ``unary=True``, covering the singleton regions).

    Args:
        graph: the region graph (counting numbers included).
        eps: temperature ``eps >= 0`` (1: CRF likelihood; 0: structured hinge loss).
        sweeps_per_step: message-passing sweeps per training step when blending (default 1).
        blend: True (default): keep each example's messages between steps (the paper's
            algorithm); False: the double-loop baseline, restarting from zero messages every step.
        max_sweeps: sweeps per step of the double loop (``blend=False``).
        tol: the double loop stops early once the dual moves less than ``tol`` (absolute, for
            every example of the batch) in a sweep; None: always ``max_sweeps``.
        loss_augmentation: add the Hamming loss to the unaries during training inference; None
            (default): on exactly when ``eps == 0``.
        num_train_examples: slots of the message store; None: sized from the training data by
            :class:`structlight.DeepStructuredModel`.
        label_key: batch key of the labels ``(B, N)``.
        index_key: batch key of the example indices ``(B,)``.
        task_type: ``"sequence"`` (character/word accuracy) or ``"multilabel"`` (Hamming error);
            None: the class attribute.
        store_location: where the message store lives: ``"device"`` (with the module) or
            ``"pinned"`` (page-locked host memory; the batch's messages are copied to the GPU
            and back asynchronously), see :class:`MessageStore`.
        compile_sweeps: run message passing through ``ConvexBP(compile=True)`` (the whole sweep
            under :func:`torch.compile`; where it applies, see
            :attr:`ConvexBP.uses_compiled_sweeps`): worth it for many small blocks (fully
            connected graphs), at the price of compiling on first use and for each new batch
            size (keep batches equal, e.g. ``drop_last``).

    Attributes:
        graph: the region graph.
        bp: the :class:`ConvexBP` engine on ``graph``.
        store: the :class:`MessageStore`.
        potentials: ``nn.ModuleDict`` of the potential terms, in registration order.
    """

    task_type: str = "sequence"

    def __init__(
        self,
        graph: RegionGraph,
        *,
        eps: float = 1.0,
        sweeps_per_step: int = 1,
        blend: bool = True,
        max_sweeps: int = 20,
        tol: float | None = 1e-4,
        loss_augmentation: bool | None = None,
        num_train_examples: int | None = None,
        label_key: str = "label",
        index_key: str = "index",
        task_type: TaskType | None = None,
        store_location: StoreLocation = "device",
        compile_sweeps: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(graph, RegionGraph):
            raise TypeError(f"graph must be a RegionGraph, got {type(graph).__name__}")
        if isinstance(sweeps_per_step, bool) or not isinstance(sweeps_per_step, int):
            raise TypeError(f"sweeps_per_step must be an int, got {sweeps_per_step!r}")
        if sweeps_per_step < 1:
            raise ValueError(f"sweeps_per_step must be >= 1, got {sweeps_per_step}")
        if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
            raise ValueError(f"max_sweeps must be an int >= 1, got {max_sweeps!r}")
        if tol is not None and not tol >= 0:
            raise ValueError(f"tol must be >= 0 or None, got {tol}")
        if task_type is not None:
            if task_type not in ("sequence", "multilabel"):
                raise ValueError(f"task_type must be 'sequence' or 'multilabel', got {task_type!r}")
            self.task_type = task_type
        self.graph = graph
        self.bp = ConvexBP(graph, eps, compile=compile_sweeps)
        self.eps = float(eps)
        self.sweeps_per_step = sweeps_per_step
        self.blend = bool(blend)
        self.max_sweeps = max_sweeps
        self.tol = tol
        self.loss_augmentation = (
            (self.eps == 0.0) if loss_augmentation is None else bool(loss_augmentation)
        )
        self.label_key = label_key
        self.index_key = index_key
        self.store = MessageStore(
            self.bp.num_message_entries, int(num_train_examples or 0), store_location
        )
        self.num_train_examples = num_train_examples
        self.potentials = nn.ModuleDict()
        self._term_regions: dict[str, list[int]] = {}
        self._term_pad: dict[str, tuple[int, ...]] = {}
        self._unary_terms: list[str] = []
        self._plan_np: dict[str, Any] | None = None
        self._plan_cache: dict[tuple[torch.device, str], dict[str, Tensor]] = {}

        g = graph
        sizes = np.array([g.region_size(r) for r in range(g.num_regions)], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._num_entries = int(sizes.sum())
        singleton = {reg[0]: r for r, reg in enumerate(g.regions) if len(reg) == 1}
        self._singleton = [singleton.get(v) for v in range(g.num_vars)]
        self.max_states = max(g.num_states)

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
        g = self.graph
        if name in self.potentials:
            raise ValueError(f"a potential term named {name!r} exists already")
        if not isinstance(module, nn.Module):
            raise TypeError(f"potential {name!r} must be an nn.Module, got {type(module).__name__}")
        regs = [int(r) for r in regions]
        if not regs:
            raise ValueError(f"potential {name!r} covers no region")
        for r in regs:
            if not 0 <= r < g.num_regions:
                raise ValueError(
                    f"potential {name!r} covers region {r}, but regions are 0..{g.num_regions - 1}"
                )
        arity = {len(g.regions[r]) for r in regs}
        if len(arity) != 1:
            raise ValueError(
                f"potential {name!r} covers regions of different sizes {sorted(arity)}; one term "
                "covers regions with the same number of variables"
            )
        shapes = np.array([g.region_shape(r) for r in regs], dtype=np.int64)
        self.potentials[name] = module
        self._term_regions[name] = regs
        self._term_pad[name] = tuple(int(s) for s in shapes.max(axis=0))
        if unary:
            self._unary_terms.append(name)
        self._plan_np = None
        self._plan_cache.clear()

    def _add_unary_and_tables(
        self,
        in_features: int,
        num_states: int,
        unary_mode: Literal["per_variable", "global"],
        unary_hidden: list[int] | None,
        pairwise: str,
        share: Share,
        table_init_std: float,
    ) -> list[int]:
        """Register the ``"unary"`` term on every singleton and, for ``pairwise="table"``, one
        ``K x K`` :class:`RegionTable` per ``share`` group of the pair regions.

        Returns:
            The pair regions (for a subclass that adds other pairwise terms).
        """
        graph = self.graph
        self.add_potential(
            "unary",
            Unary(in_features, num_states, graph.num_vars, unary_mode, unary_hidden or []),
            graph.regions_of_size(1),
            unary=True,
        )
        edges = graph.regions_of_size(2)
        if pairwise == "table" and edges:
            groups = _groups(graph, edges, share)
            self.add_potential(
                "pairwise", RegionTable((num_states, num_states), groups, table_init_std), edges
            )
        return edges

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

    def _build_plan(self) -> dict[str, Any]:
        if self._plan_np is not None:
            return self._plan_np
        g = self.graph
        if not len(self.potentials):
            raise RuntimeError(
                f"{type(self).__name__} has no potential terms; register them with add_potential"
            )
        src_pos, tgt_pos = [], []
        src_size = 0
        for name in self.potentials:
            pad = self._term_pad[name]
            block = math.prod(pad)
            for j, r in enumerate(self._term_regions[name]):
                shape = g.region_shape(r)
                inner = np.ravel_multi_index(np.indices(shape).reshape(len(shape), -1), pad)
                src_pos.append(src_size + j * block + inner)
                tgt_pos.append(self._offsets[r] + np.arange(math.prod(shape)))
            src_size += block * len(self._term_regions[name])
        src = np.concatenate(src_pos).astype(np.int64)
        tgt = np.concatenate(tgt_pos).astype(np.int64)
        t = self._num_entries
        counts = np.bincount(tgt, minlength=t)
        if (counts == 1).all():
            gather = np.empty(t, dtype=np.int64)
            gather[tgt] = src
            mode = "identity" if src_size == t and (gather == np.arange(t)).all() else "gather"
            plan = {"mode": mode, "gather": gather, "src_size": src_size}
        else:
            plan = {"mode": "add", "src": src, "tgt": tgt, "src_size": src_size}
        # singleton bookkeeping (unary read-out, loss augmentation)
        n, kmax = g.num_vars, self.max_states
        var_index = np.full((n, kmax), t, dtype=np.int64)
        aug_base = np.zeros(t, dtype=np.float64)
        sing_off = np.zeros(n, dtype=np.int64)
        sing_chat = np.ones(n, dtype=np.float64)
        for v, r in enumerate(self._singleton):
            if r is None:
                continue
            k = g.num_states[v]
            var_index[v, :k] = self._offsets[r] + np.arange(k)
            aug_base[self._offsets[r] : self._offsets[r] + k] = 1.0
            sing_off[v] = self._offsets[r]
            sing_chat[v] = self.eps * g.counting_numbers[r]
        plan.update(var_index=var_index, aug_base=aug_base, sing_off=sing_off, sing_chat=sing_chat)
        self._plan_np = plan
        return plan

    def _plan(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        key = (device, str(dtype))
        hit = self._plan_cache.get(key)
        if hit is not None:
            return hit
        out: dict[str, Any] = {}
        for k, v in self._build_plan().items():
            if isinstance(v, np.ndarray):
                want = dtype if v.dtype.kind == "f" else torch.long
                out[k] = torch.as_tensor(v, dtype=want, device=device)
            else:
                out[k] = v
        self._plan_cache[key] = out
        return out

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
            if isinstance(module, RegionPotential):
                out = module(features, batch)
            else:
                out = module(features)
            n = len(self._term_regions[name])
            want = n * math.prod(self._term_pad[name])
            if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] not in (1, b):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"potential {name!r} must return (B={b} or 1, {n}, "
                    f"{', '.join(map(str, self._term_pad[name]))}), got {got}"
                )
            flat = out.reshape(out.shape[0], -1)
            if flat.shape[1] != want:
                raise ValueError(
                    f"potential {name!r} covers {n} regions of shape {self._term_pad[name]} and "
                    f"must return (B, {n}, {', '.join(map(str, self._term_pad[name]))}) "
                    f"({want} entries per example), got {tuple(out.shape)}"
                )
            parts.append(flat.expand(b, -1) if flat.shape[0] != b else flat)
        src = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if src.dtype in (torch.float16, torch.bfloat16):
            src = src.float()
        plan = self._plan(src.device, src.dtype)
        if plan["mode"] == "identity":
            return src
        if plan["mode"] == "gather":
            return src.index_select(1, plan["gather"])
        theta = src.new_zeros(b, self._num_entries)
        return theta.index_add(1, plan["tgt"], src.index_select(1, plan["src"]))

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
        return padded[:, plan["var_index"]]

    # ------------------------------------------------------------------ labels
    def labels_from(self, batch: Mapping[str, Any], batch_size: int | None = None) -> Tensor:
        """The batch's labels, checked against the graph.

        Args:
            batch: dict batch with ``batch[label_key]`` of shape ``(B, N)``.
            batch_size: the expected B.

        Returns:
            ``(B, N)`` long tensor.

        Raises:
            KeyError: no labels in the batch.
            ValueError: the labels' shape disagrees with the graph, or a label is not a state
                of its variable (checked before anything reads them; for labels on a GPU this
                costs one small read of the device).
        """
        if not isinstance(batch, Mapping) or self.label_key not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"the batch has no labels under {self.label_key!r}; batch keys: {keys}")
        y = batch[self.label_key]
        if not isinstance(y, Tensor):
            y = torch.as_tensor(y)
        n = self.graph.num_vars
        if y.dim() != 2 or y.shape[1] != n or (batch_size is not None and y.shape[0] != batch_size):
            raise ValueError(
                f"{type(self).__name__}'s graph has {n} variables, so labels must have shape "
                f"(B{'' if batch_size is None else '=' + str(batch_size)}, {n}); "
                f"batch[{self.label_key!r}] has shape {tuple(y.shape)}"
            )
        if y.dtype.is_floating_point:
            if not bool((y == y.round()).all()):
                raise ValueError("labels must be integer class indices, got non-integer floats")
        y = y.long()
        if y.numel():
            self._check_label_range(y)
        return y

    def _check_label_range(self, y: Tensor) -> None:
        """Raise naming the first label that is not a state of its variable."""
        ks = torch.as_tensor(self.graph.num_states, dtype=torch.long)
        bad = (y < 0) | (y >= ks)
        if not bool(bad.any()):
            return
        b, v = (int(i) for i in bad.nonzero()[0])
        k = int(ks[v])
        raise ValueError(
            f"batch[{self.label_key!r}][{b}, {v}] = {int(y[b, v])}, but variable {v} has {k} "
            f"states: labels must be in 0..{k - 1} ({int(bad.sum())} labels of the batch are out "
            "of range)"
        )

    def augment(self, theta: Tensor, labels: Tensor) -> Tensor:
        """Hamming loss augmentation: ``+1`` on every state of every variable except ``y*_i``.

        Args:
            theta: ``(B, T)``.
            labels: ``(B, N)``.

        Returns:
            ``(B, T)`` (differentiable; ``F(y*)`` is unchanged).
        """
        missing = self._missing_singletons()
        if missing:
            raise ValueError(
                f"loss augmentation adds the Hamming loss to the singleton tables, but variables "
                f"{missing} have none"
            )
        plan = self._plan(theta.device, theta.dtype)
        pos = plan["sing_off"] + labels.to(theta.device)
        out = theta + plan["aug_base"]
        return out.scatter_add(1, pos, theta.new_full(pos.shape, -1.0))

    # ------------------------------------------------------------------ losses
    def structured_loss(self, theta: Tensor, labels: Tensor, msgs: Tensor) -> Tensor:
        """``L = D(theta~, lam) - F(theta, y*)`` with ``lam`` held fixed.

        ``theta~`` is ``theta`` augmented with the Hamming loss when ``loss_augmentation`` is on.

        Args:
            theta: ``(B, T)`` potentials.
            labels: ``(B, N)`` ground truth.
            msgs: ``(B, M)`` messages (detached here).

        Returns:
            ``(B,)``, ``>= 0``.
        """
        theta_inf = self.augment(theta, labels) if self.loss_augmentation else theta
        return self.bp.dual(theta_inf, msgs.detach()) - self.bp.score(theta, labels)

    def training_loss(
        self,
        theta: Tensor,
        batch: Mapping[str, Any],
        track_dual_change: bool = True,
        write_back: bool = True,
        labels: Tensor | None = None,
    ) -> StructuredLoss:
        """One step of the paper's algorithm on a batch: message passing, store update, loss.

        Blending (``blend=True``): the batch's messages are read from the store, updated by
        ``sweeps_per_step`` sweeps on the detached potentials and written back. Double loop:
        zero messages, up to ``max_sweeps`` sweeps (early stop at ``tol``), nothing stored.
        The store never takes a non-finite row: an example whose new messages hold a NaN or an
        infinity keeps its old ones.

        Args:
            theta: ``(B, T)`` potentials from :meth:`forward`.
            batch: the batch (labels, and the example indices when blending).
            track_dual_change: compute the dual before the sweeps too (one more dual
                evaluation), for :attr:`StructuredLoss.dual_change`.
            write_back: write the new messages to the store now (default); False: return them
                as :attr:`StructuredLoss.pending` instead, for the caller to write once the
                whole step (gradients included) is known to be finite, as
                :class:`structlight.DeepStructuredModel` does.
            labels: ``(B, N)`` labels already checked by :meth:`labels_from` (the caller's own
                check of this step); None: read and check ``batch[label_key]`` here.

        Returns:
            :class:`StructuredLoss` with the ``(B,)`` loss.

        Raises:
            ValueError: ``labels`` of another batch size than ``theta``.
        """
        b = theta.shape[0]
        if labels is None:
            labels = self.labels_from(batch, b)
        elif labels.shape[0] != b:
            raise ValueError(
                f"labels have batch size {labels.shape[0]} but the potentials {b}: pass the "
                "labels of this batch"
            )
        theta_inf = self.augment(theta, labels) if self.loss_augmentation else theta
        # prepared once: the sweeps (no gradient) and the final dual (gradient to theta_inf)
        # share its tables
        fixed = self.bp.prepare(theta_inf)
        dual_before = None
        pending = None
        if self.blend:
            index = MessageStore.index_from(batch, self.index_key)
            if index.dim() != 1 or index.shape[0] != b:
                raise ValueError(
                    f"batch[{self.index_key!r}] must have shape ({b},), got {tuple(index.shape)}"
                )
            old = self.store.gather(index, device=theta.device).to(dtype=theta.dtype)
            msgs = old
            with torch.no_grad():
                if track_dual_change:
                    dual_before = self.bp.dual(fixed, msgs)
                for _ in range(self.sweeps_per_step):
                    msgs = self.bp.sweep(fixed, msgs)
            pending = PendingWrite(self.store, index, old, msgs)
            if write_back:
                finite = torch.isfinite(msgs).all(dim=1, keepdim=True)
                self.store.scatter(index, torch.where(finite, msgs, old))
                pending = None
            num = self.sweeps_per_step
        else:
            with torch.no_grad():
                zero = self.bp.init_messages(b, theta.dtype, theta.device)
                if track_dual_change:
                    dual_before = self.bp.dual(fixed, zero)
                msgs, duals = self.bp.run(fixed, zero, num_sweeps=self.max_sweeps, tol=self.tol)
                num = int(duals.shape[0]) if self.tol is not None else self.max_sweeps
        dual = self.bp.dual(fixed, msgs.detach())
        loss = dual - self.bp.score(theta, labels)
        change = None
        if dual_before is not None and track_dual_change and num > 0:
            change = (dual.detach() - dual_before) / num
        return StructuredLoss(
            loss=loss, dual=dual.detach(), dual_change=change, num_sweeps=num, pending=pending
        )

    def independent_loss(self, theta: Tensor, labels: Tensor) -> StructuredLoss:
        """The loss of the model without its pairwise and higher-order regions (``unary_only``).

        Per variable ``ĉ_i log sum exp(u_i / ĉ_i) - u_i(y*_i)`` (``max`` for ``ĉ_i = 0``, with the
        Hamming augmentation when ``loss_augmentation``): for ``eps = c_i = 1`` the sum of the
        per-variable cross-entropies. (With the pairwise tables merely set to zero the dual with
        ``c_r = 1`` would instead be a tempered loss: variable ``i`` with ``d_i`` edges enters as
        ``(1 + d_i) log sum exp(u_i / (1 + d_i))``.)

        Args:
            theta: ``(B, T)``; only the singleton tables are read.
            labels: ``(B, N)``.

        Returns:
            :class:`StructuredLoss` (no messages, ``num_sweeps = 0``).
        """
        u = self.unary_scores(theta)
        plan = self._plan(theta.device, theta.dtype)
        labels = labels.to(theta.device)
        score = u.gather(2, labels[..., None]).squeeze(2)
        if self.loss_augmentation:
            ks = torch.as_tensor(self.graph.num_states, device=theta.device)
            valid = torch.arange(u.shape[2], device=theta.device) < ks[:, None]
            u = u + valid.to(u.dtype) - torch.nn.functional.one_hot(labels, u.shape[2]).to(u.dtype)
        chat = plan["sing_chat"]
        safe = torch.where(chat > 0, chat, torch.ones_like(chat))
        lse = torch.logsumexp(u / safe[:, None], dim=2) * safe
        d = torch.where(chat > 0, lse, u.amax(dim=2))
        dual = d.sum(1)
        return StructuredLoss(
            loss=dual - score.sum(1), dual=dual.detach(), dual_change=None, num_sweeps=0
        )

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        theta: Tensor,
        num_sweeps: int = 10,
        msgs: Tensor | None = None,
        tol: float | None = None,
    ) -> Tensor:
        """Messages after ``num_sweeps`` sweeps (from zero unless ``msgs`` is given).

        Args:
            theta: ``(B, T)``; detached.
            num_sweeps: sweeps to run (the paper uses 10 at prediction).
            msgs: ``(B, M)`` starting messages; None for zeros.
            tol: stop early when the dual moves less than ``tol``.

        Returns:
            ``(B, M)`` messages.
        """
        out, _ = self.bp.run(theta.detach(), msgs, num_sweeps=num_sweeps, tol=tol)
        return out

    def predict(self, theta: Tensor, msgs: Tensor) -> tuple[Tensor, Tensor]:
        """Marginal decoding.

        Args:
            theta: ``(B, T)``.
            msgs: ``(B, M)``.

        Returns:
            ``(labels, marginals)``: ``(B, N)`` long and ``(B, N, Kmax)`` beliefs.
        """
        with torch.no_grad():
            theta = theta.detach()
            marg = self.bp.variable_beliefs(theta, msgs)
            ks = torch.as_tensor(self.graph.num_states, device=marg.device)
            valid = torch.arange(marg.shape[-1], device=marg.device) < ks[:, None]
            return marg.masked_fill(~valid, -1.0).argmax(-1), marg

    def predict_independent(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Per-variable decoding from the singleton tables alone (the ``unary_only`` model).

        Returns:
            ``(labels, marginals)``: ``(B, N)`` and ``(B, N, Kmax)`` softmax of the unaries
            (one-hot argmax where ``ĉ_i = 0``).
        """
        with torch.no_grad():
            u = self.unary_scores(theta.detach())
            plan = self._plan(u.device, u.dtype)
            chat = plan["sing_chat"]
            labels = u.argmax(-1)
            safe = torch.where(chat > 0, chat, torch.ones_like(chat))
            soft = torch.softmax(u / safe[:, None], dim=-1)
            hard = torch.nn.functional.one_hot(labels, u.shape[-1]).to(u.dtype)
            return labels, torch.where((chat > 0)[:, None], soft, hard)

    def extra_repr(self) -> str:
        return (
            f"graph={self.graph!r}, eps={self.eps}, blend={self.blend}, "
            f"sweeps_per_step={self.sweeps_per_step}, loss_augmentation={self.loss_augmentation}, "
            f"task_type={self.task_type!r}"
        )


def _groups(graph: RegionGraph, regions: Sequence[int], share: str) -> list[int]:
    _check_share(share)
    if share == "shared":
        return [0] * len(regions)
    if share == "type":
        return [graph.edge_types[r] for r in regions]
    return list(range(len(regions)))


class ChainHead(StructuredHead):
    """A chain over N positions (sequence labelling, e.g. Word50's five characters).

    Regions: N singletons, then the edges ``(i, i + d)`` for ``d = 1..order`` (see
    :meth:`RegionGraph.chain`). Unary: :class:`Unary` from the backbone's per-position features
    ``(B, N, in_features)`` (or global ``(B, in_features)`` with ``unary_mode="global"``).

    Parameter counts of the paper's Word50 models with backbone ``PerPosition(MLP(784, [1024]))``
    and ``in_features=1024``: ``pairwise="table"``, order 1: 831,166; order 2 (``share="type"``,
    separate distance-1/-2 tables): 831,842; ``pairwise="mlp"``, ``pairwise_in_features=1568``,
    ``pairwise_hidden=[64]``: 974,846.

    Args:
        num_vars: chain length N.
        num_states: states per position K.
        in_features: backbone feature size F.
        order: largest edge distance (1: 1st order, 2: 2nd order).
        pairwise: ``"table"`` (learned K x K tables), ``"mlp"`` (:class:`PairwiseMLP` on the two
            positions' inputs) or ``"none"`` (unaries only).
        share: ``"type"`` (default: one table/MLP per edge distance), ``"shared"`` (one for all
            edges) or ``"edge"`` (one per edge).
        pairwise_hidden: hidden sizes of the pairwise MLP (default ``[64]``).
        pairwise_in_features: input size of the pairwise MLP (two positions' flattened inputs,
            1568 for 28x28 characters); default ``2 * in_features`` when
            ``pairwise_source="features"``.
        pairwise_source: ``"input"`` (read ``batch[input_key]``) or ``"features"``.
        input_key: batch key of the raw inputs (for ``pairwise_source="input"``).
        unary_mode: ``"per_variable"`` or ``"global"`` (see :class:`Unary`).
        unary_hidden: hidden layers of the unary network (default none: one Linear).
        table_init_std: pairwise tables start as ``N(0, table_init_std^2)``.
        counting_numbers: ``c_r`` per region (default 1 for all).
        eps, sweeps_per_step, blend, max_sweeps, tol, loss_augmentation, num_train_examples,
        label_key, index_key, store_location, compile_sweeps: see :class:`StructuredHead`.
        decoding: ``"marginal"`` (default): argmax of each position's belief after message
            passing, as the paper; ``"viterbi"``: the exact MAP labelling by dynamic programming,
            with exact marginals by the forward-backward algorithm (1st-order chains only).
    """

    task_type = "sequence"

    def __init__(
        self,
        num_vars: int,
        num_states: int,
        in_features: int,
        order: int = 1,
        pairwise: Literal["table", "mlp", "none"] = "table",
        share: Share = "type",
        pairwise_hidden: list[int] | None = None,
        pairwise_in_features: int | None = None,
        pairwise_source: Literal["input", "features"] = "input",
        input_key: str = "image",
        unary_mode: Literal["per_variable", "global"] = "per_variable",
        unary_hidden: list[int] | None = None,
        table_init_std: float = 0.01,
        counting_numbers: list[float] | None = None,
        eps: float = 1.0,
        sweeps_per_step: int = 1,
        blend: bool = True,
        max_sweeps: int = 20,
        tol: float | None = 1e-4,
        loss_augmentation: bool | None = None,
        num_train_examples: int | None = None,
        label_key: str = "label",
        index_key: str = "index",
        store_location: StoreLocation = "device",
        decoding: Literal["marginal", "viterbi"] = "marginal",
        compile_sweeps: bool = False,
    ) -> None:
        if pairwise not in ("table", "mlp", "none"):
            raise ValueError(f"pairwise must be 'table', 'mlp' or 'none', got {pairwise!r}")
        _check_share(share)
        if decoding not in ("marginal", "viterbi"):
            raise ValueError(f"decoding must be 'marginal' or 'viterbi', got {decoding!r}")
        if decoding == "viterbi" and order != 1:
            raise ValueError(
                f"decoding='viterbi' is exact on 1st-order chains only; this head has order={order}"
            )
        self.decoding = decoding
        graph = RegionGraph.chain(num_vars, num_states, order, counting_numbers=counting_numbers)
        super().__init__(
            graph,
            eps=eps,
            sweeps_per_step=sweeps_per_step,
            blend=blend,
            max_sweeps=max_sweeps,
            tol=tol,
            loss_augmentation=loss_augmentation,
            num_train_examples=num_train_examples,
            label_key=label_key,
            index_key=index_key,
            store_location=store_location,
            compile_sweeps=compile_sweeps,
        )
        edges = self._add_unary_and_tables(
            in_features, num_states, unary_mode, unary_hidden, pairwise, share, table_init_std
        )
        if pairwise != "mlp" or not edges:
            return
        groups = _groups(graph, edges, share)
        if pairwise_in_features is None:
            if pairwise_source != "features":
                raise ValueError(
                    "pairwise='mlp' reads the two positions' raw inputs: pass "
                    "pairwise_in_features (twice one position's input size, e.g. 1568 for 28x28 "
                    "characters), or use pairwise_source='features'"
                )
            pairwise_in_features = 2 * in_features
        hidden = [64] if pairwise_hidden is None else list(pairwise_hidden)
        by_group: dict[int, list[int]] = {}
        for r, gid in zip(edges, groups, strict=True):
            by_group.setdefault(gid, []).append(r)
        for gid, regs in by_group.items():
            name = "pairwise" if len(by_group) == 1 else f"pairwise_{share}{gid}"
            mlp = PairwiseMLP(
                pairwise_in_features,
                hidden,
                (num_states, num_states),
                [graph.regions[r] for r in regs],
                source=pairwise_source,
                input_key=input_key,
            )
            self.add_potential(name, mlp, regs)

    def predict(self, theta: Tensor, msgs: Tensor) -> tuple[Tensor, Tensor]:
        """Decode the batch: marginal decoding (default) or, with ``decoding="viterbi"``, the
        exact MAP labelling and exact marginals (``msgs`` are then not used).

        Args:
            theta: ``(B, T)``.
            msgs: ``(B, M)``.

        Returns:
            ``(labels, marginals)``: ``(B, N)`` long and ``(B, N, K)``.
        """
        if self.decoding == "marginal":
            return super().predict(theta, msgs)
        with torch.no_grad():
            unary, pairwise = chain_potentials(self.graph, theta.detach())
            labels, _ = chain_viterbi(unary, pairwise)
            _, marginals, _ = chain_marginals(unary, pairwise)
            return labels, marginals


class FullyConnectedHead(StructuredHead):
    """All pairs of N variables (multi-label tagging, e.g. Flickr's 38 tags, 703 edges).

    Regions: N singletons, then every pair ``(i, j), i < j`` (see
    :meth:`RegionGraph.fully_connected`). Unary: :class:`Unary` on the backbone's global features
    ``(B, in_features) -> (B, N, K)`` (the Flickr model's 4096-76 layer) by default. Pairwise:
    one ``K x K`` table per edge by default (``share="edge"``; 703 x 4 = 2,812 parameters for
    Flickr).

    Args:
        num_vars: N.
        in_features: backbone feature size F.
        num_states: states per variable K (2 for binary tags).
        pairwise: ``"table"`` or ``"none"``.
        share: ``"edge"`` (default), ``"shared"`` (one table for all edges) or ``"type"``.
        unary_mode: ``"global"`` (default) or ``"per_variable"``.
        unary_hidden: hidden layers of the unary network.
        table_init_std: tables start as ``N(0, table_init_std^2)``.
        counting_numbers, eps, sweeps_per_step, blend, max_sweeps, tol, loss_augmentation,
        num_train_examples, label_key, index_key, store_location, compile_sweeps: see
            :class:`StructuredHead`.
    """

    task_type = "multilabel"

    def __init__(
        self,
        num_vars: int,
        in_features: int,
        num_states: int = 2,
        pairwise: Literal["table", "none"] = "table",
        share: Share = "edge",
        unary_mode: Literal["per_variable", "global"] = "global",
        unary_hidden: list[int] | None = None,
        table_init_std: float = 0.01,
        counting_numbers: list[float] | None = None,
        eps: float = 1.0,
        sweeps_per_step: int = 1,
        blend: bool = True,
        max_sweeps: int = 20,
        tol: float | None = 1e-4,
        loss_augmentation: bool | None = None,
        num_train_examples: int | None = None,
        label_key: str = "label",
        index_key: str = "index",
        store_location: StoreLocation = "device",
        compile_sweeps: bool = False,
    ) -> None:
        if pairwise not in ("table", "none"):
            raise ValueError(f"pairwise must be 'table' or 'none', got {pairwise!r}")
        _check_share(share)
        graph = RegionGraph.fully_connected(num_vars, num_states, counting_numbers=counting_numbers)
        super().__init__(
            graph,
            eps=eps,
            sweeps_per_step=sweeps_per_step,
            blend=blend,
            max_sweeps=max_sweeps,
            tol=tol,
            loss_augmentation=loss_augmentation,
            num_train_examples=num_train_examples,
            label_key=label_key,
            index_key=index_key,
            store_location=store_location,
            compile_sweeps=compile_sweeps,
        )
        self._add_unary_and_tables(
            in_features, num_states, unary_mode, unary_hidden, pairwise, share, table_init_std
        )

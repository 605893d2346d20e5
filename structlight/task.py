"""The paper's learning algorithm as a LightningModule: any backbone trained jointly with an MRF.

:class:`DeepStructuredModel` composes a backbone (``batch["image"] -> features``) and a
:class:`structlight.StructuredHead` (features -> potentials -> message passing -> loss). One
training step (docs/design.md §2, the paper's Fig. 3):

1. forward: ``theta = head(backbone(batch["image"]), batch)``;
2. the batch's stored messages get ``sweeps_per_step`` sweeps with ``theta`` detached and are
   written back (or, ``blend=False``, restart at zero for up to 20 sweeps);
3. ``loss = mean_b (D_b - F(x_b, y*_b))`` with the messages detached; backward; optimizer step.

Validation, test and prediction are in :mod:`structlight.evaluation`; the optimizer, the
scheduler, the regularisers and the guard's place in the step in :mod:`structlight.optimisation`;
the hooks that size the message store and add its callback in :mod:`structlight.store_hooks`.

The paper's four strategies (``strategy``; each defined once in
:data:`structlight.strategies.STRATEGIES`):

* ``unary_only``: pairwise parameters fixed at 0 (zeroed, frozen) and the structure ignored:
  the loss is the sum of per-variable losses (cross-entropy for ``eps = 1``), prediction the
  per-variable argmax. Its checkpoint is the ``unary_checkpoint`` of the next two.
* ``joint``: everything from random initialisation, trained together.
* ``piecewise``: backbone and unary loaded from ``unary_checkpoint`` and frozen; pairwise learned.
* ``pretrain_joint``: backbone and unary loaded from ``unary_checkpoint``; everything trained (the
  paper lowers the step size to 0.001 here: set it in the optimizer's config).

Halving the step size when validation accuracy drops (the paper's schedule) is a config choice:
``lr_scheduler: ReduceLROnPlateau(mode=max, factor=0.5, patience=0)``. Regularisers: 2-norm
(``l2_weight`` or the optimizer's ``weight_decay``) and an infinity-norm bound (``linf_bound``);
see :mod:`structlight.optimisation`.

Data parallelism (``Trainer(strategy="ddp")``, any number of GPUs and nodes) needs no wiring:
the model adds :class:`structlight.store_callback.MessageStoreSync` to its trainer
(:meth:`DeepStructuredModel.configure_callbacks`), which at ``setup("fit")`` shards the message
store across the ranks and makes the training loader sample each rank's own examples
(:mod:`structlight.distributed`); checkpoints hold every shard, gathered to rank 0, and resume on
any number of processes. The training logs are averaged over the ranks.

Logged: ``train/loss``, ``train/dual``, ``train/dual_change`` (mean change of the dual per sweep
in the step, ``<= 0``), ``train/sweeps`` (double loop), ``val/loss``, ``val/sweeps``,
``val/char_acc`` and ``val/word_acc`` (sequences) or ``val/hamming_error``,
``val/hamming_count`` and ``val/exact_match`` (multi-label), and the same under ``test/``.

Variable-size examples (sequences of several lengths, images with several tag sets) need no
wiring either: the head reads each batch's mask (:meth:`StructuredHead.example_mask`, e.g.
``batch["length"]`` for :class:`structlight.head.ChainHead`) once per step, and the loss, the
message store, the predictions and the metrics see each example's present variables alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from structlight._lightning import attached_trainer
from structlight.evaluation import EvaluationSteps
from structlight.guard import GuardMode, NonFiniteGuard
from structlight.head import StructuredHead, StructuredLoss
from structlight.metrics import task_metrics
from structlight.optimisation import DEFAULT_LR as DEFAULT_LR  # importable from here too
from structlight.optimisation import DEFAULT_MOMENTUM as DEFAULT_MOMENTUM
from structlight.optimisation import OptimisationHooks
from structlight.store_callback import MessageStoreSync
from structlight.store_hooks import MessageStoreHooks
from structlight.strategies import (
    STRATEGIES,
    Strategy,
    StrategySpec,
    read_unary_weights,
    strategy_spec,
)

__all__ = ["DeepStructuredModel", "Strategy"]

_STRATEGIES = tuple(STRATEGIES)
_NEEDS_UNARY = tuple(n for n, s in STRATEGIES.items() if s.needs_unary_checkpoint)


class DeepStructuredModel(
    MessageStoreHooks, EvaluationSteps, OptimisationHooks, pl.LightningModule
):
    """A backbone and a structured head, trained by blending learning and inference.

    Args:
        backbone: maps ``batch[input_key]`` to the head's features, e.g.
            ``PerPosition(MLP(784, [1024]))`` (``(B, 5, 1, 28, 28) -> (B, 5, 1024)``) or AlexNet
            (``(B, 3, 224, 224) -> (B, 4096)``).
        head: the :class:`StructuredHead` (graph, potentials, message store).
        optimizer: optimizer factory ``params -> Optimizer`` (LightningCLI: ``class_path`` +
            ``init_args``); None: SGD with step 0.01 and momentum 0.95 (the paper's Word50).
        lr_scheduler: optional scheduler factory ``optimizer -> scheduler``; stepped per epoch,
            monitoring ``scheduler_monitor`` (needed by ``ReduceLROnPlateau``).
        strategy: ``"unary_only"``, ``"joint"``, ``"piecewise"`` or ``"pretrain_joint"``.
        unary_checkpoint: path of a Lightning checkpoint (e.g. of a ``unary_only`` run) whose
            backbone and unary weights initialise ``piecewise`` and ``pretrain_joint`` runs;
            loaded when fitting starts (not when resuming from this model's own checkpoint).
        val_sweeps: the most sweeps from zero messages at validation, test and prediction
            (with ``val_tol=None``: exactly this many). Default 100: one sweep moves information
            about two positions along a chain, so the paper's 10 sweeps suit 5-letter words but
            not long sequences or large graphs.
        val_tol: validation, test and prediction stop once no example's dual moves by more than
            ``val_tol`` (absolute) in a sweep (:meth:`StructuredHead.converge`); the sweeps used
            are logged as ``val/sweeps`` and ``test/sweeps``. None: always ``val_sweeps`` sweeps
            (``val_sweeps=10, val_tol=None`` is the paper's prediction).
        input_key: batch key of the backbone's input.
        l2_weight: explicit 2-norm regulariser weight (0: off; or use the optimizer's
            ``weight_decay``).
        linf_bound: infinity-norm bound: parameters are clamped to ``[-linf_bound, linf_bound]``
            after every optimizer step; None: off.
        linf_scope: ``"pairwise"`` (non-unary head terms) or ``"all"`` (every trainable
            parameter).
        scheduler_monitor: the metric the scheduler watches; None: :attr:`monitor`.
        log_dual_change: log ``train/dual_change``; it costs one more dual evaluation, done only
            on the steps Lightning logs (every ``Trainer(log_every_n_steps)``).
        metrics: ``"auto"`` (the head's ``task_type``), ``"sequence"`` or ``"multilabel"``.
        nonfinite_guard: how training steps with a NaN or an infinity (in the potentials, the
            loss, the new messages or the gradients) are skipped: ``"auto"`` (default),
            ``"immediate"``, ``"deferred"`` or ``"off"``; see :mod:`structlight.guard`. A skipped
            step changes no weight, no optimizer state and no stored message; it is counted in
            ``train/skipped_steps`` and named in a warning.
        max_consecutive_skips: stop training with :class:`structlight.guard.NonFiniteError`
            after this many skipped steps in a row (0: never).

    Raises:
        TypeError: backbone or head has the wrong type.
        ValueError: unknown strategy, a strategy that needs ``unary_checkpoint`` without one, or
            out-of-range numbers.
    """

    #: Class default; instances set it from the task type (``val/word_acc``, ``val/hamming_error``).
    monitor: str = "val/loss"
    #: Whether :attr:`monitor` is to be maximised (``"max"``) or minimised (``"min"``).
    monitor_mode: str = "min"

    def __init__(
        self,
        backbone: nn.Module,
        head: StructuredHead,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        strategy: Strategy = "joint",
        unary_checkpoint: str | None = None,
        val_sweeps: int = 100,
        val_tol: float | None = 1e-4,
        input_key: str = "image",
        l2_weight: float = 0.0,
        linf_bound: float | None = None,
        linf_scope: Literal["pairwise", "all"] = "pairwise",
        scheduler_monitor: str | None = None,
        log_dual_change: bool = True,
        metrics: Literal["auto", "sequence", "multilabel"] = "auto",
        nonfinite_guard: GuardMode = "auto",
        max_consecutive_skips: int = 10,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        if not isinstance(head, StructuredHead):
            raise TypeError(f"head must be a structlight.StructuredHead, got {type(head).__name__}")
        spec = strategy_spec(strategy)
        if spec.needs_unary_checkpoint and not unary_checkpoint:
            raise ValueError(
                f"strategy={strategy!r} initialises the backbone and unary from a trained unary "
                "model: pass unary_checkpoint (the checkpoint of a strategy='unary_only' run)"
            )
        if not spec.needs_unary_checkpoint and unary_checkpoint:
            loaders = " and ".join(repr(n) for n in _NEEDS_UNARY)
            rank_zero_warn(
                f"unary_checkpoint is ignored by strategy={strategy!r} (only {loaders} load it)"
            )
        if isinstance(val_sweeps, bool) or not isinstance(val_sweeps, int) or val_sweeps < 0:
            raise ValueError(f"val_sweeps must be an int >= 0, got {val_sweeps!r}")
        if val_tol is not None and (
            isinstance(val_tol, bool) or not isinstance(val_tol, (int, float)) or not val_tol >= 0
        ):
            raise ValueError(f"val_tol must be a number >= 0 or None, got {val_tol!r}")
        if l2_weight < 0:
            raise ValueError(f"l2_weight must be >= 0, got {l2_weight}")
        if linf_bound is not None and not linf_bound > 0:
            raise ValueError(f"linf_bound must be > 0 or None, got {linf_bound}")
        if linf_scope not in ("pairwise", "all"):
            raise ValueError(f"linf_scope must be 'pairwise' or 'all', got {linf_scope!r}")
        task_type = head.task_type if metrics == "auto" else metrics
        if task_type not in ("sequence", "multilabel"):
            raise ValueError(f"metrics must be 'auto', 'sequence' or 'multilabel', got {metrics!r}")
        self.save_hyperparameters(ignore=["backbone", "head", "optimizer", "lr_scheduler"])
        self.backbone = backbone
        self.head = head
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.training_strategy: str = strategy
        #: What the strategy does (trainable parts, structure, unary checkpoint).
        self.strategy_spec: StrategySpec = spec
        self.unary_checkpoint = unary_checkpoint
        self.val_sweeps = val_sweeps
        self.val_tol = None if val_tol is None else float(val_tol)
        self.input_key = input_key
        self.l2_weight = float(l2_weight)
        self.linf_bound = linf_bound
        self.linf_scope = linf_scope
        self.log_dual_change = log_dual_change
        self.task_type = task_type
        if task_type == "sequence":
            self.monitor, self.monitor_mode = "val/word_acc", "max"
        else:
            self.monitor, self.monitor_mode = "val/hamming_error", "min"
        self.scheduler_monitor = scheduler_monitor or self.monitor
        self.val_metrics = task_metrics(task_type, prefix="val/")
        self.test_metrics = task_metrics(task_type, prefix="test/")
        self.guard = NonFiniteGuard(nonfinite_guard, max_consecutive_skips)
        # examples with non-finite potentials seen by the current validation / test epoch
        self._eval_nonfinite: dict[str, Tensor] = {}
        self._unary_loaded = False
        #: The callback that shards, checkpoints and gathers the message store (added to the
        #: trainer by :meth:`configure_callbacks`).
        self.store_sync = MessageStoreSync()

        if not spec.pairwise_trainable:
            with torch.no_grad():
                for p in head.pairwise_parameters():
                    p.zero_()
                    p.requires_grad_(False)
        if not spec.unary_trainable:
            for p in self._unary_side_parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ strategies
    def _unary_side_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.head.unary_parameters())

    def _unary_state_keys(self) -> list[str]:
        prefixes = ("backbone.",) + tuple(f"head.potentials.{n}." for n in self.head.unary_terms)
        return [k for k in self.state_dict() if k.startswith(prefixes)]

    def load_unary_checkpoint(self, path: str | Path) -> None:
        """Copy the backbone and unary weights from a checkpoint into this model.

        Args:
            path: a Lightning checkpoint of a :class:`DeepStructuredModel` with the same backbone
                and unary (typically a ``unary_only`` run), or a plain ``state_dict`` file with
                the same keys (``backbone.*``, ``head.potentials.<unary term>.*``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the checkpoint lacks some of the weights, or their shapes differ.
        """
        keys = self._unary_state_keys()
        state = read_unary_weights(path, keys, self.state_dict())
        self.load_state_dict(state, strict=False)
        self._unary_loaded = True

    def train(self, mode: bool = True) -> DeepStructuredModel:
        """Set training mode; under ``piecewise`` the frozen backbone and unary stay in eval mode."""
        super().train(mode)
        if mode and self.strategy_spec.unary_in_eval_mode:
            self.backbone.eval()
            for m in self.head.unary_modules():
                m.eval()
        return self

    # ------------------------------------------------------------------ checkpoints
    def on_fit_start(self) -> None:
        """Load the unary checkpoint (``piecewise``, ``pretrain_joint``) unless resuming."""
        if self.strategy_spec.needs_unary_checkpoint and not self._unary_loaded:
            if not self.unary_checkpoint:
                raise ValueError(f"strategy={self.training_strategy!r} needs unary_checkpoint")
            self.load_unary_checkpoint(self.unary_checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the guard's counters; make sure the checkpoint holds the whole message store.

        The stores are written by :class:`MessageStoreSync` (every rank's shard, gathered to
        rank 0, and ``checkpoint["message_stores"]``); Lightning skips callbacks when saving
        weights only, so they are written here then.
        """
        checkpoint["nonfinite_guard"] = self.guard.state_dict()
        self._store_sync_in_use().write_stores(attached_trainer(self), self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A restored model keeps its own weights: the unary checkpoint is not loaded again; the
        guard's counters continue."""
        self._unary_loaded = True
        guard = checkpoint.get("nonfinite_guard")
        if isinstance(guard, Mapping):
            self.guard.load_state_dict(dict(guard))

    # ------------------------------------------------------------------ forward
    def _input(self, batch: Mapping[str, Any]) -> Tensor:
        if not isinstance(batch, Mapping):
            raise TypeError(f"batches must be dicts, got {type(batch).__name__}")
        if self.input_key not in batch:
            raise KeyError(
                f"the backbone reads batch[{self.input_key!r}], but the batch has keys "
                f"{sorted(batch)}"
            )
        return batch[self.input_key]

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Packed potentials of a batch.

        Args:
            batch: dict with ``batch[input_key]``.

        Returns:
            ``(B, T)`` potentials (see :class:`structlight.ConvexBP`).
        """
        return self.head(self.backbone(self._input(batch)), batch)

    # ------------------------------------------------------------------ steps
    def _world_size(self) -> int:
        trainer = attached_trainer(self)
        return int(trainer.world_size) if trainer is not None else 1

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        """Forward, message passing on the batch's stored messages, loss.

        The batch's new messages are written to the store in :meth:`on_before_optimizer_step`,
        once the non-finite guard has seen the gradients. An empty batch (every example dropped
        by the data, e.g. undecodable images) is skipped: no optimizer step in a single process;
        under data parallelism the rank contributes zero gradients to the others' step.
        """
        # shape errors name the graph before the forward; the mask is read once, here
        labels, mask = self.head.labels_and_mask(batch)
        b = int(labels.shape[0])
        if b == 0:
            return self._empty_step()
        theta = self(batch)
        if not self.strategy_spec.uses_structure:
            out: StructuredLoss = self.head.independent_loss(theta, labels, mask)
        else:
            track = self.log_dual_change and self._logs_this_step()
            out = self.head.training_loss(
                theta,
                batch,
                track_dual_change=track,
                write_back=not self.guard.enabled,
                labels=labels.to(theta.device),
                mask=mask,
            )
        index = batch.get(self.head.index_key) if isinstance(batch, Mapping) else None
        self.guard.note_batch(theta, out.loss, index=index, write=out.pending)
        loss = out.loss.mean()
        sync = self._world_size() > 1
        log = {"on_step": True, "batch_size": b, "sync_dist": sync}
        # the logged loss leaves out examples with non-finite losses (their step is skipped)
        finite = torch.isfinite(out.loss.detach())
        shown = torch.where(finite, out.loss.detach(), 0.0).sum() / finite.sum().clamp_min(1)
        self.log("train/loss", shown, on_epoch=True, prog_bar=True, **log)
        self.log("train/dual", out.dual.mean(), on_epoch=True, **log)
        if out.dual_change is not None:
            self.log("train/dual_change", out.dual_change.mean(), **log)
        if self.strategy_spec.uses_structure and not self.head.blend:
            self.log("train/sweeps", float(out.num_sweeps), **log)
        reg = self._regulariser()
        return loss if reg is None else loss + reg

    def _empty_step(self) -> Tensor | None:
        if self._world_size() == 1:
            return None  # Lightning skips the backward and the optimizer step
        # every rank must take part in the gradient all-reduce: zero gradients from this one
        return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Read the deferred guard's flags on the steps Lightning logs (warn, or stop)."""
        if self.guard.enabled and self._is_logging_step(self.global_step):
            self.guard.report()

    def on_train_epoch_end(self) -> None:
        """Read the deferred guard's remaining flags."""
        self.guard.report()

    def _is_logging_step(self, steps_done: int) -> bool:
        """Whether Lightning writes step-level logs (every ``log_every_n_steps``) once
        ``steps_done`` optimizer steps are done."""
        if attached_trainer(self) is None:
            return True
        every = max(1, int(self.trainer.log_every_n_steps))
        return steps_done % every == 0

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes step-level logs at the step now running."""
        return self._is_logging_step(self.global_step + 1)

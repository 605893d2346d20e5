"""The non-finite guard: a training step with a NaN or an infinity changes nothing.

One bad number (a corrupt input, a step size far too large) makes the potentials, the loss or the
gradients non-finite. Left alone, the optimizer step writes NaN into every weight, the message
store takes NaN rows, and every later step is lost while the run reports success.
:class:`NonFiniteGuard` catches it. In every training step it checks

* the potentials and the loss of each example (``potentials``: NaN or ``+inf``; ``-inf`` marks
  a forbidden state and is allowed; ``loss``),
* the batch's new messages before they are written back (``messages``),
* the gradients of the trainable parameters (``gradients``),

and if any of them holds a NaN or an infinity the step is **skipped**: no optimizer step (weights,
optimizer state and step counters stay as they were), and the batch's message-store rows keep
their old values. Skipped steps are counted (``train/skipped_steps``) and reported with the
indices of the examples at fault; after ``max_consecutive_skips`` skips in a row training stops
with an error naming the cause. Under data parallelism the decision is taken over all processes
at once (one all-reduce of a flag), so every rank skips the same steps.

Two ways to read the flags (``mode``):

* ``"immediate"``: the flags are read on the host at every step and the gradients of a bad step
  are dropped before the optimizer sees them. Free on the CPU, where nothing runs asynchronously.
* ``"deferred"``: the flags stay on the device; the optimizer steps in any case and a bad step is
  undone on the device (``torch.where`` against a copy of the parameters and optimizer state taken
  just before the step), so the host never waits for the GPU. The flags are read when Lightning
  logs (every ``log_every_n_steps``), where warnings and the stop on consecutive skips happen.
  Costs one copy of the trainable parameters and the optimizer state per step. State created by
  the optimizer's very first step is reset to zeros when that step is undone, which equals fresh
  state for SGD without dampening and for Adam/AdamW.
* ``"auto"`` (default): ``"deferred"`` for parameters on a CUDA device, else ``"immediate"``.

See ``docs/reliability.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["GuardMode", "NonFiniteError", "NonFiniteGuard", "PendingWrite"]

GuardMode = Literal["auto", "immediate", "deferred", "off"]
_MODES = ("auto", "immediate", "deferred", "off")
#: Order of the per-step flags; the first one set names the cause of a skip.
_CAUSES = ("potentials", "loss", "messages", "gradients")
#: Example indices named in one warning, at most.
_MAX_NAMED = 20


class NonFiniteError(RuntimeError):
    """Training stopped: too many consecutive steps had non-finite numbers."""


@dataclass
class PendingWrite:
    """Messages of one batch, to be written to the store once the step is known to be finite.

    Attributes:
        store: the :class:`structlight.MessageStore` (any object with ``scatter(index, msgs)``).
        index: ``(B,)`` example indices.
        old: ``(B, M)`` the rows as they were read.
        new: ``(B, M)`` the rows after this step's sweeps.
    """

    store: Any
    index: Tensor
    old: Tensor
    new: Tensor

    def finite_rows(self) -> Tensor:
        """``(B, 1)`` bool: the new rows without a NaN or an infinity. One row sum reads the
        messages once (a NaN or an infinity makes its row's sum one; so does a sum past the
        float range, which no message reaches), several times cheaper than ``isfinite`` on
        every entry."""
        return torch.isfinite(self.new.sum(dim=1, keepdim=True))

    def write(self) -> None:
        """Write the new rows to the store, keeping the old row of every non-finite one."""
        finite = self.finite_rows()
        if self.new.device.type == "cpu" and bool(finite.all()):  # no device sync here
            self.store.scatter(self.index, self.new)
        else:
            self.store.scatter(self.index, torch.where(finite, self.new, self.old))


@dataclass
class _StepRecord:
    """Device-side flags of one step (deferred mode), read at the next logging step."""

    step: int
    flags: Tensor  # (len(_CAUSES),) bool
    bad_rows: Tensor | None  # (B,) bool: examples with non-finite potentials or loss
    index: Tensor | None  # (B,) example indices


@dataclass
class _Undo:
    """Deferred mode: a step's flag and the state it changes, copied just before it."""

    found: Tensor  # 0-d bool: the step is bad
    params: Sequence[Tensor]
    optimizer: Any
    saved: list[tuple[Tensor, Tensor]]  # (tensor the step changes, its copy)


@dataclass
class _Batch:
    flags: list[Tensor] = field(default_factory=list)  # 0-d bool per cause, same order
    bad_rows: list[Tensor] = field(default_factory=list)
    index: list[Tensor] = field(default_factory=list)
    writes: list[PendingWrite] = field(default_factory=list)


def _any_nonfinite(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """0-d bool: whether any of ``tensors`` holds a NaN or an infinity (one fused kernel)."""
    found = torch.zeros((), dtype=torch.float32, device=device)
    if not tensors:
        return found.bool()
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    for (dev, dtype), group in by_kind.items():
        if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            flag = torch.zeros((), dtype=torch.float32, device=dev)
            one = torch.ones((), dtype=torch.float32, device=dev)
            # checks every element and multiplies by 1: the gradients are left as they are
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, one)
        else:
            flag = torch.stack([~torch.isfinite(t).all() for t in group]).any().float()
        found = torch.maximum(found, flag.to(device))
    return found.bool()


class NonFiniteGuard:
    """Skip training steps with non-finite potentials, losses, messages or gradients.

    The task calls :meth:`note_batch` from ``training_step`` (possibly several times per
    optimizer step under gradient accumulation), :meth:`before_step` from
    ``on_before_optimizer_step`` and :meth:`after_step` after the optimizer step.

    Args:
        mode: ``"auto"``, ``"immediate"``, ``"deferred"`` or ``"off"`` (see the module docs).
        max_consecutive_skips: stop training (:class:`NonFiniteError`) after this many skipped
            steps in a row; 0: never stop.

    Attributes:
        skipped: number of skipped steps (an int in immediate mode; read :meth:`skipped_count`).
    """

    def __init__(self, mode: GuardMode = "auto", max_consecutive_skips: int = 10) -> None:
        if mode not in _MODES:
            raise ValueError(f"nonfinite_guard must be one of {_MODES}, got {mode!r}")
        if (
            isinstance(max_consecutive_skips, bool)
            or not isinstance(max_consecutive_skips, int)
            or max_consecutive_skips < 0
        ):
            raise ValueError(
                f"max_consecutive_skips must be an int >= 0 (0: never stop), got "
                f"{max_consecutive_skips!r}"
            )
        self.mode: GuardMode = mode
        self.max_consecutive_skips = max_consecutive_skips
        self._batch = _Batch()
        self._skipped: Tensor | int = 0
        self._consecutive: Tensor | int = 0
        self._records: list[_StepRecord] = []
        # deferred mode, between before_step and after_step: what undoing the step needs
        self._undo: _Undo | None = None

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        """Whether the guard checks anything (``mode != "off"``)."""
        return self.mode != "off"

    def resolved_mode(self, device: torch.device) -> str:
        """``"immediate"`` or ``"deferred"`` for parameters on ``device``."""
        if self.mode == "auto":
            return "deferred" if device.type == "cuda" else "immediate"
        return self.mode

    def skipped_count(self) -> int:
        """Skipped steps so far (reads the device counter in deferred mode)."""
        return int(self._skipped)

    @property
    def skipped(self) -> Tensor | float:
        """Skipped steps so far, for logging: a float, or a device tensor in deferred mode
        (read only when the logger reads it)."""
        if isinstance(self._skipped, Tensor):
            return self._skipped.float()
        return float(self._skipped)

    def state_dict(self) -> dict[str, int]:
        """The counters, for checkpoints."""
        return {"skipped": int(self._skipped), "consecutive": int(self._consecutive)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters of :meth:`state_dict`."""
        self._skipped = int(state.get("skipped", 0))
        self._consecutive = int(state.get("consecutive", 0))

    # ------------------------------------------------------------------ per batch
    def note_batch(
        self,
        theta: Tensor,
        loss: Tensor,
        index: Tensor | None = None,
        write: PendingWrite | Sequence[PendingWrite] | None = None,
    ) -> None:
        """Record one batch's potentials, per-example losses and pending store write.

        Args:
            theta: ``(B, T)`` potentials (detached here).
            loss: ``(B,)`` per-example losses (detached here).
            index: ``(B,)`` example indices, to name the examples at fault; None: unknown.
            write: the batch's messages to write back once the step is known to be finite
                (one :class:`PendingWrite`, or several: one per message store); with the guard
                off they are written at once.
        """
        writes = [] if write is None else [write] if isinstance(write, PendingWrite) else write
        if not self.enabled:
            for w in writes:
                w.store.scatter(w.index, w.new)
            return
        theta, loss = theta.detach(), loss.detach()
        bad_theta = _bad_potential_rows(theta.reshape(theta.shape[0], -1))
        bad_loss = ~torch.isfinite(loss).reshape(loss.shape[0], -1).all(dim=1)
        bad_msgs = torch.zeros((), dtype=torch.bool, device=loss.device)
        for w in writes:
            bad_msgs = bad_msgs | ~w.finite_rows().all()
        b = self._batch
        b.flags.append(torch.stack([bad_theta.any(), bad_loss.any(), bad_msgs]))
        b.bad_rows.append(bad_loss | bad_theta)
        if index is not None:
            b.index.append(torch.as_tensor(index).reshape(-1))
        b.writes.extend(writes)

    def before_step(self, params: Sequence[Tensor], optimizer: Any, step: int) -> bool:
        """Decide on the step (the gradients are final): commit or drop its store writes.

        Immediate mode drops the gradients of a bad step (the optimizer then skips every
        parameter); deferred mode copies the parameters and the optimizer state, to be restored
        by :meth:`after_step`.

        Args:
            params: the trainable parameters.
            optimizer: the optimizer about to step.
            step: the global step (for messages).

        Returns:
            False when the step is to be skipped (immediate mode only; deferred mode returns
            True and undoes the step afterwards).

        Raises:
            NonFiniteError: immediate mode, after ``max_consecutive_skips`` skips in a row.
        """
        if not self.enabled:
            return True
        batch, self._batch = self._batch, _Batch()
        grads = [p.grad for p in params if p.grad is not None]
        device = params[0].device if params else torch.device("cpu")
        if batch.flags:
            batch_flags = torch.stack(batch.flags).any(dim=0).to(device)
        else:
            batch_flags = torch.zeros(len(_CAUSES) - 1, dtype=torch.bool, device=device)
        grad_flag = _any_nonfinite(grads, device).reshape(1)
        per_cause = _all_reduce_any(torch.cat([batch_flags, grad_flag]))
        found = per_cause.any()
        bad_rows = torch.cat(batch.bad_rows) if batch.bad_rows else None
        index = (
            torch.cat(batch.index) if batch.index and len(batch.index) == len(batch.flags) else None
        )
        if self.resolved_mode(device) == "immediate":
            if bool(found):
                self._skip_now(per_cause, bad_rows, index, step, params)
                return False
            self._consecutive = 0
            for w in batch.writes:
                w.store.scatter(w.index, w.new)
            return True
        # deferred: nothing is read on the host
        for w in batch.writes:
            keep = found.to(w.new.device)
            w.store.scatter(w.index, torch.where(keep, w.old.to(w.new.dtype), w.new))
        saved = [(t, t.detach().clone()) for t in _step_tensors(params, optimizer)]
        self._undo = _Undo(found, params, optimizer, saved)
        self._skipped = torch.as_tensor(self._skipped, device=device) + found.long()
        self._consecutive = (torch.as_tensor(self._consecutive, device=device) + 1) * found.long()
        self._records.append(_StepRecord(step, per_cause, bad_rows, index))
        return True

    def after_step(self) -> None:
        """Deferred mode: undo the optimizer step if the step was bad (on the device)."""
        undo, self._undo = self._undo, None
        if undo is None:
            return
        before = {id(t) for t, _ in undo.saved}
        with torch.no_grad():
            for t, saved in undo.saved:
                t.copy_(torch.where(undo.found.to(t.device), saved, t))
            for t in _step_tensors(undo.params, undo.optimizer):
                if id(t) not in before:  # created by this (first) step
                    t.copy_(torch.where(undo.found.to(t.device), torch.zeros_like(t), t))

    def report(self) -> None:
        """Deferred mode: read the flags recorded since the last call (a host sync), warn about
        the skipped steps and stop after too many in a row.

        Raises:
            NonFiniteError: after ``max_consecutive_skips`` skips in a row.
        """
        records, self._records = self._records, []
        if not records:
            return
        flags = torch.stack([r.flags for r in records]).cpu()
        consecutive = int(self._consecutive)
        for r, f in zip(records, flags, strict=True):
            if bool(f.any()):
                _warn(f, r.bad_rows, r.index, r.step)
        self._check_consecutive(consecutive, flags[-1], records[-1])

    # ------------------------------------------------------------------ internals
    def _skip_now(
        self,
        per_cause: Tensor,
        bad_rows: Tensor | None,
        index: Tensor | None,
        step: int,
        params: Iterable[Tensor],
    ) -> None:
        for p in params:
            p.grad = None
        self._skipped = int(self._skipped) + 1
        self._consecutive = int(self._consecutive) + 1
        _warn(per_cause.cpu(), bad_rows, index, step)
        self._check_consecutive(
            self._consecutive, per_cause.cpu(), _StepRecord(step, per_cause, bad_rows, index)
        )

    def _check_consecutive(self, consecutive: int, flags: Tensor, record: _StepRecord) -> None:
        limit = self.max_consecutive_skips
        if limit and consecutive >= limit:
            raise NonFiniteError(
                f"training stopped: {consecutive} consecutive steps (the last at step "
                f"{record.step}) had {_describe(flags, record.bad_rows, record.index)}. "
                f"{_remedy(flags)} (DeepStructuredModel(max_consecutive_skips=...) sets how many "
                "skipped steps in a row are tolerated; 0 never stops)"
            )


def _bad_potential_rows(theta: Tensor) -> Tensor:
    """``(B,)`` bool: rows of ``(B, T)`` potentials holding a NaN or a ``+inf``.

    ``-inf`` is a legitimate potential (a forbidden state, clamped by the engine to
    :data:`structlight.inference.NEG_INF`), so it passes. One row sum finds the rest: a NaN makes
    it NaN, a ``+inf`` makes it ``+inf`` (or NaN beside a ``-inf``). A sum reads the tensor once,
    several times cheaper on the CPU than ``isfinite`` on every entry; it also flags rows whose
    finite entries sum past the float range, potentials no model should produce.
    """
    s = theta.detach().sum(dim=1)
    return torch.isnan(s) | (s == float("inf"))


def _step_tensors(params: Sequence[Tensor], optimizer: Any) -> list[Tensor]:
    """The tensors an optimizer step changes: the parameters and their optimizer state."""
    out = list(params)
    state = getattr(optimizer, "state", {})
    for p in params:
        for v in state.get(p, {}).values():
            if isinstance(v, Tensor):
                out.append(v)
    return out


def _all_reduce_any(flags: Tensor) -> Tensor:
    """Under ``torch.distributed``, OR the flags over all processes (one all-reduce)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    as_int = flags.to(torch.int32)
    if dist.get_backend() == "nccl" and not as_int.is_cuda:  # pragma: no cover - GPU clusters
        as_int = as_int.cuda()
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.to(flags.device).bool()


def _named(bad_rows: Tensor | None, index: Tensor | None) -> str:
    if index is None:
        return "examples of unknown index (the batch has no index key)"
    index = index.cpu()
    rows = bad_rows.cpu() if bad_rows is not None else None
    at_fault = index[rows] if rows is not None and bool(rows.any()) else index
    ids = at_fault.tolist()
    shown = ", ".join(str(i) for i in ids[:_MAX_NAMED])
    more = f" and {len(ids) - _MAX_NAMED} more" if len(ids) > _MAX_NAMED else ""
    whole = "" if rows is not None and bool(rows.any()) else "the whole batch: "
    return f"examples {whole}[{shown}{more}]"


def _describe(flags: Tensor, bad_rows: Tensor | None, index: Tensor | None) -> str:
    causes = [c for c, f in zip(_CAUSES, flags.tolist(), strict=True) if f]
    return f"non-finite {', '.join(causes)} (NaN or infinity), {_named(bad_rows, index)}"


def _remedy(flags: Tensor) -> str:
    potentials, loss = bool(flags[0]), bool(flags[1])
    if potentials or loss:
        return (
            "Check those examples' inputs for NaN or infinite values; a learning rate far too "
            "large also makes the network's outputs overflow."
        )
    return "The gradients overflowed: lower the learning rate or clip the gradients."


def _warn(flags: Tensor, bad_rows: Tensor | None, index: Tensor | None, step: int) -> None:
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(
        f"skipped training step {step}: {_describe(flags, bad_rows, index)}; the weights, the "
        f"optimizer state and these examples' messages were left unchanged. {_remedy(flags)}"
    )

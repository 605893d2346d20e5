"""Every use of Lightning's private internals in structlight, in one place, checked at import.

Exact resume, the sharded training sampler, the atomic checkpoint writes and the ``structlight``
command's ``--ckpt_path`` check need a few things Lightning does not expose publicly. Each is
reached through one small function here, documented with what it reads or writes, so that a
Lightning upgrade that moves one of them breaks here, loudly, and
``tests/test_lightning_compat.py`` (which runs every function against a real
:class:`~lightning.pytorch.Trainer` or ``LightningCLI``) names the one that changed.

At import the installed Lightning version must be at least :data:`MIN_VERSION` (else
:class:`LightningCompatError`) and the private classes and class attributes used here must exist
(else :class:`LightningCompatError` naming them); a version newer than :data:`TESTED_UP_TO` gives
a warning. Instance attributes are checked when used: a missing one raises
:class:`LightningCompatError` instead of silently doing nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import lightning
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

__all__ = [
    "MIN_VERSION",
    "TESTED_UP_TO",
    "DataLoaderSource",
    "LightningCompatError",
    "attached_trainer",
    "check_before_ckpt_hparams",
    "clear_fit_restarting",
    "epoch_position",
    "epochs_completed",
    "is_last_batch",
    "mark_checkpoint_saved",
    "restart_train_iterator",
    "set_train_data_source",
    "train_combined_loader",
    "train_data_source",
    "unready_next_epoch",
    "update_dataloader",
    "uses_distributed_sampler",
]

#: The oldest Lightning release these internals are known to match.
MIN_VERSION = (2, 2)
#: The newest Lightning release (major, minor) the test suite has run against.
TESTED_UP_TO = (2, 6)


class LightningCompatError(RuntimeError):
    """The installed Lightning lacks an internal structlight relies on (or is too old)."""


def _version(text: str) -> tuple[int, int]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def _fail(what: str, err: BaseException | None = None) -> LightningCompatError:
    return LightningCompatError(
        f"structlight needs Lightning's {what}, which lightning {lightning.__version__} does not "
        f"have (structlight is tested with lightning >= {'.'.join(map(str, MIN_VERSION))}, "
        f"<= {'.'.join(map(str, TESTED_UP_TO))}.x). Install a tested version, e.g. "
        f"pip install 'lightning>={'.'.join(map(str, MIN_VERSION))},"
        f"<{TESTED_UP_TO[0]}.{TESTED_UP_TO[1] + 1}'"
        + (f" ({type(err).__name__}: {err})" if err is not None else "")
    )


VERSION = _version(lightning.__version__)
if VERSION < MIN_VERSION:
    raise _fail(f"version >= {'.'.join(map(str, MIN_VERSION))}")
if VERSION > TESTED_UP_TO:
    warnings.warn(
        f"lightning {lightning.__version__} is newer than the versions structlight is tested "
        f"with (up to {'.'.join(map(str, TESTED_UP_TO))}.x); exact resume and data-parallel "
        "training use Lightning internals (structlight._lightning): run "
        "tests/test_lightning_compat.py to check them",
        stacklevel=2,
    )

try:  # private classes and functions used here
    from lightning.pytorch.trainer.connectors.data_connector import (
        _DataLoaderSource as DataLoaderSource,
    )
    from lightning.pytorch.utilities.data import _update_dataloader
except ImportError as _err:  # pragma: no cover - depends on the installed version
    raise _fail("_DataLoaderSource and _update_dataloader", _err) from None

if not callable(getattr(ModelCheckpoint, "_save_checkpoint", None)):
    raise _fail("ModelCheckpoint._save_checkpoint (the method that writes a checkpoint file)")
if not hasattr(DataLoaderSource, "dataloader"):
    raise _fail("_DataLoaderSource.dataloader")
if not callable(getattr(LightningCLI, "_parse_ckpt_path", None)):
    raise _fail("LightningCLI._parse_ckpt_path (the method that reads --ckpt_path's arguments)")


def _get(obj: Any, name: str, where: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _fail(f"{where}.{name}") from None


def _require(obj: Any, name: str, where: str) -> None:
    if not hasattr(obj, name):
        raise _fail(f"{where}.{name}")


# ---------------------------------------------------------------------------- module
def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer a module is attached to, or None (``LightningModule.trainer`` raises then).

    Reads ``module._trainer``.
    """
    return _get(module, "_trainer", "LightningModule")


# ---------------------------------------------------------------------------- fit loop
def train_data_source(trainer: pl.Trainer) -> DataLoaderSource:
    """The fit loop's training data source (what it calls to make the training loaders).

    Reads ``trainer.fit_loop._data_source``.
    """
    return _get(trainer.fit_loop, "_data_source", "fit_loop")


def set_train_data_source(trainer: pl.Trainer, source: DataLoaderSource) -> None:
    """Replace the fit loop's training data source; loaders are made from it from then on.

    Writes ``trainer.fit_loop._data_source``.
    """
    _require(trainer.fit_loop, "_data_source", "fit_loop")
    trainer.fit_loop._data_source = source


def train_combined_loader(trainer: pl.Trainer) -> Any:
    """The fit loop's current training loader (a ``CombinedLoader``), None before it exists.

    Reads ``trainer.fit_loop._combined_loader`` (set when training starts, after ``setup``).
    """
    return _get(trainer.fit_loop, "_combined_loader", "fit_loop")


def restart_train_iterator(trainer: pl.Trainer) -> bool:
    """Make the fit loop's data iterator again, from its loader's current state.

    Calls ``iter(trainer.fit_loop._data_fetcher)``: the fetcher drops its iterator and
    prefetched batches and starts a new pass (the sampler's ``__iter__`` and the workers' seeds
    are drawn again). A no-op before the fetcher exists.

    Returns:
        Whether there was a fetcher to restart.
    """
    fetcher = _get(trainer.fit_loop, "_data_fetcher", "fit_loop")
    if fetcher is None:
        return False
    iter(fetcher)
    return True


def clear_fit_restarting(trainer: pl.Trainer) -> None:
    """Tell the fit loop it is no longer restarting from a checkpoint.

    Writes ``trainer.fit_loop._restarting = False``. While it is True, Lightning skips the
    end-of-epoch scheduler step of the epoch the run resumed in.
    """
    _require(trainer.fit_loop, "_restarting", "fit_loop")
    trainer.fit_loop._restarting = False


def epochs_completed(trainer: pl.Trainer) -> int:
    """Training epochs the fit loop has finished (``set_epoch`` of the next one comes later).

    Reads ``trainer.fit_loop.epoch_progress.current.processed``.
    """
    return int(trainer.fit_loop.epoch_progress.current.processed)


def epoch_position(trainer: pl.Trainer) -> tuple[bool, int]:
    """Whether the fit loop is inside a training epoch, and after how many of its batches.

    Reads ``trainer.fit_loop.epoch_progress.current`` (an epoch is begun, not finished, while
    ``started > processed``, also during its end-of-epoch validation) and
    ``trainer.fit_loop.epoch_loop.batch_progress.current.processed``.

    Returns:
        ``(in_epoch, batches_done)``; ``batches_done`` is 0 between epochs.
    """
    epoch = trainer.fit_loop.epoch_progress.current
    in_epoch = epoch.started > epoch.processed
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if in_epoch else 0
    return bool(in_epoch), int(done)


def is_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the training batch being processed is its epoch's last.

    Reads ``trainer.fit_loop.epoch_loop.batch_progress.is_last_batch``.
    """
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def unready_next_epoch(checkpoint: dict[str, Any]) -> bool:
    """In a checkpoint dict: count the epoch marked "ready" (not yet started) as not begun.

    Lightning increments ``epoch_progress.{total,current}.ready`` just before
    ``on_train_epoch_start``; a checkpoint saved there would resume as if that epoch had run.
    Writes ``checkpoint["loops"]["fit_loop"]["epoch_progress"][part]["ready"]`` (decremented
    where it is one ahead of ``started``).

    Returns:
        Whether a count was changed.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    changed = False
    for part in ("total", "current"):
        counts = progress.get(part)
        if isinstance(counts, dict) and counts.get("ready") == counts.get("started", 0) + 1:
            counts["ready"] -= 1
            changed = True
    return changed


# ---------------------------------------------------------------------------- trainer, data
def uses_distributed_sampler(trainer: pl.Trainer) -> bool:
    """``Trainer(use_distributed_sampler=...)``: whether Lightning replaces training samplers.

    Reads ``trainer._accelerator_connector.use_distributed_sampler``.
    """
    connector = _get(trainer, "_accelerator_connector", "Trainer")
    return bool(_get(connector, "use_distributed_sampler", "Trainer._accelerator_connector"))


def update_dataloader(loader: Any, sampler: Any) -> Any:
    """A training DataLoader re-created around ``sampler``, keeping everything else.

    Calls ``lightning.pytorch.utilities.data._update_dataloader(loader, sampler,
    mode=RunningStage.TRAINING)``, the function Lightning injects its own sampler with.
    """
    from lightning.pytorch.trainer.states import RunningStage

    return _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)


# ---------------------------------------------------------------------------- ModelCheckpoint
def mark_checkpoint_saved(callback: ModelCheckpoint, trainer: pl.Trainer, filepath: str) -> None:
    """Record in a ``ModelCheckpoint`` that it saved ``filepath`` at this step.

    Writes ``callback._last_global_step_saved`` (Lightning's guard against saving twice at one
    step) and ``callback._last_checkpoint_saved``, as ``ModelCheckpoint._save_checkpoint`` does
    (structlight overrides that method to write atomically).
    """
    _require(callback, "_last_global_step_saved", "ModelCheckpoint")
    _require(callback, "_last_checkpoint_saved", "ModelCheckpoint")
    callback._last_global_step_saved = trainer.global_step
    callback._last_checkpoint_saved = filepath


# ---------------------------------------------------------------------------- LightningCLI
CLIClass = TypeVar("CLIClass", bound=type[LightningCLI])


def check_before_ckpt_hparams(
    check: Callable[[LightningCLI], None],
) -> Callable[[CLIClass], CLIClass]:
    """Class decorator: a LightningCLI subclass calls ``check(cli)`` before loading ``--ckpt_path``.

    ``LightningCLI.__init__`` parses the command line and then, before building anything, loads
    the subcommand's ``--ckpt_path`` to read the model's arguments from its hyperparameters;
    ``check`` runs between the two (it sees the parsed ``cli.config``, and an error it raises
    stops the command before the file is loaded).

    Overrides ``LightningCLI._parse_ckpt_path`` (the method that loads the file) in the
    decorated class: ``check(cli)``, then the inherited method.

    Args:
        check: called with the CLI being built.

    Returns:
        The decorator; it returns the class it is given, changed in place.
    """

    def decorate(cli_class: CLIClass) -> CLIClass:
        _require(cli_class, "_parse_ckpt_path", "LightningCLI")

        def _parse_ckpt_path(self: LightningCLI) -> None:
            check(self)
            super(cli_class, self)._parse_ckpt_path()

        cli_class._parse_ckpt_path = _parse_ckpt_path
        return cli_class

    return decorate

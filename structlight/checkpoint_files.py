"""Checkpoint files: checked before a run starts from one, written atomically, ``last.ckpt``.

* :func:`check_checkpoint` turns an unreadable ``--ckpt_path`` into an error naming the file.
* :func:`atomic_save_checkpoint` writes to a temporary file and renames it over the old one, so a
  process killed while saving leaves the previous complete file.
* :class:`ResumableCheckpoint`, a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose
  ``last.ckpt`` is the latest state at every epoch boundary whatever ``monitor`` says (and,
  with ``last_every_n_train_steps=N``, every ``N`` optimizer steps too), every file written
  atomically.

Where Lightning saves: the epoch-boundary ``last.ckpt`` is written when the next epoch starts
(``on_train_epoch_start``) and when training ends (``on_train_end``), i.e. after the epoch's
validation *and* after its epoch-interval scheduler step (``ReduceLROnPlateau`` on a validation
metric steps after ``on_validation_end`` and ``on_train_epoch_end``, where
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` saves). A checkpoint taken at those
earlier points resumes without that step; one taken at the boundary resumes as the
uninterrupted run continues.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from structlight import _lightning

__all__ = [
    "CheckpointFileError",
    "CheckpointNotFoundError",
    "ResumableCheckpoint",
    "atomic_save_checkpoint",
    "check_checkpoint",
]


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path with no file behind it."""


# ---------------------------------------------------------------------- checkpoint files
def check_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a complete checkpoint file before a run starts from it.

    Reads the archive's index and unpickles its metadata (``weights_only``), memory-mapping the
    tensors (cheap for large checkpoints), so a truncated or foreign file fails here with its
    name instead of deep inside :func:`torch.load`.

    Args:
        path: the checkpoint (``--ckpt_path``).

    Returns:
        The path.

    Raises:
        CheckpointNotFoundError: no such file (a :class:`FileNotFoundError`).
        CheckpointFileError: the file is not a complete ``torch.save`` checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        where = "a folder" if p.is_dir() else "missing"
        raise CheckpointNotFoundError(
            f"checkpoint '{p}' is {where}; expected a checkpoint file written by a structlight "
            "or Lightning run, e.g. <run dir>/checkpoints/last.ckpt"
        )
    import zipfile

    remedy = (
        "It may have been cut short (a crash or a full disk while it was copied or written) or "
        "not be a checkpoint at all. Resume from another checkpoint of the run (its "
        "checkpoints/last.ckpt is replaced only by complete files), or start without --ckpt_path"
    )
    size = p.stat().st_size
    if not zipfile.is_zipfile(p):
        raise CheckpointFileError(
            f"checkpoint '{p}' ({size} bytes) is not a readable checkpoint: expected a "
            f"torch.save archive (zip), found something else. {remedy}"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            return p  # complete, with objects beyond tensors and containers: Lightning decides
        raise CheckpointFileError(
            f"checkpoint '{p}' ({size} bytes) cannot be read (UnpicklingError: "
            f"{str(err)[:200]}). {remedy}"
        ) from None
    except Exception as err:  # zip damaged inside, missing records
        raise CheckpointFileError(
            f"checkpoint '{p}' ({size} bytes) cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]}). {remedy}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointFileError(
            f"checkpoint '{p}' is not a Lightning checkpoint: expected a dict with a "
            f"'state_dict' entry, found {found}"
        )
    return p


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # directories cannot be fsynced on every platform
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Put a complete temporary file in place of ``final`` (atomic on one filesystem)."""
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(final.parent)


def _partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def atomic_save_checkpoint(
    trainer: pl.Trainer, filepath: str | os.PathLike[str], weights_only: bool = False
) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then a rename over ``filepath``.

    Called on every process (as ``trainer.save_checkpoint``); rank 0 writes. A process killed
    while saving leaves the previous ``filepath`` whole (and a ``.<name>.partial`` file, which
    the next save replaces).

    Args:
        trainer: the trainer.
        filepath: the checkpoint's final path.
        weights_only: save only the weights (as ``trainer.save_checkpoint``).
    """
    final = Path(filepath)
    tmp = _partial_path(final)
    trainer.save_checkpoint(tmp, weights_only)
    if trainer.is_global_zero:
        _publish(tmp, final)
    trainer.strategy.barrier("structlight.atomic_save_checkpoint")


class ResumableCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` with an always-fresh ``last.ckpt`` and atomic writes.

    The best-k checkpoints (``monitor``, ``save_top_k``, ``filename``, ...) work as in Lightning.
    ``last.ckpt`` is written by this class alone, whatever the monitor says: at every epoch
    boundary (after the epoch's validation and scheduler step, see the module docs) and, with
    ``last_every_n_train_steps=N``, after every ``N``-th optimizer step (a mid-epoch state,
    resumed exactly with :class:`ResumeState`). No checkpoint is written under
    ``fast_dev_run``. Arguments as :class:`ModelCheckpoint`'s, plus:

    Args:
        last_every_n_train_steps: also write ``last.ckpt`` every this many optimizer steps
            (0: at epoch boundaries only).

    Raises:
        ValueError: ``save_last="link"`` (``last.ckpt`` is always a full file here) or a
            negative ``last_every_n_train_steps``.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = True,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: Any = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        last_every_n_train_steps: int = 0,
    ) -> None:
        if save_last not in (None, True, False):
            raise ValueError(
                f"save_last must be true or false here (last.ckpt is always a full file), got "
                f"{save_last!r}"
            )
        if isinstance(last_every_n_train_steps, bool) or last_every_n_train_steps < 0:
            raise ValueError(
                f"last_every_n_train_steps must be an int >= 0 (0: epoch ends only), got "
                f"{last_every_n_train_steps!r}"
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            verbose=verbose,
            save_last=False,  # Lightning's own last.ckpt logic stays off: see _write_last
            save_top_k=save_top_k,
            save_on_exception=save_on_exception,
            save_weights_only=save_weights_only,
            mode=mode,
            auto_insert_metric_name=auto_insert_metric_name,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=save_on_train_epoch_end,
            enable_version_counter=enable_version_counter,
        )
        self.write_last = bool(save_last)
        self.last_every_n_train_steps = int(last_every_n_train_steps)
        self._fit_start_step = 0
        self._last_written_step = -1
        self._at_epoch_start = False

    @property
    def last_path(self) -> Path | None:
        """``<dirpath>/last.ckpt`` (None before ``setup``)."""
        if self.dirpath is None:
            return None
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    # -- writing -------------------------------------------------------------------------
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        atomic_save_checkpoint(trainer, filepath, self.save_weights_only)
        _lightning.mark_checkpoint_saved(self, trainer, filepath)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _skip(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (
            not self.write_last
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self.last_path is None
        )

    def _write_last(self, trainer: pl.Trainer) -> None:
        path = self.last_path
        assert path is not None
        self.last_model_path = str(path)  # part of the saved state, as in Lightning
        atomic_save_checkpoint(trainer, path, self.save_weights_only)
        self._last_written_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    # -- hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the step the run (or resumed run) starts from: nothing new to save there."""
        super().on_train_start(trainer, pl_module)
        self._fit_start_step = trainer.global_step
        self._last_written_step = trainer.global_step

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``last.ckpt``: the state at the boundary of the epoch that just ended."""
        if self._skip(trainer) or trainer.global_step == self._last_written_step:
            return
        self._at_epoch_start = True
        try:
            self._write_last(trainer)
        finally:
            self._at_epoch_start = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """At an epoch start, record the loop as between epochs (the next not yet begun).

        Lightning counts the new epoch as "ready" just before ``on_train_epoch_start``; resumed
        from that count it would take the epoch for begun and finished at once (its batch
        counters still hold the previous epoch's) and skip it. Without it, the checkpoint is the
        state after the previous epoch's end, which Lightning resumes by starting the next epoch.
        """
        if self._at_epoch_start:
            _lightning.unready_next_epoch(checkpoint)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Best-k saves as Lightning; ``last.ckpt`` every ``last_every_n_train_steps`` steps."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        step = trainer.global_step
        if n < 1 or self._skip(trainer) or step % n or step == self._last_written_step:
            return
        if _lightning.is_last_batch(trainer):
            return  # the epoch-boundary save follows
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches):
            return  # between the batches of one accumulated step
        self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``last.ckpt`` for the last epoch boundary (no next epoch start follows)."""
        if self._skip(trainer) or trainer.global_step == self._last_written_step:
            return
        self._write_last(trainer)

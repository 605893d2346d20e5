"""Checkpoints that resume exactly, written atomically, and run directories that are never shared.

Three pieces, which the ``structlight`` command installs by default (``docs/reliability.md``):

* :class:`ResumableCheckpoint`, a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose
  ``last.ckpt`` is the latest state at every epoch boundary whatever ``monitor`` says (and,
  with ``last_every_n_train_steps=N``, every ``N`` optimizer steps too). Every file it writes
  (``last.ckpt`` and the best-k ones) is written to a temporary file first and then renamed over
  the old one, so a process killed while saving leaves the previous complete file.
* :class:`ResumeState`, a callback that puts into every checkpoint what the weights and the
  optimizer do not hold: the random number generators of every process (torch, CUDA, NumPy,
  :mod:`random`) and how far into its epoch the run was. On resume it restores them at the
  point where the uninterrupted run took them, and skips the examples an interrupted epoch had
  already trained on (samplers with ``fast_forward``, as
  :class:`structlight.sampling.EpochShuffleSampler`).
* :func:`claim_run_dir`: a ``fit`` run claims its run directory (an ``O_CREAT | O_EXCL``
  marker file) before writing anything, and refuses a directory that holds another run's files.
  :func:`check_checkpoint` turns an unreadable ``--ckpt_path`` into an error naming the file.

The checkpoint files (:func:`check_checkpoint`, :func:`atomic_save_checkpoint`,
:class:`ResumableCheckpoint`) live in :mod:`structlight.checkpoint_files`, :class:`ResumeState`
in :mod:`structlight.resume`; the run directories here. Every name is importable from this
module.

Where the epoch-boundary ``last.ckpt`` is written, and why there: :mod:`structlight.checkpoint_files`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import lightning.pytorch as pl

from structlight.checkpoint_files import (
    CheckpointFileError,
    CheckpointNotFoundError,
    ResumableCheckpoint,
    atomic_save_checkpoint,
    check_checkpoint,
)
from structlight.resume import ResumeState

__all__ = [
    "RUN_MARKER",
    "CheckpointFileError",
    "CheckpointNotFoundError",
    "ResumableCheckpoint",
    "ResumeState",
    "RunDirectoryError",
    "atomic_save_checkpoint",
    "check_checkpoint",
    "claim_run_dir",
    "is_launching_process",
    "run_artifacts",
]

#: The marker file a ``fit`` run creates in its run directory (its claim on it).
RUN_MARKER = ".structlight-run"
#: Files and folders of a run directory that belong to the run (``--overwrite`` removes them).
_RUN_FILES = ("config.yaml", "hparams.yaml", "metrics.csv")
_RUN_GLOBS = ("events.out.tfevents.*",)
#: Environment variables that carry a process's rank under Lightning's launchers, torchrun,
#: SLURM and LSF; a process where one of them is set and non-zero is not the launching one.
_RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


class RunDirectoryError(FileExistsError):
    """A run directory that holds (or was just claimed by) another run."""


# ---------------------------------------------------------------------- run directories
def is_launching_process() -> bool:
    """Whether this process is the one the user started (global rank 0), not a DDP child.

    Lightning's DDP launcher starts the other processes with ``LOCAL_RANK`` (and ``NODE_RANK``)
    set; ``torchrun``, SLURM and LSF set ``RANK``, ``SLURM_PROCID``, ``JSM_NAMESPACE_RANK``. A
    process in which one of them is set to a non-zero value is not the launching process.
    """
    for var in _RANK_ENV:
        value = os.environ.get(var, "").strip()
        if value and value.lstrip("-").isdigit() and int(value) != 0:
            return False
    return True


def run_artifacts(run_dir: str | os.PathLike[str]) -> list[str]:
    """The files of a run in ``run_dir`` (relative names): marker, config, logs, checkpoints.

    Args:
        run_dir: a run directory (need not exist).

    Returns:
        Sorted names, e.g. ``["checkpoints/last.ckpt", "config.yaml"]``; ``[]`` when none.
    """
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [n for n in (RUN_MARKER, *_RUN_FILES) if (d / n).exists()]
    for pattern in _RUN_GLOBS:
        found += [p.name for p in d.glob(pattern)]
    ckpts = d / "checkpoints"
    if ckpts.is_dir():
        found += [f"checkpoints/{p.name}" for p in ckpts.iterdir() if p.name.endswith(".ckpt")]
    return sorted(found)


def _remove_run(run_dir: Path) -> None:
    """Delete a previous run's files from ``run_dir`` (only those :func:`run_artifacts` lists)."""
    for name in run_artifacts(run_dir):
        path = run_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        for p in ckpts.glob(".*.partial"):
            p.unlink()
        if not any(ckpts.iterdir()):
            ckpts.rmdir()


def _inside(path: str | os.PathLike[str], folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _marker_text() -> str:
    import sys

    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv,
        },
        indent=1,
    )


def _marker_owner(marker: Path) -> str:
    try:
        info = json.loads(marker.read_text())
        return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
    except (OSError, ValueError):
        return "an unknown process"


def _refusal(run_dir: Path, found: list[str]) -> RunDirectoryError:
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    last = run_dir / "checkpoints" / "last.ckpt"
    return RunDirectoryError(
        f"run directory '{run_dir}' already holds another run ({shown}); a run never writes "
        "into another run's directory. Either resume that run: --ckpt_path "
        f"{last}; or replace it: --overwrite true (deletes its checkpoints, config and logs); "
        "or give this run its own directory: --trainer.logger.init_args.version <new name> "
        "(or another logger name or save_dir)"
    )


def claim_run_dir(
    trainer: pl.Trainer,
    ckpt_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path | None:
    """Claim the run directory of a ``fit`` run before anything is written into it.

    The directory is ``trainer.log_dir`` (``<save_dir>/<name>/<version>`` for TensorBoard). It is
    claimed by creating ``RUN_MARKER`` in it with ``O_CREAT | O_EXCL``, so of two runs started at
    once only one can. Nothing is claimed (None is returned) in a DDP child process (only the
    launching process checks), under ``fast_dev_run`` (which writes no checkpoints) and without a
    logger (checkpoints then go to ``<default_root_dir>/checkpoints``, unprotected).

    Args:
        trainer: the trainer about to ``fit``.
        ckpt_path: the checkpoint the run resumes from; one inside the run directory resumes
            that run in place (allowed; the marker is renewed).
        overwrite: delete the previous run's files (:func:`run_artifacts`) and claim the
            directory.

    Returns:
        The claimed directory, or None when nothing was claimed.

    Raises:
        RunDirectoryError: the directory holds another run's files, or another run claimed it
            first; the message names the directory and the ways out.
    """
    if not is_launching_process() or trainer.fast_dev_run or not trainer.loggers:
        return None
    log_dir = trainer.log_dir
    if log_dir is None:
        return None
    run_dir = Path(log_dir)
    marker = run_dir / RUN_MARKER
    if ckpt_path is not None and _inside(ckpt_path, run_dir) and not overwrite:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f"{RUN_MARKER}.{os.getpid()}"
        tmp.write_text(_marker_text())
        os.replace(tmp, marker)  # resuming the run in place: it is ours again
        return run_dir
    if overwrite:
        _remove_run(run_dir)
    else:
        found = run_artifacts(run_dir)
        if found:
            raise _refusal(run_dir, found)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise RunDirectoryError(
            f"run directory '{run_dir}' was claimed by another run started at the same time "
            f"({_marker_owner(marker)}); give this run its own directory "
            "(--trainer.logger.init_args.version <new name>) or wait for that run and resume "
            f"it with --ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'}"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(_marker_text())
    return run_dir

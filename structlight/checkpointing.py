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

Where Lightning saves: the epoch-boundary ``last.ckpt`` is written when the next epoch starts
(``on_train_epoch_start``) and when training ends (``on_train_end``), i.e. after the epoch's
validation *and* after its epoch-interval scheduler step (``ReduceLROnPlateau`` on a validation
metric steps after ``on_validation_end`` and ``on_train_epoch_end``, where
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` saves). A checkpoint taken at those
earlier points resumes without that step; one taken at the boundary resumes as the
uninterrupted run continues.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

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
#: Lightning's warning on a mid-epoch resume; not true once the sampler skipped ahead.
_LIGHTNING_MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path with no file behind it."""


class RunDirectoryError(FileExistsError):
    """A run directory that holds (or was just claimed by) another run."""


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
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
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
        if not self._at_epoch_start:
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
        for part in ("total", "current"):
            counts = progress.get(part)
            if isinstance(counts, dict) and counts.get("ready") == counts.get("started", 0) + 1:
                counts["ready"] -= 1

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
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-boundary save follows
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches):
            return  # between the batches of one accumulated step
        self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``last.ckpt`` for the last epoch boundary (no next epoch start follows)."""
        if self._skip(trainer) or trainer.global_step == self._last_written_step:
            return
        self._write_last(trainer)


# ---------------------------------------------------------------------- random state, position
def _rng_state() -> dict[str, Any]:
    """This process's random number generator states, in types ``weights_only`` loading reads."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            rank_zero_warn(
                f"the checkpoint holds the CUDA random states of {len(cuda)} devices, this "
                f"machine has {torch.cuda.device_count()}: CUDA random numbers (dropout on the "
                "GPU) are not restored, so the resumed run differs from an uninterrupted one"
            )


def _sampler_of(loader: Any) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if inner is not None else getattr(loader, "sampler", None)


def _batch_size_of(loader: Any) -> int | None:
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) and size > 0 else None


class ResumeState(Callback):
    """Save and restore what an exact resume needs beyond weights, optimizer and scheduler.

    Saved in every checkpoint (``checkpoint["callbacks"]["ResumeState"]``): the random number
    generator states of every process (torch CPU, CUDA when in use, NumPy, :mod:`random`;
    gathered to rank 0 under data parallelism) and whether the checkpoint was taken inside an
    epoch, after how many of its batches.

    On resume, at the point of the run where they were saved:

    * epoch-boundary checkpoint (``last.ckpt`` of :class:`ResumableCheckpoint`): at the start of
      the first epoch, the generators are restored and the epoch's data iterator is made again
      (it draws its worker seed from the restored generator, as the uninterrupted run did);
    * mid-epoch checkpoint: when training starts, the training sampler skips the examples the
      epoch had already trained on (``fast_forward``, which
      :class:`structlight.sampling.EpochShuffleSampler` and
      :class:`structlight.distributed.ShardedSampler` have), the data iterator is made again,
      then the generators are restored. A sampler without ``fast_forward`` cannot skip: a
      warning says what will differ.

    A checkpoint written by a run over another number of processes restores the generators of
    the ranks both runs have, with a warning.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None
        self._finish_epoch_normally = False

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Keep the trainer (the saved position comes from its loops)."""
        self._trainer = trainer

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Forget a loaded state that this run did not use (e.g. ``validate`` from a checkpoint)."""
        self._pending = None
        self._finish_epoch_normally = False

    # -- saving --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generators of every process and the position in the epoch.

        Under data parallelism this gathers every rank's generators: a collective, called on
        every rank as saving a checkpoint is (``trainer.save_checkpoint`` on all ranks).
        """
        trainer = self._trainer
        local = _rng_state()
        world = int(trainer.world_size) if trainer is not None else 1
        if world > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, local)
        else:
            states = [local]
        out: dict[str, Any] = {"version": 1, "rng": states, "mid_epoch": False}
        if trainer is None:
            return out
        epoch = trainer.fit_loop.epoch_progress.current
        in_epoch = epoch.started > epoch.processed  # also during the epoch-end validation
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if in_epoch else 0
        out.update(
            epoch=int(trainer.current_epoch),
            mid_epoch=bool(in_epoch),
            batches_done=int(done),
            num_batches=float(trainer.num_training_batches),
            world_size=world,
        )
        return out

    # -- resuming ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved state; it is applied when training (re)starts."""
        self._pending = dict(state_dict)

    def _restore_rng(self, trainer: pl.Trainer, state: dict[str, Any]) -> None:
        states = state.get("rng") or []
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        if len(states) != world:
            rank_zero_warn(
                f"the checkpoint was written by a run over {len(states)} process(es), this run "
                f"has {world}: random number generators are restored for the ranks both have, "
                "so the resumed run is not bit-identical to an uninterrupted one"
            )
        if rank < len(states):
            _set_rng_state(states[rank])

    def _restart_iterator(self, trainer: pl.Trainer) -> None:
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)  # a new iterator over the (fast-forwarded) loader, prefetching again

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Mid-epoch checkpoint: skip the epoch's trained examples, then restore the generators."""
        state = self._pending
        if not state or not state.get("mid_epoch"):
            return
        self._pending = None
        done = int(state.get("batches_done", 0))
        loader = getattr(trainer.fit_loop, "_combined_loader", None)
        loaders = list(loader.flattened) if loader is not None else []
        unable = []
        epoch = int(trainer.fit_loop.epoch_progress.current.processed)  # set_epoch comes later
        for dl in loaders:
            sampler, size = _sampler_of(dl), _batch_size_of(dl)
            if hasattr(sampler, "fast_forward") and size is not None:
                sampler.fast_forward(epoch, done * size)
            else:
                unable.append(type(sampler).__name__)
        num = state.get("num_batches")
        if unable or not loaders:
            total = f" of {int(num)}" if isinstance(num, float) and num != float("inf") else ""
            rank_zero_warn(
                f"resuming from a checkpoint written in the middle of epoch {trainer.current_epoch} "
                f"(after {done}{total} batches), but the training loader's sampler "
                f"({', '.join(unable) or 'none'}) cannot skip the examples already trained on. "
                "The rest of this epoch is drawn from the start of the epoch's order again: some "
                "examples are trained on twice this epoch and others not at all, and the run will "
                "differ from an uninterrupted one. For an exact resume, resume from an epoch-end "
                "checkpoint (last.ckpt without last_every_n_train_steps), or give the training "
                "DataLoader structlight.sampling.EpochShuffleSampler (or a sampler with "
                "fast_forward(epoch, num_examples))",
                category=PossibleUserWarning,
            )
        else:
            warnings.filterwarnings(
                "ignore", message=_LIGHTNING_MID_EPOCH_WARNING, category=PossibleUserWarning
            )
            self._restart_iterator(trainer)
        self._restore_rng(trainer, state)
        self._finish_epoch_normally = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """End the epoch resumed in its middle as the uninterrupted run did.

        Lightning treats the whole epoch in which a run was restarted as "restarting" and so
        skips that epoch's end-of-epoch scheduler step (written for checkpoints taken after the
        epoch's validation, where it cannot be redone). A mid-epoch checkpoint precedes the
        step, and the epoch's validation has just run: the step is due, as without the
        interruption.
        """
        if self._finish_epoch_normally:
            self._finish_epoch_normally = False
            trainer.fit_loop._restarting = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch-boundary checkpoint: restore the generators, then remake the data iterator."""
        state = self._pending
        if not state:
            return
        self._pending = None
        self._restore_rng(trainer, state)
        self._restart_iterator(trainer)


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

"""Exact resume: what a checkpoint needs beyond weights, optimizer and scheduler.

:class:`ResumeState` puts into every checkpoint the random number generators of every process
(torch, CUDA, NumPy, :mod:`random`) and how far into its epoch the run was. On resume it restores
them at the point where the uninterrupted run took them, and skips the examples an interrupted
epoch had already trained on (samplers with ``fast_forward``, as
:class:`structlight.sampling.EpochShuffleSampler`).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from structlight import _lightning

__all__ = ["ResumeState"]

#: Lightning's warning on a mid-epoch resume; not true once the sampler skipped ahead.
_LIGHTNING_MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


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
        in_epoch, done = _lightning.epoch_position(trainer)  # also in the epoch-end validation
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
        # a new iterator over the (fast-forwarded) loader, prefetching again
        _lightning.restart_train_iterator(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Mid-epoch checkpoint: skip the epoch's trained examples, then restore the generators."""
        state = self._pending
        if not state or not state.get("mid_epoch"):
            return
        self._pending = None
        done = int(state.get("batches_done", 0))
        loader = _lightning.train_combined_loader(trainer)
        loaders = list(loader.flattened) if loader is not None else []
        unable = []
        epoch = _lightning.epochs_completed(trainer)  # set_epoch comes later
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
            _lightning.clear_fit_restarting(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch-boundary checkpoint: restore the generators, then remake the data iterator."""
        state = self._pending
        if not state:
            return
        self._pending = None
        self._restore_rng(trainer, state)
        self._restart_iterator(trainer)

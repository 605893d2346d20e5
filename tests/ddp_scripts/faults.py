"""Training runs killed with SIGKILL, and their resumes, for ``tests/test_faults.py``.

Usage::

    python tests/ddp_scripts/faults.py kill --dir D --at {mid_epoch,epoch_start,save}
    python tests/ddp_scripts/faults.py resume --ref OUT.pt D [D ...]

``kill``: 3 epochs of the synthetic task (shuffled, dropout, a plateau schedule on a validation
metric; 5 steps an epoch), checkpoints in ``D`` (``last.ckpt`` at every epoch boundary and every
3 steps), killed with SIGKILL by the process itself: ``mid_epoch`` after step 8, ``epoch_start``
when epoch 2's first batch starts (just after the epoch-boundary save at step 10), ``save``
while the third ``last.ckpt`` (step 6) is being saved, between writing the temporary file and
renaming it. ``resume``: the uninterrupted run (its final state to ``OUT.pt``), then each ``D``
resumed from ``D/last.ckpt`` to 3 epochs (its final state to ``D/resumed.pt``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import structlight.checkpoint_files as checkpoint_files
from structlight.checkpointing import ResumableCheckpoint, ResumeState
from structlight.testing import SyntheticChainDataModule
from tests.helpers.synthetic import make_model, quiet_trainer, training_state

EVERY = 3


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Kill(pl.Callback):
    """SIGKILL this process at a training step (``hook`` is where)."""

    def __init__(self, hook: str, step: int) -> None:
        self.hook, self.step = hook, step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.hook == "batch_start" and trainer.global_step == self.step:
            _die()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.hook == "batch_end" and trainer.global_step == self.step:
            _die()


def kill_during_save(nth: int) -> None:
    """SIGKILL in the ``nth`` save of ``last.ckpt``: written to its temporary file, not yet
    renamed over the previous one."""
    publish = checkpoint_files._publish
    calls = [0]

    def dying(tmp: Path, final: Path) -> None:
        calls[0] += final.name == "last.ckpt"
        if calls[0] == nth and final.name == "last.ckpt":
            assert tmp.is_file() and tmp.stat().st_size > 0
            _die()
        publish(tmp, final)

    checkpoint_files._publish = dying


def fit(ckpt_dir: Path, extra: list[pl.Callback], ckpt_path: Path | None = None) -> dict:
    dm = SyntheticChainDataModule(num_train=20, num_val=10, num_test=1, batch_size=4, seed=0)
    model = make_model(dm, 0.2, seed=0 if ckpt_path is None else 3, dropout=0.3, plateau="min")
    callbacks: list[pl.Callback] = [
        ResumeState(),
        ResumableCheckpoint(
            dirpath=ckpt_dir, monitor="val/word_acc", mode="max", last_every_n_train_steps=EVERY
        ),
        *extra,
    ]
    trainer = quiet_trainer(
        max_epochs=3, callbacks=callbacks, enable_checkpointing=True, deterministic=False
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return training_state(trainer, model)


def main() -> None:
    torch.set_num_threads(1)  # the same arithmetic in every process of the test
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    kill = sub.add_parser("kill")
    kill.add_argument("--dir", type=Path, required=True)
    kill.add_argument("--at", choices=["mid_epoch", "epoch_start", "save"], required=True)
    resume = sub.add_parser("resume")
    resume.add_argument("--ref", type=Path, required=True)
    resume.add_argument("dirs", type=Path, nargs="+")
    args = parser.parse_args()
    if args.cmd == "kill":
        extra: list[pl.Callback] = []
        if args.at == "mid_epoch":
            extra.append(Kill("batch_end", 8))
        elif args.at == "epoch_start":
            extra.append(Kill("batch_start", 10))
        else:
            kill_during_save(3)
        fit(args.dir, extra)
        raise SystemExit(f"the run was to be killed ({args.at}) but finished")
    torch.save(fit(args.ref.parent / "ref_ckpt", []), args.ref)
    for d in args.dirs:
        torch.save(fit(d, [], ckpt_path=d / "last.ckpt"), d / "resumed.pt")


if __name__ == "__main__":
    main()

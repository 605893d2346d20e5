"""Exact resumes under DDP (gloo) for ``tests/test_checkpointing.py``: one launch, four fits.

Usage::

    python tests/ddp_scripts/resume.py --out DIR [--devices 2]

``full``: 3 epochs of the synthetic task (shuffled, dropout, a plateau schedule), copying
``last.ckpt`` at step 4 (it then holds the epoch boundary at step 3) to ``DIR/epoch_end.ckpt``.
``full_every``: the same with ``last_every_n_train_steps=2``, copying at step 5 (``last.ckpt``
then holds step 4, one batch into epoch 1) to ``DIR/mid.ckpt``. ``resume_epoch_end`` and
``resume_mid``: the copies resumed to 3 epochs. Rank 0 writes ``DIR/<name>.pt`` with the final
training state and every rank's visited examples per epoch. Lightning re-runs this script once
per extra process (its DDP launcher).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from structlight.checkpointing import ResumableCheckpoint, ResumeState
from tests.helpers.synthetic import (
    Recorder,
    Snapshot,
    all_ranks,
    make_data,
    make_model,
    make_trainer,
    training_state,
)


def run(
    name: str,
    out: Path,
    devices: int,
    every: int = 0,
    snapshot: tuple[int, str] | None = None,
    ckpt_in: str | None = None,
) -> None:
    dm = make_data(24, 4, num_val=8)  # 12 examples per rank: 3 steps an epoch
    model = make_model(dm, 0.2, seed=0 if ckpt_in is None else 5, dropout=0.3, plateau="min")
    ckpt_dir = out / f"{name}_ckpt"
    rec = Recorder()
    callbacks: list[pl.Callback] = [
        rec,
        ResumeState(),
        ResumableCheckpoint(
            dirpath=ckpt_dir, monitor="val/word_acc", mode="max", last_every_n_train_steps=every
        ),
    ]
    if snapshot is not None:
        callbacks.append(Snapshot(ckpt_dir, snapshot[0], out / snapshot[1]))
    trainer = make_trainer(
        3, devices, val=True, callbacks=callbacks, enable_checkpointing=True, deterministic=False
    )
    trainer.fit(model, dm, ckpt_path=ckpt_in)
    state = training_state(trainer, model)  # rank 0's store is whole after fit
    visits = all_ranks(rec.visits)
    if trainer.global_rank == 0:
        torch.save(
            {"state": state, "visits": visits, "world_size": trainer.world_size},
            out / f"{name}.pt",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    out, dev = args.out, args.devices
    run("full", out, dev, snapshot=(4, "epoch_end.ckpt"))
    run("full_every", out, dev, every=2, snapshot=(5, "mid.ckpt"))
    run("resume_epoch_end", out, dev, ckpt_in=str(out / "epoch_end.ckpt"))
    run("resume_mid", out, dev, every=2, ckpt_in=str(out / "mid.ckpt"))


if __name__ == "__main__":
    main()

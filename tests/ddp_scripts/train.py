"""DDP runs of blended learning for ``tests/test_distributed.py`` (one launch, several fits).

Usage::

    python tests/ddp_scripts/train.py --out DIR [--devices 2] --phase first
    python tests/ddp_scripts/train.py --out DIR [--devices 2] --phase resume [--single-ckpt F]

``first``: ``lr0_even`` (lr 0, 3 epochs, 24 examples), ``lr0_odd`` (the same with 25 examples
and a ``"pinned"`` store), ``train`` (lr 0.2, 3 epochs, with validation) and ``stop`` (the
``train`` run stopped after one epoch, checkpoint ``DIR/stop.ckpt`` written during ``fit`` by
``ModelCheckpoint`` and ``DIR/stop.after_fit.ckpt`` by ``trainer.save_checkpoint`` after it). ``resume``: ``resume``
(``stop.ckpt`` resumed to 3 epochs) and, with ``--single-ckpt``, ``reshard`` (a single-process
checkpoint of the same run resumed to 3 epochs here). Rank 0 writes ``DIR/<job>.pt``: weights,
the full message store, per-rank visited indices and peak store bytes, epoch losses, metrics.
Lightning re-runs this script once per extra process (its DDP launcher).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.helpers.synthetic import (
    Recorder,
    all_ranks,
    make_data,
    make_model,
    make_trainer,
    parameters,
    scalar_metrics,
)

#: The ``train`` configuration (also used by the tests' single-process twin).
TRAIN = dict(num_train=48, batch_size=6, num_val=24, lr=0.2, epochs=3)


def run(
    name: str,
    out: Path,
    devices: int,
    num_train: int,
    batch_size: int,
    lr: float,
    epochs: int,
    num_val: int = 0,
    seed: int = 0,
    store_location: str = "device",
    ckpt_in: str | None = None,
    ckpt_out: str | None = None,
) -> None:
    dm = make_data(num_train, batch_size, num_val)
    model = make_model(dm, lr, seed=seed, store_location=store_location)
    rec = Recorder()
    callbacks: list[pl.Callback] = [rec]
    if ckpt_out is not None:  # written during fit, from every rank's shard
        path = Path(ckpt_out)
        callbacks.append(ModelCheckpoint(dirpath=path.parent, filename=path.stem))
    trainer = make_trainer(
        epochs, devices, val=num_val > 0, callbacks=callbacks, enable_checkpointing=bool(ckpt_out)
    )
    trainer.fit(model, dm, ckpt_path=ckpt_in)
    if ckpt_out is not None:  # after fit: rank 0's store is whole again
        trainer.save_checkpoint(str(Path(ckpt_out).with_suffix(".after_fit.ckpt")))
    store = model.head.store
    visits = all_ranks(rec.visits)
    peaks = all_ranks(rec.peak_bytes)
    sharded = all_ranks([store.is_sharded, store.num_local])
    sampler = trainer.train_dataloader.sampler
    samplers = all_ranks(type(sampler).__name__)
    if trainer.global_rank == 0:
        torch.save(
            {
                "params": parameters(model),
                "messages": store.messages.detach().cpu().clone(),  # whole after fit
                "sharded_after_fit": sharded,
                "visits": visits,
                "peak_bytes": peaks,
                "world_size": trainer.world_size,
                "samplers": samplers,
                "epoch_loss": rec.epoch_loss,
                "metrics": scalar_metrics(trainer),
                "location": store.location,
            },
            out / f"{name}.pt",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--phase", choices=["first", "resume"], required=True)
    parser.add_argument("--single-ckpt", default=None)
    args = parser.parse_args()
    out, dev = args.out, args.devices
    train = dict(TRAIN)
    epochs = train.pop("epochs")
    if args.phase == "first":
        run("lr0_even", out, dev, num_train=24, batch_size=4, lr=0.0, epochs=3)
        run("lr0_odd", out, dev, 25, 4, 0.0, 3, store_location="pinned")
        run("train", out, dev, epochs=epochs, **train)
        run("stop", out, dev, epochs=1, ckpt_out=str(out / "stop.ckpt"), **train)
    else:
        run("resume", out, dev, epochs=epochs, seed=99, ckpt_in=str(out / "stop.ckpt"), **train)
        if args.single_ckpt:
            run("reshard", out, dev, epochs=epochs, seed=98, ckpt_in=args.single_ckpt, **train)


if __name__ == "__main__":
    main()

"""A DDP run (gloo, 2 CPU processes) of blended learning with missing labels, for
``tests/test_missing_labels.py``.

Usage::

    python tests/ddp_scripts/missing.py --out DIR [--devices 2]

The synthetic chain task with the labels at positions 1 and 3 of every even example unobserved
(-100); the datamodule says ``has_missing_labels``, so the model turns the second message store
on in ``setup``. Each rank records its stores' shard while training; rank 0 writes
``DIR/missing.pt`` (the shards seen, the checkpoint's second store, the whole stores after
``fit``) and ``DIR/missing.ckpt``. Lightning re-runs this script once per extra process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from structlight.testing import SyntheticChainDataModule  # noqa: E402
from tests.helpers.synthetic import all_ranks, make_model, make_trainer  # noqa: E402

NUM_TRAIN, BATCH = 24, 4


def hide(batch: dict[str, Any]) -> dict[str, Any]:
    """Labels 1 and 3 of every even example become unobserved."""
    label = batch["label"].clone()
    even = batch["index"] % 2 == 0
    label[even.nonzero()[:, 0][:, None], torch.tensor([1, 3])] = -100
    return {**batch, "label": label}


class PartlyLabelled(SyntheticChainDataModule):
    has_missing_labels = True

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return hide(batch) if self.trainer.training else batch


class Shards(pl.Callback):
    """Each store's ``(rank, world_size, num_local)`` at the first training batch."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, int, int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.seen:
            for name in ("store", "clamped_store"):
                s = getattr(pl_module.head, name)
                self.seen[name] = (s.rank, s.world_size, s.num_local)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--devices", type=int, default=2)
    args = ap.parse_args()
    dm = PartlyLabelled(num_train=NUM_TRAIN, num_val=4, num_test=1, batch_size=BATCH, seed=0)
    model = make_model(dm, lr=0.2)
    shards = Shards()
    trainer = make_trainer(2, args.devices, val=False, callbacks=[shards])
    trainer.fit(model, dm)
    ckpt = args.out / "missing.ckpt"
    trainer.save_checkpoint(ckpt)
    seen = all_ranks(shards.seen)
    if trainer.global_rank == 0:
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        torch.save(
            {
                "shards": seen,
                "ckpt_clamped": state["head.clamped_store.messages"],
                "clamped": model.head.clamped_store.messages.clone(),
                "store": model.head.store.messages.clone(),
            },
            args.out / "missing.pt",
        )


if __name__ == "__main__":
    main()

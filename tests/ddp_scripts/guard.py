"""A DDP run (gloo, 2 CPU processes) with a NaN input in one training example, for
``tests/test_guard.py``: every rank must skip the same steps and stay identical.

Usage::

    python tests/ddp_scripts/guard.py --out FILE [--mode immediate|deferred]

Rank 0 writes ``FILE``: every rank's weights, skipped-step count and store finiteness.
Lightning re-runs this script once per extra process (its DDP launcher).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.helpers.synthetic import make_data, make_model, make_trainer, parameters

BAD_EXAMPLE = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", default="immediate")
    args = parser.parse_args()
    dm = make_data(num_train=24, batch_size=3)
    dm.train_set.images[BAD_EXAMPLE, 1, 0] = float("nan")
    model = make_model(dm, lr=0.2)
    model.guard.mode = args.mode
    trainer = make_trainer(2, devices=2, val=False, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, dm)
    mine = {
        "params": parameters(model),
        "skipped": model.guard.skipped_count(),
        "store_finite": bool(torch.isfinite(model.head.store.messages).all()),
    }
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if trainer.global_rank == 0:
        torch.save(everyone, args.out)


if __name__ == "__main__":
    main()

"""Measure the message store's memory per rank, one process vs DDP (gloo, CPU processes).

Usage (one line of JSON per run, printed by rank 0)::

    python tests/ddp_scripts/store_memory.py --model flickr --devices 1
    python tests/ddp_scripts/store_memory.py --model flickr --devices 2

Models: ``word50-1st`` / ``word50-2nd`` (chains of 5 x 26 states, M = 208 / 364) and ``flickr``
(38 fully connected binary variables, M = 2,812), each with ``--num-train`` examples (10,000 by
default, as Word50's and Flickr's training sets) of random 16-dimensional inputs and a linear
backbone; the store's size does not depend on the backbone. Two training steps run (the store
is allocated in full when fitting starts). Reported per rank, when training ends: the store's
slots, its peak size (``MessageStore.peak_bytes``) and the growth of the process's peak resident
memory (``ru_maxrss`` minus the resident memory before ``fit``; includes the model, optimizer
and Lightning's own allocations); and the same growth after ``fit``, which on rank 0 includes
gathering every shard into its store (``DeepStructuredModel.on_fit_end``).
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from structlight.distributed import message_bytes_per_example
from structlight.head import ChainHead, FullyConnectedHead, StructuredHead
from structlight.task import DeepStructuredModel

FEATURES = 16
MODELS = {
    "word50-1st": (5, 26, 1),
    "word50-2nd": (5, 26, 2),
    "flickr": (38, 2, 0),
}


class RandomLabels(Dataset):
    """``n`` examples: random features per variable or per example, random labels, index."""

    def __init__(self, n: int, num_vars: int, num_states: int, per_variable: bool) -> None:
        gen = torch.Generator().manual_seed(0)
        shape = (n, num_vars, FEATURES) if per_variable else (n, FEATURES)
        self.x = torch.randn(shape, generator=gen)
        self.y = torch.randint(0, num_states, (n, num_vars), generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "label": self.y[i], "index": i}


class AtTrainEnd(pl.Callback):
    """Store slots, store peak and peak RSS growth when training ends (before on_fit_end)."""

    def __init__(self, rss_before: int) -> None:
        self.rss_before = rss_before
        self.report: dict[str, Any] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        store = pl_module.head.store
        self.report = {
            "rank": trainer.global_rank,
            "slots": store.num_local,
            "store_peak_MiB": round(store.peak_bytes / 2**20, 2),
            "peak_rss_growth_MiB": round((_maxrss() - self.rss_before) / 2**20, 1),
        }


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="flickr")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--location", choices=["device", "pinned"], default="device")
    args = parser.parse_args()
    num_vars, num_states, order = MODELS[args.model]
    pl.seed_everything(0, verbose=False)
    head: StructuredHead
    if order:
        head = ChainHead(num_vars, num_states, FEATURES, order=order, store_location=args.location)
    else:
        head = FullyConnectedHead(num_vars, FEATURES, store_location=args.location)
    model = DeepStructuredModel(nn.Identity(), head)
    data = RandomLabels(args.num_train, num_vars, num_states, per_variable=bool(order))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    at_end = AtTrainEnd(_rss_bytes())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[at_end],
    )
    trainer.fit(model, loader)
    store = model.head.store
    mine = dict(at_end.report)
    mine["after_fit_peak_rss_growth_MiB"] = round((_maxrss() - at_end.rss_before) / 2**20, 1)
    ranks = [mine]
    if dist.is_available() and dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    if trainer.global_rank == 0:
        report = {
            "model": args.model,
            "M": store.num_message_entries,
            "bytes_per_example": message_bytes_per_example(store),
            "num_train": args.num_train,
            "processes": args.devices,
            "location": args.location,
            "ranks": ranks,
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()

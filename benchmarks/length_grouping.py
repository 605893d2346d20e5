"""Epoch time with and without length grouping on VarWords (variable-length words).

Generates a VarWords file (default 2,000 training words of 2 to 14 letters) in a temporary
folder, then trains a 1st-order JointTrain model (MLP 784-512-26 unary, one 26 x 26 table,
``ChainHead(num_vars=14)`` reading each batch's ``length``) for one epoch with the training
batches grouped by length (``LengthGroupedSampler``) and one epoch without (``EpochShuffleSampler``),
alternating, ``--rounds`` times each. Batches are padded to 14 positions either way (the head's
size), so grouping changes which words share a batch, not the tensors' shapes, and the engine's
work is that of the full 14-position graph whatever the mask: the epoch times say what grouping
saves here. The padding's share is printed both as trained (to 14) and as it would be if each
batch were padded only to its longest word (what grouping reduces).

    python benchmarks/length_grouping.py [--num_train 2000] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from datamodules import VarWordsDataModule
from structlight import DeepStructuredModel
from structlight.backbones import PerPosition
from structlight.head import ChainHead
from structlight.potentials import MLP


def model() -> DeepStructuredModel:
    """The 1st-order JointTrain model of ``recipes/varwords/joint1.yaml`` (same sizes)."""
    torch.manual_seed(0)
    return DeepStructuredModel(
        backbone=PerPosition(MLP(784, [512])),
        head=ChainHead(num_vars=14, num_states=26, in_features=512, order=1),
        strategy="joint",
    )


def padding_fraction(dm: VarWordsDataModule) -> tuple[float, float]:
    """Padding's share of one training epoch's positions: padded to 14, and as it would be
    padded to each batch's longest word."""
    present = to_14 = to_longest = 0
    for batch in dm.train_dataloader():
        lengths = batch["length"]
        present += int(lengths.sum())
        to_14 += lengths.numel() * 14
        to_longest += lengths.numel() * int(lengths.max())
    return 1 - present / to_14, 1 - present / to_longest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_train", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(root=tmp, num_train=args.num_train, num_val=100, num_test=100, progress=False)
        modules = {
            "grouped": VarWordsDataModule(group_by_length=True, **common),
            "shuffled": VarWordsDataModule(group_by_length=False, **common),
        }
        modules["grouped"].prepare_data()
        times: dict[str, list[float]] = {k: [] for k in modules}
        pads: dict[str, tuple[float, float]] = {}
        for r in range(args.rounds):
            for name, dm in modules.items() if r % 2 == 0 else list(modules.items())[::-1]:
                dm.setup("fit")
                pads[name] = padding_fraction(dm)
                trainer = L.Trainer(
                    max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, default_root_dir=Path(tmp) / name,
                )  # fmt: skip
                t0 = time.perf_counter()
                trainer.fit(model(), datamodule=dm)
                times[name].append(time.perf_counter() - t0)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {args.num_train} training words, "
        f"batch 100, padded to 14; median of {args.rounds} epochs each"
    )
    print("| training order | padding, to 14 | padding, to each batch's longest | epoch s |")
    print("| --- | --- | --- | --- |")
    for name in modules:
        to_14, to_longest = pads[name]
        epoch = statistics.median(times[name])
        print(f"| {name} | {to_14:.3f} | {to_longest:.3f} | {epoch:.2f} |")


if __name__ == "__main__":
    main()

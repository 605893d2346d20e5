"""Epoch time with and without length grouping on VarWords (variable-length words), with each
batch padded to 14 positions or to its longest word.

Generates a VarWords file (default 2,000 training words of 2 to 14 letters) in a temporary
folder, then trains a 1st-order JointTrain model (MLP 784-512-26 unary, one 26 x 26 table,
``ChainHead(num_vars=14)`` reading each batch's ``length``) for one epoch in each of four
settings, in turn, ``--rounds`` times each:

* training order: grouped by length (``LengthGroupedSampler``) or shuffled
  (``EpochShuffleSampler``);
* padding (``VarWordsDataModule(pad_to=...)``): ``"max"``, every batch to 14 positions, or
  ``"longest"``, each batch to its longest word. The backbone then runs on that many positions;
  the head pads its potentials to 14 itself, and the engine's work is that of the 14-position
  graph with each example's mask either way.

Printed per setting: the padding's share of the positions the backbone ran on, and the median
epoch time.

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


def padding_fraction(dm: VarWordsDataModule) -> float:
    """Padding's share of the positions of one training epoch's batches."""
    present = positions = 0
    for batch in dm.train_dataloader():
        present += int(batch["length"].sum())
        positions += batch["label"].numel()
    return 1 - present / positions


SETTINGS = {
    "grouped, to each batch's longest": dict(group_by_length=True, pad_to="longest"),
    "shuffled, to each batch's longest": dict(group_by_length=False, pad_to="longest"),
    "grouped, to 14": dict(group_by_length=True, pad_to="max"),
    "shuffled, to 14": dict(group_by_length=False, pad_to="max"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_train", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(root=tmp, num_train=args.num_train, num_val=100, num_test=100, progress=False)
        modules = {name: VarWordsDataModule(**kw, **common) for name, kw in SETTINGS.items()}
        next(iter(modules.values())).prepare_data()
        times: dict[str, list[float]] = {k: [] for k in modules}
        pads: dict[str, float] = {}
        for r in range(args.rounds):
            order = list(modules.items())
            for name, dm in order if r % 2 == 0 else order[::-1]:
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
        f"batch 100; median of {args.rounds} epochs each"
    )
    base = statistics.median(times["shuffled, to 14"])
    print("| training order, padding | padding's share | epoch s | x shuffled, to 14 |")
    print("| --- | --- | --- | --- |")
    for name in modules:
        epoch = statistics.median(times[name])
        print(f"| {name} | {pads[name]:.3f} | {epoch:.2f} | {epoch / base:.2f} |")


if __name__ == "__main__":
    main()

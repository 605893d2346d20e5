"""Missing tags, MIRFLICKR-style: reading a missing tag as a negative against the latent loss.

A fake MIRFLICKR tree whose images show their tags (``tests/data/mirflickr/make_fake.py
--informative``: each of the 24 "potential" tags a bright cell of a 5 x 5 grid, with noise; the
14 relevant ``_r1`` tags are not visible and follow from their base tag half of the time). Half
the training images lose 8 of their 38 tags (:class:`datamodules.missing.MissingLabels`), and the
same model (:class:`structlight.backbones.SmallConvNet` unaries, one 2 x 2 table per edge of the
38 fully connected tags, JointTrain; ``eps = 0`` by default, the structured hinge loss, which
this small model learns from scratch where ``eps = 1`` with ``c_r = 1`` on the dense graph
predicts no tag at all) is trained three ways:

* ``negative``: the missing tags read as "tag absent", the common practice;
* ``latent``: the missing tags unobserved, the latent loss (``docs/missing-labels.md``);
* ``none``: every tag present, the ceiling.

Printed per way: the test Hamming error (%), the exact-match rate (%), and the share of the test
set's positive tags that the model misses (%), where reading missing tags as negatives should
hurt most.

    python benchmarks/missing_tags.py [--epochs 60] [--eps 0] [--lr 0.01] [--images 1200]
        [--root runs/missing_tags] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_lines, format_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_tree(root: Path, images: int, seed: int) -> dict[str, tuple[int, int]]:
    """Write the informative fake tree once; its split ranges."""
    sys.path.insert(0, str(ROOT / "tests" / "data" / "mirflickr"))
    try:
        from make_fake import make_fake_mirflickr
    finally:
        sys.path.pop(0)
    train_end, test_end = images * 2 // 3, images * 5 // 6
    if not (root / "annotations").is_dir():
        make_fake_mirflickr(root, images, train_end, test_end, seed=seed, informative=True)
    return {
        "train_ids": (1, train_end),
        "test_ids": (train_end + 1, test_end),
        "val_ids": (test_end + 1, images),
    }


def run(handling: str, args: argparse.Namespace, splits: dict) -> list[object]:
    from datamodules.flickr import MirFlickrDataModule
    from datamodules.missing import MissingLabels
    from structlight import DeepStructuredModel
    from structlight.backbones import SmallConvNet
    from structlight.head import FullyConnectedHead, InferenceSettings

    L.seed_everything(args.seed, verbose=False)
    dm = MirFlickrDataModule(
        root=args.root / "tree",
        batch_size=args.batch_size,
        num_workers=0,
        image_size=40,
        resize=48,
        augment=False,
        num_images=args.images,
        missing_labels=MissingLabels(
            fraction=0.5, per_example=args.per_example, handling=handling, seed=args.seed
        ),
        **splits,
    )
    model = DeepStructuredModel(
        SmallConvNet(out_features=64),
        FullyConnectedHead(
            38, 64, pairwise="table", share="edge", inference=InferenceSettings(eps=args.eps)
        ),
        optimizer=lambda params: torch.optim.SGD(params, lr=args.lr, momentum=0.9),
        val_sweeps=20,
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.root,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    metrics = trainer.test(model, dm, verbose=False)[0]
    preds = trainer.predict(model, dm.test_dataloader())
    pred = torch.cat([p["labels"] for p in preds])
    target = torch.as_tensor(dm.test_dataset.labels)
    missed = 100.0 * float(((pred == 0) & (target == 1)).sum()) / float((target == 1).sum())
    return [
        handling,
        metrics["test/hamming_error"],
        metrics["test/exact_match"],
        missed,
        round(seconds),
    ]


def main(argv: list[str] | None = None) -> dict[str, list[object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/missing_tags"))
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.01, help="SGD step size (momentum 0.9)")
    ap.add_argument("--eps", type=float, default=0.0, help="temperature (0: structured hinge)")
    ap.add_argument("--per-example", type=int, default=8, help="tags hidden per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--handlings", nargs="+", default=["negative", "latent", "none"])
    ap.add_argument("--quick", action="store_true", help="60 images, 1 epoch: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.batch_size = 60, 1, 10
    torch.set_num_threads(args.threads)
    splits = make_tree(args.root / "tree", args.images, args.seed)
    print("\n".join(environment_lines()))
    print(
        f"fake tree of {args.images} informative images {splits}; half the training images "
        f"lose {args.per_example} of 38 tags; {args.epochs} epochs, batch {args.batch_size}"
    )
    rows = [run(h, args, splits) for h in args.handlings]
    headers = ["missing tags", "Hamming error %", "exact match %", "positives missed %", "fit s"]
    print(format_table(headers, rows))
    return {"rows": rows}


if __name__ == "__main__":
    main()

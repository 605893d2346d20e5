"""Calibrate Word50's difficulty: unary-only one-layer MLP, as the paper's Table 1 first row.

Trains a 784-512-26 MLP (ReLU) on single characters of the train split with cross-entropy
(Adam, step size cosine-annealed to zero over the run, so the last epochs converge), keeps the epoch with the best validation character accuracy, and prints test character and
word accuracy. The paper reports 65.69% / 12.50% for this model on its Word50; the generator's
default difficulty is tuned so that this script lands in about 58-72% character accuracy.

Usage (generates ``data/word50/word50.h5`` first if it is missing)::

    python benchmarks/calibrate_word50.py
    python benchmarks/calibrate_word50.py --data data/word50/trial.h5 --difficulty '{"noise": 0.05}'

Plain PyTorch on purpose: no Lightning, no structlight, so the number depends on the data only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.word50 import Word50Difficulty, generate_word50, read_hdf5  # noqa: E402


def load(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Characters of one split: ``(n * 5, 784)`` float in [0, 1] and ``(n * 5,)`` long."""
    images, labels = read_hdf5(path, split)
    x = torch.from_numpy(images.reshape(-1, 28 * 28)).float() / 255.0
    y = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    return x, y


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Character and word accuracy (words = consecutive groups of 5 characters)."""
    model.eval()
    pred = torch.cat([model(x[i : i + 5000]).argmax(1) for i in range(0, len(x), 5000)])
    correct = (pred == y).view(-1, 5)
    return correct.float().mean().item(), correct.all(1).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("data/word50/word50.h5"))
    parser.add_argument(
        "--difficulty",
        type=str,
        default=None,
        help="JSON overrides of Word50Difficulty; regenerates --data",
    )
    parser.add_argument("--gen-seed", type=int, default=0, help="generator seed when generating")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="characters per step (500 = the paper's 100 words)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="Adam step size, cosine-annealed to 0"
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.difficulty is not None or not args.data.exists():
        difficulty = Word50Difficulty(**json.loads(args.difficulty or "{}"))
        t0 = time.perf_counter()
        generate_word50(args.data, seed=args.gen_seed, difficulty=difficulty, overwrite=True)
        print(f"generated {args.data} in {time.perf_counter() - t0:.1f} s")

    xtr, ytr = load(args.data, "train")
    xva, yva = load(args.data, "val")
    xte, yte = load(args.data, "test")
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(784, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 26))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(xtr) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    best = (-1.0, 0, None)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr))
        total = 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(idx)
        train_char, _ = evaluate(model, xtr, ytr)
        val_char, val_word = evaluate(model, xva, yva)
        print(
            f"epoch {epoch:3d}  loss {total / len(xtr):.4f}  train char {train_char:.4f}  "
            f"val char {val_char:.4f} word {val_word:.4f}  ({time.perf_counter() - t0:.0f} s)"
        )
        if val_char > best[0]:
            best = (val_char, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    test_char, test_word = evaluate(model, xte, yte)
    result = {
        "best_epoch": best[1],
        "val_char": best[0],
        "test_char": test_char,
        "test_word": test_word,
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"best epoch {best[1]} (val char {best[0]:.4f}); test char accuracy {100 * test_char:.2f}%, "
        f"word accuracy {100 * test_word:.2f}%  [{platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, {result['seconds']:.0f} s]"
    )
    return result


if __name__ == "__main__":
    main()

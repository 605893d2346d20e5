"""The cost of missing labels: a blended training step with and without unobserved labels.

One ``ChainHead.training_loss`` step (one sweep, store update, dual minus score, backward) on a
Word50-shaped batch: 100 five-letter words, 26 states, 1st- and 2nd-order chains, the unaries
from a 512-wide feature layer. Three rows per order, timed in interleaved rounds:

* ``supervised``: every label observed, the head without a second store (the baseline);
* ``missing_labels=True, all observed``: the same batch on a head with the second store (a
  batch without unobserved labels must cost what it did);
* ``half the words 2 letters hidden``: 50 of the 100 words with 2 of their 5 letters at -100,
  so the step also sweeps and evaluates the clamped problem's dual.

Printed: median ms and the ratio to the supervised step, with the message store's bytes per
example (the second store adds as much again).

    python benchmarks/missing_labels.py [--threads 1] [--repeats 60] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_lines, format_table, timeit_interleaved  # noqa: E402

from structlight.head import ChainHead  # noqa: E402


def step(head: ChainHead, feats: torch.Tensor, batch: dict) -> None:
    head.zero_grad(set_to_none=True)
    head.training_loss(head(feats), batch, track_dual_change=False).loss.mean().backward()


def main(argv: list[str] | None = None) -> dict[str, list[object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=60, help="interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    b, n, k, f = (4, 5, 5, 8) if args.quick else (100, 5, 26, 512)
    repeats = 2 if args.quick else args.repeats
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(b, n, f, generator=gen)
    labels = torch.randint(0, k, (b, n), generator=gen)
    partial = labels.clone()
    for i in range(0, b, 2):  # every other word loses 2 letters
        partial[i, torch.randperm(n, generator=gen)[:2]] = -100
    index = torch.arange(b)
    print("\n".join(environment_lines()))
    print(f"{b} words x {n} letters, {k} states, features {f}; ms, medians of {repeats} rounds")
    rows: list[list[object]] = []
    for order in (1, 2):
        torch.manual_seed(0)
        plain = ChainHead(n, k, f, order=order, num_train_examples=b)
        torch.manual_seed(0)
        latent = ChainHead(n, k, f, order=order, num_train_examples=b, missing_labels=True)
        fns = {
            "supervised": functools.partial(step, plain, feats, {"label": labels, "index": index}),
            "missing_labels=True, all observed": functools.partial(
                step, latent, feats, {"label": labels, "index": index}
            ),
            "half the words 2 letters hidden": functools.partial(
                step, latent, feats, {"label": partial, "index": index}
            ),
        }
        times = timeit_interleaved(fns, repeats)
        base = times["supervised"].median
        for name, t in times.items():
            rows.append([order, name, t.median, t.median / base, 4 * plain.bp.num_message_entries])
    headers = ["order", "step", "median ms", "x supervised", "store bytes/example"]
    print(format_table(headers, rows))
    return {"rows": rows}


if __name__ == "__main__":
    main()

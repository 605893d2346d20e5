"""The cost of per-example masks: variable-length words padded to the longest.

100 words with lengths uniform in 3..14, padded to 14 positions, 26 labels, float32 N(0, 1)
potentials, on the 1st- and 2nd-order chains: one sweep on the masked batch (``mask=`` from the
lengths, prepared once as a training step does) against one unmasked sweep of 14-long words, in
interleaved rounds; also the dual (forward and backward) of a training step. The target: a masked
sweep costs at most 1.2x an unmasked one. Also printed: the message store's bytes per example
(padded to 14 positions, float32).

    python benchmarks/masks.py [--threads 1] [--repeats 150] [--compile]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit_interleaved  # noqa: E402

from structlight import ConvexBP, RegionGraph  # noqa: E402


def step(bp: ConvexBP, theta: torch.Tensor, msgs: torch.Tensor, mask: torch.Tensor | None) -> None:
    """A training step's engine work: prepare, one sweep, the dual and its backward."""
    th = theta.detach().requires_grad_(True)
    prep = bp.prepare(th, mask=mask)
    with torch.no_grad():
        m = bp.sweep(prep, msgs)
    bp.dual(prep, m).sum().backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=150, help="interleaved rounds")
    ap.add_argument("--compile", action="store_true", help="also the compiled sweeps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, n, k = 100, 14, 26
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, n + 1, (b,), generator=gen)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {b} words, lengths 3..{n} "
        f"(mean {lengths.float().mean():.1f}), {k} labels; ms, medians of {args.repeats} rounds"
    )
    print(
        "| chain | engine | unmasked sweep | masked sweep | masked / unmasked | "
        "unmasked step | masked step | step ratio | store bytes/example |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for order in (1, 2):
        g = RegionGraph.chain(n, k, order=order)
        engines = {"eager": ConvexBP(g)}
        if args.compile:
            engines["compiled"] = ConvexBP(g, compile=True)
        for label, bp in engines.items():
            theta = bp.pack(
                [torch.randn(b, *g.region_shape(r), generator=gen) for r in range(g.num_regions)]
            )
            mask = bp.region_mask(torch.arange(n)[None, :] < lengths[:, None])
            plain, masked = bp.prepare(theta), bp.prepare(theta, mask=mask)
            msgs = bp.run(plain, num_sweeps=2)[0].contiguous()
            sweeps = {
                "plain": functools.partial(bp.sweep, plain, msgs),
                "masked": functools.partial(bp.sweep, masked, msgs),
            }
            steps = {
                "plain": functools.partial(step, bp, theta, msgs, None),
                "masked": functools.partial(step, bp, theta, msgs, mask),
            }
            t = {k: v.median for k, v in timeit_interleaved(sweeps, args.repeats).items()}
            s = {k: v.median for k, v in timeit_interleaved(steps, args.repeats).items()}
            print(
                f"| order {order} | {label} | {t['plain']:.3f} | {t['masked']:.3f} | "
                f"{t['masked'] / t['plain']:.2f} | {s['plain']:.3f} | "
                f"{s['masked']:.3f} | {s['masked'] / s['plain']:.2f} | "
                f"{bp.num_message_entries * 4} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

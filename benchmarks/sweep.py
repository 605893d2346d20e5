"""Time one sweep, one dual and one beliefs call of ConvexBP.

Graphs: (a) Word50 2nd-order chain, 5 variables x 26 states, batch 100; (b) fully connected,
38 binary variables, batch 300; (c) a 32x32 grid with 5 states, batch 1. float32, N(0,1)
potentials, medians over repeats, on CPU and on CUDA where present.

    python benchmarks/sweep.py [--repeats 50] [--device cpu cuda] [--threads 1]

"sweep ms" repeats sweeps on one prepared theta (``ConvexBP.prepare``, as ``ConvexBP.run`` does:
its tables are reused); "1st sweep ms" gives each sweep a fresh copy of theta (the tables are
rebuilt, as in a training step's single sweep).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit as _timeit  # noqa: E402

from structlight import ConvexBP, RegionGraph  # noqa: E402


def timeit(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds (3 warm-up calls)."""
    return _timeit(fn, repeats, warmup=3, device=device).median


CASES = {
    "chain2 5x26 B=100": (lambda: RegionGraph.chain(5, 26, order=2), 100),
    "fully connected 38x2 B=300": (lambda: RegionGraph.fully_connected(38, 2), 300),
    "grid 32x32x5 B=1": (lambda: RegionGraph.grid(32, 32, 5), 1),
}


def measure(bp: ConvexBP, theta, msgs, repeats: int, device: torch.device) -> list[float]:
    """Median ms of: a sweep (same theta), a sweep on a fresh theta, a dual, beliefs."""
    copies = itertools.cycle([theta.clone() for _ in range(3)])  # a new tensor each call
    prep = bp.prepare(theta)  # one theta for repeated sweeps and duals, as ConvexBP.run does
    return [
        timeit(lambda: bp.sweep(prep, msgs), repeats, device),
        timeit(lambda: bp.sweep(next(copies), msgs), repeats, device),
        timeit(lambda: bp.dual(prep, msgs), repeats, device),
        timeit(lambda: bp.beliefs(theta, msgs), repeats, device),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--device", nargs="*", default=None, help="default: cpu, and cuda if present")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{'graph':30s} {'device':6s} {'blocks':>6s} {'sweep ms':>9s} {'1st sweep ms':>12s} "
        f"{'dual ms':>8s} {'beliefs ms':>10s}"
    )
    for name, (make, b) in CASES.items():
        g = make()
        bp = ConvexBP(g, eps=1.0)
        for dev in devices:
            device = torch.device(dev)
            gen = torch.Generator().manual_seed(0)
            theta = bp.pack(
                [torch.randn(b, *g.region_shape(r), generator=gen) for r in range(g.num_regions)]
            ).to(device)
            msgs = bp.init_messages(b, theta.dtype, device)
            t_sweep, t_first, t_dual, t_bel = measure(bp, theta, msgs, args.repeats, device)
            print(
                f"{name:30s} {dev:6s} {len(g.schedule()):6d} {t_sweep:9.3f} {t_first:12.3f} "
                f"{t_dual:8.3f} {t_bel:10.3f}"
            )


if __name__ == "__main__":
    main()

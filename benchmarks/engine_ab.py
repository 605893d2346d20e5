"""The engine against a baseline engine, side by side in one process (interleaved rounds).

The baseline is a single-file engine module, for example ``structlight/inference.py`` of commit
``c7f4200``::

    mkdir -p runs && git show c7f4200:structlight/inference.py > runs/baseline_inference.py
    python benchmarks/engine_ab.py --baseline runs/baseline_inference.py [--compile]

Both engines run the same float32 N(0, 1) potentials on the graphs of ``benchmarks/sweep.py``
(Word50 2nd-order chain 5 x 26, batch 100; fully connected 38 binary, batch 300; grid 32 x 32 x 5,
batch 1). Timed operations: a sweep on prepared potentials; a first sweep (fresh potentials, so
the sweep tables are built); the dual; a training step's engine work (prepare, one sweep, dual,
backward); region beliefs; variable beliefs; with ``--compile`` the compiled sweep. Each line
prints the medians and ``new/old`` (below 1: the current engine is faster), and whether the
step's messages and gradient are bit-identical.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit_interleaved  # noqa: E402

from structlight import ConvexBP, RegionGraph  # noqa: E402

CASES = {
    "chain2 5x26 B=100": (lambda: RegionGraph.chain(5, 26, order=2), 100),
    "fully connected 38x2 B=300": (lambda: RegionGraph.fully_connected(38, 2), 300),
    "grid 32x32x5 B=1": (lambda: RegionGraph.grid(32, 32, 5), 1),
}


def load_baseline(path: str) -> type:
    """The ``ConvexBP`` class of a single-file engine module."""
    spec = importlib.util.spec_from_file_location("baseline_inference", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no engine module at {path} (see the module docstring)")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_inference"] = module
    spec.loader.exec_module(module)
    return module.ConvexBP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="a single-file engine module (.py)")
    ap.add_argument("--repeats", type=int, default=150, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also the compiled sweeps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old_cls = load_baseline(args.baseline)
    print(f"torch {torch.__version__}, {args.threads} thread(s); times in ms, medians")
    for name, (make, b) in CASES.items():
        run_case(name, make(), b, old_cls, args)


def run_case(name: str, g: RegionGraph, b: int, old_cls: type, args: argparse.Namespace) -> None:
    """Time every operation on one graph, old against new, and print one line each."""
    torch.manual_seed(0)
    pots = [torch.randn(b, *g.region_shape(r)) for r in range(g.num_regions)]
    eng = {"old": old_cls(g), "new": ConvexBP(g)}
    theta = eng["new"].pack(pots)
    preps = {k: bp.prepare(theta) for k, bp in eng.items()}
    msgs = {k: bp.run(theta, num_sweeps=3)[0] for k, bp in eng.items()}

    def step(k: str) -> tuple[torch.Tensor, torch.Tensor]:
        th = theta.clone().requires_grad_(True)
        prep = eng[k].prepare(th)
        with torch.no_grad():
            m = eng[k].sweep(prep, msgs[k])
        eng[k].dual(prep, m).sum().backward()
        return m.contiguous(), th.grad

    same = all(torch.equal(x, y) for x, y in zip(step("old"), step("new"), strict=True))
    ops: dict[str, Callable[[str], object]] = {
        "sweep": lambda k: eng[k].sweep(preps[k], msgs[k]),
        "1st sweep": lambda k: eng[k].sweep(theta.clone(), msgs[k]),
        "dual": lambda k: eng[k].dual(preps[k], msgs[k]),
        "step": step,
        "beliefs": lambda k: eng[k].beliefs(theta, msgs[k]),
        "variable beliefs": lambda k: eng[k].variable_beliefs(theta, msgs[k]),
    }
    if args.compile:
        comp = {"old": old_cls(g, compile=True), "new": ConvexBP(g, compile=True)}
        cprep = {k: bp.prepare(theta) for k, bp in comp.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k in comp:
                comp[k].sweep(cprep[k], msgs[k])  # compiles
        ops["compiled sweep"] = lambda k: comp[k].sweep(cprep[k], msgs[k])
    print(f"{name} (step bit-identical: {same})")
    for op, fn in ops.items():
        fns = {k: functools.partial(fn, k) for k in eng}
        t = {k: v.median for k, v in timeit_interleaved(fns, args.repeats).items()}
        print(
            f"  {op:17s} old {t['old']:8.3f}  new {t['new']:8.3f}  new/old {t['new'] / t['old']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

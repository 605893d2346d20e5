"""Cost of the non-finite guard on a blended training step (the paper's 2nd-order Word50 model).

Times one training iteration (forward, one sweep on stored messages, loss, backward, SGD step
with momentum) three ways, in interleaved rounds:

* ``unguarded``: the messages written back at once, no checks (the guard ``"off"``);
* ``immediate``: the guard's checks read on the host every step (the default off CUDA);
* ``deferred``: the flags kept on the device and a bad step undone there (the default on CUDA;
  it copies the parameters and the optimizer state every step).

Prints ms per iteration and the ratio to the unguarded step.

    python benchmarks/guard_cost.py [--device cpu|cuda] [--repeats 40] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_args,
    add_word50_step_args,
    environment_lines,
    timeit_interleaved,
    word50_step_inputs,
)

from structlight import MLP, ChainHead  # noqa: E402
from structlight.backbones import PerPosition  # noqa: E402
from structlight.guard import NonFiniteGuard  # noqa: E402

MODES = ("unguarded", "immediate", "deferred")


def make_step(mode: str, x: torch.Tensor, y: torch.Tensor, b: int, hidden: int):
    """One training iteration of a fresh 2nd-order model under ``mode``."""
    torch.manual_seed(0)
    n = x.shape[0]
    backbone = PerPosition(MLP(784, [hidden]))
    head = ChainHead(5, 26, hidden, order=2, num_train_examples=n)
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(x.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.95)
    guard = None if mode == "unguarded" else NonFiniteGuard(mode)
    state = {"i": 0}

    def step() -> None:
        start = (state["i"] * b) % n
        state["i"] += 1
        idx = torch.arange(start, start + b, device=x.device) % n
        batch = {"image": x[idx], "label": y[idx], "index": idx}
        theta = head(backbone(batch["image"]), batch)
        out = head.training_loss(theta, batch, track_dual_change=False, write_back=guard is None)
        if guard is not None:
            guard.note_batch(theta, out.loss, index=idx, write=out.pending)
        opt.zero_grad(set_to_none=True)
        out.loss.mean().backward()
        if guard is not None:
            guard.before_step(params, opt, state["i"])
        opt.step()
        if guard is not None:
            guard.after_step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__), repeats=40, warmup=3)
    args = add_word50_step_args(ap).parse_args(argv)
    device, b, hidden, x, y = word50_step_inputs(args)
    steps = {mode: make_step(mode, x, y, b, hidden) for mode in MODES}
    for line in environment_lines({"model": f"2nd order, MLP 784-{hidden}-26, batch {b}"}):
        print(line)
    times = timeit_interleaved(steps, args.repeats, args.warmup, device)
    base = times["unguarded"].median
    print(f"{'guard':10s} {'ms/iter':>9s} {'x unguarded':>12s}")
    out = {}
    for mode, t in times.items():
        print(f"{mode:10s} {t.median:9.2f} {t.median / base:12.3f}")
        out[mode] = t.median
    return out


if __name__ == "__main__":
    main()

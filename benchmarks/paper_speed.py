"""Time per training iteration of the three Word50 models the paper timed.

The paper (docs/design.md §3) reports, for its 2015 C++/GPU library, 0.064 s per iteration for
the 1st-order model, 0.104 s for the 2nd-order one and 0.068 s with the MLP pairwise function
(mini-batch 100 words). This script times one blended training iteration (forward, one sweep on
stored messages, loss, backward, SGD step; data already in memory) of the same models:

* unary only (cross-entropy on the same MLP: the baseline every ratio is taken against);
* 1st order: MLP 784-1024-26 + one shared 26x26 table (831,166 parameters);
* 2nd order: separate distance-1 and distance-2 tables (831,842);
* MLP pairwise: 1st order with a 1568-64-676 MLP on the two characters (974,846).

    python benchmarks/paper_speed.py [--device cpu|cuda] [--repeats 30] [--threads N]
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
    timeit_interleaved,
    word50_step_inputs,
)

from structlight import MLP, ChainHead  # noqa: E402
from structlight.backbones import PerPosition  # noqa: E402

PAPER_SECONDS = {"1st order": 0.064, "2nd order": 0.104, "MLP pairwise": 0.068}


def build(kind: str, hidden: int, n_train: int) -> nn.ModuleDict:
    """Backbone + head of one of the paper's Word50 models."""
    backbone = PerPosition(MLP(784, [hidden]))
    if kind == "unary only":
        head = nn.Linear(hidden, 26)
    else:
        head = ChainHead(
            num_vars=5,
            num_states=26,
            in_features=hidden,
            order=2 if kind == "2nd order" else 1,
            pairwise="mlp" if kind == "MLP pairwise" else "table",
            pairwise_hidden=[64],
            pairwise_in_features=1568,
            num_train_examples=n_train,
        )
    return nn.ModuleDict({"backbone": backbone, "head": head})


def make_step(model: nn.ModuleDict, kind: str, x: torch.Tensor, y: torch.Tensor, b: int):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95)
    n = x.shape[0]
    state = {"i": 0}

    def step() -> None:
        start = (state["i"] * b) % n
        state["i"] += 1
        idx = torch.arange(start, start + b, device=x.device) % n
        xb, yb = x[idx], y[idx]
        feats = model["backbone"](xb)
        if kind == "unary only":
            logits = model["head"](feats)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 26), yb.reshape(-1))
        else:
            theta = model["head"](feats, {"image": xb})
            batch = {"image": xb, "label": yb, "index": idx}
            loss = model["head"].training_loss(theta, batch, track_dual_change=False).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__), repeats=30, warmup=3)
    args = add_word50_step_args(ap).parse_args(argv)
    device, b, hidden, x, y = word50_step_inputs(args)
    steps = {}
    for kind in ("unary only", *PAPER_SECONDS):
        torch.manual_seed(0)
        model = build(kind, hidden, x.shape[0]).to(device)
        steps[kind] = make_step(model, kind, x, y, b)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"Word50 models, batch {b} words, MLP 784-{hidden}-26, {name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved rounds"
    )
    times = timeit_interleaved(steps, args.repeats, args.warmup, device)
    base = times["unary only"].median
    print(f"{'model':14s} {'ms/iter':>9s} {'x unary':>8s} {'paper s':>8s} {'paper / ours':>13s}")
    out = {}
    for kind, t in times.items():
        paper = PAPER_SECONDS.get(kind)
        ratio = f"{paper * 1e3 / t.median:13.1f}" if paper else f"{'':13s}"
        ptxt = f"{paper:8.3f}" if paper else f"{'':8s}"
        print(f"{kind:14s} {t.median:9.2f} {t.median / base:8.2f} {ptxt} {ratio}")
        out[kind] = t.median
    return out


if __name__ == "__main__":
    main()

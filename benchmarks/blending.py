"""Blending vs the double loop (the paper's Fig. 9).

Trains the same Word50 model (one-layer MLP unaries 784-H-26, 2nd-order chain, eps = 1) twice
from the same initialisation and on the same batches:

* **blended**: one sweep per step on the stored per-example messages (the paper's algorithm);
* **double loop**: messages reset to zero and up to 20 sweeps per step (until the dual moves less
  than ``--tol``), the baseline "without blending".

Every ``--eval-every`` seconds of *training* time (evaluation is not counted) it measures, on a
fixed subset of the training set, the training negative log-likelihood as the paper plots it
(converged dual minus ``F(x, y*)``, from zero messages, ``--eval-sweeps`` sweeps) and the training
character error. It prints both curves, the time each run needs to reach the same NLL and the
ratio, and saves the plot as PNG.

    python benchmarks/blending.py --seconds 120                  # full Word50 (generated if missing)
    python benchmarks/blending.py --quick                        # tiny, for tests
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from structlight import MLP, ChainHead, InferenceSettings
from structlight.backbones import PerPosition


def load_train(root: Path, quick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images ``(n, 5, 784)`` float in [0, 1] and labels ``(n, 5)`` long."""
    from datamodules.word50 import generate_word50, read_hdf5

    path = root / "word50.h5"
    if not path.exists():
        sizes = dict(num_train=60, num_val=10, num_test=10) if quick else {}
        generate_word50(path, seed=0, progress=not quick, **sizes)
    images, labels = read_hdf5(path, "train")
    x = torch.from_numpy(images).float().div_(255).reshape(images.shape[0], 5, -1)
    return x, torch.from_numpy(labels).long()


class Model(nn.Module):
    def __init__(self, hidden: int, order: int, blend: bool, tol: float, n: int) -> None:
        super().__init__()
        self.backbone = PerPosition(MLP(784, [hidden]))
        self.head = ChainHead(
            num_vars=5,
            num_states=26,
            in_features=hidden,
            order=order,
            inference=InferenceSettings(blend=blend, max_sweeps=20, tol=tol if tol > 0 else None),
            num_train_examples=n,
        )

    def potentials(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), {"image": x})


@torch.no_grad()
def evaluate(model: Model, x: torch.Tensor, y: torch.Tensor, sweeps: int) -> tuple[float, float]:
    """Training NLL (converged dual - F(y*)) and character error (%) on ``x, y``."""
    theta = model.potentials(x)
    bp = model.head.bp
    msgs, _ = bp.run(theta, num_sweeps=sweeps)
    nll = (bp.dual(theta, msgs) - bp.score(theta, y)).mean().item()
    err = (bp.decode(theta, msgs) != y).float().mean().item() * 100
    return nll, err


def train_curve(
    blend: bool,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    eval_idx: torch.Tensor,
) -> list[tuple[float, float, float, int]]:
    """Train for ``args.seconds`` of training time; returns (time, nll, err, steps) points."""
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model = Model(args.hidden, args.order, blend, args.tol, x.shape[0]).to(dev)
    x, y, eval_idx = x.to(dev), y.to(dev), eval_idx.to(dev)

    def sync() -> None:  # a CUDA step is timed when it has finished, not when it is queued
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.95)
    gen = torch.Generator().manual_seed(args.seed)
    curve = [(0.0, *evaluate(model, x[eval_idx], y[eval_idx], args.eval_sweeps), 0)]
    clock, steps, next_eval = 0.0, 0, args.eval_every
    while clock < args.seconds:
        for idx in torch.randperm(x.shape[0], generator=gen).to(dev).split(args.batch):
            sync()
            t0 = time.perf_counter()
            batch = {"image": x[idx], "label": y[idx], "index": idx}
            theta = model.potentials(batch["image"])
            out = model.head.training_loss(theta, batch, track_dual_change=False)
            opt.zero_grad(set_to_none=True)
            out.loss.mean().backward()
            opt.step()
            sync()
            clock += time.perf_counter() - t0
            steps += 1
            if clock >= next_eval or clock >= args.seconds:
                curve.append(
                    (clock, *evaluate(model, x[eval_idx], y[eval_idx], args.eval_sweeps), steps)
                )
                next_eval += args.eval_every
            if clock >= args.seconds:
                break
    return curve


def time_to_reach(curve: list[tuple[float, float, float, int]], level: float) -> float:
    """First training time at which the NLL is <= level (linear interpolation); inf if never."""
    for (t0, a, _, _), (t1, b, _, _) in zip(curve, curve[1:]):
        if b <= level:
            return t1 if a == b else t0 + (t1 - t0) * (a - level) / (a - b)
    return math.inf


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/word50"))
    ap.add_argument("--seconds", type=float, default=120.0, help="training time per run")
    ap.add_argument("--eval-every", type=float, default=10.0)
    ap.add_argument("--eval-examples", type=int, default=1000)
    ap.add_argument("--eval-sweeps", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--order", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument(
        "--tol", type=float, default=1e-4, help="double loop: stop when dual moves less"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timed with device syncs)")
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/blending.png"))
    ap.add_argument("--quick", action="store_true", help="tiny data and budget (tests)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is visible here")
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        args.data = Path(tmp.name)
        args.seconds, args.eval_every, args.eval_examples, args.batch = 1.0, 0.5, 20, 10
        args.hidden, args.eval_sweeps = 32, 5
    x, y = load_train(args.data, args.quick)
    eval_idx = torch.arange(min(args.eval_examples, x.shape[0]))
    print(
        f"Word50 train {tuple(x.shape)}, MLP 784-{args.hidden}-26, order {args.order}, "
        f"batch {args.batch}, {args.seconds:.0f} s of training per run, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
    )
    curves = {}
    for name, blend in (("blended", True), ("double loop", False)):
        curves[name] = train_curve(blend, x, y, args, eval_idx)
        t, nll, err, steps = curves[name][-1]
        print(f"{name:12s}: {steps} steps in {t:.1f} s, final NLL {nll:.4f}, char error {err:.2f}%")
    print(
        f"\n{'time s':>8s} | {'blended NLL':>11s} {'err %':>6s} | {'double NLL':>10s} {'err %':>6s}"
    )
    for a, b in zip(curves["blended"], curves["double loop"]):
        print(f"{a[0]:8.1f} | {a[1]:11.4f} {a[2]:6.2f} | {b[1]:10.4f} {b[2]:6.2f}   (t={b[0]:.1f})")
    level = max(curves["double loop"][-1][1], curves["blended"][-1][1])
    t_blend = time_to_reach(curves["blended"], level)
    t_double = time_to_reach(curves["double loop"], level)
    ratio = t_double / t_blend if t_blend > 0 else math.nan
    print(
        f"\ntime to reach NLL {level:.4f}: blended {t_blend:.1f} s, double loop {t_double:.1f} s, "
        f"ratio {ratio:.1f}x (target >= 5x)"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name, curve in curves.items():
            c = np.array([(p[0], p[1], p[2]) for p in curve])
            axes[0].plot(c[:, 0], c[:, 1], marker="o", ms=3, label=name)
            axes[1].plot(c[:, 0], c[:, 2], marker="o", ms=3, label=name)
        axes[0].set(xlabel="training time (s)", ylabel="training NLL", title="Word50, 2nd order")
        axes[1].set(xlabel="training time (s)", ylabel="training character error (%)")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=100)
        print(f"plot saved to {args.plot}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {"level": level, "t_blend": t_blend, "t_double": t_double, "ratio": ratio}


if __name__ == "__main__":
    main()

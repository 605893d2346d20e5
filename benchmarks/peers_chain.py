"""Chain CRF training steps vs pytorch-struct and pytorch-crf.

One training step (forward, loss, backward, SGD step with momentum) of a 1st-order chain CRF
whose unaries come from the Word50 MLP 784-1024-26 (ReLU), on a batch of 100 five-letter words
(500 random 28x28 "characters", random labels), with one shared 26x26 transition table:

* ``unary``: the MLP alone with cross-entropy per character (the baseline, ratio 1);
* ``pytorch-crf``: ``torchcrf.CRF(26, batch_first=True)``, loss ``-crf(emissions, tags).mean``
  (its start/end scores zeroed at init so that its model equals ours);
* ``torch-struct``: ``torch_struct.LinearChainCRF`` on log potentials ``(B, N-1, C, C)`` (its
  layout ``[b, n, y_{n+1}, y_n]``, the first unary folded into the first edge), loss its
  ``partition`` minus the gold score gathered from the same tensor (``LinearChain.to_parts`` loops
  over the batch in Python, so it is left out in torch-struct's favour);
* ``ours exact``: :func:`structlight.chain_log_partition` minus :func:`structlight.chain_score`;
* ``ours blended``: the paper's step (docs/design.md §2): the batch's messages gathered from a
  store of ``--num-examples`` rows, one :meth:`ConvexBP.sweep` on the detached packed potentials,
  written back, loss ``mean(dual(theta, msgs) - score(theta, y))``. The packed potentials are
  built directly: the ``(B, 5, 26)`` unaries flattened, then the shared table tiled over the 4
  edges (region order of ``RegionGraph.chain(5, 26, 1)``);
* ``ours blended, ChainHead``: the same step through the library itself:
  :class:`structlight.ChainHead` (unary Linear = the MLP's last layer, its pairwise table ours)
  and its message store, ``head.training_loss`` as :class:`structlight.DeepStructuredModel`
  calls it.

Printed per variant: median step time (interleaved rounds, so load drift hits all alike), the
ratio to the unary-only step, and the first step's loss (``pytorch-crf``, ``torch-struct`` and
``ours exact`` must agree: the same model and the same exact NLL; ``ours blended`` is its convex
upper bound after one sweep). ``--profile`` adds a torch.profiler breakdown of the blended step.

Variable lengths (``--lengths LO-HI``, e.g. ``3-14``): the words' lengths are drawn uniformly
in ``LO..HI`` (from ``--seed``) and the batch is padded to ``HI`` positions (labels -100 at
padding); each row is again a ratio to the unary-only step on the same padded batch, whose
cross-entropy counts the present positions only (``ignore_index=-100``). The rows:

* ``unary (cross-entropy)``: the MLP on all ``HI`` positions, cross-entropy over present ones;
* ``pytorch-crf (mask)``: as above with its ``mask`` argument (``(B, N)`` bool; padding labels
  read as 0, which it multiplies by the mask);
* ``ours exact (lengths)``: ``chain_log_partition(u, p, lengths)`` minus ``chain_score(u, p, y,
  lengths)``;
* ``ours blended, ChainHead (length)``: ``ChainHead(num_vars=HI, ...)`` as above, with
  ``batch["length"]`` (its region mask drops the padding's regions from sweep, dual and score).

Peers are optional (``pip install -e .[bench]``); a missing one skips its row with a message.

    python benchmarks/peers_chain.py [--quick] [--device cpu|cuda] [--repeats N] [--profile]
                                     [--lengths LO-HI]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_args,
    environment_lines,
    format_table,
    optional_import,
    resolve_device,
    setup_threads,
    timeit_interleaved,
)

from structlight import ConvexBP, RegionGraph, chain_log_partition, chain_score  # noqa: E402
from structlight.head import ChainHead  # noqa: E402

#: The paper's Word50 optimiser settings (docs/design.md §3).
LR, MOMENTUM = 0.01, 0.95
#: Distinct mini-batches of store rows the blended step cycles through.
NUM_BATCHES = 10

Step = Callable[[], Tensor]


class Setup:
    """Inputs, labels, the MLP's initial weights and the transition table, shared by all."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(args.seed)
        b, n, c, h = args.batch, args.length, args.states, args.hidden
        self.b, self.n, self.c, self.device = b, n, c, device
        self.x = torch.rand(b, n, 784, generator=gen).to(device)
        self.y = torch.randint(0, c, (b, n), generator=gen).to(device)
        torch.manual_seed(args.seed)
        self.mlp = nn.Sequential(nn.Linear(784, h), nn.ReLU(), nn.Linear(h, c)).to(device)
        self.trans = (0.1 * torch.randn(c, c, generator=gen)).to(device)
        self.num_examples = max(args.num_examples, b)
        perm = torch.randperm(self.num_examples, generator=gen)
        self.batches = [
            perm[(i * b) % (self.num_examples - b + 1) :][:b].to(device) for i in range(NUM_BATCHES)
        ]
        #: ``(B,)`` int64 word lengths (variable-length mode), else None: all ``n``.
        self.lengths: Tensor | None = None
        self.present: Tensor | None = None
        if args.lengths is not None:
            lo, hi = args.lengths
            self.lengths = torch.randint(lo, hi + 1, (b,), generator=gen).to(device)
            self.present = torch.arange(n, device=device)[None, :] < self.lengths[:, None]
            self.y = self.y.masked_fill(~self.present, -100)

    def model(self) -> tuple[nn.Module, nn.Parameter]:
        """A fresh copy of the MLP and of the transition table."""
        return copy.deepcopy(self.mlp), nn.Parameter(self.trans.clone())

    def unaries(self, mlp: nn.Module) -> Tensor:
        """``(B, N, C)`` unary scores."""
        return mlp(self.x.reshape(-1, 784)).reshape(self.b, self.n, self.c)


def _stepper(params: list[Tensor], loss_fn: Callable[[], Tensor]) -> Step:
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def make_unary(s: Setup) -> Step:
    """(a) cross-entropy on the MLP's outputs."""
    mlp, _ = s.model()
    return _stepper(
        list(mlp.parameters()),
        lambda: nn.functional.cross_entropy(
            s.unaries(mlp).reshape(-1, s.c), s.y.reshape(-1), ignore_index=-100
        ),
    )


def make_pytorch_crf(s: Setup, torchcrf: object) -> Step:
    """(b) pytorch-crf's forward algorithm; start/end scores zeroed, transitions ours."""
    mlp, trans = s.model()
    crf = torchcrf.CRF(s.c, batch_first=True).to(s.device)
    if s.present is None:
        mask = torch.ones(s.b, s.n, dtype=torch.bool, device=s.device)  # its default is uint8
        tags = s.y
    else:  # it indexes with the padding's labels too (then multiplies by the mask): 0 there
        mask, tags = s.present, s.y.clamp(min=0)
    with torch.no_grad():
        crf.transitions.copy_(trans)
        crf.start_transitions.zero_()
        crf.end_transitions.zero_()
    return _stepper(
        list(mlp.parameters()) + list(crf.parameters()),
        lambda: -crf(s.unaries(mlp), tags, mask=mask, reduction="mean"),
    )


def make_torch_struct(s: Setup, torch_struct: object) -> Step:
    """(c) torch-struct's LinearChainCRF (log potentials ``[b, n, y_{n+1}, y_n]``)."""
    mlp, trans = s.model()
    rows = torch.arange(s.b, device=s.device)[:, None]
    pos = torch.arange(s.n - 1, device=s.device)

    def loss() -> Tensor:
        u = s.unaries(mlp)
        lp = trans.t()[None, None] + u[:, 1:, :, None]  # (B, N-1, C_next, C_prev)
        lp = torch.cat([lp[:, :1] + u[:, :1, None, :], lp[:, 1:]], dim=1)
        dist = torch_struct.LinearChainCRF(lp)
        gold = lp[rows, pos, s.y[:, 1:], s.y[:, :-1]].sum(1)
        return (dist.partition - gold).mean()

    return _stepper(list(mlp.parameters()) + [trans], loss)


def make_ours_exact(s: Setup) -> Step:
    """(d) our forward algorithm."""
    mlp, trans = s.model()

    def loss() -> Tensor:
        u = s.unaries(mlp)
        p = trans[None, None].expand(1, s.n - 1, s.c, s.c)
        return (chain_log_partition(u, p, s.lengths) - chain_score(u, p, s.y, s.lengths)).mean()

    return _stepper(list(mlp.parameters()) + [trans], loss)


def make_ours_blended(s: Setup, phase: Callable[[str], contextlib.AbstractContextManager]) -> Step:
    """(e) the paper's blended step: one sweep on stored messages, then dual minus score.

    ``phase(name)`` wraps each part (a profiler label, or a no-op).
    """
    mlp, trans = s.model()
    bp = ConvexBP(RegionGraph.chain(s.n, s.c, order=1), eps=1.0)
    store = bp.init_messages(s.num_examples, device=s.device)
    turn = [0]

    def loss() -> Tensor:
        idx = s.batches[turn[0] % len(s.batches)]
        turn[0] += 1
        with phase("mlp forward"):
            u = s.unaries(mlp)
        with phase("build theta"):
            # as a head builds it: the one table expanded over edges and batch (its backward
            # is a sum over the batch, not over a repeated copy)
            tab = trans.reshape(1, 1, -1).expand(1, s.n - 1, -1).reshape(1, -1)
            theta = torch.cat([u.reshape(s.b, -1), tab.expand(s.b, -1)], dim=1)
        with phase("gather messages"):
            msgs = store[idx]
        with phase("sweep"):
            prep = bp.prepare(theta)  # the sweep's tables serve the dual below
            msgs = bp.sweep(prep, msgs)
        with phase("scatter messages"):
            store[idx] = msgs
        with phase("dual"):
            dual = bp.dual(prep, msgs)
        with phase("score"):
            score = bp.score(theta, s.y)
        return (dual - score).mean()

    opt = torch.optim.SGD(list(mlp.parameters()) + [trans], lr=LR, momentum=MOMENTUM)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        val = loss()
        with phase("backward"):
            val.backward()
        with phase("optimizer"):
            opt.step()
        return val.detach()

    return step


def make_ours_head(s: Setup) -> Step:
    """(f) the library's own blended step: :class:`structlight.ChainHead` (its unary Linear is
    the MLP's last layer, its pairwise table ours) with its message store,
    ``head.training_loss`` (one sweep, store update, dual minus score), as
    :class:`structlight.DeepStructuredModel` runs it (``log_dual_change`` steps aside)."""
    mlp, trans = s.model()
    head = ChainHead(s.n, s.c, mlp[0].out_features, order=1, num_train_examples=s.num_examples).to(
        s.device
    )
    with torch.no_grad():
        head.potentials["unary"].net.weight.copy_(mlp[2].weight)
        head.potentials["unary"].net.bias.copy_(mlp[2].bias)
        head.potentials["pairwise"].weight.copy_(trans[None])
    body = mlp[:2]
    turn = [0]
    extra = {} if s.lengths is None else {"length": s.lengths}

    def loss() -> Tensor:
        idx = s.batches[turn[0] % len(s.batches)]
        turn[0] += 1
        feats = body(s.x.reshape(-1, 784)).reshape(s.b, s.n, -1)
        theta = head(feats)
        batch = {"label": s.y, "index": idx, **extra}
        out = head.training_loss(theta, batch, track_dual_change=False)
        return out.loss.mean()

    return _stepper(list(body.parameters()) + list(head.parameters()), loss)


def _no_phase(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def profile_blended(s: Setup, steps: int) -> None:
    """Print where the blended step's time goes: labelled phases, then the top aten ops."""
    from torch.profiler import ProfilerActivity, profile, record_function

    step = make_ours_blended(s, record_function)
    for _ in range(3):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    labels = [
        "mlp forward",
        "build theta",
        "gather messages",
        "sweep",
        "scatter messages",
        "dual",
        "score",
        "backward",
        "optimizer",
    ]
    rows = [
        [e.key, e.cpu_time_total / 1e3 / steps] for lab in labels for e in events if e.key == lab
    ]
    print(f"\nBlended step, profiled over {steps} steps (CPU time per step, ms, incl. children)")
    print(format_table(["phase", "ms/step"], rows))
    print("\nTop ops by self CPU time (all phases; shapes grouped)")
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total",
        row_limit=25,
        max_name_column_width=40,
        max_shapes_column_width=60,
    )
    print(table)


def main(argv: list[str] | None = None) -> dict[str, list[object]]:
    """Run the comparison and print its table; returns name -> row (for tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(ap, repeats=30, warmup=5)
    ap.add_argument("--batch", type=int, default=None, help="words per batch (100)")
    ap.add_argument("--length", type=int, default=None, help="characters per word (5)")
    ap.add_argument("--states", type=int, default=None, help="labels (26)")
    ap.add_argument("--hidden", type=int, default=None, help="MLP hidden units (1024)")
    ap.add_argument(
        "--num-examples", type=int, default=None, help="rows of the message store (10000)"
    )
    ap.add_argument("--profile", action="store_true", help="profile the blended step")
    ap.add_argument(
        "--lengths",
        type=_length_range,
        default=None,
        metavar="LO-HI",
        help="variable-length mode: word lengths uniform in LO..HI, padded to HI (sets --length)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.lengths is not None:
        args.length = args.lengths[1]
    full = dict(batch=100, length=5, states=26, hidden=1024, num_examples=10000)
    tiny = dict(batch=4, length=3, states=5, hidden=16, num_examples=20)
    for k, v in (tiny if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
    setup_threads(args.threads)
    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", message=".*arg_constraints.*")
    torchcrf = optional_import("torchcrf", "pytorch-crf")
    torch_struct = optional_import("torch_struct", "torch-struct")
    versions = {}
    for mod, name in ((torchcrf, "pytorch-crf"), (torch_struct, "torch-struct")):
        versions[name] = _version(name) if mod is not None else "not installed"
    print("\n".join(environment_lines(versions)))

    s = Setup(args, device)
    if args.lengths is not None:
        return _run_lengths(args, s, device, torchcrf)
    steps: dict[str, Step] = {"unary (cross-entropy)": make_unary(s)}
    if torchcrf is not None:
        steps["pytorch-crf"] = make_pytorch_crf(s, torchcrf)
    if torch_struct is not None:
        steps["torch-struct"] = make_torch_struct(s, torch_struct)
    steps["ours exact"] = make_ours_exact(s)
    steps["ours blended"] = make_ours_blended(s, _no_phase)
    steps["ours blended, ChainHead"] = make_ours_head(s)

    first = {k: float(fn()) for k, fn in steps.items()}  # also a warm-up call
    times = timeit_interleaved(steps, args.repeats, args.warmup, device)
    base = times["unary (cross-entropy)"].median
    out: dict[str, list[object]] = {}
    for k, t in times.items():
        out[k] = [k, device.type, t.median, t.low, t.median / base, first[k]]
    print(
        f"\nOne training step, {args.batch} words x {args.length} characters, {args.states} "
        f"labels, MLP 784-{args.hidden}-{args.states}; median of {args.repeats} interleaved "
        "rounds"
    )
    print(
        format_table(
            ["step", "device", "median ms", "min ms", "x unary", "first loss"], list(out.values())
        )
    )
    if "pytorch-crf" in times:
        crf_over = times["pytorch-crf"].median / base - 1
        for name in ("ours blended", "ours blended, ChainHead"):
            ours_over = times[name].median / base - 1
            verdict = "met" if ours_over <= crf_over else "not met"
            print(
                f"target (blended adds no more than pytorch-crf): pytorch-crf "
                f"+{100 * crf_over:.1f}%, {name} +{100 * ours_over:.1f}% -> {verdict}"
            )
    if args.profile:
        profile_blended(s, steps=max(2, args.repeats))
    return out


def _run_lengths(
    args: argparse.Namespace, s: Setup, device: torch.device, torchcrf: object
) -> dict[str, list[object]]:
    """The variable-length comparison (``--lengths``): rows, table and target line."""
    steps: dict[str, Step] = {"unary (cross-entropy)": make_unary(s)}
    if torchcrf is not None:
        steps["pytorch-crf (mask)"] = make_pytorch_crf(s, torchcrf)
    steps["ours exact (lengths)"] = make_ours_exact(s)
    steps["ours blended, ChainHead (length)"] = make_ours_head(s)
    if args.profile:
        print("--profile: the blended profile is of the fixed-length step only; skipped")

    first = {k: float(fn()) for k, fn in steps.items()}  # also a warm-up call
    times = timeit_interleaved(steps, args.repeats, args.warmup, device)
    base = times["unary (cross-entropy)"].median
    out: dict[str, list[object]] = {}
    for k, t in times.items():
        out[k] = [k, device.type, t.median, t.low, t.median / base, first[k]]
    lo, hi = args.lengths
    mean = float(s.lengths.float().mean())
    print(
        f"\nOne training step, {args.batch} words of lengths {lo}..{hi} (uniform, seed "
        f"{args.seed}; mean {mean:.2f}, {int(s.lengths.sum())} characters) padded to {hi} "
        f"positions, {args.states} labels, MLP 784-{args.hidden}-{args.states}; median of "
        f"{args.repeats} interleaved rounds"
    )
    print(
        format_table(
            ["step", "device", "median ms", "min ms", "x unary", "first loss"], list(out.values())
        )
    )
    if "pytorch-crf (mask)" in times:
        crf_over = times["pytorch-crf (mask)"].median / base - 1
        name = "ours blended, ChainHead (length)"
        ours_over = times[name].median / base - 1
        verdict = "met" if ours_over <= crf_over else "not met"
        print(
            f"target (blended adds no more than pytorch-crf with mask): pytorch-crf (mask) "
            f"{100 * crf_over:+.1f}%, {name} {100 * ours_over:+.1f}% -> {verdict}"
        )
    return out


def _length_range(text: str) -> tuple[int, int]:
    """``"LO-HI"`` -> ``(LO, HI)`` with ``1 <= LO <= HI``."""
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI (e.g. 3-14), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= LO <= HI, got {text!r}")
    return lo, hi


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()

"""Message passing vs PGMax: time per iteration and time to converge.

The same graphs and the same random N(0, 1) potentials (float32) on both sides:

* Word50 2nd-order chain, 5 variables x 26 states, batch 100;
* fully connected, 38 binary variables (703 edges), batch 300;
* a 32x32 4-connected grid with 5 states, batch 1.

Ours: :class:`structlight.ConvexBP` with ``eps = 1`` and ``c_r = 1`` (convex block-coordinate
descent on the dual; one *sweep* updates every region with parents). PGMax: loopy sum-product
BP (``temperature = 1``, ``damping = 0.5``) on a factor graph with one variable array, the unary
tables as evidence and one ``PairwiseFactorGroup`` holding every edge table; batched over
examples with ``jax.vmap`` and jit-compiled, timed with ``block_until_ready``.

Columns:

* per iteration: a run of ``--iters`` iterations from zero messages, divided by ``--iters``,
  timed in interleaved rounds (ours, PGMax, and with ``--compile`` our compiled sweeps)
  (one PGMax iteration = one parallel update of all messages, one of ours = one sweep);
* convergence, per example, within ``--cap`` iterations: PGMax until the largest message
  change is below ``1e-4`` (its ``run_with_diffs``); ours until the dual changes by less than
  ``1e-6`` relative (``|D_prev - D| <= 1e-6 max(1, |D|)``). Ours also reports the sweeps until its
  largest message change is below ``1e-4``, PGMax's own criterion, on messages normalised as
  PGMax normalises its own (each message's max subtracted);
* time to converge: ours, a loop that sweeps and evaluates the dual (the check) until every
  example of the batch has converged; PGMax, one jit-compiled run of as many iterations as its
  slowest *converging* example needed (a number it could not know in advance, so this favours
  PGMax); where some examples never converge, the run of ``--cap`` iterations, marked ``*``;
* ratios are PGMax time / our time (above 1: ours is faster);
* with ``--compile``, also ``ConvexBP(compile=True)``: its time per sweep (after a first,
  compiling sweep, whose seconds are printed apart), the ratio to PGMax, and the largest
  difference from the eager sweeps' messages after ``--iters`` sweeps.

A sanity check on a tree (a 1st-order chain 5 x 26, batch 100) compares both with the exact
marginals of :func:`structlight.chain_marginals`. Loopy BP is exact on a tree, so PGMax should
match to float precision. Ours is *not* exact there: with every ``c_r = 1`` the entropy is a
fractional (convex) one, not the Bethe entropy, so only the argmax agreement is expected to be
high, and the max abs difference is printed as what it is.

PGMax is optional (``pip install -e .[bench]``); without it the script prints our columns only.
PGMax 0.6.1 calls ``jax.lib.xla_bridge.get_backend()``, gone from jax 0.8 on; with a newer
jax this script aliases it to ``jax.extend.backend.get_backend`` and says so.

    python benchmarks/peers_mp.py [--quick] [--device cpu|cuda] [--repeats N] [--threads N]
                                  [--compile]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_args,
    environment_lines,
    format_table,
    optional_import,
    resolve_device,
    setup_threads,
    timeit,
    timeit_interleaved,
)

from structlight import ConvexBP, RegionGraph, chain_marginals  # noqa: E402

#: PGMax's convergence threshold on the largest message change of one example.
PGMAX_MSG_ATOL = 1e-4
#: Ours: relative change of one example's dual between two sweeps.
DUAL_RTOL = 1e-6
#: Ours, reported for comparison: PGMax's criterion applied to our (max-normalised) messages.
OURS_MSG_ATOL = 1e-4


@dataclass(frozen=True)
class Case:
    """One graph of the comparison."""

    name: str
    make: Callable[[], RegionGraph]
    batch: int


FULL_CASES = [
    Case("chain2 5x26 B=100", lambda: RegionGraph.chain(5, 26, order=2), 100),
    Case("fully connected 38x2 B=300", lambda: RegionGraph.fully_connected(38, 2), 300),
    Case("grid 32x32x5 B=1", lambda: RegionGraph.grid(32, 32, 5), 1),
]
QUICK_CASES = [
    Case("chain2 4x3 B=4", lambda: RegionGraph.chain(4, 3, order=2), 4),
    Case("fully connected 5x2 B=6", lambda: RegionGraph.fully_connected(5, 2), 6),
    Case("grid 3x3x3 B=1", lambda: RegionGraph.grid(3, 3, 3), 1),
]
FULL_TREE = Case("chain1 5x26 B=100", lambda: RegionGraph.chain(5, 26, order=1), 100)
QUICK_TREE = Case("chain1 4x3 B=4", lambda: RegionGraph.chain(4, 3, order=1), 4)


# ---------------------------------------------------------------------------------- potentials
def random_potentials(
    graph: RegionGraph, batch: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """N(0, 1) tables for a pairwise graph with one state count.

    Returns:
        ``unary`` ``(B, N, K)``, ``pairwise`` ``(B, E, K, K)`` (float32) and the E pairs in
        region order; ``pairwise[b, e, y_i, y_j]`` for pair ``e = (i, j)``.
    """
    regions = graph.regions
    n, ks = graph.num_vars, set(graph.num_states)
    if len(ks) != 1 or regions[:n] != [(i,) for i in range(n)] or not graph.is_pairwise():
        raise ValueError("expected singletons 0..N-1 first, then pairs, and one state count")
    k = ks.pop()
    pairs = [r for r in regions[n:]]
    rng = np.random.default_rng(seed)
    unary = rng.standard_normal((batch, n, k), dtype=np.float32)
    pairwise = rng.standard_normal((batch, len(pairs), k, k), dtype=np.float32)
    return unary, pairwise, pairs


# ---------------------------------------------------------------------------------- ours
class Ours:
    """ConvexBP on the given potentials (``eps = 1``, ``c_r = 1``)."""

    def __init__(
        self,
        graph: RegionGraph,
        unary: np.ndarray,
        pairwise: np.ndarray,
        device: torch.device,
        compile: bool = False,
    ) -> None:
        self.bp = ConvexBP(graph, eps=1.0, compile=compile)
        n = graph.num_vars
        u = torch.from_numpy(unary).to(device)
        p = torch.from_numpy(pairwise).to(device)
        tables = [u[:, i] for i in range(n)] + [p[:, e] for e in range(p.shape[1])]
        self.theta = self.bp.pack(tables)
        self.batch = self.theta.shape[0]
        sizes = [graph.region_size(c) for c, _ in graph.edges]
        self._seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(
            device
        )

    def normalized(self, msgs: torch.Tensor) -> torch.Tensor:
        """Messages with each message's max subtracted, as PGMax normalises its own.

        The dual is invariant to adding a constant to a message (with ``c_r = 1`` throughout),
        so un-normalised messages can drift along that direction after the dual has converged.
        """
        seg = self._seg.expand(msgs.shape[0], -1)
        top = msgs.new_zeros(msgs.shape[0], int(self._seg[-1]) + 1)
        top = top.scatter_reduce(1, seg, msgs, reduce="amax", include_self=False)
        return msgs - top.gather(1, seg)

    def run(self, iters: int) -> torch.Tensor:
        """``iters`` sweeps from zero messages; ``(B, M)``."""
        msgs = self.bp.init_messages(self.batch, self.theta.dtype, self.theta.device)
        prep = self.bp.prepare(self.theta)  # one theta for all sweeps, as ConvexBP.run does
        for _ in range(iters):
            msgs = self.bp.sweep(prep, msgs)
        return msgs

    def solve(self, cap: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Sweep until every example meets both criteria (or ``cap`` sweeps).

        Returns:
            ``(sweeps_dual, sweeps_msg, msgs)``: per example, the first sweep at which the dual
            criterion (resp. the message criterion) held, -1 if never; and the final messages.
        """
        bp = self.bp
        theta = bp.prepare(self.theta)
        msgs = bp.init_messages(self.batch, self.theta.dtype, self.theta.device)
        prev = bp.dual(theta, msgs)
        dual_at = torch.full((self.batch,), -1, dtype=torch.long, device=self.theta.device)
        msg_at = dual_at.clone()
        for s in range(1, cap + 1):
            new = bp.sweep(theta, msgs)
            d = bp.dual(theta, new)
            ok_d = (prev - d).abs() <= DUAL_RTOL * d.abs().clamp_min(1.0)
            change = self.normalized(new) - self.normalized(msgs)
            ok_m = change.abs().amax(dim=1) <= OURS_MSG_ATOL
            dual_at = torch.where((dual_at < 0) & ok_d, s, dual_at)
            msg_at = torch.where((msg_at < 0) & ok_m, s, msg_at)
            msgs, prev = new, d
            if bool((dual_at > 0).all() & (msg_at > 0).all()):
                break
        return dual_at.cpu().numpy(), msg_at.cpu().numpy(), msgs

    def solve_dual_only(self, cap: int) -> None:
        """What a user runs to convergence: sweeps plus one dual per sweep as the check."""
        bp = self.bp
        theta = bp.prepare(self.theta)
        msgs = bp.init_messages(self.batch, self.theta.dtype, self.theta.device)
        prev = bp.dual(theta, msgs)
        done = torch.zeros(self.batch, dtype=torch.bool, device=self.theta.device)
        for _ in range(cap):
            msgs = bp.sweep(theta, msgs)
            d = bp.dual(theta, msgs)
            done |= (prev - d).abs() <= DUAL_RTOL * d.abs().clamp_min(1.0)
            prev = d
            if bool(done.all()):
                break


# ---------------------------------------------------------------------------------- PGMax
def import_pgmax(device: torch.device) -> types.SimpleNamespace | None:
    """Import JAX and PGMax for ``device``, or print why the PGMax column is skipped."""
    if device.type == "cpu" and "jax" not in sys.modules and not os.environ.get("JAX_PLATFORMS"):
        os.environ["JAX_PLATFORMS"] = "cpu"  # no probing for GPU/TPU plugins
    jax = optional_import("jax", "jax")
    if jax is None:
        return None
    try:
        has_bridge = hasattr(jax.lib, "xla_bridge")
    except Exception:  # noqa: BLE001 - a deprecation shim may raise anything
        has_bridge = False
    if not has_bridge:  # jax >= 0.8 removed it; PGMax 0.6.1 calls it once, to warn on TPUs
        import jax.extend.backend

        jax.lib.xla_bridge = types.SimpleNamespace(get_backend=jax.extend.backend.get_backend)
        print(
            f"note: jax {jax.__version__} has no jax.lib.xla_bridge, which PGMax 0.6.1 calls; "
            "aliased to jax.extend.backend (or pin jax<0.8)"
        )
    pgmax = optional_import("pgmax", "pgmax")
    if pgmax is None:
        return None
    try:
        from pgmax import fgraph, fgroup, infer, vgroup
    except Exception as err:  # noqa: BLE001 - any failure only skips this peer
        print(f"skipping pgmax: {type(err).__name__}: {err}")
        return None
    want = "cpu" if device.type == "cpu" else "gpu"
    if jax.default_backend() != want:
        print(f"skipping pgmax on {device.type}: jax's backend is {jax.default_backend()!r}")
        return None
    return types.SimpleNamespace(
        jax=jax,
        version=pgmax.__version__,
        fgraph=fgraph,
        fgroup=fgroup,
        infer=infer,
        vgroup=vgroup,
    )


class PGMax:
    """Loopy sum-product BP in PGMax on the given potentials, vmapped over the batch."""

    def __init__(
        self,
        pg: types.SimpleNamespace,
        graph: RegionGraph,
        unary: np.ndarray,
        pairwise: np.ndarray,
        pairs: list[tuple[int, int]],
        damping: float,
    ) -> None:
        jax = pg.jax
        self.jax = jax
        n, k = unary.shape[1], unary.shape[2]
        variables = pg.vgroup.NDVarArray(num_states=k, shape=(n,))
        fg = pg.fgraph.FactorGraph(variable_groups=[variables])
        group = pg.fgroup.PairwiseFactorGroup(
            variables_for_factors=[[variables[i], variables[j]] for i, j in pairs]
        )
        fg.add_factors(group)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.bp = pg.infer.build_inferer(fg.bp_state, backend="bp")
        self.variables = variables
        self.damping = damping
        init = jax.jit(
            jax.vmap(
                lambda u, p: self.bp.init(
                    evidence_updates={variables: u}, log_potentials_updates={group: p}
                )
            )
        )
        self.arrays = jax.block_until_ready(
            init(jax.numpy.asarray(unary), jax.numpy.asarray(pairwise))
        )
        self._runs: dict[int, Callable] = {}
        self._marg = jax.jit(
            jax.vmap(lambda a: pg.infer.get_marginals(self.bp.get_beliefs(a))[variables])
        )

    def _run(self, iters: int) -> Callable:
        if iters not in self._runs:
            fn = functools.partial(
                self.bp.run_with_diffs, num_iters=iters, damping=self.damping, temperature=1.0
            )
            self._runs[iters] = self.jax.jit(self.jax.vmap(fn))
        return self._runs[iters]

    def run(self, iters: int) -> tuple[object, object]:
        """``iters`` iterations from zero messages; blocks until done."""
        return self.jax.block_until_ready(self._run(iters)(self.arrays))

    def solve(self, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Per example, the first iteration with max message change < 1e-4 (-1: never).

        Returns:
            ``(iters, marginals)``: ``(B,)`` and the ``(B, N, K)`` beliefs after ``cap``.
        """
        arrays, deltas = self.run(cap)
        d = np.asarray(deltas) < PGMAX_MSG_ATOL  # (B, cap)
        iters = np.where(d.any(1), d.argmax(1) + 1, -1)
        return iters, np.asarray(self._marg(arrays))


# ---------------------------------------------------------------------------------- report
def _summary(at: np.ndarray) -> tuple[str, str, int]:
    """'median / max' over converged examples, 'n/B' converged, and the max (or -1)."""
    ok = at[at > 0]
    if ok.size == 0:
        return "-", f"0/{at.size}", -1
    return f"{int(np.median(ok))} / {int(ok.max())}", f"{ok.size}/{at.size}", int(ok.max())


def bench_case(
    case: Case, device: torch.device, pg: types.SimpleNamespace | None, args: argparse.Namespace
) -> tuple[list[object], list[object]]:
    """Measure one graph; returns a row of the per-iteration table and one of convergence."""
    g = case.make()
    unary, pairwise, pairs = random_potentials(g, case.batch, seed=args.seed)
    ours = Ours(g, unary, pairwise, device)
    it, rep, warm = args.iters, args.repeats, args.warmup
    peer = PGMax(pg, g, unary, pairwise, pairs, damping=args.damping) if pg is not None else None
    comp = t_compile = None
    if args.compile:  # ConvexBP(compile=True): the first (compiling) sweep timed apart
        comp = Ours(g, unary, pairwise, device, compile=True)
        t0 = time.perf_counter()
        comp.run(1)
        t_compile = time.perf_counter() - t0
    # per iteration: interleaved rounds, so that load drift hits every candidate alike
    fns = {"ours": lambda: ours.run(it)}
    if comp is not None:
        fns["compiled"] = lambda: comp.run(it)
    if peer is not None:
        fns["pgmax"] = lambda: peer.run(it)
    per_it = {k: t.median / it for k, t in timeit_interleaved(fns, rep, warm, device).items()}
    t_ours = per_it["ours"]
    sweeps_d, sweeps_m, _ = ours.solve(args.cap)
    med_d, conv_d, _ = _summary(sweeps_d)
    med_m, _, _ = _summary(sweeps_m)
    conv_rep = max(1, min(rep, 5))
    t_ours_conv = timeit(lambda: ours.solve_dual_only(args.cap), conv_rep, 1, device).median

    t_pg = t_pg_conv = None
    med_p = conv_p = "-"
    if peer is not None:
        t_pg = per_it["pgmax"]
        iters_p, _ = peer.solve(args.cap)
        med_p, conv_p, max_p = _summary(iters_p)
        all_conv = bool((iters_p > 0).all())
        n_conv = max_p if all_conv else args.cap
        t_pg_conv = timeit(lambda: peer.run(n_conv), conv_rep, 1).median
        conv_p = conv_p if all_conv else conv_p + " *"

    def ratio(a: float | None, b: float) -> float | None:
        return None if a is None else a / b

    blocks = len(g.schedule())
    row_iter = [case.name, device.type, blocks, t_ours, t_pg, ratio(t_pg, t_ours)]
    if comp is not None:
        t_comp = per_it["compiled"]
        diff = float((comp.run(it) - ours.run(it)).abs().max())
        row_iter += [t_comp, ratio(t_pg, t_comp), t_compile, diff]
    row_conv = [
        case.name,
        device.type,
        med_d,
        conv_d,
        med_m,
        t_ours_conv,
        med_p,
        conv_p,
        t_pg_conv,
        ratio(t_pg_conv, t_ours_conv),
    ]
    return row_iter, row_conv


def tree_check(
    case: Case, device: torch.device, pg: types.SimpleNamespace | None, args: argparse.Namespace
) -> list[list[object]]:
    """Marginals on a 1st-order chain against the exact ones; rows of a small table."""
    g = case.make()
    unary, pairwise, pairs = random_potentials(g, case.batch, seed=args.seed)
    _, exact, _ = chain_marginals(torch.from_numpy(unary), torch.from_numpy(pairwise))
    exact_np = exact.numpy()
    arg_exact = exact_np.argmax(-1)
    ours = Ours(g, unary, pairwise, device)
    sweeps, _, msgs = ours.solve(args.cap)
    vb = ours.bp.variable_beliefs(ours.theta, msgs).cpu().numpy()
    rows: list[list[object]] = [
        [
            f"ours (ConvexBP, c_r=1, {int(sweeps.max())} sweeps)",
            float(np.abs(vb - exact_np).max()),
            float((vb.argmax(-1) == arg_exact).mean()),
        ]
    ]
    if pg is not None:
        peer = PGMax(pg, g, unary, pairwise, pairs, damping=args.damping)
        _, marg = peer.solve(args.cap)
        rows.append(
            [
                f"PGMax (loopy BP, {args.cap} iterations)",
                float(np.abs(marg - exact_np).max()),
                float((marg.argmax(-1) == arg_exact).mean()),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[list[object]]]:
    """Run the comparison and print its tables; returns them (for tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(ap, repeats=10, warmup=2)
    ap.add_argument("--iters", type=int, default=None, help="iterations per timed run (10)")
    ap.add_argument("--cap", type=int, default=None, help="most iterations to converge (200)")
    ap.add_argument("--damping", type=float, default=0.5, help="PGMax damping (0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time ConvexBP(compile=True) sweeps (torch.compile; compiling is timed apart)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
    args.iters = args.iters or (2 if args.quick else 10)
    args.cap = args.cap or (20 if args.quick else 200)
    setup_threads(args.threads)
    device = resolve_device(args.device)
    pg = import_pgmax(device)
    versions = {"pgmax": "not installed"}
    if pg is not None:
        versions = {"pgmax": pg.version, "jax": pg.jax.__version__}
    print("\n".join(environment_lines(versions)))
    cases, tree = (QUICK_CASES, QUICK_TREE) if args.quick else (FULL_CASES, FULL_TREE)

    rows_iter, rows_conv = [], []
    for case in cases:
        r_it, r_conv = bench_case(case, device, pg, args)
        rows_iter.append(r_it)
        rows_conv.append(r_conv)
    print(f"\nPer iteration (median of {args.repeats} runs of {args.iters} iterations, ms)")
    head = ["graph", "device", "blocks", "ours ms/sweep", "PGMax ms/iter", "PGMax / ours"]
    if args.compile:
        head += ["compiled ms/sweep", "PGMax / compiled", "compile s", "max diff"]
    print(format_table(head, rows_iter))
    print(
        f"\nConvergence within {args.cap} iterations (median / max over converged examples; "
        f"ours: dual change <= {DUAL_RTOL:g} relative, also max message change <= "
        f"{OURS_MSG_ATOL:g}; PGMax: max message change < {PGMAX_MSG_ATOL:g}, damping "
        f"{args.damping}; * = some examples never converged, PGMax time is for {args.cap} "
        "iterations)"
    )
    print(
        format_table(
            [
                "graph",
                "device",
                "ours sweeps",
                "ours converged",
                "ours sweeps (msg)",
                "ours ms to converge",
                "PGMax iters",
                "PGMax converged",
                "PGMax ms to converge",
                "PGMax / ours",
            ],
            rows_conv,
        )
    )
    rows_tree = tree_check(tree, device, pg, args)
    print(f"\nTree sanity check ({tree.name}): variable marginals vs exact (forward algorithm)")
    print(format_table(["method", "max abs diff", "argmax agreement"], rows_tree))
    print(
        "(loopy BP is exact on a tree; ConvexBP with all c_r = 1 optimises a convex fractional "
        "entropy, not the Bethe one, so its marginals differ from the exact ones by design)"
    )
    return {"iteration": rows_iter, "convergence": rows_conv, "tree": rows_tree}


if __name__ == "__main__":
    main()

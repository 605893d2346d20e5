"""Shared helpers for the benchmark scripts: flags, timing, optional peers, tables.

Every script in ``benchmarks/`` takes the same core flags (:func:`add_common_args`):

* ``--device cpu|cuda``: where to run (``cuda`` falls back with a message when absent);
* ``--quick``: tiny sizes and few repeats, for the smoke tests;
* ``--repeats N`` / ``--warmup N``: timed calls (the median is reported) and untimed calls first;
* ``--threads N``: intra-op threads for torch *and* XLA (PGMax), so both sides of a comparison
  use the same number of cores.

Timings are wall-clock medians in milliseconds, with ``torch.cuda.synchronize`` around CUDA
calls (callers of JAX code block on the result themselves, ``jax.block_until_ready``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch

__all__ = [
    "Timing",
    "add_common_args",
    "environment_lines",
    "format_table",
    "optional_import",
    "resolve_device",
    "setup_threads",
    "sync",
    "timeit",
    "timeit_interleaved",
]


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls, in milliseconds.

    Attributes:
        median: the median over the timed calls (what the tables report).
        low: the fastest timed call.
        high: the slowest timed call.
        repeats: how many calls were timed.
    """

    median: float
    low: float
    high: float
    repeats: int


def add_common_args(
    parser: argparse.ArgumentParser, repeats: int = 20, warmup: int = 3
) -> argparse.ArgumentParser:
    """Add ``--device``, ``--quick``, ``--repeats``, ``--warmup`` and ``--threads``."""
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and 2 repeats: a smoke test, not a benchmark",
    )
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"timed calls per cell (default: {repeats})"
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed calls first (default: {warmup})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for torch and XLA (default: the libraries' own defaults)",
    )
    return parser


def setup_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads in torch and, if JAX is not imported yet, in XLA.

    XLA reads its flags when JAX initialises its CPU backend, so call this before the first
    ``import jax`` (the scripts import peers lazily for that reason).
    """
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    else:
        flags = f"intra_op_parallelism_threads={threads}"
    old = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{old} {flags}".strip()


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, falling back to CPU (with a message) when CUDA is absent."""
    if name == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; running on cpu instead")
        return torch.device("cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 3,
    device: torch.device | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed calls.

    Args:
        fn: the work; it must finish its own asynchronous non-torch work (e.g. JAX's
            ``block_until_ready``) before returning.
        repeats: timed calls (>= 1).
        warmup: untimed calls first (JIT compilation, allocator and cache warm-up).
        device: a CUDA device is synchronised before and after each timed call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = device if device is not None else torch.device("cpu")
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def timeit_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 3,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds (one call of each per round).

    On a machine whose load drifts, interleaving spreads the drift over all candidates alike,
    so the ratios between them stay meaningful even when the absolute times move.

    Args:
        fns: name -> work, as for :func:`timeit`.
        repeats: rounds (timed calls of each function).
        warmup: untimed calls of each function first.
        device: a CUDA device is synchronised around each timed call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = device if device is not None else torch.device("cpu")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(dev)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: Timing(statistics.median(v), min(v), max(v), repeats) for k, v in times.items()}


def optional_import(module: str, pip_name: str) -> ModuleType | None:
    """Import an optional peer, or print why its column is skipped and return None.

    Any import-time failure (not only ``ImportError``: peers pinned to older libraries can fail
    in other ways) skips the peer rather than the whole script.
    """
    try:
        return importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any failure only skips this peer
        print(
            f"skipping {pip_name}: cannot import {module!r} ({type(err).__name__}: {err}); "
            f"install the peers with `pip install -e .[bench]`"
        )
        return None


def environment_lines(extra: dict[str, str] | None = None) -> list[str]:
    """One-line facts about this run: Python, torch, threads, cores, load, peer versions."""
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on every platform
        load = "n/a"
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "cpu cores": str(os.cpu_count()),
        "load average (1, 5, 15 min)": load,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
    facts.update(extra or {})
    return [f"{k}: {v}" for k, v in facts.items()]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes straight into ``docs/results.md``).

    Floats print with 3 significant digits; ``None`` prints as ``-``.
    """

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    out = [line, sep]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(out)


def add_word50_step_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--batch`` (words per mini-batch) and ``--hidden`` (the unary MLP's width)."""
    parser.add_argument("--batch", type=int, default=100, help="words per mini-batch (paper: 100)")
    parser.add_argument("--hidden", type=int, default=1024)
    return parser


def word50_step_inputs(
    args: argparse.Namespace, num_words: int = 1000
) -> tuple[torch.device, int, int, torch.Tensor, torch.Tensor]:
    """Threads, device and random Word50-shaped data for timing training iterations.

    ``--quick`` shrinks everything to a smoke test (and sets ``args.repeats``/``args.warmup``).

    Returns:
        ``(device, batch, hidden, x, y)``: ``x`` ``(num_words, 5, 1, 28, 28)`` in [0, 1), ``y``
        ``(num_words, 5)`` letters, on the device.
    """
    setup_threads(args.threads)
    device = resolve_device(args.device)
    b, hidden, n = args.batch, args.hidden, num_words
    if args.quick:
        b, hidden, n, args.repeats, args.warmup = 4, 16, 8, 2, 1
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 5, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 26, (n, 5), generator=gen).to(device)
    return device, b, hidden, x, y

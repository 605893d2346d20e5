"""``structlight-table``: run a grid of recipes and print a Table-1-style accuracy table.

Each recipe is trained (``fit``) and then evaluated on its test split with the final weights
(``test``); the results go into a table whose rows are the model (graph order, pairwise function,
strategy) and whose columns are the unary network (``H1=512``, ``H1=512, H2=128``), each cell
``word / character`` accuracy in percent, as the paper's Table 1 (multi-label recipes report the
Hamming error instead). The table is printed as markdown and saved as ``table.md`` and
``table.csv`` (one line per run, with timings) in ``--out``.

Runs that need a trained unary network (``strategy: piecewise`` or ``pretrain_joint``) get the
checkpoint of the grid's ``unary_only`` run with the same backbone, which therefore runs first;
without one in the grid, the recipe's own ``unary_checkpoint`` path is used.

Examples::

    # the quick start: unary only vs 2nd-order joint on the generated Word50 (a few minutes)
    structlight-table recipes/word50/quickstart_unary.yaml recipes/word50/quickstart.yaml

    # Table 1's H1 = 512 column, 3 epochs per run instead of the recipes' 100
    structlight-table recipes/word50/table1/*_h512.yaml --max_epochs 3 --out runs/table_h512

    # everything (Table 1 and Fig. 6), resumable: finished runs are read back from table.csv
    structlight-table recipes/word50/table1 recipes/word50/fig6 --resume

Any other LightningCLI override applies to every run: ``--set trainer.accelerator=gpu``.

An output folder that already holds a ``table.csv`` is refused unless ``--resume`` (keep its
finished runs) or ``--overwrite`` (start over: every run replaces what its run directory holds)
is given. With ``--resume``, a recipe that is not in ``table.csv`` but whose run directory holds
a run (one that was interrupted) is resumed from that run's ``checkpoints/last.ckpt``, or started
over when there is no readable one. Like ``structlight fit``, a run never writes into a run
directory that holds another run: a recipe whose directory is taken (e.g. by an earlier
``structlight fit``) stops the grid with a message, unless ``--overwrite`` or ``--resume``.

This module holds the runner and the command line; a recipe's row and column, the run record
and the table files are in :mod:`structlight.table_results`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from structlight.table_results import (
    RunResult,
    backbone_key,
    describe,
    expand_recipes,
    format_table,
    init_args,
    read_table_csv,
    write_table,
)

__all__ = ["RunResult", "describe", "expand_recipes", "format_table", "main", "run_grid"]

_NEEDS_UNARY = ("piecewise", "pretrain_joint")


# ---------------------------------------------------------------------- running
def _metric(metrics: dict[str, Any], key: str) -> float:
    v = metrics.get(key)
    return round(float(v), 4) if v is not None else math.nan


def _start_point(trainer: Any, resume: bool, overwrite: bool) -> tuple[str | None, bool]:
    """``(ckpt_path, overwrite)`` for a run: resume an interrupted run in place when asked."""
    from structlight.checkpointing import CheckpointFileError, check_checkpoint, run_artifacts

    if overwrite or not resume or not trainer.loggers or trainer.fast_dev_run:
        return None, overwrite
    run_dir = Path(trainer.log_dir)
    if not run_artifacts(run_dir):
        return None, False
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        return str(check_checkpoint(last)), False
    except (CheckpointFileError, FileNotFoundError):
        return None, True  # nothing to resume from: start that run over


def _run_one(
    recipe: Path,
    config: dict[str, Any],
    overrides: list[str],
    unary_ckpt: str | None,
    out: Path | None,
    table_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[RunResult, str]:
    from structlight.checkpointing import RunDirectoryError, atomic_save_checkpoint, claim_run_dir
    from structlight.cli import build_cli

    row, column, strategy = describe(config, recipe.stem)
    args = ["--config", str(recipe)]
    logger = (config.get("trainer") or {}).get("logger")
    if out is not None and isinstance(logger, dict) and "save_dir" in init_args(logger):
        args += ["--trainer.logger.init_args.save_dir", str(out / "runs")]
    if unary_ckpt is not None:
        args += ["--model.init_args.unary_checkpoint", unary_ckpt]
    args += overrides
    cli = build_cli(args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    ckpt_path, replace = _start_point(trainer, resume, overwrite)
    try:
        claim_run_dir(trainer, ckpt_path, overwrite=replace)
    except RunDirectoryError as err:
        raise RunDirectoryError(
            f"{recipe}: {str(err).split(';')[0]}. Pass --resume to resume it (if it is this "
            "recipe's interrupted run), --overwrite to replace it, or --out <another folder>"
        ) from None
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - t0
    ckpt = ""
    if strategy == "unary_only":
        # a copy under the table's folder: the run's own last.ckpt may be shared with other runs
        # (fast_dev_run or no logger: <cwd>/checkpoints/last.ckpt)
        ckpt = str(table_dir / "checkpoints" / f"{recipe.stem}.ckpt")
        Path(ckpt).parent.mkdir(parents=True, exist_ok=True)
        atomic_save_checkpoint(trainer, ckpt)
    t0 = time.perf_counter()
    results = trainer.test(model, datamodule=dm, verbose=True)
    test_s = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    res = RunResult(
        recipe=str(recipe),
        row=row,
        column=column,
        strategy=strategy,
        word_acc=_metric(metrics, "test/word_acc"),
        char_acc=_metric(metrics, "test/char_acc"),
        hamming_error=_metric(metrics, "test/hamming_error"),
        epochs=int(trainer.current_epoch),
        steps=int(trainer.global_step),
        fit_seconds=round(fit_s, 1),
        test_seconds=round(test_s, 1),
        run_dir=str(trainer.log_dir or ""),
        extra=metrics,
    )
    return res, ckpt


def run_grid(
    recipes: Sequence[str | Path],
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    overwrite: bool = False,
) -> list[RunResult]:
    """Train and test every recipe, unary-only runs first; save the table after each run.

    Args:
        recipes: recipe files or folders.
        overrides: LightningCLI arguments appended to every run, e.g.
            ``["--trainer.max_epochs", "3"]``.
        out: folder of ``table.md`` / ``table.csv`` (and of the runs' logs, under ``runs/``, when
            given); None: the table goes to ``runs/table`` and the runs where their recipes say.
        resume: skip recipes already in ``out/table.csv`` (their results are kept); resume a
            recipe's interrupted run from its ``last.ckpt`` (see the module docs).
        quiet: print only the final table.
        overwrite: start over: an existing table is replaced and every run replaces the run in
            its run directory.

    Returns:
        The results, in run order.

    Raises:
        FileExistsError: the table folder holds a ``table.csv`` and neither ``resume`` nor
            ``overwrite`` is set; or (:class:`structlight.checkpointing.RunDirectoryError`) a
            run directory holds another run.
        ValueError: ``resume`` and ``overwrite`` together, or no recipes.
    """
    if resume and overwrite:
        raise ValueError("--resume keeps finished runs and --overwrite replaces them: pick one")
    paths = expand_recipes([str(r) for r in recipes])
    if not paths:
        raise ValueError("no recipes given")
    table_dir = Path(out) if out is not None else Path("runs") / "table"
    if (table_dir / "table.csv").is_file() and not (resume or overwrite):
        raise FileExistsError(
            f"'{table_dir / 'table.csv'}' exists: this folder holds an earlier table. Pass "
            "--resume to keep its finished runs and run the rest, --overwrite to run every "
            "recipe again (replacing their runs), or --out <another folder>"
        )
    configs = {p: yaml.safe_load(p.read_text()) or {} for p in paths}
    order = sorted(
        paths, key=lambda p: describe(configs[p], p.stem)[2] != "unary_only"
    )  # stable: unary-only runs first, then the given order
    table_dir.mkdir(parents=True, exist_ok=True)
    done = read_table_csv(table_dir / "table.csv") if resume else []
    done_recipes = {r.recipe for r in done}
    results: list[RunResult] = list(done)
    unary_ckpts: dict[str, str] = {}
    for r in done:
        if r.strategy == "unary_only":
            copy = table_dir / "checkpoints" / f"{Path(r.recipe).stem}.ckpt"
            last = Path(r.run_dir) / "checkpoints" / "last.ckpt" if r.run_dir else None
            for p in (copy, last):
                if p is not None and p.is_file():
                    unary_ckpts[backbone_key(configs.get(Path(r.recipe), {}))] = str(p)
                    break
    todo = [p for p in order if str(p) not in done_recipes]
    for i, path in enumerate(todo, 1):
        cfg = configs[path]
        _, _, strategy = describe(cfg, path.stem)
        unary = unary_ckpts.get(backbone_key(cfg)) if strategy in _NEEDS_UNARY else None
        if not quiet:
            print(f"\n=== [{i}/{len(todo)}] {path} ===", flush=True)
        res, ckpt = _run_one(
            path,
            cfg,
            list(overrides),
            unary,
            Path(out) if out else None,
            table_dir,
            resume=resume,
            overwrite=overwrite,
        )
        if strategy == "unary_only":
            unary_ckpts[backbone_key(cfg)] = ckpt
        results.append(res)
        write_table(results, table_dir)
        if not quiet:
            print(
                f"=== {path.stem}: word {res.word_acc:.2f} % / char {res.char_acc:.2f} % "
                f"(fit {res.fit_seconds:.0f} s, {res.steps} steps) ===",
                flush=True,
            )
    write_table(results, table_dir)
    return results


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="structlight-table",
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (structlight/table.py) and docs/reproducing.md for examples.",
    )
    p.add_argument("recipes", nargs="+", help="recipe YAML files or folders of them")
    p.add_argument("--max_epochs", type=int, default=None, help="override every recipe's epochs")
    p.add_argument("--max_steps", type=int, default=None, help="stop every run after N steps")
    p.add_argument(
        "--limit_train_batches",
        type=float,
        default=None,
        help="fraction (<= 1) or number of training batches per epoch",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any LightningCLI override, e.g. trainer.accelerator=gpu (repeatable)",
    )
    p.add_argument("--out", default=None, help="folder for table.md/table.csv and the runs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in table.csv; resume interrupted ones from their last.ckpt",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: replace an existing table and the runs in the recipes' run directories",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    return p


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``structlight-table``.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``).
    """
    ns = _parser().parse_args(args)
    overrides: list[str] = []
    if ns.max_epochs is not None:
        overrides += ["--trainer.max_epochs", str(ns.max_epochs)]
    if ns.max_steps is not None:
        overrides += ["--trainer.max_steps", str(ns.max_steps)]
    if ns.limit_train_batches is not None:
        v = ns.limit_train_batches
        overrides += ["--trainer.limit_train_batches", str(int(v) if v > 1 else v)]
    for item in ns.sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"structlight-table: --set expects KEY=VALUE, got {item!r}")
        overrides += [f"--{key.lstrip('-')}", value]
    t0 = time.perf_counter()
    results = run_grid(
        ns.recipes, overrides, out=ns.out, resume=ns.resume, quiet=ns.quiet, overwrite=ns.overwrite
    )
    folder = Path(ns.out) if ns.out else Path("runs") / "table"
    print("\n" + format_table(results) + "\n")
    print(
        f"{len(results)} runs in {time.perf_counter() - t0:.0f} s; saved {folder / 'table.md'} "
        f"and {folder / 'table.csv'}",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])

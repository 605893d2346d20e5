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
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunResult", "describe", "expand_recipes", "format_table", "main", "run_grid"]

_NEEDS_UNARY = ("piecewise", "pretrain_joint")
_STRATEGY_LABEL = {
    "unary_only": "Unary only",
    "joint": "JointTrain",
    "piecewise": "PwTrain",
    "pretrain_joint": "PreTrainJoint",
}
_ORDER_LABEL = {1: "1st order", 2: "2nd order", 3: "3rd order"}
_CSV_FIELDS = (
    "recipe",
    "row",
    "column",
    "strategy",
    "word_acc",
    "char_acc",
    "hamming_error",
    "epochs",
    "steps",
    "fit_seconds",
    "test_seconds",
    "run_dir",
)


@dataclass
class RunResult:
    """One finished run of the grid.

    Attributes:
        recipe: the recipe file.
        row: the table row (model and strategy), e.g. ``"2nd order JointTrain"``.
        column: the table column (unary network), e.g. ``"H1=512"``.
        strategy: the model's strategy.
        word_acc: test word accuracy (%), or NaN.
        char_acc: test character accuracy (%), or NaN.
        hamming_error: test Hamming error (%) of multi-label tasks, or NaN.
        epochs: epochs trained.
        steps: optimizer steps taken.
        fit_seconds: wall time of ``fit``.
        test_seconds: wall time of ``test``.
        run_dir: the run's log directory.
    """

    recipe: str
    row: str
    column: str
    strategy: str
    word_acc: float = math.nan
    char_acc: float = math.nan
    hamming_error: float = math.nan
    epochs: int = 0
    steps: int = 0
    fit_seconds: float = 0.0
    test_seconds: float = 0.0
    run_dir: str = ""
    extra: dict[str, float] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------- recipe inspection
def _init_args(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return dict(node.get("init_args") or {})
    return {}


def _hidden_sizes(backbone: Any) -> list[int] | None:
    """The MLP hidden sizes of ``PerPosition(MLP(...))``-style backbones (or None)."""
    node = backbone
    for _ in range(4):
        if not isinstance(node, dict):
            return None
        args = _init_args(node)
        if "hidden" in args:
            return [int(h) for h in args["hidden"]]
        node = args.get("module") or args.get("backbone")
    return None


def describe(config: dict[str, Any], fallback: str) -> tuple[str, str, str]:
    """The table row, column and strategy of a recipe's (parsed YAML) config.

    Args:
        config: the recipe as loaded by ``yaml.safe_load``.
        fallback: a name to use when the config is not a recognisable chain model.

    Returns:
        ``(row, column, strategy)``.
    """
    model = _init_args(config.get("model"))
    strategy = str(model.get("strategy", "joint"))
    head_node = model.get("head") or {}
    head = _init_args(head_node)
    head_cls = str(head_node.get("class_path", "")).rsplit(".", 1)[-1]
    label = _STRATEGY_LABEL.get(strategy, strategy)
    if strategy == "unary_only":
        row = label
    elif head_cls == "ChainHead":
        order = int(head.get("order", 1))
        row = f"{_ORDER_LABEL.get(order, f'order {order}')} {label}"
        if head.get("pairwise") == "mlp":
            hidden = head.get("pairwise_hidden") or [64]
            row += f", PairH{'x'.join(str(h) for h in hidden)}"
    elif head_cls:
        row = f"{head_cls} {label}"
    else:
        row = fallback
    hidden = _hidden_sizes(model.get("backbone"))
    if hidden:
        column = ", ".join(f"H{i + 1}={h}" for i, h in enumerate(hidden))
    else:
        bb = str((model.get("backbone") or {}).get("class_path", "")).rsplit(".", 1)[-1]
        column = bb or fallback
    return row, column, strategy


def _backbone_key(config: dict[str, Any]) -> str:
    model = _init_args(config.get("model"))
    head = _init_args(model.get("head"))
    unary = {k: head.get(k) for k in ("num_vars", "num_states", "in_features", "unary_hidden")}
    return yaml.safe_dump({"backbone": model.get("backbone"), "unary": unary}, sort_keys=True)


def expand_recipes(items: Sequence[str]) -> list[Path]:
    """Files as given; folders become their ``*.yaml`` files (recursively, sorted).

    Raises:
        FileNotFoundError: an item is neither a file nor a folder.
    """
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(p.rglob("*.yaml"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"recipe '{item}' is neither a file nor a folder")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


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
    if out is not None and isinstance(logger, dict) and "save_dir" in _init_args(logger):
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
    done = _read_csv(table_dir / "table.csv") if resume else []
    done_recipes = {r.recipe for r in done}
    results: list[RunResult] = list(done)
    unary_ckpts: dict[str, str] = {}
    for r in done:
        if r.strategy == "unary_only":
            copy = table_dir / "checkpoints" / f"{Path(r.recipe).stem}.ckpt"
            last = Path(r.run_dir) / "checkpoints" / "last.ckpt" if r.run_dir else None
            for p in (copy, last):
                if p is not None and p.is_file():
                    unary_ckpts[_backbone_key(configs.get(Path(r.recipe), {}))] = str(p)
                    break
    todo = [p for p in order if str(p) not in done_recipes]
    for i, path in enumerate(todo, 1):
        cfg = configs[path]
        _, _, strategy = describe(cfg, path.stem)
        unary = unary_ckpts.get(_backbone_key(cfg)) if strategy in _NEEDS_UNARY else None
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
            unary_ckpts[_backbone_key(cfg)] = ckpt
        results.append(res)
        _write(results, table_dir)
        if not quiet:
            print(
                f"=== {path.stem}: word {res.word_acc:.2f} % / char {res.char_acc:.2f} % "
                f"(fit {res.fit_seconds:.0f} s, {res.steps} steps) ===",
                flush=True,
            )
    _write(results, table_dir)
    return results


# ---------------------------------------------------------------------- output
def _cell(r: RunResult) -> str:
    if not math.isnan(r.word_acc):
        return f"{r.word_acc:.2f} / {r.char_acc:.2f}"
    if not math.isnan(r.hamming_error):
        return f"{r.hamming_error:.2f}"
    return "-"


def _col_key(col: str) -> tuple[Any, ...]:
    nums = [int(s.split("=")[1]) for s in col.split(", ") if "=" in s and s.split("=")[1].isdigit()]
    return (len(nums), nums, col) if nums else (99, [], col)


def _row_key(row: str) -> tuple[Any, ...]:
    if row == "Unary only":
        return (0, "", 0, "")
    strat_rank = {"JointTrain": 0, "PwTrain": 1, "PreTrainJoint": 2}
    for label, rank in strat_rank.items():
        if label in row:
            head, _, rest = row.partition(label)
            return (1, head, rank if not rest else 3, rest)
    return (2, row, 0, "")


def format_table(results: Sequence[RunResult]) -> str:
    """Markdown table: rows = model and strategy, columns = unary network.

    Cells are ``word / character`` accuracy (%), or the Hamming error (%) of multi-label
    recipes; a later result for the same cell replaces an earlier one.
    """
    cells: dict[tuple[str, str], str] = {}
    for r in results:
        cells[(r.row, r.column)] = _cell(r)
    rows = sorted({r.row for r in results}, key=_row_key)
    cols = sorted({r.column for r in results}, key=_col_key)
    seq = any(not math.isnan(r.word_acc) for r in results)
    corner = "model \\ unary (word / char %)" if seq else "model \\ unary"
    lines = [
        "| " + " | ".join([corner, *cols]) + " |",
        "| " + " | ".join(["---"] * (len(cols) + 1)) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join([row, *(cells.get((row, c), "") for c in cols)]) + " |")
    return "\n".join(lines)


def _write(results: Sequence[RunResult], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(_CSV_FIELDS))
        w.writeheader()
        for r in results:
            d = asdict(r)
            w.writerow({k: d[k] for k in _CSV_FIELDS})
    machine = f"{platform.platform()}, Python {platform.python_version()}"
    total = sum(r.fit_seconds + r.test_seconds for r in results)
    text = (
        "Word / character accuracy (%) on the test split; written by `structlight-table`.\n\n"
        f"{format_table(results)}\n\n"
        f"{len(results)} runs, {total:.0f} s of fit + test in all; {machine}.\n"
    )
    (folder / "table.md").write_text(text)


def _read_csv(path: Path) -> list[RunResult]:
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as f:
        for d in csv.DictReader(f):
            out.append(
                RunResult(
                    recipe=d["recipe"],
                    row=d["row"],
                    column=d["column"],
                    strategy=d["strategy"],
                    word_acc=float(d["word_acc"]),
                    char_acc=float(d["char_acc"]),
                    hamming_error=float(d["hamming_error"]),
                    epochs=int(d["epochs"]),
                    steps=int(d["steps"]),
                    fit_seconds=float(d["fit_seconds"]),
                    test_seconds=float(d["test_seconds"]),
                    run_dir=d["run_dir"],
                )
            )
    return out


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="structlight-table",
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (structlight/table.py) and README.md for examples.",
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

"""The results side of ``structlight-table``: what a recipe's table cell is, and the tables.

* :class:`RunResult`: one finished run of the grid.
* :func:`describe`: a recipe's table row (model and strategy), column (unary network) and
  strategy; :func:`backbone_key`: what a run that needs a trained unary network shares with the
  grid's ``unary_only`` run that provides it; :func:`expand_recipes`: the recipe files of files
  and folders.
* :func:`format_table`: the markdown table; :func:`write_table` and :func:`read_table_csv`:
  ``table.md`` / ``table.csv`` in the output folder.

The runner and the command line are in :mod:`structlight.table`.
"""

from __future__ import annotations

import csv
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RunResult",
    "backbone_key",
    "describe",
    "expand_recipes",
    "format_table",
    "init_args",
    "read_table_csv",
    "write_table",
]

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
def init_args(node: Any) -> dict[str, Any]:
    """A copy of the ``init_args`` of a ``class_path`` + ``init_args`` node ({} if none)."""
    if isinstance(node, dict):
        return dict(node.get("init_args") or {})
    return {}


def _hidden_sizes(backbone: Any) -> list[int] | None:
    """The MLP hidden sizes of ``PerPosition(MLP(...))``-style backbones (or None)."""
    node = backbone
    for _ in range(4):
        if not isinstance(node, dict):
            return None
        args = init_args(node)
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
    model = init_args(config.get("model"))
    strategy = str(model.get("strategy", "joint"))
    head_node = model.get("head") or {}
    head = init_args(head_node)
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


def backbone_key(config: dict[str, Any]) -> str:
    """The backbone and unary layer of a recipe (parsed YAML), as a string to compare.

    A run that needs a trained unary network gets the checkpoint of the grid's ``unary_only``
    run with the same key.
    """
    model = init_args(config.get("model"))
    head = init_args(model.get("head"))
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


def write_table(results: Sequence[RunResult], folder: Path) -> None:
    """Save ``table.csv`` (one line per run, with timings) and ``table.md`` in ``folder``."""
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


def read_table_csv(path: Path) -> list[RunResult]:
    """The runs of a ``table.csv`` written by :func:`write_table` ([] if there is none)."""
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

"""Every recipe has a tiny twin under ``tests/conf/``; every twin builds, and runs (``fast_dev_run``).

Every twin is parsed and instantiated by the command line's builder here; one twin of each kind
(data set, strategy, head, order, pairwise term, handling of missing labels) also trains and
validates for a batch, the others only among the slow tests (``-m slow``).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.helpers.recipes import RECIPES, ROOT, TWINS, stand_in_unary_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

#: The data sets whose recipes and twins this file checks (Flickr's: tests/test_flickr_recipes.py).
DATASETS = ("word50", "varwords")


def _recipes() -> list[Path]:
    return [p for d in DATASETS for p in sorted((RECIPES / d).rglob("*.yaml"))]


def _twins() -> list[Path]:
    # Flickr's twins run on a fake MIRFLICKR tree: tests/test_flickr_recipes.py
    return [p for d in DATASETS for p in sorted((TWINS / d).rglob("*.yaml"))]


def _twin_params() -> list[Any]:
    return [pytest.param(p, id=str(p.relative_to(TWINS))) for p in _twins()]


def _kind(cfg: dict[str, Any]) -> tuple[str, ...]:
    """What a twin's run exercises: data set, strategy, head class, order, pairwise term and the
    handling of missing labels."""
    model = cfg["model"]["init_args"]
    head = model["head"]["init_args"]
    pairwise = str(head.get("pairwise", "table"))
    order = "-" if pairwise == "none" else str(head.get("order", 1))
    missing = (cfg["data"]["init_args"].get("missing_labels") or {}).get("handling", "-")
    data, head_class = cfg["data"]["class_path"], model["head"]["class_path"]
    return (data, model["strategy"], head_class, order, pairwise, str(missing))


def _backbone_width(cfg: dict[str, Any]) -> int:
    return sum(cfg["model"]["init_args"]["backbone"]["init_args"]["module"]["init_args"]["hidden"])


def _run_params() -> list[Any]:
    """Every twin; the cheapest of each :func:`_kind` (narrowest backbone) runs by default, the
    others are marked slow."""
    cfgs = {p: yaml.safe_load(p.read_text()) for p in _twins()}
    first: dict[tuple[str, ...], Path] = {}
    for p in sorted(cfgs, key=lambda p: (_backbone_width(cfgs[p]), str(p))):
        first.setdefault(_kind(cfgs[p]), p)
    chosen = set(first.values())
    return [
        pytest.param(p, id=str(p.relative_to(TWINS)), marks=() if p in chosen else pytest.mark.slow)
        for p in _twins()
    ]


def _class_paths(node: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if k == "class_path":
                out[prefix] = str(v)
            else:
                out.update(_class_paths(v, key))
    return out


def test_recipes_are_generated() -> None:
    """The YAML files are exactly what recipes/make_recipes.py writes."""
    sys.path.insert(0, str(RECIPES))
    try:
        import make_recipes
    finally:
        sys.path.remove(str(RECIPES))
    stale = [
        str(p.relative_to(ROOT))
        for p, text in make_recipes.files().items()
        if p.read_text() != text
    ]
    assert not stale, f"run `python recipes/make_recipes.py`; out of date: {stale[:5]}"


def test_grid_covers_the_paper() -> None:
    """Table 1 (70 runs: 10 unary MLPs x (unary + 6 structured)), Fig. 6 (30) and the quick start."""
    table1 = list((RECIPES / "word50" / "table1").glob("*.yaml"))
    fig6 = list((RECIPES / "word50" / "fig6").glob("*.yaml"))
    assert len(table1) == 70 and len(fig6) == 30
    assert (RECIPES / "word50" / "quickstart.yaml").is_file()
    cfg = yaml.safe_load((RECIPES / "word50" / "table1" / "pretrain2_h512.yaml").read_text())
    model = cfg["model"]["init_args"]
    assert model["optimizer"]["init_args"] == {"lr": 0.001, "momentum": 0.95}
    assert model["unary_checkpoint"] == "runs/word50/unary_h512/checkpoints/last.ckpt"
    assert model["head"]["init_args"]["order"] == 2
    assert cfg["data"]["init_args"]["batch_size"] == 100
    sched = model["lr_scheduler"]
    assert sched["init_args"] == {"mode": "max", "factor": 0.5, "patience": 0}
    assert model["scheduler_monitor"] == "val/char_acc"


def test_varwords_recipes() -> None:
    """Unary only, 1st and 2nd order on VarWords: a chain over its longest word, 14 positions."""
    from datamodules.varwords import MAX_LENGTH

    heads = {}
    for name in ("unary", "joint1", "joint2"):
        cfg = yaml.safe_load((RECIPES / "varwords" / f"{name}.yaml").read_text())
        assert cfg["data"]["class_path"] == "datamodules.varwords.VarWordsDataModule"
        model = cfg["model"]["init_args"]
        heads[name] = model["head"]["init_args"]
        assert heads[name]["num_vars"] == MAX_LENGTH == 14
        assert model["val_sweeps"] == 50 and "val_tol" not in model  # until convergence
    assert heads["unary"]["pairwise"] == "none"
    assert (heads["joint1"]["order"], heads["joint2"]["order"]) == (1, 2)


@pytest.mark.parametrize("recipe", _recipes(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_has_a_twin(recipe: Path) -> None:
    """Same classes and model settings; only the trainer and the data size differ."""
    twin = TWINS / recipe.relative_to(RECIPES)
    assert twin.is_file(), f"no tiny twin {twin.relative_to(ROOT)}"
    a, b = yaml.safe_load(recipe.read_text()), yaml.safe_load(twin.read_text())
    assert _class_paths(a) == _class_paths(b)
    assert a["model"] == b["model"]
    assert a["data"]["class_path"] == b["data"]["class_path"]


def test_no_orphan_twins() -> None:
    orphans = [t for t in _twins() if not (RECIPES / t.relative_to(TWINS)).is_file()]
    assert not orphans


def _twin_args(twin: Path, data_root: Path | None, ckpt_folder: Path) -> list[str]:
    """The twin's arguments: its tiny data and, where it starts from one, a unary checkpoint."""
    args = ["--config", str(twin), "--trainer.enable_progress_bar", "false"]
    if data_root is not None:
        args += ["--data.init_args.root", str(data_root)]
    model = yaml.safe_load(twin.read_text())["model"]["init_args"]
    if model.get("unary_checkpoint"):
        hidden = model["backbone"]["init_args"]["module"]["init_args"]["hidden"]
        ckpt = stand_in_unary_checkpoint(ckpt_folder, hidden)
        args += ["--model.init_args.unary_checkpoint", str(ckpt)]
    return args


def _is(obj: Any, class_path: str) -> bool:
    """Whether ``obj`` is exactly an instance of the class at ``class_path``."""
    module, _, name = class_path.rpartition(".")
    return type(obj) is getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def command_line() -> Any:
    """The ``structlight`` command line, its parser built once (it does not depend on the
    twin); :func:`test_twin_builds` has it parse and instantiate each twin in turn."""
    from structlight.cli import build_cli

    return build_cli(["--config", str(_twins()[0])], run=False)


@pytest.mark.parametrize("twin", _twin_params())
def test_twin_builds(
    twin: Path, command_line: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The command line parses the twin and builds its model, data and trainer as written."""
    cfg = yaml.safe_load(twin.read_text())
    ckpts = tmp_path_factory.getbasetemp() / "unary_ckpts"
    cli = command_line  # what build_cli(args, run=False) does, without building the parser again
    cli.parse_arguments(cli.parser, _twin_args(twin, None, ckpts))
    cli.instantiate_classes()
    model, head_cfg = cfg["model"]["init_args"], cfg["model"]["init_args"]["head"]
    assert _is(cli.model, cfg["model"]["class_path"])
    assert cli.model.training_strategy == model["strategy"]
    assert _is(cli.model.head, head_cfg["class_path"])
    head = head_cfg["init_args"]
    graph = cli.model.head.graph
    assert graph.num_vars == head["num_vars"]
    assert set(graph.num_states) == {head["num_states"]}
    pairs = [r for r in graph.regions if len(r) == 2]
    assert max(j - i for i, j in pairs) == head.get("order", 1)
    learned_pairwise = list(cli.model.head.pairwise_parameters())
    assert (head.get("pairwise", "table") == "none") == (not learned_pairwise)
    mlp = model["backbone"]["init_args"]["module"]["init_args"]
    widths = [
        m.out_features for m in cli.model.backbone.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert widths == mlp["hidden"]
    assert _is(cli.datamodule, cfg["data"]["class_path"])
    data = cfg["data"]["init_args"]
    dm = cli.datamodule
    assert (dm.batch_size, dm.eval_batch_size) == (data["batch_size"], data["eval_batch_size"])
    assert cli.trainer.fast_dev_run


@pytest.mark.parametrize("twin", _run_params())
def test_twin_runs(
    twin: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``structlight fit`` on the twin: one training and one validation batch."""
    from structlight.cli import build_cli

    dataset = twin.relative_to(TWINS).parts[0]
    data_root = request.getfixturevalue(f"{dataset}_root")  # the tiny data of the twin's set
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load(twin.read_text())
    model = cfg["model"]["init_args"]
    cli = build_cli(["fit", *_twin_args(twin, data_root, data_root.parent / "unary_ckpts")])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/loss"] >= -1e-4
    assert "val/word_acc" in metrics and "val/char_acc" in metrics
    assert cli.model.training_strategy == model["strategy"]


@pytest.mark.slow
def test_make_recipes_check_mode() -> None:
    """``python recipes/make_recipes.py --check`` exits 0 on a clean tree."""
    proc = subprocess.run(
        [sys.executable, str(RECIPES / "make_recipes.py"), "--check"], capture_output=True
    )
    assert proc.returncode == 0, proc.stdout.decode()

"""Every recipe has a tiny twin under ``tests/conf/``, and every twin runs (``fast_dev_run``)."""

from __future__ import annotations

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


@pytest.mark.parametrize("twin", _twin_params())
def test_twin_runs(
    twin: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``structlight fit`` on the twin: one training and one validation batch."""
    from structlight.cli import build_cli

    dataset = twin.relative_to(TWINS).parts[0]
    data_root = request.getfixturevalue(f"{dataset}_root")  # the tiny data of the twin's set
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(twin),
        "--data.init_args.root",
        str(data_root),
        "--trainer.enable_progress_bar",
        "false",
    ]
    cfg = yaml.safe_load(twin.read_text())
    model = cfg["model"]["init_args"]
    if model.get("unary_checkpoint"):
        hidden = model["backbone"]["init_args"]["module"]["init_args"]["hidden"]
        ckpt = stand_in_unary_checkpoint(data_root.parent / "unary_ckpts", hidden)
        args += ["--model.init_args.unary_checkpoint", str(ckpt)]
    cli = build_cli(args)
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

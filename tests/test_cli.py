"""The ``structlight`` command (LightningCLI) and the ``structlight-table`` grid runner."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import cli_args
from tests.helpers.evaluation import sequence_accuracies
from tests.helpers.recipes import TWINS

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

QUICK = TWINS / "word50" / "quickstart.yaml"
QUICK_UNARY = TWINS / "word50" / "quickstart_unary.yaml"


@pytest.fixture
def root(word50_root: Path) -> Path:
    return word50_root


def test_fit_then_validate_test_predict(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short real run: checkpoints, TensorBoard scalars and pictures, then the other commands."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from structlight.cli import build_cli, main

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    base = cli_args(QUICK, root, runs)
    short = [
        "--trainer.fast_dev_run",
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.log_every_n_steps",
        "1",
    ]
    main(["fit", *base, *short])
    run_dir = runs / "word50" / "quickstart"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/dual_step", "val/word_acc", "val/char_acc"} <= scalars
    assert any(t.startswith("lr-") for t in scalars), scalars  # the step size
    images = set(events.Tags()["images"])
    assert {
        "weights/unary_weights",
        "weights/pairwise/pairwise_distance-1",
        "weights/pairwise/pairwise_distance-2",
    } <= images

    for sub in ("validate", "test", "predict"):
        cli = build_cli([sub, *base, "--ckpt_path", str(last)])
        if sub == "test":  # the checkpoint's model on the test split, counted by hand
            metrics = cli.trainer.callback_metrics
            char_acc, word_acc = sequence_accuracies(cli.model, cli.datamodule.test_dataloader())
            assert float(metrics["test/char_acc"]) == pytest.approx(char_acc, abs=1e-4)
            assert float(metrics["test/word_acc"]) == pytest.approx(word_acc, abs=1e-4)


def test_print_config(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from structlight.cli import main

    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(QUICK), "--print_config"])
    assert err.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "structlight.task.DeepStructuredModel"
    assert cfg["model"]["init_args"]["head"]["init_args"]["order"] == 2
    assert cfg["checkpoint"]["save_last"] is True
    assert cfg["checkpoint"]["enable_version_counter"] is False  # a rerun overwrites last.ckpt
    assert cfg["data"]["class_path"] == "datamodules.word50.Word50DataModule"


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    from structlight.cli import main

    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code in (0, None)
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


def _config_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from structlight.cli import main

    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code not in (0, None)
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_mistyped_recipe_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in a recipe is a parser error naming the key, not a traceback from the library."""
    cfg = yaml.safe_load(QUICK.read_text())
    cfg["model"]["init_args"]["stratgy"] = cfg["model"]["init_args"].pop("strategy")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    msg = _config_error(["fit", "--config", str(bad)], capsys)
    assert "stratgy" in msg

    msg = _config_error(
        ["fit", "--config", str(QUICK), "--model.init_args.head.init_args.ordr", "2"], capsys
    )
    assert "ordr" in msg


def test_wrong_class_path(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _config_error(
        ["fit", "--config", str(QUICK), "--model.init_args.head.class_path", "structlight.NoHead"],
        capsys,
    )
    assert "NoHead" in msg
    msg = _config_error(
        ["fit", "--config", str(QUICK), "--data.class_path", "datamodules.word50.Word5DataModule"],
        capsys,
    )
    assert "Word5DataModule" in msg


def test_wrong_value_type(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _config_error(
        ["fit", "--config", str(QUICK), "--model.init_args.strategy", "jointly"], capsys
    )
    assert "strategy" in msg and "jointly" in msg


# ---------------------------------------------------------------------- structlight-table
def test_table_runner(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unary-only first, its checkpoint passed to PreTrainJoint; markdown and CSV written."""
    from structlight.table import main

    monkeypatch.chdir(tmp_path)
    pretrain = TWINS / "word50" / "table1" / "pretrain2_h512.yaml"
    out = tmp_path / "table"
    main(
        [
            str(QUICK),
            str(pretrain),  # needs the unary checkpoint of quickstart_unary (same backbone)
            str(QUICK_UNARY),
            "--out",
            str(out),
            "--max_epochs",
            "1",
            "--set",
            f"data.init_args.root={root}",
            "--set",
            "trainer.enable_progress_bar=false",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert "| Unary only |" in printed and "| 2nd order PreTrainJoint |" in printed
    assert "H1=512" in printed
    assert (out / "table.md").is_file()
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["unary_only", "joint", "pretrain_joint"]
    for r in rows:
        assert 0.0 <= float(r["word_acc"]) <= 100.0 and not math.isnan(float(r["char_acc"]))
    assert (out / "checkpoints" / "quickstart_unary.ckpt").is_file()

    # --resume skips finished runs
    main([str(QUICK_UNARY), "--out", str(out), "--resume", "--quiet"])
    with open(out / "table.csv") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_table_format_and_describe() -> None:
    from structlight.table import RunResult, describe, format_table

    cfg = yaml.safe_load((TWINS / "word50" / "fig6" / "joint1_pair16_h512x32.yaml").read_text())
    assert describe(cfg, "x") == ("1st order JointTrain, PairH16", "H1=512, H2=32", "joint")
    results = [
        RunResult("b.yaml", "2nd order JointTrain", "H1=512", "joint", 45.5, 79.6),
        RunResult("a.yaml", "Unary only", "H1=512", "unary_only", 12.5, 65.69),
        RunResult("c.yaml", "Unary only", "H1=128", "unary_only", 8.6, 61.32),
    ]
    table = format_table(results).splitlines()
    assert table[0] == "| model \\ unary (word / char %) | H1=128 | H1=512 |"
    assert table[2] == "| Unary only | 8.60 / 61.32 | 12.50 / 65.69 |"
    assert table[3] == "| 2nd order JointTrain |  | 45.50 / 79.60 |"


def test_table_missing_recipe() -> None:
    from structlight.table import main

    with pytest.raises(FileNotFoundError, match="no-such.yaml"):
        main(["no-such.yaml"])


def test_console_scripts_resolve() -> None:
    """The ``[project.scripts]`` targets import (``structlight``; ``structlight-table``)."""
    import structlight.cli
    import structlight.table

    assert callable(structlight.cli.main) and callable(structlight.table.main)

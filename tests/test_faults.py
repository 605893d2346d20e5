"""Fault injection: processes killed with SIGKILL, unreadable checkpoints, runs sharing a folder.

Killed runs are subprocesses of ``tests/ddp_scripts/faults.py`` (see there for the kill
points); they are resumed from the ``last.ckpt`` they left and must end in the very state of an
uninterrupted run: weights, message store, optimizer and scheduler, bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.helpers.cli import cli_args
from tests.helpers.recipes import TWINS
from tests.helpers.synthetic import state_differences

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "ddp_scripts" / "faults.py"
QUICK = TWINS / "word50" / "quickstart.yaml"
KILLS = ("mid_epoch", "epoch_start", "save")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs killed at different points (run side by side), then the resumes."""
    base = tmp_path_factory.mktemp("faults")
    procs = {}
    for at in KILLS:
        cmd = [sys.executable, str(SCRIPT), "kill", "--dir", str(base / at), "--at", at]
        procs[at] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
    codes = {}
    for at, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        codes[at] = (proc.returncode, err[-3000:])
    left = {
        at: torch.load(base / at / "last.ckpt", weights_only=False)["global_step"]
        for at in KILLS
        if (base / at / "last.ckpt").is_file()
    }
    partial = sorted(p.name for p in (base / "save").iterdir())
    cmd = [sys.executable, str(SCRIPT), "resume", "--ref", str(base / "ref.pt")]
    done = subprocess.run(
        cmd + [str(base / at) for at in KILLS],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return {
        "codes": codes,
        "left": left,
        "partial": partial,
        "ref": torch.load(base / "ref.pt", weights_only=False),
        "resumed": {at: torch.load(base / at / "resumed.pt", weights_only=False) for at in KILLS},
    }


@pytest.mark.slow
def test_runs_were_killed_where_intended(killed: dict[str, Any]) -> None:
    for at in KILLS:
        code, err = killed["codes"][at]
        assert code == -9, (at, code, err)  # SIGKILL, not an exit
    # last.ckpt left behind: step 6 (mid-epoch, every 3 steps), step 10 (epoch 2's start),
    # and step 5 when killed while publishing step 6 (the previous complete file)
    assert killed["left"] == {"mid_epoch": 6, "epoch_start": 10, "save": 5}
    assert ".last.ckpt.partial" in killed["partial"]  # the unfinished save, never renamed


@pytest.mark.slow
@pytest.mark.parametrize("at", KILLS)
def test_resume_after_sigkill_matches_the_uninterrupted_run(
    killed: dict[str, Any], at: str
) -> None:
    assert state_differences(killed["ref"], killed["resumed"][at]) == []
    assert int(killed["ref"]["global_step"]) == 15


# ---------------------------------------------------------------------- unreadable checkpoints
def _base(root: Path, runs: Path) -> list[str]:
    return cli_args(QUICK, root, runs)


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    from structlight.backbones import PerPosition
    from structlight.head import ChainHead
    from structlight.potentials import MLP
    from structlight.task import DeepStructuredModel

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.ckpt"
    model = DeepStructuredModel(PerPosition(MLP(784, [8])), ChainHead(5, 26, 8))
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, good)
    data = good.read_bytes()
    out = {
        "truncated": folder / "truncated.ckpt",
        "text": folder / "text.ckpt",
        "no state": folder / "nostate.ckpt",
    }
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["text"].write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    torch.save({"weights": torch.zeros(2)}, out["no state"])
    return out


@pytest.mark.parametrize("sub", ["fit", "validate"])
def test_unreadable_ckpt_path_is_an_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sub: str
) -> None:
    from structlight.checkpointing import CheckpointFileError, check_checkpoint
    from structlight.cli import main

    bad = _bad_checkpoints(tmp_path / "ckpts")
    for kind, path in bad.items():
        with pytest.raises(CheckpointFileError, match=str(path)):
            check_checkpoint(path)
        with pytest.raises(SystemExit) as err:
            main([sub, *_base(tmp_path / "data", tmp_path / "runs"), "--ckpt_path", str(path)])
        assert err.value.code == 1, kind
        msg = capsys.readouterr().err
        assert f"checkpoint '{path}'" in msg, (kind, msg)
        assert "Traceback" not in msg and "PytorchStreamReader" not in msg.split(". ")[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    missing = tmp_path / "nowhere" / "last.ckpt"
    with pytest.raises(SystemExit):
        main([sub, *_base(tmp_path / "data", tmp_path / "runs"), "--ckpt_path", str(missing)])
    assert f"checkpoint '{missing}' is missing" in capsys.readouterr().err


# ---------------------------------------------------------------------- one folder, two runs
@pytest.fixture
def root(word50_root: Path) -> Path:
    return word50_root


def _short(batches: int) -> list[str]:
    return [
        "--trainer.fast_dev_run",
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        str(batches),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
    ]


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_second_run_in_a_run_directory_refuses_and_leaves_the_first_intact(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlight.cli import build_cli, main

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    base = _base(root, runs)
    main(["fit", *base, *_short(2)])
    run_dir = runs / "word50" / "quickstart"
    before = _files(run_dir)
    assert "checkpoints/last.ckpt" in before and "config.yaml" in before
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(["fit", *base, *_short(3)])
    assert err.value.code == 1
    msg = capsys.readouterr().err
    for part in (
        str(run_dir),
        "--overwrite true",
        "--ckpt_path",
        "--trainer.logger.init_args.version",
    ):
        assert part in msg, part
    assert _files(run_dir) == before  # not a byte changed
    # the run's own config and checkpoint still go together
    last = run_dir / "checkpoints" / "last.ckpt"
    cli = build_cli(
        ["validate", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last)]
    )
    assert "val/word_acc" in cli.trainer.callback_metrics
    # resuming that run in its own directory is allowed; --overwrite replaces it
    main(["fit", *base, *_short(2), "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert torch.load(last, weights_only=False)["global_step"] == 4
    main(["fit", *base, *_short(3), "--overwrite", "true"])
    assert torch.load(last, weights_only=False)["global_step"] == 3
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["overwrite"] is False  # a rerun of the saved config does not replace again


@pytest.mark.slow
def test_two_runs_started_together_one_refuses(root: Path, tmp_path: Path) -> None:
    """Two ``structlight fit`` processes aimed at one directory at once: one trains."""
    runs = tmp_path / "runs"
    procs = []
    for batches in (2, 3):
        cmd = [sys.executable, "-m", "structlight.cli", "fit", *_base(root, runs), *_short(batches)]
        procs.append(
            subprocess.Popen(
                cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=_env(),
            )
        )  # fmt: skip
        time.sleep(0.05)
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    run_dir = runs / "word50" / "quickstart"
    # the loser either found the winner's files (refusal) or lost the race for the marker; both
    # messages name the directory and the way to a directory of its own
    assert f"run directory '{run_dir}'" in loser, loser
    assert "--trainer.logger.init_args.version" in loser, loser
    assert "Traceback" not in loser, loser
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == (2, 3)[winner]  # the winner's checkpoint, nobody else's
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["limit_train_batches"] == (2, 3)[winner]


@pytest.mark.slow
def test_ddp_children_do_not_refuse_and_resume_in_place(root: Path, tmp_path: Path) -> None:
    """``structlight fit`` under DDP (gloo, 2 processes): Lightning starts the second process by
    running the command again; only the first claims the directory, so neither refuses."""
    runs = tmp_path / "runs"
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    cmd = [sys.executable, "-m", "structlight.cli", "fit", *_base(root, runs), *_short(2), *ddp]
    last = runs / "word50" / "quickstart" / "checkpoints" / "last.ckpt"

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cmd, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env()
        )

    first = run()
    assert first.returncode == 0, first.stderr[-4000:]
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 2 and len(ckpt["callbacks"]["ResumeState"]["rng"]) == 2
    again = run()
    assert again.returncode == 1 and "already holds another run" in again.stderr
    resumed = run("--trainer.max_epochs", "2", "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert torch.load(last, weights_only=False)["global_step"] == 4

"""Checkpoints that resume exactly, atomic writes, seeded samplers and run directories.

The resume tests train the synthetic chain task with shuffling, dropout and a
``ReduceLROnPlateau`` schedule on a validation metric, take a copy of ``last.ckpt`` during an
uninterrupted run (as a crash right then would leave it), resume from the copy and compare the
final weights, message store, optimizer and scheduler state bit for bit. The DDP variant runs
``tests/ddp_scripts/resume.py`` in a subprocess. Killed processes: ``tests/test_faults.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from structlight.checkpointing import (
    RUN_MARKER,
    ResumableCheckpoint,
    ResumeState,
    RunDirectoryError,
    claim_run_dir,
    run_artifacts,
)
from structlight.sampling import EpochShuffleSampler, default_seed
from structlight.testing import SyntheticChainDataModule
from tests.helpers.recipes import TWINS
from tests.helpers.synthetic import (
    Snapshot,
    make_model,
    quiet_trainer,
    state_differences,
    training_state,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:LightningCLI's args parameter",
    "ignore:The number of training batches",
    "ignore:The dirpath has changed",
)

RESUME_SCRIPT = Path(__file__).parent / "ddp_scripts" / "resume.py"
EPOCHS = 3


class WithoutSkip(SyntheticChainDataModule):
    """The synthetic task shuffled by a sampler that cannot skip ahead (RandomSampler)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


def _data(cls: type[SyntheticChainDataModule] = SyntheticChainDataModule) -> Any:
    return cls(num_train=20, num_val=10, num_test=1, batch_size=4, seed=0)  # 5 steps an epoch


def _fit(
    ckpt_dir: Path,
    epochs: int = EPOCHS,
    ckpt_path: Path | None = None,
    snapshot: tuple[int, Path] | None = None,
    every: int = 0,
    resume_state: bool = True,
    data: type[SyntheticChainDataModule] = SyntheticChainDataModule,
) -> dict[str, Any]:
    dm = _data(data)
    model = make_model(dm, 0.2, seed=0 if ckpt_path is None else 7, dropout=0.3, plateau="min")
    callbacks: list[pl.Callback] = [
        ResumableCheckpoint(
            dirpath=ckpt_dir,
            monitor="val/word_acc",
            mode="max",
            filename="best",
            last_every_n_train_steps=every,
        )
    ]
    if resume_state:
        callbacks.append(ResumeState())
    if snapshot is not None:
        callbacks.append(Snapshot(ckpt_dir, *snapshot))
    trainer = quiet_trainer(
        max_epochs=epochs, callbacks=callbacks, enable_checkpointing=True, deterministic=False
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return training_state(trainer, model)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three epochs; copies of last.ckpt in epoch 2 (after 1 batch) and mid-epoch (step 8)."""
    base = tmp_path_factory.mktemp("uninterrupted")
    at_epoch = base / "epoch_end.ckpt"
    state = _fit(base / "ckpt", snapshot=(6, at_epoch))
    mid = base / "mid.ckpt"
    mid_state = _fit(base / "ckpt_every", snapshot=(8, mid), every=3)
    return {"state": state, "epoch_end": at_epoch, "mid": mid, "mid_state": mid_state}


# ---------------------------------------------------------------------- last.ckpt
def test_last_ckpt_is_the_latest_epoch_boundary_whatever_the_monitor(tmp_path: Path) -> None:
    """lr 0: the monitored accuracy never improves after epoch 0, last.ckpt still follows."""
    dm = _data()
    model = make_model(dm, 0.0, plateau="max")
    seen: list[int] = []

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.fit_loop.epoch_loop.batch_progress.current.ready == 1:  # epoch's 1st
                last = tmp_path / "last.ckpt"
                seen.append(torch.load(last)["global_step"] if last.exists() else -1)

    ckpt = ResumableCheckpoint(dirpath=tmp_path, monitor="val/word_acc", mode="max")
    trainer = quiet_trainer(max_epochs=4, callbacks=[ckpt, Look()], enable_checkpointing=True)
    trainer.fit(model, dm)
    assert seen == [-1, 5, 10, 15]  # at each epoch's first batch: the previous epoch's end
    final = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert final["global_step"] == 20 and final["epoch"] == 4
    best = torch.load(ckpt.best_model_path, weights_only=False)
    assert best["global_step"] == 5  # best-k as configured: the first epoch, never beaten
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        Path(ckpt.best_model_path).name,
        "last.ckpt",
    ]


def test_last_ckpt_every_n_steps_and_save_last_false(tmp_path: Path) -> None:
    dm = _data()
    steps: list[int] = []

    class Spy(ResumableCheckpoint):
        def _write_last(self, trainer: pl.Trainer) -> None:
            steps.append(trainer.global_step)
            super()._write_last(trainer)

    trainer = quiet_trainer(
        max_epochs=3,
        callbacks=[Spy(dirpath=tmp_path / "a", last_every_n_train_steps=3)],
        enable_checkpointing=True,
    )
    trainer.fit(make_model(dm, 0.1), dm)
    # every 3rd step, except on an epoch's last batch (the epoch-boundary save follows)
    assert steps == [3, 5, 6, 9, 10, 12, 15]
    off = ResumableCheckpoint(dirpath=tmp_path / "b", save_last=False)
    quiet_trainer(max_epochs=1, callbacks=[off], enable_checkpointing=True).fit(
        make_model(dm, 0.1), dm
    )
    assert not (tmp_path / "b" / "last.ckpt").exists()
    with pytest.raises(ValueError, match="last_every_n_train_steps must be an int >= 0"):
        ResumableCheckpoint(last_every_n_train_steps=-1)
    with pytest.raises(ValueError, match="save_last must be true or false"):
        ResumableCheckpoint(save_last="link")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- exact resume
def test_resume_from_epoch_end_is_bit_identical(
    uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    """Shuffling, dropout and a plateau schedule: every bit of the final state matches."""
    ckpt = torch.load(uninterrupted["epoch_end"], weights_only=False)
    assert ckpt["global_step"] == 5 and ckpt["callbacks"]["ResumeState"]["mid_epoch"] is False
    resumed = _fit(tmp_path, ckpt_path=uninterrupted["epoch_end"])
    assert state_differences(uninterrupted["state"], resumed) == []
    assert uninterrupted["state"]["optimizer0.lr"].item() < 0.2  # the schedule did step


def test_resume_without_the_random_state_differs(
    uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    """The control: without ResumeState, dropout draws other masks after the resume."""
    resumed = _fit(tmp_path, ckpt_path=uninterrupted["epoch_end"], resume_state=False)
    assert any(
        k.startswith("model.backbone") for k in state_differences(uninterrupted["state"], resumed)
    )


def test_resume_mid_epoch_skips_what_the_epoch_consumed(
    uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    ckpt = torch.load(uninterrupted["mid"], weights_only=False)
    position = ckpt["callbacks"]["ResumeState"]
    assert ckpt["global_step"] == 6 and position["mid_epoch"] and position["batches_done"] == 1
    resumed = _fit(tmp_path, ckpt_path=uninterrupted["mid"], every=3)
    assert state_differences(uninterrupted["mid_state"], resumed) == []


def test_resume_mid_epoch_without_a_skipping_sampler_warns(
    uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.warns(UserWarning, match="cannot skip the examples already trained on") as rec:
        _fit(tmp_path, ckpt_path=uninterrupted["mid"], every=3, data=WithoutSkip)
    text = str([w.message for w in rec if "cannot skip" in str(w.message)][0])
    assert "RandomSampler" in text and "epoch-end checkpoint" in text and "differ" in text


@pytest.mark.slow
def test_ddp_resume_is_bit_identical(tmp_path: Path) -> None:
    """DDP (gloo, 2 processes): epoch-end and mid-epoch resumes equal the uninterrupted run."""
    cmd = [sys.executable, str(RESUME_SCRIPT), "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-5000:]
    got = {p.stem: torch.load(p, weights_only=False) for p in tmp_path.glob("*.pt")}
    assert got["full"]["world_size"] == 2
    for name in ("resume_epoch_end", "resume_mid"):
        ref = got["full_every"] if name == "resume_mid" else got["full"]
        assert state_differences(ref["state"], got[name]["state"]) == [], name
        for rank in range(2):  # the last epoch's order on each rank
            assert ref["visits"][rank][-1] == got[name]["visits"][rank][-1], (name, rank)
    mid = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert mid["global_step"] == 4 and mid["callbacks"]["ResumeState"]["batches_done"] == 1
    assert len(mid["callbacks"]["ResumeState"]["rng"]) == 2  # one state per rank


# ---------------------------------------------------------------------- samplers
def test_epoch_shuffle_sampler_seed_epoch_and_fast_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    assert default_seed() == 11 and EpochShuffleSampler(10).seed == 11
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert EpochShuffleSampler(10).seed == 0
    s = EpochShuffleSampler(list(range(10)), seed=3)
    first = list(s)
    torch.manual_seed(123)  # the global generator does not matter
    assert list(s) == first and sorted(first) == list(range(10))
    s.set_epoch(1)
    second = list(s)
    assert second != first
    s.fast_forward(1, 4)
    assert list(s) == second[4:]
    assert list(s) == second  # once only
    s.fast_forward(0, 4)  # another epoch: no effect on epoch 1
    assert list(s) == second
    with pytest.raises(ValueError, match="num_examples >= 0"):
        s.fast_forward(1, -1)
    monkeypatch.setenv("PL_GLOBAL_SEED", "x")
    with pytest.raises(ValueError, match="PL_GLOBAL_SEED must be an integer"):
        default_seed()
    from structlight import testing

    assert testing.EpochShuffleSampler is EpochShuffleSampler  # still importable from there


def test_word50_training_order_depends_on_seed_and_epoch_only(word50_root: Path) -> None:
    from datamodules.word50 import Word50DataModule

    root = word50_root
    dm = Word50DataModule(root=root, batch_size=4, progress=False, shuffle_seed=5,
                          num_train=20, num_val=10, num_test=10)  # fmt: skip
    dm.setup("fit")

    def order(epoch: int, noise: int) -> list[int]:
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, EpochShuffleSampler)
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(noise)
        return torch.cat([b["index"] for b in loader]).tolist()

    assert order(2, 0) == order(2, 1) != order(3, 0)
    assert sorted(order(2, 0)) == list(range(20))
    with pytest.raises(ValueError, match="shuffle_seed must be None or an integer"):
        Word50DataModule(root=root, shuffle_seed="a")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- run directories
def _trainer(save_dir: Path, version: str = "v", **kw: Any) -> pl.Trainer:
    logger = TensorBoardLogger(save_dir, name="n", version=version)
    return quiet_trainer(logger=logger, **kw)


def test_claim_run_dir_refuses_another_run_and_allows_resume(tmp_path: Path) -> None:
    run = tmp_path / "n" / "v"
    assert claim_run_dir(_trainer(tmp_path)) == run
    assert run_artifacts(run) == [RUN_MARKER]
    with pytest.raises(RunDirectoryError) as err:
        claim_run_dir(_trainer(tmp_path))
    msg = str(err.value)
    for part in (str(run), "--overwrite true", "--ckpt_path", "last.ckpt", "version"):
        assert part in msg, part
    # a run from before markers existed: its files alone make it a run
    (run / RUN_MARKER).unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="checkpoints/last.ckpt"):
        claim_run_dir(_trainer(tmp_path))
    # resuming that run in place is allowed
    assert claim_run_dir(_trainer(tmp_path), ckpt_path=run / "checkpoints" / "last.ckpt") == run
    # --overwrite deletes the run's files only
    (run / "config.yaml").write_text("a: 1")
    claim_run_dir(_trainer(tmp_path), overwrite=True)
    assert run_artifacts(run) == [RUN_MARKER] and (run / "notes.txt").read_text() == "mine"
    # another version: its own directory
    assert claim_run_dir(_trainer(tmp_path, "w")) == tmp_path / "n" / "w"


def test_claim_is_atomic_between_runs_started_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs passed the look at the directory; only one creates the marker."""
    import structlight.checkpointing as ck

    monkeypatch.setattr(ck, "run_artifacts", lambda d: [])  # both saw an empty directory
    claim_run_dir(_trainer(tmp_path))
    with pytest.raises(RunDirectoryError, match="claimed by another run started at the same"):
        claim_run_dir(_trainer(tmp_path))


def test_no_claim_in_ddp_children_fast_dev_run_or_without_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert claim_run_dir(_trainer(tmp_path, fast_dev_run=True)) is None
    assert claim_run_dir(quiet_trainer(default_root_dir=tmp_path)) is None  # logger=False
    claim_run_dir(_trainer(tmp_path))
    for var in ("LOCAL_RANK", "RANK", "NODE_RANK"):
        with monkeypatch.context() as m:
            m.setenv(var, "1")
            assert claim_run_dir(_trainer(tmp_path)) is None  # a child: no check, no refusal
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RunDirectoryError):
        claim_run_dir(_trainer(tmp_path))
    assert not (tmp_path / "lightning_logs").exists()


# ---------------------------------------------------------------------- structlight-table
def test_table_refuses_an_old_table_and_resumes_an_interrupted_run(
    word50_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    from structlight.cli import main as fit_main
    from structlight.table import main

    monkeypatch.chdir(tmp_path)
    root = word50_root
    unary, joint = TWINS / "word50" / "quickstart_unary.yaml", TWINS / "word50" / "quickstart.yaml"
    out = tmp_path / "table"
    common = ["--set", f"data.init_args.root={root}", "--set", "trainer.enable_progress_bar=false"]
    common += ["--set", "trainer.fast_dev_run=false", "--set", "trainer.limit_val_batches=1"]
    common += ["--quiet", "--out", str(out)]
    main([str(unary), "--max_epochs", "1", "--limit_train_batches", "2", *common])
    table = (out / "table.csv").read_text()
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        main([str(unary), *common])
    assert (out / "table.csv").read_text() == table  # refused before anything was written
    with pytest.raises(ValueError, match="pick one"):
        main([str(unary), "--resume", "--overwrite", *common])

    # the joint recipe's run was interrupted after 1 epoch of 1 step (not in table.csv)
    fit_main(
        ["fit", "--config", str(joint), "--data.init_args.root", str(root),
         "--trainer.logger.init_args.save_dir", str(out / "runs"), "--trainer.fast_dev_run",
         "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    )  # fmt: skip
    main([str(unary), str(joint), "--resume", "--max_epochs", "2", "--limit_train_batches", "2",
          *common])  # fmt: skip
    with open(out / "table.csv") as f:
        rows = {Path(r["recipe"]).stem: r for r in csv.DictReader(f)}
    assert rows["quickstart_unary"]["steps"] == "2"  # finished before: read back
    assert rows["quickstart"]["steps"] == "3"  # resumed: 1 step, then 2 in its 2nd epoch
    # --overwrite runs everything again, replacing the runs
    main([str(unary), "--overwrite", "--max_epochs", "1", "--limit_train_batches", "3", *common])
    with open(out / "table.csv") as f:
        assert [r["steps"] for r in csv.DictReader(f)] == ["3"]


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """Weights, store, optimizer and scheduler state of a checkpoint, flattened to tensors."""
    ckpt = torch.load(path, weights_only=False)
    out = {f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()}
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for pid, buf in opt["state"].items():
            out.update({f"opt{i}.{pid}.{k}": torch.as_tensor(v) for k, v in buf.items()})
        out[f"opt{i}.lr"] = torch.tensor([g["lr"] for g in opt["param_groups"]])
    for i, sched in enumerate(ckpt["lr_schedulers"]):
        out.update(
            {f"sched{i}.{k}": torch.tensor(float(v)) for k, v in sched.items()
             if isinstance(v, (int, float))}
        )  # fmt: skip
    out["global_step"] = torch.tensor(ckpt["global_step"])
    return out


@pytest.mark.slow  # exact resumes of the synthetic task run by default (above)
def test_cli_word50_resume_from_last_ckpt_is_bit_identical(
    word50_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick start's tiny twin (shuffled Word50, plateau schedule on val/char_acc): one
    epoch, then resumed from its last.ckpt to three, ends where three epochs in one go end."""
    from structlight.cli import main

    monkeypatch.chdir(tmp_path)
    root = word50_root
    base = ["fit", "--config", str(TWINS / "word50" / "quickstart.yaml"),
            "--data.init_args.root", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.fast_dev_run", "false", "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    runs = tmp_path / "runs" / "word50"
    main([*base, "--trainer.max_epochs", "3", "--trainer.logger.init_args.version", "full"])
    main([*base, "--trainer.max_epochs", "1", "--trainer.logger.init_args.version", "cut"])
    last = runs / "cut" / "checkpoints" / "last.ckpt"
    main([*base, "--trainer.max_epochs", "3", "--trainer.logger.init_args.version", "cut",
          "--ckpt_path", str(last)])  # fmt: skip
    full = _checkpoint_state(runs / "full" / "checkpoints" / "last.ckpt")
    assert int(full["global_step"]) == 9
    assert state_differences(full, _checkpoint_state(last)) == []


def test_cli_last_ckpt_follows_training_after_the_best_epoch(
    word50_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipes' checkpoint group (monitor val/word_acc): with a step size of 0 the best
    epoch is the first, and last.ckpt still holds the final step."""
    from structlight.cli import main

    monkeypatch.chdir(tmp_path)
    root = word50_root
    main(["fit", "--config", str(TWINS / "word50" / "quickstart.yaml"),
          "--data.init_args.root", str(root), "--trainer.enable_progress_bar", "false",
          "--trainer.fast_dev_run", "false", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
          "--trainer.max_epochs", "3", "--model.init_args.optimizer.init_args.lr", "0"])  # fmt: skip
    ckpts = tmp_path / "runs" / "word50" / "quickstart" / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", weights_only=False)["global_step"] == 2
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6 and last["epoch"] == 3

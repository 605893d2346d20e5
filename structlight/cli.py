"""The ``structlight`` command: LightningCLI over :class:`DeepStructuredModel` and any DataModule.

Usage (``structlight --help`` lists everything; each subcommand has its own ``--help``)::

    structlight fit --config recipes/word50/quickstart.yaml
    structlight test --config recipes/word50/quickstart.yaml \\
        --ckpt_path runs/word50/quickstart/checkpoints/last.ckpt
    structlight fit --config recipes/word50/table1/joint2_h512.yaml --trainer.max_epochs 5
    structlight fit --config recipes/word50/quickstart.yaml --print_config

Both the model and the data are given in subclass mode (``class_path`` + ``init_args``), so a
recipe names the backbone, the head and the DataModule explicitly, and a mistyped key or class
path is rejected by the parser with a message naming it, before anything is built.

Defaults added to every run (the recipes rely on them):

* logger: :class:`~lightning.pytorch.loggers.TensorBoardLogger` under ``runs/``;
* callbacks: a rich progress bar (a tqdm one when the output is not a terminal), a
  :class:`~lightning.pytorch.callbacks.LearningRateMonitor` (``lr-SGD`` etc.: the step size),
  :class:`structlight.visualize.StructuredVisualizer` (learned weights as TensorBoard images),
  :class:`structlight.checkpointing.ResumeState` (random generators and epoch position in every
  checkpoint, for exact resumes), and a :class:`structlight.checkpointing.ResumableCheckpoint`
  configurable as ``--checkpoint.*`` that writes ``<log_dir>/checkpoints/last.ckpt`` at every
  epoch boundary (``--checkpoint.last_every_n_train_steps N``: also every N steps), atomically.

A ``fit`` run claims its run directory before writing anything and refuses one that holds
another run (``docs/reliability.md``): resume that run with ``--ckpt_path
<dir>/checkpoints/last.ckpt``, replace it with ``--overwrite true``, or pick another
``--trainer.logger.init_args.version``. A ``--ckpt_path`` that is not a complete checkpoint is
an error naming the file.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from structlight._lightning import check_before_ckpt_hparams
from structlight.checkpointing import (
    CheckpointFileError,
    CheckpointNotFoundError,
    ResumableCheckpoint,
    ResumeState,
    RunDirectoryError,
    check_checkpoint,
    claim_run_dir,
)
from structlight.task import DeepStructuredModel
from structlight.visualize import StructuredVisualizer

__all__ = ["SafeLearningRateMonitor", "StructlightCLI", "build_cli", "default_callbacks", "main"]

#: Where runs go unless the recipe or ``--trainer.logger`` says otherwise.
DEFAULT_RUNS_DIR = "runs"
#: Environment variable that picks the progress bar: ``rich``, ``tqdm`` or ``auto`` (default:
#: rich on a terminal, tqdm otherwise). ``--trainer.enable_progress_bar false`` turns it off.
PROGRESS_ENV = "STRUCTLIGHT_PROGRESS"
#: ``ckpt_path`` values that name a checkpoint the trainer finds itself, not a file.
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")


class SafeLearningRateMonitor(LearningRateMonitor):
    """A :class:`LearningRateMonitor` that stays silent when the trainer has no logger.

    Lightning's raises on ``trainer.logger: false``; this one logs the step size whenever a
    logger exists and does nothing otherwise, so it can be a default callback.
    """

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Start monitoring if there is a logger."""
        if not trainer.loggers:
            self._disabled = True
            return
        self._disabled = False
        super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Log per step when enabled."""
        if not getattr(self, "_disabled", False):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Log per epoch when enabled."""
        if not getattr(self, "_disabled", False):
            super().on_train_epoch_start(trainer, *args, **kwargs)


def _progress_bar() -> Callback:
    choice = os.environ.get(PROGRESS_ENV, "auto").lower()
    if choice == "rich" or (choice == "auto" and sys.stdout.isatty()):
        return RichProgressBar()
    # not a terminal (CI logs, notebooks, pipes): a tqdm bar that redraws rarely
    return TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else 20)


def default_callbacks() -> list[Callback]:
    """Callbacks added to every run besides the configurable ``--checkpoint``.

    Returns:
        The progress bar (per :data:`PROGRESS_ENV`), :class:`SafeLearningRateMonitor`,
        :class:`StructuredVisualizer` and :class:`~structlight.checkpointing.ResumeState`.
    """
    return [
        _progress_bar(),
        SafeLearningRateMonitor(logging_interval="epoch"),
        StructuredVisualizer(),
        ResumeState(),
    ]


def _setting(cli: LightningCLI, key: str, default: Any = None) -> Any:
    """``key`` of the instantiated config: the subcommand's, or the whole one without one."""
    return cli.config_init.get(str(cli.subcommand), cli.config_init).get(key, default)


def _check_ckpt_path(cli: LightningCLI) -> None:
    """Check ``--ckpt_path`` before LightningCLI reads the model's arguments from it.

    Raises:
        CheckpointNotFoundError, CheckpointFileError: the path is not a complete checkpoint
            (names other than :data:`_SPECIAL_CKPT` are files).
    """
    sub = cli.config.get("subcommand")
    path = cli.config[sub].get("ckpt_path") if sub else None
    if path is not None and str(path) not in _SPECIAL_CKPT:
        check_checkpoint(path)


@check_before_ckpt_hparams(_check_ckpt_path)
class StructlightCLI(LightningCLI):
    """LightningCLI with structlight's defaults (logger, callbacks, checkpoint group).

    Adds the ``--checkpoint.*`` group (a :class:`ResumableCheckpoint`, whose ``last.ckpt`` is
    the latest epoch-boundary state) and ``--overwrite`` (replace a previous run in the run
    directory), checks ``--ckpt_path`` before any subcommand, claims the run directory before
    ``fit``, and sets the progress bar when the trainer is built
    (``trainer.enable_progress_bar: false`` turns it off).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``checkpoint`` group with structlight's defaults, and ``--overwrite``."""
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: replace the run already in the run directory (its checkpoints, config "
            "and logs are deleted) instead of refusing to start",
        )

    def _ckpt_path(self) -> str | None:
        value = _setting(self, "ckpt_path")
        return None if value is None else str(value)

    def before_fit(self) -> None:
        """Claim the run directory (or refuse, naming it) before anything is written."""
        overwrite = bool(_setting(self, "overwrite", False))
        claim_run_dir(self.trainer, self._ckpt_path(), overwrite=overwrite)
        # the saved config.yaml describes the run; replacing an older one was a one-off choice
        config = self.config.get(str(self.subcommand), self.config)
        if "overwrite" in config:
            config["overwrite"] = False

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the trainer; the progress bar is dropped when the config disables it."""
        cfg = _setting(self, "trainer", {})
        if cfg.get("enable_progress_bar") is False:
            self.trainer_defaults["callbacks"] = [
                c
                for c in self.trainer_defaults.get("callbacks", [])
                if not isinstance(c, (RichProgressBar, TQDMProgressBar))
            ]
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand not in (None, "fit"):
            # validate/test/predict evaluate a run: its config.yaml keeps describing the fit
            trainer.callbacks = [
                c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)
            ]
        return trainer


def build_cli(args: ArgsType = None, run: bool = True, **kwargs: Any) -> StructlightCLI:
    """Parse ``args`` (or ``sys.argv``), build the model, data and trainer, and run.

    Args:
        args: command-line arguments, e.g. ``["fit", "--config", "recipes/word50/quickstart.yaml"]``
            (with a subcommand when ``run`` is true, without one otherwise); a dict or
            ``jsonargparse.Namespace`` also works.
        run: run the subcommand; False only parses and instantiates (``cli.model``,
            ``cli.datamodule``, ``cli.trainer``), as the grid runner does.
        kwargs: further :class:`LightningCLI` arguments (override the defaults below).

    Returns:
        The :class:`StructlightCLI` (its ``trainer`` holds ``callback_metrics`` after a run).
    """
    options: dict[str, Any] = {
        "model_class": DeepStructuredModel,
        "datamodule_class": LightningDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "auto_configure_optimizers": False,  # the model's own optimizer/lr_scheduler arguments
        "save_config_kwargs": {"overwrite": True},
        "trainer_defaults": {
            "logger": {
                "class_path": f"{TensorBoardLogger.__module__}.{TensorBoardLogger.__name__}",
                "init_args": {"save_dir": DEFAULT_RUNS_DIR},
            },
            "callbacks": default_callbacks(),
        },
        "args": args,
        "run": run,
    }
    options.update(kwargs)
    return StructlightCLI(**options)


@rank_zero_only
def _print_run_dir(cli: StructlightCLI) -> None:
    trainer = getattr(cli, "trainer", None)
    if trainer is None or cli.subcommand != "fit":
        return
    # not trainer.log_dir: under DDP it is a collective, and the other ranks have returned
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.loggers else None
    log_dir = log_dir if trainer.loggers else trainer.default_root_dir
    if log_dir is not None:
        print(f"run directory: {log_dir}")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``structlight`` command.

    Args:
        args: the arguments (default ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "recipes/word50/quickstart.yaml"]``.

    Raises:
        SystemExit: on a configuration error (unknown key, bad class path, wrong type), with
            LightningCLI's message on stderr; also after ``--help`` and ``--print_config``; and
            with the message alone (exit status 1) when ``--ckpt_path`` is not a readable
            checkpoint or the run directory holds another run.
    """
    try:
        cli = build_cli(args)
    except (CheckpointFileError, CheckpointNotFoundError, RunDirectoryError) as err:
        print(f"structlight: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    _print_run_dir(cli)


if __name__ == "__main__":
    main()

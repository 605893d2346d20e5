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
  :class:`structlight.visualize.StructuredVisualizer` (learned weights as TensorBoard images), and
  a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` configurable as ``--checkpoint.*``
  that always writes ``<log_dir>/checkpoints/last.ckpt`` (overwritten by a rerun, so that
  ``unary_checkpoint`` paths in recipes stay valid).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from structlight.task import DeepStructuredModel
from structlight.visualize import StructuredVisualizer

__all__ = ["SafeLearningRateMonitor", "StructlightCLI", "build_cli", "default_callbacks", "main"]

#: Where runs go unless the recipe or ``--trainer.logger`` says otherwise.
DEFAULT_RUNS_DIR = "runs"
#: Environment variable that picks the progress bar: ``rich``, ``tqdm`` or ``auto`` (default:
#: rich on a terminal, tqdm otherwise). ``--trainer.enable_progress_bar false`` turns it off.
PROGRESS_ENV = "STRUCTLIGHT_PROGRESS"


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
        The progress bar (per :data:`PROGRESS_ENV`), :class:`SafeLearningRateMonitor` and
        :class:`StructuredVisualizer`.
    """
    return [
        _progress_bar(),
        SafeLearningRateMonitor(logging_interval="epoch"),
        StructuredVisualizer(),
    ]


class StructlightCLI(LightningCLI):
    """LightningCLI with structlight's defaults (logger, callbacks, checkpoint group).

    Adds the ``--checkpoint.*`` group (a :class:`ModelCheckpoint` that always saves
    ``last.ckpt``, overwriting it on a rerun) and sets the progress bar when the trainer is
    built (``trainer.enable_progress_bar: false`` turns it off).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``checkpoint`` group with structlight's defaults."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.enable_version_counter": False,
            }
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the trainer; the progress bar is dropped when the config disables it."""
        cfg = self._get(self.config_init, "trainer", default={})
        if cfg.get("enable_progress_bar") is False:
            self.trainer_defaults["callbacks"] = [
                c
                for c in self.trainer_defaults.get("callbacks", [])
                if not isinstance(c, (RichProgressBar, TQDMProgressBar))
            ]
        return super().instantiate_trainer(**kwargs)


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
    if trainer is not None and trainer.log_dir is not None and cli.subcommand == "fit":
        print(f"run directory: {trainer.log_dir}")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``structlight`` command.

    Args:
        args: the arguments (default ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "recipes/word50/quickstart.yaml"]``.

    Raises:
        SystemExit: on a configuration error (unknown key, bad class path, wrong type), with
            LightningCLI's message on stderr; also after ``--help`` and ``--print_config``.
    """
    cli = build_cli(args)
    _print_run_dir(cli)


if __name__ == "__main__":
    main()

"""Command lines for ``structlight`` runs in tests."""

from __future__ import annotations

from pathlib import Path


def cli_args(config: Path, root: Path, runs: Path) -> list[str]:
    """Arguments of a quiet run of ``config`` on the data under ``root``, logging under ``runs``.

    Args:
        config: a recipe or recipe twin (YAML).
        root: the data set's root folder (``--data.init_args.root``).
        runs: the logger's ``save_dir``.

    Returns:
        The arguments after the subcommand, without a progress bar.
    """
    return [
        "--config",
        str(config),
        "--data.init_args.root",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.enable_progress_bar",
        "false",
    ]

"""The recipes, their tiny twins under ``tests/conf/`` and the tiny data sets the twins run on."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
TWINS = ROOT / "tests" / "conf"
#: Sizes of the tiny Word50 and VarWords the twins expect (recipes/make_recipes.py: TINY_DATA).
TINY = {"num_train": 20, "num_val": 10, "num_test": 10}


def tiny_word50(base: Path) -> Path:
    """A tiny generated Word50 (20/10/10 words) under ``base``, made once per ``base``.

    Args:
        base: the folder to hold it; the base temporary folder of the test run
            (``tmp_path_factory.getbasetemp()``, as the ``word50_root`` fixture does) shares
            one copy between all tests.

    Returns:
        The ``root`` to give ``Word50DataModule``.
    """
    from datamodules.word50 import Word50DataModule

    return _generated(Word50DataModule, base / "word50_tiny")


def tiny_varwords(base: Path) -> Path:
    """A tiny generated VarWords (20/10/10 words) under ``base``, made once per ``base``.

    Args:
        base: the folder to hold it (see :func:`tiny_word50`).

    Returns:
        The ``root`` to give ``VarWordsDataModule``.
    """
    from datamodules.varwords import VarWordsDataModule

    return _generated(VarWordsDataModule, base / "varwords_tiny")


def _generated(datamodule: type, root: Path) -> Path:
    """``root`` holding the tiny generated data set of ``datamodule`` (made if missing)."""
    dm = datamodule(root=root, progress=False, **TINY)
    if not dm.path.exists():
        dm.prepare_data()
    return root


def stand_in_unary_checkpoint(folder: Path, hidden: list[int]) -> Path:
    """An untrained unary-only checkpoint with the backbone of ``hidden`` (cached per shape)."""
    from structlight.backbones import PerPosition
    from structlight.head import ChainHead
    from structlight.potentials import MLP
    from structlight.task import DeepStructuredModel

    path = folder / f"unary_{'x'.join(map(str, hidden))}.ckpt"
    if not path.exists():
        model = DeepStructuredModel(
            PerPosition(MLP(784, hidden)),
            ChainHead(5, 26, hidden[-1], pairwise="none"),
            strategy="unary_only",
        )
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"state_dict": model.state_dict(), "hyper_parameters": {"strategy": "unary_only"}},
            path,
        )
    return path

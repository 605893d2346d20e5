"""Pieces shared by the Word50 and VarWords tests: tiny fonts, spelling, a unary model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from datamodules.word50.constants import ALPHABET

TINY_FONTS = ["DejaVuSans.ttf", "cmr10.ttf"]


def spell(labels: np.ndarray) -> str:
    """The word that class indices ``labels`` spell."""
    return "".join(ALPHABET[k] for k in labels)


class UnaryLetters(L.LightningModule):
    """One linear layer per character; records the ``index`` of every example it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(28 * 28, 26)
        self.seen: list[int] = []
        self.val_seen: list[int] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.extend(batch["index"].tolist())
        logits = self.net(batch["image"].flatten(2))  # (B, positions, 26)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["label"].flatten())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_seen.extend(batch["index"].tolist())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def quiet_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    """A one-epoch CPU-quiet ``Trainer``: no logger, checkpoints, bars or summary."""
    return L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, **kwargs,
    )  # fmt: skip

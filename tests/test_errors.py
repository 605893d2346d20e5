"""Bad input gets an error that names the file or key, what was expected and what arrived,
before anything is written."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from structlight.graph import RegionGraph
from structlight.head import ChainHead, StructuredHead
from structlight.potentials import Unary
from structlight.task import DeepStructuredModel
from structlight.testing import SyntheticChainDataModule
from tests.helpers.synthetic import quiet_trainer as make_trainer

N, K, HIDDEN = 5, 10, 16


def make_model(dm: SyntheticChainDataModule, strategy: str = "joint", **kw) -> DeepStructuredModel:
    pl.seed_everything(0, verbose=False)
    backbone = nn.Sequential(nn.Linear(dm.num_features, HIDDEN), nn.ReLU())
    opt = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    return DeepStructuredModel(
        backbone, ChainHead(N, K, HIDDEN), optimizer=opt, strategy=strategy, **kw
    )


def data(num_train: int = 16) -> SyntheticChainDataModule:
    return SyntheticChainDataModule(num_train=num_train, num_val=4, num_test=4, batch_size=4)


@pytest.mark.parametrize(
    ("content", "what"),
    [(None, "truncated"), (b"step,loss\n1,0.5\n", "text"), (b"", "empty")],
)
def test_unreadable_unary_checkpoint_names_the_file(tmp_path: Path, content, what):
    dm = data()
    path = tmp_path / f"{what}.ckpt"
    if content is None:  # a real checkpoint cut short, as by a crash during the save
        trainer = make_trainer(max_epochs=1, limit_val_batches=0)
        trainer.fit(make_model(dm, "unary_only"), datamodule=dm)
        trainer.save_checkpoint(tmp_path / "whole.ckpt")
        whole = (tmp_path / "whole.ckpt").read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    model = make_model(dm, "piecewise", unary_checkpoint=str(path))
    with pytest.raises(ValueError, match=rf"unary_checkpoint '.*{what}\.ckpt' is not a readable"):
        model.load_unary_checkpoint(path)
    with pytest.raises(ValueError, match="intact checkpoint"):
        make_trainer(max_epochs=1, limit_val_batches=0).fit(model, datamodule=dm)


def test_checkpoint_with_a_smaller_store_names_the_checkpoint(tmp_path: Path):
    small = data(8)
    trainer = make_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(make_model(small), datamodule=small)
    ckpt = tmp_path / "small.ckpt"
    trainer.save_checkpoint(ckpt)
    big = data(16)
    with pytest.raises(ValueError, match=r"small\.ckpt' holds messages for 8 .* data has 16"):
        make_trainer(max_epochs=2, limit_val_batches=0).fit(
            make_model(big), datamodule=big, ckpt_path=ckpt
        )


@pytest.mark.parametrize("strategy", ["unary_only", "joint"])
def test_out_of_range_label_is_refused_before_anything_is_written(strategy):
    dm = data()
    dm.setup("fit")
    model = make_model(dm, strategy)
    model.head.store.resize(16)
    batch = next(iter(dm.train_dataloader()))
    batch["label"][1, 3] = K  # label 10 of 10 states
    before = model.head.store.messages.clone()
    with pytest.raises(ValueError, match=r"\['label'\]\[1, 3\] = 10, .*variable 3 has 10 states"):
        model.training_step(batch, 0)
    assert torch.equal(model.head.store.messages, before)
    batch["label"][1, 3] = -1
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9"):
        model.training_step(batch, 0)


def test_label_invalid_for_its_own_state_count_is_refused():
    g = RegionGraph([2, 3, 3], [(0,), (1,), (2,), (0, 1), (1, 2)])
    head = StructuredHead(g)
    head.add_potential("unary", Unary(4, 3), [0, 1, 2], unary=True)
    model = DeepStructuredModel(nn.Identity(), head, strategy="unary_only")
    batch = {
        "image": torch.randn(2, 3, 4),
        "label": torch.tensor([[1, 2, 2], [2, 0, 0]]),  # variable 0 has 2 states: label 2 is out
        "index": torch.tensor([0, 1]),
    }
    with pytest.raises(ValueError, match=r"\[1, 0\] = 2, but variable 0 has 2 states"):
        model.training_step(batch, 0)
    batch["label"][1, 0] = 1
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and float(loss) < 100


def test_training_loss_with_labels_of_another_batch_is_refused():
    head = ChainHead(N, K, 4, num_train_examples=4)
    batch = {"label": torch.zeros(2, N, dtype=torch.long), "index": torch.tensor([0, 1])}
    theta = head(torch.randn(2, N, 4), batch)
    with pytest.raises(ValueError, match="labels have batch size 3 but the potentials 2"):
        head.training_loss(theta, batch, labels=torch.zeros(3, N, dtype=torch.long))
    checked = head.labels_from(batch)
    same = head.training_loss(theta, batch, labels=checked).loss
    head.store.messages = torch.zeros_like(head.store.messages)
    assert torch.equal(same, head.training_loss(theta, batch).loss)

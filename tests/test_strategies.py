"""The strategy table against the paper's definitions and against what the model does."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import get_args

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from structlight.head import ChainHead
from structlight.strategies import STRATEGIES, Strategy, StrategySpec, strategy_spec
from structlight.task import DeepStructuredModel
from structlight.testing import SyntheticChainDataModule
from tests.helpers.synthetic import quiet_trainer

HIDDEN = 8
#: The paper's four strategies, written out independently of the table:
#: (pairwise learned, unary learned, starts from a unary checkpoint, uses the structure,
#: frozen unary kept in eval mode).
EXPECTED = {
    "unary_only": (False, True, False, False, False),
    "joint": (True, True, False, True, False),
    "piecewise": (True, False, True, True, True),
    "pretrain_joint": (True, True, True, True, False),
}
NAMES = list(EXPECTED)


def _data() -> SyntheticChainDataModule:
    return SyntheticChainDataModule(num_train=16, num_val=8, num_test=1, batch_size=8)


def _model(
    dm: SyntheticChainDataModule, strategy: str, unary: Path | None, seed: int = 0
) -> DeepStructuredModel:
    pl.seed_everything(seed, verbose=False)
    backbone = nn.Sequential(nn.Linear(dm.num_features, HIDDEN), nn.ReLU())
    head = ChainHead(5, 10, HIDDEN)
    spec = STRATEGIES.get(strategy)
    ckpt = str(unary) if spec is not None and spec.needs_unary_checkpoint else None
    opt = partial(torch.optim.SGD, lr=0.5)
    return DeepStructuredModel(
        backbone, head, optimizer=opt, strategy=strategy, unary_checkpoint=ckpt
    )


@pytest.fixture(scope="module")
def unary_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain state_dict of an (untrained) unary model, different from every seed-0 model."""
    path = tmp_path_factory.mktemp("unary") / "unary.pt"
    torch.save(_model(_data(), "unary_only", None, seed=123).state_dict(), path)
    return path


def _groups(model: DeepStructuredModel) -> dict[str, list[torch.Tensor]]:
    return {
        "pairwise": [p.detach().clone() for p in model.head.pairwise_parameters()],
        "unary": [
            p.detach().clone()
            for p in [*model.backbone.parameters(), *model.head.unary_parameters()]
        ],
    }


def _changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# ---------------------------------------------------------------------------- the table
def test_table_matches_the_paper_and_the_literal() -> None:
    assert tuple(STRATEGIES) == get_args(Strategy)
    for name, spec in STRATEGIES.items():
        assert spec.name == name and strategy_spec(name) is spec
        got = (
            spec.pairwise_trainable,
            spec.unary_trainable,
            spec.needs_unary_checkpoint,
            spec.uses_structure,
            spec.unary_in_eval_mode,
        )
        assert got == EXPECTED[name], name
    with pytest.raises(dataclasses.FrozenInstanceError):
        STRATEGIES["joint"].uses_structure = False  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"strategy must be one of \('unary_only', 'joint'"):
        strategy_spec("structured")
    assert isinstance(strategy_spec("joint"), StrategySpec)


def test_unknown_strategy_and_missing_unary_checkpoint_errors() -> None:
    dm = _data()
    with pytest.raises(ValueError, match="strategy must be one of"):
        _model(dm, "structured", None)
    for name in NAMES:
        needs = EXPECTED[name][2]
        pl.seed_everything(0, verbose=False)
        make = partial(
            DeepStructuredModel, nn.Linear(dm.num_features, HIDDEN), ChainHead(5, 10, HIDDEN)
        )
        if needs:
            with pytest.raises(ValueError, match="pass unary_checkpoint"):
                make(strategy=name)
        else:
            make(strategy=name)  # no checkpoint needed


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", NAMES)
def test_strategy_behaviour(name: str, unary_ckpt: Path) -> None:
    pairwise, unary, needs_ckpt, structure, eval_mode = EXPECTED[name]
    dm = _data()
    model = _model(dm, name, unary_ckpt)
    assert model.strategy_spec is STRATEGIES[name] and model.training_strategy == name
    assert model.hparams.strategy == name

    # which parameters are trainable (unary_only: pairwise zeroed too)
    assert all(p.requires_grad == pairwise for p in model.head.pairwise_parameters())
    assert all(p.requires_grad == unary for p in model.backbone.parameters())
    assert all(p.requires_grad == unary for p in model.head.unary_parameters())
    if not pairwise:
        assert all(float(p.abs().max()) == 0 for p in model.head.pairwise_parameters())

    # eval mode of the frozen parts while training
    model.train()
    assert model.backbone.training == (not eval_mode)
    assert all(m.training == (not eval_mode) for m in model.head.unary_modules())
    assert model.uses_message_store == structure  # the head blends by default

    # which loss and prediction the steps use
    calls: list[str] = []
    head = model.head
    for fn in ("training_loss", "independent_loss", "predict", "predict_independent"):
        real = getattr(head, fn)
        setattr(head, fn, partial(lambda f, n, *a, **k: (calls.append(n), f(*a, **k))[1], real, fn))

    # the unary checkpoint is loaded when fitting starts
    saved = torch.load(unary_ckpt, weights_only=True)
    keys = model._unary_state_keys()

    def is_loaded() -> bool:
        return all(torch.equal(model.state_dict()[k], saved[k]) for k in keys)

    assert not is_loaded()
    model.on_fit_start()
    assert is_loaded() == needs_ckpt

    before = _groups(model)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=1, limit_test_batches=1)
    trainer.fit(model, dm)
    fit_calls, calls[:] = list(calls), []
    after = _groups(model)

    assert is_loaded() == (needs_ckpt and not unary)  # frozen: kept as loaded
    assert _changed(before["pairwise"], after["pairwise"]) == pairwise
    assert _changed(before["unary"], after["unary"]) == unary
    if structure:
        assert "training_loss" in fit_calls and "independent_loss" not in fit_calls
        assert "predict" in fit_calls  # validation decodes with message passing
        assert float(model.head.store.messages.abs().sum()) > 0  # the store was written
    else:
        assert "training_loss" not in fit_calls and "predict" not in fit_calls
        assert "independent_loss" in fit_calls and "predict_independent" in fit_calls
        assert float(model.head.store.messages.abs().sum()) == 0  # never touched

    batch = next(iter(dm.train_dataloader()))
    model.eval()
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    assert out["labels"].shape == batch["label"].shape
    assert calls == (["predict"] if structure else ["predict_independent"])

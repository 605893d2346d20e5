"""Pictures of learned weights: pure figure functions, weight read-out, the TensorBoard callback."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure

from structlight.backbones import PerPosition
from structlight.head import ChainHead, FullyConnectedHead
from structlight.potentials import MLP
from structlight.visualize import (
    StructuredVisualizer,
    first_layer_weight,
    interaction_matrix,
    model_figures,
    pairwise_matrix_figure,
    pairwise_table_figure,
    pairwise_tables,
    unary_weight_figure,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def test_unary_weight_tiles() -> None:
    w = torch.randn(30, 784)
    fig = unary_weight_figure(w, max_tiles=12, ncols=4)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    img = ax.get_images()[0].get_array()
    assert img.shape == (3 * 29 - 1, 4 * 29 - 1)  # 3 x 4 tiles of 28x28 with 1-pixel gaps
    assert float(abs(img).max()) == pytest.approx(1.0)  # each tile scaled to [-1, 1]
    assert "12 of 30" in ax.get_title()
    # the first tile is the first row, scaled by its own max
    first = torch.as_tensor(img[:28, :28])
    assert torch.allclose(first, (w[0] / w[0].abs().max()).view(28, 28), atol=1e-6)
    assert unary_weight_figure(torch.randn(5, 6), image_shape=(2, 3)).axes
    with pytest.raises(ValueError, match="not square"):
        unary_weight_figure(torch.randn(5, 10))
    with pytest.raises(ValueError, match="image_shape"):
        unary_weight_figure(torch.randn(5, 10), image_shape=(3, 3))


def test_pairwise_heat_map_has_letter_labels() -> None:
    fig = pairwise_table_figure(torch.randn(26, 26), labels=ALPHABET, title="distance-1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(ALPHABET)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(ALPHABET)
    assert ax.get_images()[0].get_cmap().name == "Greys"  # darker = larger, as the paper
    assert len(fig.axes) == 2  # and a colour bar
    with pytest.raises(ValueError, match="labels"):
        pairwise_table_figure(torch.randn(3, 3), labels="ab")


def test_pairwise_matrix_figure_with_names() -> None:
    names = [f"tag{i}" for i in range(5)]
    m = torch.randn(5, 5)
    fig = pairwise_matrix_figure(m + m.T, names)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    lo, hi = ax.get_images()[0].get_clim()
    assert lo == pytest.approx(-hi)  # centred on zero
    with pytest.raises(ValueError):
        pairwise_matrix_figure(torch.randn(2, 3))


def test_tables_of_a_second_order_chain() -> None:
    head = ChainHead(5, 26, 8, order=2, share="type")
    with torch.no_grad():
        head.potentials["pairwise"].weight[0].fill_(1.0)
        head.potentials["pairwise"].weight[1].fill_(2.0)
    tables = pairwise_tables(head)
    assert set(tables) == {"pairwise distance-1", "pairwise distance-2"}
    assert torch.all(tables["pairwise distance-1"] == 1.0)
    assert torch.all(tables["pairwise distance-2"] == 2.0)
    shared = pairwise_tables(ChainHead(5, 26, 8, order=2, share="shared"))
    assert list(shared) == ["pairwise"] and shared["pairwise"].shape == (26, 26)
    assert pairwise_tables(ChainHead(5, 26, 8, pairwise="none")) == {}
    mlp = ChainHead(5, 26, 8, pairwise="mlp", pairwise_in_features=16, pairwise_hidden=[4])
    assert pairwise_tables(mlp) == {}


def test_interaction_matrix_is_the_log_odds_ratio() -> None:
    head = FullyConnectedHead(4, in_features=3)
    weight = head.potentials["pairwise"].weight  # (6, 2, 2), one table per edge
    with torch.no_grad():
        weight.copy_(torch.randn_like(weight))
    m = interaction_matrix(head)
    assert m is not None and m.shape == (4, 4)
    assert torch.allclose(m, m.T) and torch.all(m.diagonal() == 0)
    edges = [head.graph.regions[r] for r in head.graph.regions_of_size(2)]
    for k, (i, j) in enumerate(edges):
        w = weight[k].detach()
        assert m[i, j] == pytest.approx(float(w[1, 1] + w[0, 0] - w[0, 1] - w[1, 0]), abs=1e-6)
    assert interaction_matrix(ChainHead(5, 26, 8)) is None  # not binary


def test_model_figures() -> None:
    model = SimpleNamespace(
        backbone=PerPosition(MLP(784, [16])), head=ChainHead(5, 26, 16, order=2)
    )
    figs = model_figures(model, state_names=ALPHABET, max_tiles=16)
    assert set(figs) == {
        "unary_weights",
        "pairwise/pairwise_distance-1",
        "pairwise/pairwise_distance-2",
    }
    assert torch.equal(first_layer_weight(model.backbone), model.backbone.module.layers[0].weight)
    flickr = SimpleNamespace(backbone=torch.nn.Linear(10, 4), head=FullyConnectedHead(3, 4))
    figs = model_figures(flickr, variable_names=["sky", "sea", "indoor"])
    assert set(figs) == {"pairwise_matrix"}  # 10 inputs are no square image
    labels = [t.get_text() for t in figs["pairwise_matrix"].axes[0].get_yticklabels()]
    assert labels == ["sky", "sea", "indoor"]


def test_callback_logs_images_to_tensorboard(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path, name="vis", version="v")
    trainer = SimpleNamespace(
        loggers=[tb, CSVLogger(tmp_path)],  # the CSV logger is skipped
        sanity_checking=False,
        fast_dev_run=False,
        current_epoch=0,
        should_stop=False,
        global_step=7,
        datamodule=SimpleNamespace(alphabet=ALPHABET),
    )
    model = SimpleNamespace(backbone=PerPosition(MLP(784, [8])), head=ChainHead(5, 26, 8))
    StructuredVisualizer(max_tiles=8).on_validation_end(trainer, model)
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"weights/unary_weights", "weights/pairwise/pairwise"}
    assert events.Images("weights/unary_weights")[0].step == 7

    # nothing during the sanity check, nor between every_n_epochs
    trainer.sanity_checking = True
    StructuredVisualizer().on_validation_end(trainer, model)
    trainer.sanity_checking = False
    trainer.global_step = 8
    StructuredVisualizer(every_n_epochs=2).on_validation_end(trainer, model)
    events.Reload()
    assert len(events.Images("weights/unary_weights")) == 1
    with pytest.raises(ValueError):
        StructuredVisualizer(every_n_epochs=0)

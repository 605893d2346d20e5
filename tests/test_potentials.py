"""Potential modules: MLP, unaries, tables with sharing, the pairwise MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from structlight.potentials import (
    MLP,
    HigherOrderTable,
    PairwiseMLP,
    PairwiseTable,
    RegionTable,
    Unary,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_mlp_layers_counts_and_inputs():
    m = MLP(784, [1024])
    assert n_params(m) == 784 * 1024 + 1024
    assert m.out_features == 1024
    assert [type(x) for x in m.layers] == [nn.Linear, nn.ReLU]
    out = m(torch.randn(3, 1, 28, 28))  # images are flattened
    assert out.shape == (3, 1024) and bool((out >= 0).all())
    assert m(torch.randn(2, 5, 784)).shape == (2, 5, 1024)  # last dim when it fits
    two = MLP(784, [512, 256], 26)
    assert n_params(two) == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 26 + 26
    assert not isinstance(two.layers[-1], nn.ReLU)  # no activation after the output layer
    assert n_params(MLP(1568, [64], 676)) == 144_356  # the paper's pairwise MLP
    with pytest.raises(ValueError, match="784"):
        m(torch.randn(2, 5, 1, 28, 28))
    with pytest.raises(ValueError, match="hidden layer or an out_features"):
        MLP(4)


def test_unary_modes():
    u = Unary(16, 26)
    x = torch.randn(4, 5, 16)
    out = u(x)
    assert out.shape == (4, 5, 26)
    # one Linear shared by all positions
    assert torch.allclose(out[:, 2], u.net(x[:, 2]))
    assert n_params(u) == 16 * 26 + 26
    g = Unary(4096, 2, num_vars=38, mode="global")
    assert n_params(g) == 4096 * 76 + 76
    assert g(torch.randn(3, 4096)).shape == (3, 38, 2)
    with pytest.raises(ValueError, match="mode='global'"):
        u(torch.randn(4, 16))
    with pytest.raises(ValueError, match="per_variable"):
        g(torch.randn(3, 5, 4096))
    with pytest.raises(ValueError, match="num_vars"):
        Unary(8, 2, mode="global")
    assert Unary(8, 3, hidden=[5])(torch.randn(2, 4, 8)).shape == (2, 4, 3)


def test_region_table_sharing():
    shared = PairwiseTable((3, 3), groups=[0, 0, 0, 0], init_std=1.0)
    assert shared.weight.shape == (1, 3, 3)
    out = shared()
    assert out.shape == (1, 4, 3, 3)
    assert all(torch.equal(out[0, i], shared.weight[0]) for i in range(4))
    by_type = PairwiseTable((3, 3), groups=[1, 1, 2], init_std=1.0)
    assert by_type.weight.shape == (2, 3, 3) and n_params(by_type) == 18
    out = by_type()
    assert torch.equal(out[0, 0], out[0, 1]) and not torch.equal(out[0, 0], out[0, 2])
    per_edge = PairwiseTable((2, 2), groups=range(703))
    assert n_params(per_edge) == 703 * 4
    assert torch.count_nonzero(per_edge.weight) == 0  # init_std=0: zeros
    # a shared table collects the gradient of every edge
    shared().sum().backward()
    assert torch.allclose(shared.weight.grad, torch.full((1, 3, 3), 4.0))


def test_higher_order_table_and_arity_checks():
    t = HigherOrderTable((2, 3, 4), groups=[0, 1])
    assert t().shape == (1, 2, 2, 3, 4)
    assert isinstance(t, RegionTable)
    with pytest.raises(ValueError, match=">= 3 axes"):
        HigherOrderTable((2, 2))
    with pytest.raises(ValueError, match="two axes"):
        PairwiseTable((2, 2, 2))


def test_pairwise_mlp_reads_the_two_inputs():
    torch.manual_seed(0)
    pairs = [(0, 1), (1, 2), (0, 2)]
    m = PairwiseMLP(2 * 6, [5], (3, 4), pairs)
    x = torch.randn(2, 3, 1, 2, 3)  # (B, N, *rest), 6 entries per variable
    out = m(None, {"image": x})
    assert out.shape == (2, 3, 3, 4)
    flat = x.flatten(2)
    want = m.mlp(torch.cat([flat[:, 0], flat[:, 2]], dim=1)).reshape(2, 3, 4)
    assert torch.allclose(out[:, 2], want)
    # features as the source
    mf = PairwiseMLP(2 * 7, [5], (3, 3), pairs, source="features")
    assert mf(torch.randn(2, 3, 7), {}).shape == (2, 3, 3, 3)
    with pytest.raises(KeyError, match="image"):
        m(None, {"pixels": x})
    with pytest.raises(ValueError, match="in_features=12"):
        m(None, {"image": torch.randn(2, 3, 5)})
    with pytest.raises(ValueError, match="positions"):
        m(None, {"image": torch.randn(2, 2, 6)})


def test_pairwise_mlp_checks_sizes_without_reading_tensors(monkeypatch):
    """The pairs are fixed: their largest variable is known at construction, and a forward
    reads no tensor value on the host (a device sync on a GPU)."""
    m = PairwiseMLP(2 * 4, [5], (2, 3), [(0, 3), (1, 2)], source="features")
    with pytest.raises(ValueError, match="covers variable 3 but the features has 3 positions"):
        m(torch.randn(2, 3, 4), {})
    with pytest.raises(ValueError, match=">= 0"):
        PairwiseMLP(2 * 4, [5], (2, 3), [(0, -1)])

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    assert m(torch.randn(2, 4, 4), {}).shape == (2, 2, 2, 3)

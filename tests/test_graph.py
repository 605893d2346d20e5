"""RegionGraph construction, validation and scheduling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from structlight import RegionGraph


def test_mixed_state_counts_with_a_pair_and_a_triple():
    g = RegionGraph(
        num_states=[3, 2, 4, 3],
        regions=[(0,), (1,), (2,), (3,), (0, 1), (1, 2, 3)],
        counting_numbers=None,
    )
    assert g.regions == [(0,), (1,), (2,), (3,), (0, 1), (1, 2, 3)]
    assert g.num_regions == 6
    assert g.region_shape(0) == (3,)
    assert g.region_shape(5) == (2, 4, 3)
    assert g.counting_numbers == (1.0,) * 6
    assert g.parents(1) == [4, 5]
    assert g.parents(0) == [4]
    assert g.children(5) == [1, 2, 3]
    assert g.parents(4) == []


def test_parents_are_direct_supersets():
    g = RegionGraph(num_states=2, num_vars=3, regions=[(0,), (0, 1), (0, 1, 2), (1,)])
    # (0,) is inside (0,1) and (0,1,2), but only (0,1) is a direct superset
    assert g.parents(0) == [1]
    assert g.parents(1) == [2]
    assert g.parents(3) == [1]


def test_explicit_parents_override():
    g = RegionGraph(
        num_states=2, num_vars=3, regions=[(0,), (0, 1), (0, 1, 2)], parents=[[1, 2], [2], []]
    )
    assert g.parents(0) == [1, 2]
    assert g.children(2) == [0, 1]
    with pytest.raises(ValueError, match="not a strict superset"):
        RegionGraph(num_states=2, num_vars=3, regions=[(0,), (1, 2)], parents=[[1], []])


def test_chain_grid_fully_connected_builders():
    g2 = RegionGraph.chain(num_vars=5, num_states=26, order=2)
    assert g2.num_regions == 5 + 4 + 3
    assert g2.regions[5:9] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert g2.regions[9:] == [(0, 2), (1, 3), (2, 4)]
    assert g2.edge_types == (0,) * 5 + (1,) * 4 + (2,) * 3
    g3 = RegionGraph.fully_connected(num_vars=38, num_states=2)
    assert g3.num_regions == 38 + 703
    assert g3.num_edge_types == 704
    g4 = RegionGraph.grid(height=8, width=8, num_states=5)
    assert g4.num_regions == 64 + 2 * 8 * 7
    assert (0, 1) in g4.regions and (0, 8) in g4.regions and (7, 8) not in g4.regions


@pytest.mark.parametrize(
    "graph, colours",
    [
        (RegionGraph.chain(5, 3, order=1), 2),
        (RegionGraph.chain(5, 3, order=2), 3),
        (RegionGraph.fully_connected(7, 2), 7),
        (RegionGraph.grid(4, 5, 2), 2),
    ],
)
def test_schedule_is_a_valid_colouring(graph, colours):
    blocks = graph.schedule()
    assert len(blocks) == colours
    senders = sorted(r for r in range(graph.num_regions) if graph.parents(r))
    assert sorted(itertools.chain.from_iterable(blocks)) == senders
    for block in blocks:
        for a, b in itertools.combinations(block, 2):
            assert not set(graph.parents(a)) & set(graph.parents(b))
            assert a not in graph.parents(b) and b not in graph.parents(a)


def test_projection_maps_parent_states_to_child_states():
    g = RegionGraph(num_states=[2, 3, 4], regions=[(2,), (0,), (2, 0, 1)])
    proj = g.projection(0, 2)  # child (2,) in parent (2, 0, 1) of shape (4, 2, 3)
    assert proj.shape == (24,)
    expect = np.indices((4, 2, 3)).reshape(3, -1)[0]
    np.testing.assert_array_equal(proj, expect)
    proj1 = g.projection(1, 2)
    np.testing.assert_array_equal(proj1, np.indices((4, 2, 3)).reshape(3, -1)[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_states=[2, 2], regions=[(0,), (0, 2)]), "names variable 2"),
        (dict(num_states=[2, 2], regions=[(0,), (-1,)]), "names variable -1"),
        (dict(num_states=[2, 2], regions=[(0, 1), (1, 0)]), "duplicate region"),
        (dict(num_states=[2, 2], regions=[(0, 0)]), "repeats a variable"),
        (dict(num_states=[2, 2], regions=[()]), "empty"),
        (dict(num_states=[2, 2], regions=[(0,), (1,)], counting_numbers=[1, -0.5]), ">= 0"),
        (dict(num_states=[2, 2], regions=[(0,), (1,)], counting_numbers=[1]), "expected 2"),
        (dict(num_states=[2, 0], regions=[(0,)]), "at least 1 state"),
        (dict(num_states=[2, 2], regions=[]), "at least one region"),
    ],
)
def test_bad_graphs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegionGraph(**kwargs)


def test_bad_types_raise():
    with pytest.raises(TypeError):
        RegionGraph(num_states="abc", regions=[(0,)])
    with pytest.raises(TypeError):
        RegionGraph(num_states=[2], regions=[5])

"""The potential terms the ready heads share: a :class:`Unary` on the singletons, ``K x K``
tables or pairwise MLPs on the pairs, one per ``share`` group of edges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from structlight.graph import RegionGraph
from structlight.potentials import PairwiseMLP, RegionTable, Unary

if TYPE_CHECKING:
    from structlight.head.base import StructuredHead

__all__ = [
    "Share",
    "UnaryMode",
    "add_pairwise_mlps",
    "add_unary_and_tables",
    "check_choice",
    "share_groups",
]

#: How edges share their pairwise parameters: one set for all edges, one per edge type (a
#: chain's edge distance), or one per edge.
Share = Literal["shared", "type", "edge"]
#: How :class:`Unary` reads the backbone's features (see there).
UnaryMode = Literal["per_variable", "global"]


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the allowed values when ``value`` is not one of them."""
    if value not in allowed:
        names = [repr(a) for a in allowed]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"{name} must be {listed}, got {value!r}")


def share_groups(graph: RegionGraph, regions: Sequence[int], share: str) -> list[int]:
    """The parameter group of each of ``regions`` under ``share``.

    Raises:
        ValueError: an unknown ``share``.
    """
    check_choice("share", share, ("shared", "type", "edge"))
    if share == "shared":
        return [0] * len(regions)
    if share == "type":
        return [graph.edge_types[r] for r in regions]
    return list(range(len(regions)))


def add_unary_and_tables(
    head: StructuredHead,
    in_features: int,
    num_states: int,
    unary_mode: UnaryMode,
    unary_hidden: list[int] | None,
    pairwise: str,
    share: Share,
    table_init_std: float,
) -> list[int]:
    """Register the ``"unary"`` term on every singleton of ``head.graph`` and, for
    ``pairwise="table"``, one ``K x K`` :class:`RegionTable` per ``share`` group of the pair
    regions (term ``"pairwise"``).

    Returns:
        The pair regions (for a head that adds other pairwise terms).
    """
    graph = head.graph
    head.add_potential(
        "unary",
        Unary(in_features, num_states, graph.num_vars, unary_mode, unary_hidden or []),
        graph.regions_of_size(1),
        unary=True,
    )
    edges = graph.regions_of_size(2)
    if pairwise == "table" and edges:
        groups = share_groups(graph, edges, share)
        head.add_potential(
            "pairwise", RegionTable((num_states, num_states), groups, table_init_std), edges
        )
    return edges


def add_pairwise_mlps(
    head: StructuredHead,
    edges: Sequence[int],
    num_states: int,
    share: Share,
    in_features: int,
    hidden: list[int],
    source: Literal["input", "features"],
    input_key: str,
) -> None:
    """Register one :class:`PairwiseMLP` per ``share`` group of ``edges``: term ``"pairwise"``
    for a single group, else ``"pairwise_<share><group>"``.

    Args:
        head: the head (its graph holds ``edges``).
        edges: the pair regions.
        num_states: ``K`` (the MLPs return ``K x K`` tables).
        share: the grouping of the edges.
        in_features: the MLP's input size (the two positions' inputs together).
        hidden: its hidden sizes.
        source: ``"input"`` (read ``batch[input_key]``) or ``"features"``.
        input_key: the batch key of the raw inputs.
    """
    graph = head.graph
    by_group: dict[int, list[int]] = {}
    for r, gid in zip(edges, share_groups(graph, edges, share), strict=True):
        by_group.setdefault(gid, []).append(r)
    for gid, regs in by_group.items():
        name = "pairwise" if len(by_group) == 1 else f"pairwise_{share}{gid}"
        mlp = PairwiseMLP(
            in_features,
            hidden,
            (num_states, num_states),
            [graph.regions[r] for r in regs],
            source=source,
            input_key=input_key,
        )
        head.add_potential(name, mlp, regs)

"""Region graphs: the structure of a Markov random field over discrete variables.

A :class:`RegionGraph` holds variables ``0..N-1`` with per-variable state counts, a list of
regions (tuples of variables; each has a score table), counting numbers ``c_r >= 0``, and the
parent/child relation between regions (by default the Hasse diagram of strict inclusion: the
parents of ``r`` are its *direct* strict supersets among the regions). One dual message
``lam[r->p](y_r)`` lives on every (region, parent) pair.

Regions also carry an *edge type* (an integer) used by potential modules for parameter sharing,
e.g. the distance-1 and distance-2 edges of a 2nd-order chain, or one type per edge of a fully
connected graph.

The graph is pure structure (Python and NumPy); :class:`structlight.ConvexBP` compiles it into
index tensors once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["RegionGraph"]


class RegionGraph:
    """A region graph over discrete variables.

    Args:
        num_states: states per variable, ``K_i``; a list of length N, or an int together with
            ``num_vars``.
        regions: tuples of variable indices. The score table of region ``r`` has shape
            ``tuple(num_states[v] for v in r)``, axes in the tuple's order. No two regions may
            hold the same set of variables.
        counting_numbers: ``c_r >= 0`` per region; ``None`` means 1 for every region.
        parents: optional explicit parent lists, one list of region indices per region. Every
            listed parent must be a strict superset of the child. ``None`` (default) takes the
            direct strict supersets (Hasse diagram).
        edge_types: optional integer type per region, for parameter sharing. ``None`` gives type
            0 to singletons and ``size - 1`` to larger regions.
        num_vars: number of variables when ``num_states`` is an int.

    Raises:
        ValueError: a region names a variable out of range, is empty or repeats a variable, two
            regions hold the same variables, a counting number is negative, a parent is not a
            strict superset, or a length does not match.
        TypeError: an argument has the wrong type.

    Example:
        >>> g = RegionGraph(num_states=[3, 2, 4, 3], regions=[(0,), (1,), (2,), (3,), (0, 1), (1, 2, 3)])
        >>> g.num_regions, g.region_shape(5), g.parents(1)
        (6, (2, 4, 3), [4, 5])
    """

    def __init__(
        self,
        num_states: Sequence[int] | int,
        regions: Sequence[Sequence[int]],
        counting_numbers: Sequence[float] | None = None,
        parents: Sequence[Sequence[int]] | None = None,
        edge_types: Sequence[int] | None = None,
        num_vars: int | None = None,
    ) -> None:
        if isinstance(num_states, bool):
            raise TypeError(f"num_states must be an int or a sequence of ints, got {num_states!r}")
        if isinstance(num_states, int):
            if num_vars is None:
                raise ValueError(
                    "num_states is an int: pass num_vars too, or a list of state counts"
                )
            num_states = [num_states] * num_vars
        try:
            ks = [int(k) for k in num_states]
        except (TypeError, ValueError) as err:
            raise TypeError(f"num_states must be a sequence of ints, got {num_states!r}") from err
        if num_vars is not None and len(ks) != num_vars:
            raise ValueError(f"num_vars={num_vars} but num_states has {len(ks)} entries")
        if not ks:
            raise ValueError("a region graph needs at least one variable; num_states is empty")
        for i, k in enumerate(ks):
            if k < 1:
                raise ValueError(
                    f"variable {i} must have at least 1 state, got num_states[{i}]={k}"
                )
        self._num_states: tuple[int, ...] = tuple(ks)
        n = len(ks)

        regs: list[tuple[int, ...]] = []
        seen: dict[frozenset[int], int] = {}
        for r_idx, reg in enumerate(regions):
            try:
                reg_t = tuple(int(v) for v in reg)
            except TypeError as err:
                raise TypeError(
                    f"region {r_idx} must be a tuple of variable indices, got {reg!r}"
                ) from err
            if not reg_t:
                raise ValueError(f"region {r_idx} is empty; every region needs >= 1 variable")
            for v in reg_t:
                if not 0 <= v < n:
                    raise ValueError(
                        f"region {r_idx} = {reg_t} names variable {v}, but variables are 0..{n - 1}"
                    )
            if len(set(reg_t)) != len(reg_t):
                raise ValueError(f"region {r_idx} = {reg_t} repeats a variable")
            key = frozenset(reg_t)
            if key in seen:
                raise ValueError(
                    f"duplicate region: region {r_idx} = {reg_t} holds the same variables as "
                    f"region {seen[key]} = {regs[seen[key]]}"
                )
            seen[key] = r_idx
            regs.append(reg_t)
        if not regs:
            raise ValueError("a region graph needs at least one region; regions is empty")
        self._regions: tuple[tuple[int, ...], ...] = tuple(regs)
        num_r = len(regs)

        if counting_numbers is None:
            cs = [1.0] * num_r
        else:
            cs = [float(c) for c in counting_numbers]
            if len(cs) != num_r:
                raise ValueError(
                    f"expected {num_r} counting numbers (one per region), got {len(cs)}"
                )
            for r_idx, c in enumerate(cs):
                if not (c >= 0.0) or math.isinf(c):
                    raise ValueError(
                        f"counting numbers must be finite and >= 0; region {r_idx} has {c}"
                    )
        self._counting: tuple[float, ...] = tuple(cs)

        sets = [frozenset(r) for r in regs]
        if parents is None:
            holding: list[set[int]] = [set() for _ in range(n)]
            for r_idx, reg in enumerate(regs):
                for v in reg:
                    holding[v].add(r_idx)
            par: list[list[int]] = []
            for r_idx, s in enumerate(sets):
                supers = set.intersection(*(holding[v] for v in s)) - {r_idx}
                supers = {p for p in supers if len(sets[p]) > len(s)}
                par.append(
                    sorted(
                        p for p in supers if not any(sets[q] < sets[p] for q in supers if q != p)
                    )
                )
        else:
            if len(parents) != num_r:
                raise ValueError(
                    f"parents must have one list per region ({num_r}), got {len(parents)}"
                )
            par = []
            for r_idx, plist in enumerate(parents):
                pl = [int(p) for p in plist]
                for p in pl:
                    if not 0 <= p < num_r:
                        raise ValueError(
                            f"parents[{r_idx}] names region {p}, but regions are 0..{num_r - 1}"
                        )
                    if not sets[r_idx] < sets[p]:
                        raise ValueError(
                            f"parents[{r_idx}] names region {p} = {regs[p]}, which is not a strict "
                            f"superset of region {r_idx} = {regs[r_idx]}"
                        )
                if len(set(pl)) != len(pl):
                    raise ValueError(f"parents[{r_idx}] = {pl} repeats a region")
                par.append(pl)
        self._parents: tuple[tuple[int, ...], ...] = tuple(tuple(p) for p in par)
        ch: list[list[int]] = [[] for _ in range(num_r)]
        for r_idx, plist in enumerate(self._parents):
            for p in plist:
                ch[p].append(r_idx)
        self._children: tuple[tuple[int, ...], ...] = tuple(tuple(c) for c in ch)

        if edge_types is None:
            et = [len(r) - 1 for r in regs]
        else:
            et = [int(t) for t in edge_types]
            if len(et) != num_r:
                raise ValueError(f"expected {num_r} edge types (one per region), got {len(et)}")
            if any(t < 0 for t in et):
                raise ValueError(f"edge types must be >= 0, got {et}")
        self._edge_types: tuple[int, ...] = tuple(et)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def chain(
        cls,
        num_vars: int,
        num_states: int | Sequence[int],
        order: int = 1,
        counting_numbers: Sequence[float] | None = None,
    ) -> RegionGraph:
        """A chain: singletons ``(i,)`` then pairs ``(i, i+d)`` for ``d = 1..order``.

        Regions are ordered: all N singletons, then the distance-1 edges, then distance-2, ...
        The edge type of an edge at distance ``d`` is ``d`` (singletons have type 0), so a
        2nd-order chain has separate tables for its distance-1 and distance-2 edges.

        Args:
            num_vars: N >= 1.
            num_states: states per variable (int, or a list of N).
            order: the largest distance between two variables of an edge (>= 1).
            counting_numbers: optional, one per region.
        """
        if order < 1:
            raise ValueError(f"chain order must be >= 1, got {order}")
        ks = [num_states] * num_vars if isinstance(num_states, int) else list(num_states)
        regions: list[tuple[int, ...]] = [(i,) for i in range(num_vars)]
        types = [0] * num_vars
        for d in range(1, order + 1):
            for i in range(num_vars - d):
                regions.append((i, i + d))
                types.append(d)
        return cls(ks, regions, counting_numbers=counting_numbers, edge_types=types)

    @classmethod
    def fully_connected(
        cls,
        num_vars: int,
        num_states: int | Sequence[int],
        counting_numbers: Sequence[float] | None = None,
    ) -> RegionGraph:
        """All singletons, then every pair ``(i, j), i < j`` in lexicographic order.

        Edge ``k`` (the k-th pair) has edge type ``k + 1``, so a model can learn one table per
        edge (the Flickr model: 38 binary variables, 703 edges).
        """
        ks = [num_states] * num_vars if isinstance(num_states, int) else list(num_states)
        regions: list[tuple[int, ...]] = [(i,) for i in range(num_vars)]
        types = [0] * num_vars
        k = 0
        for i in range(num_vars):
            for j in range(i + 1, num_vars):
                regions.append((i, j))
                k += 1
                types.append(k)
        return cls(ks, regions, counting_numbers=counting_numbers, edge_types=types)

    @classmethod
    def grid(
        cls,
        height: int,
        width: int,
        num_states: int | Sequence[int],
        counting_numbers: Sequence[float] | None = None,
    ) -> RegionGraph:
        """A 4-connected grid; variable ``(i, j)`` is ``i * width + j``.

        Regions: all singletons, then horizontal edges (type 1), then vertical edges (type 2).
        """
        n = height * width
        ks = [num_states] * n if isinstance(num_states, int) else list(num_states)
        regions: list[tuple[int, ...]] = [(v,) for v in range(n)]
        types = [0] * n
        for i in range(height):
            for j in range(width - 1):
                regions.append((i * width + j, i * width + j + 1))
                types.append(1)
        for i in range(height - 1):
            for j in range(width):
                regions.append((i * width + j, (i + 1) * width + j))
                types.append(2)
        return cls(ks, regions, counting_numbers=counting_numbers, edge_types=types)

    # ------------------------------------------------------------------ accessors
    @property
    def num_vars(self) -> int:
        """Number of variables N."""
        return len(self._num_states)

    @property
    def num_states(self) -> tuple[int, ...]:
        """States per variable, ``(K_0, ..., K_{N-1})``."""
        return self._num_states

    @property
    def regions(self) -> list[tuple[int, ...]]:
        """The regions, as tuples of variable indices, in order."""
        return list(self._regions)

    @property
    def num_regions(self) -> int:
        """Number of regions R."""
        return len(self._regions)

    @property
    def counting_numbers(self) -> tuple[float, ...]:
        """Counting numbers ``c_r``, one per region."""
        return self._counting

    @property
    def edge_types(self) -> tuple[int, ...]:
        """Edge type per region (singletons 0 by default)."""
        return self._edge_types

    @property
    def num_edge_types(self) -> int:
        """``max(edge_types) + 1``."""
        return max(self._edge_types) + 1

    def region_shape(self, r: int) -> tuple[int, ...]:
        """Shape of region ``r``'s score table: ``(K_v for v in regions[r])``."""
        return tuple(self._num_states[v] for v in self._regions[r])

    def region_size(self, r: int) -> int:
        """Number of joint states of region ``r``."""
        return math.prod(self.region_shape(r))

    def parents(self, r: int) -> list[int]:
        """Parent regions of ``r`` (direct strict supersets unless given explicitly)."""
        return list(self._parents[r])

    def children(self, r: int) -> list[int]:
        """Child regions of ``r``."""
        return list(self._children[r])

    @property
    def edges(self) -> list[tuple[int, int]]:
        """All (child, parent) pairs, i.e. one per dual message, in message order."""
        return [(c, p) for c in range(self.num_regions) for p in self._parents[c]]

    def regions_of_size(self, size: int) -> list[int]:
        """Indices of the regions with ``size`` variables."""
        return [r for r, reg in enumerate(self._regions) if len(reg) == size]

    def is_pairwise(self) -> bool:
        """True if every region has one or two variables."""
        return all(len(r) <= 2 for r in self._regions)

    def is_chain(self) -> bool:
        """True if this is a 1st-order chain with uniform state count (as :meth:`chain` builds)."""
        n = self.num_vars
        want = [(i,) for i in range(n)] + [(i, i + 1) for i in range(n - 1)]
        return list(self._regions) == want and len(set(self._num_states)) == 1

    def projection(self, child: int, parent: int) -> np.ndarray:
        """Map each joint state of ``parent`` to the joint state of ``child`` it contains.

        Returns:
            int64 array of shape ``(region_size(parent),)``: entry ``y_p`` (row-major flat index
            into the parent's table) holds the flat index ``y_c`` of the child's table.
        """
        pv, cv = self._regions[parent], self._regions[child]
        if not set(cv) < set(pv):
            raise ValueError(
                f"region {child} = {cv} is not a strict subset of region {parent} = {pv}"
            )
        pshape = self.region_shape(parent)
        grids = np.indices(pshape).reshape(len(pv), -1)
        axes = [pv.index(v) for v in cv]
        return np.ravel_multi_index(tuple(grids[a] for a in axes), self.region_shape(child)).astype(
            np.int64
        )

    def schedule(self) -> list[list[int]]:
        """Blocks of regions that may be updated in parallel, in sweep order.

        Two regions conflict if they share a parent or one is a parent of the other; a greedy
        colouring (largest number of conflicts first, ties by index) puts non-conflicting regions
        into the same block, so one block update is an exact minimisation of the dual over all
        messages of its regions. Regions without parents send no messages and are left out.

        Returns:
            A list of blocks; each block is a sorted list of region indices.
        """
        senders = [r for r in range(self.num_regions) if self._parents[r]]
        conflicts: dict[int, set[int]] = {r: set() for r in senders}
        by_parent: dict[int, list[int]] = {}
        for r in senders:
            for p in self._parents[r]:
                by_parent.setdefault(p, []).append(r)
                if p in conflicts:
                    conflicts[r].add(p)
                    conflicts[p].add(r)
        for group in by_parent.values():
            for a in group:
                conflicts[a].update(b for b in group if b != a)
        order = sorted(senders, key=lambda r: (-len(conflicts[r]), r))
        colour: dict[int, int] = {}
        for r in order:
            used = {colour[q] for q in conflicts[r] if q in colour}
            c = 0
            while c in used:
                c += 1
            colour[r] = c
        blocks: list[list[int]] = [[] for _ in range(max(colour.values(), default=-1) + 1)]
        for r, c in colour.items():
            blocks[c].append(r)
        return [sorted(b) for b in blocks]

    def __repr__(self) -> str:
        sizes: dict[int, int] = {}
        for r in self._regions:
            sizes[len(r)] = sizes.get(len(r), 0) + 1
        return (
            f"RegionGraph(num_vars={self.num_vars}, num_regions={self.num_regions}, "
            f"regions_by_size={dict(sorted(sizes.items()))}, num_messages={len(self.edges)})"
        )

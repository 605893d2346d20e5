"""structlight: learning deep structured models on PyTorch Lightning.

Markov random fields over discrete outputs whose potentials are deep networks, trained jointly
by blending convex message passing with learning (Chen, Schwing, Yuille, Urtasun, ICML 2015).
"""

from __future__ import annotations

from structlight.chain import (
    chain_log_partition,
    chain_marginals,
    chain_potentials,
    chain_score,
    chain_viterbi,
)
from structlight.graph import RegionGraph
from structlight.inference import NEG_INF, ConvexBP

__version__ = "0.1.0"

__all__ = [
    "NEG_INF",
    "ConvexBP",
    "RegionGraph",
    "__version__",
    "chain_log_partition",
    "chain_marginals",
    "chain_potentials",
    "chain_score",
    "chain_viterbi",
]

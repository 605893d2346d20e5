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
from structlight.head import (
    ChainHead,
    FullyConnectedHead,
    InferenceSettings,
    StructuredHead,
    StructuredLoss,
)
from structlight.inference import NEG_INF, ConvexBP, PreparedPotentials
from structlight.potentials import (
    MLP,
    HigherOrderTable,
    PairwiseMLP,
    PairwiseTable,
    RegionPotential,
    RegionTable,
    Unary,
)
from structlight.store import MessageStore

__version__ = "0.1.0"

# Exports that import Lightning or torchmetrics (seconds) load on first access (PEP 562), so
# ``import structlight`` stays as cheap as torch for users of the graph and inference engine.
_LAZY = {
    "DeepStructuredModel": "structlight.task",
    "CharacterAccuracy": "structlight.metrics",
    "HammingError": "structlight.metrics",
    "WordAccuracy": "structlight.metrics",
    "task_metrics": "structlight.metrics",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'structlight' has no attribute {name!r}")


__all__ = [
    "NEG_INF",
    "ConvexBP",
    "PreparedPotentials",
    "RegionGraph",
    "__version__",
    "chain_log_partition",
    "chain_marginals",
    "chain_potentials",
    "chain_score",
    "chain_viterbi",
    "ChainHead",
    "FullyConnectedHead",
    "InferenceSettings",
    "StructuredHead",
    "StructuredLoss",
    "CharacterAccuracy",
    "HammingError",
    "WordAccuracy",
    "task_metrics",
    "MLP",
    "HigherOrderTable",
    "PairwiseMLP",
    "PairwiseTable",
    "RegionPotential",
    "RegionTable",
    "Unary",
    "MessageStore",
    "DeepStructuredModel",
]

# The command line and the pictures; lazy too, as they import Lightning and matplotlib.
_LAZY.update(
    {
        "main": "structlight.cli",
        "StructuredVisualizer": "structlight.visualize",
        "model_figures": "structlight.visualize",
        "ShardedSampler": "structlight.distributed",
    }
)
__all__ += ["main", "StructuredVisualizer", "model_figures", "ShardedSampler"]

# Exact resumes and run directories (lazy: they import Lightning).
_LAZY.update(
    {
        "ResumableCheckpoint": "structlight.checkpointing",
        "ResumeState": "structlight.checkpointing",
        "EpochShuffleSampler": "structlight.sampling",
    }
)
__all__ += ["ResumableCheckpoint", "ResumeState", "EpochShuffleSampler"]

"""The paper's four training strategies, each described once by a :class:`StrategySpec`.

:class:`structlight.DeepStructuredModel` reads every strategy-dependent decision (which
parameters train, whether the structure and the message store are used, whether a unary
checkpoint is loaded) from the spec of its ``strategy``: :data:`STRATEGIES` is the single
definition of what a strategy means:

* ``unary_only``: pairwise zeroed and frozen, unary trained, no structure (per-variable loss
  and argmax), no unary checkpoint;
* ``joint``: everything trained from scratch with the structure;
* ``piecewise``: unary loaded from ``unary_checkpoint``, frozen and kept in eval mode; pairwise
  trained with the structure;
* ``pretrain_joint``: unary loaded from ``unary_checkpoint``; everything trained with the
  structure.

"unary" covers the backbone and the head's unary terms; "pairwise" every other head term.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

__all__ = ["STRATEGIES", "Strategy", "StrategySpec", "read_unary_weights", "strategy_spec"]

Strategy = Literal["unary_only", "joint", "piecewise", "pretrain_joint"]


@dataclass(frozen=True)
class StrategySpec:
    """What one training strategy does.

    Attributes:
        name: the strategy's name (``DeepStructuredModel(strategy=...)``).
        pairwise_trainable: the pairwise (non-unary) head parameters are learned; False: they
            are zeroed and frozen when the model is built.
        unary_trainable: the backbone and the unary parameters are learned; False: frozen.
        needs_unary_checkpoint: the backbone and unary start from ``unary_checkpoint`` (loaded
            when fitting starts, not when resuming).
        uses_structure: the loss, validation and prediction use message passing on the graph
            (the structured loss, the message store when blending); False: per-variable loss
            and argmax prediction.
        unary_in_eval_mode: the (frozen) backbone and unary modules stay in eval mode while
            training (no dropout, fixed batch-norm statistics).
    """

    name: str
    pairwise_trainable: bool
    unary_trainable: bool
    needs_unary_checkpoint: bool
    uses_structure: bool
    unary_in_eval_mode: bool


#: Every strategy, by name, in the paper's order.
STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        StrategySpec(
            "unary_only",
            pairwise_trainable=False,
            unary_trainable=True,
            needs_unary_checkpoint=False,
            uses_structure=False,
            unary_in_eval_mode=False,
        ),
        StrategySpec(
            "joint",
            pairwise_trainable=True,
            unary_trainable=True,
            needs_unary_checkpoint=False,
            uses_structure=True,
            unary_in_eval_mode=False,
        ),
        StrategySpec(
            "piecewise",
            pairwise_trainable=True,
            unary_trainable=False,
            needs_unary_checkpoint=True,
            uses_structure=True,
            unary_in_eval_mode=True,
        ),
        StrategySpec(
            "pretrain_joint",
            pairwise_trainable=True,
            unary_trainable=True,
            needs_unary_checkpoint=True,
            uses_structure=True,
            unary_in_eval_mode=False,
        ),
    )
}


def strategy_spec(name: str) -> StrategySpec:
    """The spec of a strategy.

    Args:
        name: ``"unary_only"``, ``"joint"``, ``"piecewise"`` or ``"pretrain_joint"``.

    Raises:
        ValueError: unknown strategy (the message lists the known ones).
    """
    spec = STRATEGIES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {name!r}")
    return spec


def read_unary_weights(
    path: str | Path, keys: list[str], own: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The backbone and unary weights of a checkpoint, checked against the model's.

    Used by :meth:`structlight.DeepStructuredModel.load_unary_checkpoint` (strategies with
    ``needs_unary_checkpoint``).

    Args:
        path: a Lightning checkpoint of a ``DeepStructuredModel`` with the same backbone and
            unary (typically a ``unary_only`` run), or a plain ``state_dict`` file.
        keys: the model's backbone and unary ``state_dict`` keys.
        own: the model's ``state_dict`` (for the shapes).

    Returns:
        ``{key: tensor}`` for every key.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable, lacks some of the weights, or their shapes differ.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"unary_checkpoint '{p}' not found; train the unary model first "
            "(strategy='unary_only') and pass its checkpoint"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, text file, foreign pickle: all unreadable
        raise ValueError(
            f"unary_checkpoint '{p}' is not a readable checkpoint ({type(e).__name__}: "
            f"{str(e).strip() or 'no details'}). Expected a complete Lightning .ckpt file of a "
            "strategy='unary_only' run (e.g. <run dir>/checkpoints/last.ckpt); a file cut "
            "short by a crash or a full disk cannot be loaded: point to an intact checkpoint "
            "or train the unary model again"
        ) from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"unary_checkpoint '{p}' holds no state_dict: expected a Lightning checkpoint "
            f"(a dict with 'state_dict') or a state_dict, got {type(ckpt).__name__}"
        )
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, Mapping) else {}
    if isinstance(hp, Mapping) and hp.get("strategy") not in (None, "unary_only"):
        rank_zero_warn(
            f"unary_checkpoint '{p}' comes from a strategy={hp.get('strategy')!r} run, not "
            "'unary_only'; loading its backbone and unary weights anyway"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"unary_checkpoint '{p}' lacks {len(missing)} backbone/unary weights this model "
            f"needs, e.g. {missing[:5]}; was it trained with the same backbone and head?"
        )
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in keys
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise ValueError(f"unary_checkpoint '{p}' has weights of other shapes: {bad[:5]}")
    return {k: state[k] for k in keys}

"""Structured output heads: a region graph, its potential networks and the per-example messages.

A :class:`StructuredHead` turns backbone features into the packed potentials of its region graph
and implements the paper's learning step on them; its message-passing settings are one
:class:`InferenceSettings`, and its training step moves the messages by a message schedule
(:class:`Blended` or :class:`DoubleLoop`). Ready heads: :class:`ChainHead` (sequences, e.g.
Word50: 1st/2nd-order chains with shared, per-distance or per-edge tables, or the non-linear
pairwise MLP) and :class:`FullyConnectedHead` (multi-label tagging, e.g. Flickr: one table per
edge). New tasks subclass :class:`StructuredHead` and register their terms with
:meth:`StructuredHead.add_potential`.

The package, in the order a reader meets it:

* :mod:`.settings`: :class:`InferenceSettings`;
* :mod:`.schedules`: :class:`MessageSchedule`, :class:`Blended`, :class:`DoubleLoop`;
* :mod:`.packing`: the terms' outputs packed into ``theta``, and the singleton tables' places;
* :mod:`.labels`: label checks, the Hamming loss augmentation, arg-max decoding;
* :mod:`.base`: :class:`StructuredHead`, :class:`StructuredLoss`;
* :mod:`.builders`: the unary, table and pairwise-MLP terms the ready heads share;
* :mod:`.chain`, :mod:`.fully_connected`: :class:`ChainHead`, :class:`FullyConnectedHead`.
"""

from structlight.head.base import ExampleMask, StructuredHead, StructuredLoss, TaskType
from structlight.head.builders import Share
from structlight.head.chain import ChainHead
from structlight.head.fully_connected import FullyConnectedHead
from structlight.head.packing import PackingPlan
from structlight.head.schedules import Blended, DoubleLoop, MessageSchedule
from structlight.head.settings import InferenceSettings

__all__ = [
    "Blended",
    "ChainHead",
    "DoubleLoop",
    "ExampleMask",
    "FullyConnectedHead",
    "InferenceSettings",
    "MessageSchedule",
    "PackingPlan",
    "Share",
    "StructuredHead",
    "StructuredLoss",
    "TaskType",
]

"""Variable-size examples: which variables each example has, and its labels.

:class:`HeadExamples` is a mixin of :class:`~structlight.head.StructuredHead`: it reads each
batch's present variables (:meth:`~HeadExamples.variable_mask`, overridden by heads for
variable-size examples), derives the region mask, and reads and checks the labels at the present
positions. The head must provide ``graph``, ``bp``, ``label_key``, ``_plan()`` and
``_missing_singletons()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from structlight.head.labels import (
    IGNORE_LABEL,
    check_label_range,
    hamming_augment,
    read_labels,
)
from structlight.inference.masks import check_variable_mask

__all__ = ["ExampleMask", "HeadExamples"]


@dataclass(frozen=True, eq=False)
class ExampleMask:
    """The present parts of a batch of variable-size examples
    (:meth:`StructuredHead.example_mask`).

    Attributes:
        variables: ``(B, N)`` bool, the present variables.
        regions: ``(B, R)`` bool, the present regions (those whose variables are all present),
            as :meth:`structlight.ConvexBP.region_mask` derives them.
    """

    variables: Tensor
    regions: Tensor

    def to(self, device: torch.device) -> ExampleMask:
        """Both masks on ``device``."""
        if self.variables.device == device and self.regions.device == device:
            return self
        return ExampleMask(self.variables.to(device), self.regions.to(device))

    @property
    def lengths(self) -> Tensor:
        """``(B,)`` int64 number of present variables per example."""
        return self.variables.sum(1)


class HeadExamples:
    """Masks, labels and the Hamming augmentation of a :class:`StructuredHead`."""

    def variable_mask(self, batch: Mapping[str, Any], batch_size: int) -> Tensor | None:
        """The present variables of each example of ``batch``; override for variable-size
        examples.

        Args:
            batch: the batch.
            batch_size: its B.

        Returns:
            ``(B, N)`` bool, or None (the default): every variable is present.
        """
        return None

    def example_mask(self, batch: Mapping[str, Any], batch_size: int) -> ExampleMask | None:
        """The batch's :class:`ExampleMask` (:meth:`variable_mask` and the region mask it
        implies), or None when every variable of every example is present. A step computes it
        once and passes it to the losses, the inference and the read-outs.

        Raises:
            TypeError, ValueError: :meth:`variable_mask` returned something other than a
                ``(B, N)`` bool tensor.
        """
        variables = self.variable_mask(batch, batch_size) if isinstance(batch, Mapping) else None
        if variables is None:
            return None
        name = f"{type(self).__name__}.variable_mask"
        check_variable_mask(variables, self.graph.num_vars, batch_size, name, verb="return")
        return ExampleMask(variables, self.bp.region_mask(variables))

    # ------------------------------------------------------------------ labels
    def labels_and_mask(
        self, batch: Mapping[str, Any], batch_size: int | None = None
    ) -> tuple[Tensor, ExampleMask | None]:
        """The batch's labels, checked against the graph at the present positions, and its
        :class:`ExampleMask`.

        Args:
            batch: dict batch with ``batch[label_key]`` of shape ``(B, N)``.
            batch_size: the expected B.

        Returns:
            ``(labels, mask)``: ``(B, N)`` long labels, -100 at absent positions (whatever the
            batch holds there), and the mask (None: every position present).

        Raises:
            KeyError: no labels in the batch.
            ValueError: the labels' shape disagrees with the graph, or a label at a present
                position is not a state of its variable (checked before anything reads them;
                for labels on a GPU this costs one small read of the device).
        """
        y = read_labels(batch, self.label_key, self.graph, type(self).__name__, batch_size)
        mask = self.example_mask(batch, int(y.shape[0]))
        present = None if mask is None else mask.variables.to(y.device)
        check_label_range(y, self.graph.num_states, self.label_key, present)
        if present is not None:
            y = y.masked_fill(~present, IGNORE_LABEL)
        return y, mask

    def labels_from(self, batch: Mapping[str, Any], batch_size: int | None = None) -> Tensor:
        """The batch's labels, checked against the graph (:meth:`labels_and_mask` without the
        mask).

        Args:
            batch: dict batch with ``batch[label_key]`` of shape ``(B, N)``.
            batch_size: the expected B.

        Returns:
            ``(B, N)`` long tensor (-100 at absent positions of variable-size examples).

        Raises:
            KeyError: no labels in the batch.
            ValueError: the labels' shape disagrees with the graph, or a label at a present
                position is not a state of its variable.
        """
        return self.labels_and_mask(batch, batch_size)[0]

    def augment(
        self,
        theta: Tensor,
        labels: Tensor,
        mask: ExampleMask | None = None,
        hidden: Tensor | None = None,
    ) -> Tensor:
        """Hamming loss augmentation: ``+1`` on every state of every present, observed variable
        except ``y*_i``.

        Args:
            theta: ``(B, T)``.
            labels: ``(B, N)`` (not read at absent or unobserved positions).
            mask: the batch's :class:`ExampleMask` (None: every variable present).
            hidden: ``(B, N)`` bool, the unobserved present variables (None: none), whose
                tables are left as they are.

        Returns:
            ``(B, T)`` (differentiable; ``F(y*)`` is unchanged).
        """
        missing = self._missing_singletons()
        if missing:
            raise ValueError(
                f"loss augmentation adds the Hamming loss to the singleton tables, but variables "
                f"{missing} have none"
            )
        present = None if mask is None else mask.variables
        if hidden is not None:
            hidden = hidden.to(theta.device)
            present = ~hidden if present is None else present.to(theta.device) & ~hidden
        return hamming_augment(theta, labels, self._plan(theta.device, theta.dtype), present)

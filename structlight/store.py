"""Per-example message storage for blended learning and inference (DESIGN §2).

The paper keeps every training example's dual messages ``lam`` between optimisation steps, so
each visit of an example continues its message passing where the last visit stopped. A
:class:`MessageStore` holds them as one ``(num_examples, M)`` buffer, indexed by the dataset
index each batch carries (``batch["index"]``). Being a persistent buffer, it moves with the
module (``.to(device)``), is saved in checkpoints through the ``state_dict`` and is restored on
resume (the buffer is resized to the checkpoint's shape before loading).

All access goes through :meth:`MessageStore.gather` and :meth:`MessageStore.scatter`, so the
storage (sharding across ranks, pinned host memory) can change without touching the callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MessageStore"]


class MessageStore(nn.Module):
    """One slot of ``M`` message entries per training example.

    Args:
        num_messages: ``M``, the message entries per example (``ConvexBP.num_message_entries``).
        num_examples: number of slots; 0 (default) leaves the store empty until :meth:`resize`
            (:class:`structlight.DeepStructuredModel` sizes it from the training data).

    Attributes:
        messages: ``(num_examples, M)`` buffer, zero-initialised.
    """

    messages: Tensor

    def __init__(self, num_messages: int, num_examples: int = 0) -> None:
        super().__init__()
        if isinstance(num_messages, bool) or not isinstance(num_messages, int) or num_messages < 0:
            raise ValueError(f"num_messages must be an int >= 0, got {num_messages!r}")
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
            raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}")
        self.num_messages = num_messages
        self.register_buffer("messages", torch.zeros(num_examples, num_messages))

    @property
    def num_examples(self) -> int:
        """Number of slots."""
        return int(self.messages.shape[0])

    def resize(self, num_examples: int) -> None:
        """Change the number of slots, keeping the messages of the slots that remain.

        New slots start at zero. Device and dtype are kept.
        """
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
            raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}")
        if num_examples == self.num_examples:
            return
        new = self.messages.new_zeros(num_examples, self.num_messages)
        keep = min(num_examples, self.num_examples)
        new[:keep] = self.messages[:keep]
        self.messages = new

    def reset(self) -> None:
        """Set every message to zero."""
        self.messages.zero_()

    @staticmethod
    def index_from(batch: Mapping[str, Any], key: str = "index") -> Tensor:
        """The example indices of a batch.

        Args:
            batch: a dict batch.
            key: the key holding the indices.

        Returns:
            ``(B,)`` long tensor.

        Raises:
            KeyError: the batch has no ``key``.
            TypeError: the batch is not a mapping.
        """
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"blended training needs dict batches with an {key!r} entry, got "
                f"{type(batch).__name__}"
            )
        if key not in batch:
            raise KeyError(
                f"blended training keeps messages per training example and needs each example's "
                f"dataset index in batch[{key!r}], but the batch has keys {sorted(batch)}; "
                f"make the dataset return its index under {key!r}"
            )
        index = batch[key]
        return torch.as_tensor(index)

    def _check_index(self, index: Tensor) -> Tensor:
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
            raise TypeError(f"example indices must be integers, got dtype {index.dtype}")
        if index.dim() != 1:
            raise ValueError(f"example indices must have shape (B,), got {tuple(index.shape)}")
        n = self.num_examples
        if index.numel() == 0:
            return index.to(device=self.messages.device, dtype=torch.long)
        if n == 0:
            raise IndexError(
                "the message store has no slots: size it with MessageStore.resize("
                "num_train_examples) (DeepStructuredModel does so from the training data, or pass "
                "num_train_examples to the head)"
            )
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= n:
            raise IndexError(
                f"example index out of range: got indices in [{lo}, {hi}], but the message store "
                f"has {n} slots (valid indices 0..{n - 1}); is the store sized for the training "
                "set, and do the indices count from 0?"
            )
        return index.to(device=self.messages.device, dtype=torch.long)

    def gather(self, index: Tensor) -> Tensor:
        """The stored messages of some examples.

        Args:
            index: ``(B,)`` integer example indices.

        Returns:
            ``(B, M)``, a copy (on the store's device and dtype).

        Raises:
            IndexError: an index is out of range (or the store is empty).
        """
        return self.messages.index_select(0, self._check_index(index))

    def scatter(self, index: Tensor, msgs: Tensor) -> None:
        """Write back the messages of some examples.

        Args:
            index: ``(B,)`` integer example indices, without repeats.
            msgs: ``(B, M)`` messages (detached before storing).

        Raises:
            IndexError: an index is out of range.
            ValueError: shapes disagree or an index repeats within the batch.
        """
        idx = self._check_index(index)
        if msgs.dim() != 2 or msgs.shape != (idx.numel(), self.num_messages):
            raise ValueError(
                f"messages must have shape ({idx.numel()}, {self.num_messages}) for "
                f"{idx.numel()} indices, got {tuple(msgs.shape)}"
            )
        if idx.numel() > 1 and torch.unique(idx).numel() != idx.numel():
            raise ValueError(
                "an example index repeats within the batch; each example may appear once per "
                "batch (sample without replacement)"
            )
        self.messages.index_copy_(0, idx, msgs.detach().to(self.messages.dtype))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "messages"
        incoming = state_dict.get(key)
        if isinstance(incoming, Tensor) and incoming.dim() == 2:
            if incoming.shape[1] != self.num_messages:
                error_msgs.append(
                    f"{key}: the checkpoint stores {incoming.shape[1]} message entries per "
                    f"example, this model's graph has {self.num_messages} (a different graph?)"
                )
                return
            if incoming.shape[0] != self.num_examples:
                self.messages = self.messages.new_zeros(incoming.shape[0], self.num_messages)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}, num_messages={self.num_messages}"

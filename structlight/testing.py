"""Tiny synthetic data for tests, examples and smoke runs (no files, fully seeded).

:class:`SyntheticChainDataset` is a sequence-labelling task in which the unaries alone are
ambiguous and the transitions decide. Each sequence follows a fixed random permutation of the
states, ``y_{i+1} = perm[y_i]``, from a uniform ``y_0``. Position ``i``'s input shows only the
*group* of ``y_i`` (states ``2g`` and ``2g + 1`` look alike), plus, with probability
``clear_prob``, the state itself, plus Gaussian noise. A per-position classifier is at chance
between the two states of a group on the unclear positions; a chain model can read the state off
its neighbours (the permutation maps the two states of a group to different successors).

With the defaults (10 states, 5 positions, ``clear_prob = 0.5``) a per-position classifier reaches
about 75% character and 25-30% word accuracy, a 1st-order chain close to 100% on both. (There are
only ``K`` distinct sequences, one per starting state, so with very few states a unary model's
fixed guesses happen to match whole words more often.)

Batches are dicts ``{"image": (B, N, D) float, "label": (B, N) long, "index": (B,) long}`` as
the Word50 data module produces (with ``D`` features per position instead of a 28x28 image), so
``nn.Identity()`` (or any per-position network) serves as the backbone and a
:class:`structlight.ChainHead` with ``in_features = D`` as the head.

:class:`SyntheticChainDataModule` wraps train/val/test splits; its training loader shuffles with
:class:`EpochShuffleSampler`, a permutation seeded by ``seed + epoch`` (Lightning calls
``set_epoch``), so a run resumed from a checkpoint sees the same batches as an uninterrupted one.
(:class:`EpochShuffleSampler` lives in :mod:`structlight.sampling`; it is re-exported here.)
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from structlight.sampling import EpochShuffleSampler

__all__ = ["EpochShuffleSampler", "SyntheticChainDataModule", "SyntheticChainDataset"]


class SyntheticChainDataset(Dataset):
    """Sequences whose unaries are ambiguous and whose transitions decide (see module docs).

    Args:
        num_examples: number of sequences.
        num_vars: sequence length N.
        num_states: states K (even).
        clear_prob: probability that a position's input reveals its state (not just its group).
        noise: standard deviation of the Gaussian noise added to the inputs.
        seed: seed of the sequences and inputs.
        transition_seed: seed of the permutation; keep it equal across splits.

    Attributes:
        images: ``(num_examples, N, D)`` inputs, ``D = K // 2 + K``.
        labels: ``(num_examples, N)`` states.
        perm: ``(K,)`` the transition permutation.
    """

    def __init__(
        self,
        num_examples: int,
        num_vars: int = 5,
        num_states: int = 10,
        clear_prob: float = 0.5,
        noise: float = 0.1,
        seed: int = 0,
        transition_seed: int = 1234,
    ) -> None:
        if num_states < 2 or num_states % 2:
            raise ValueError(f"num_states must be even and >= 2, got {num_states}")
        if num_examples < 1 or num_vars < 1:
            raise ValueError(
                f"need num_examples >= 1 and num_vars >= 1, got {num_examples}, {num_vars}"
            )
        k = num_states
        gen_t = torch.Generator().manual_seed(transition_seed)
        # a permutation sending the two states of each group to different groups' states
        while True:
            perm = torch.randperm(k, generator=gen_t)
            if k == 2 or all(perm[2 * g] // 2 != perm[2 * g + 1] // 2 for g in range(k // 2)):
                break
        gen = torch.Generator().manual_seed(seed)
        y = torch.empty(num_examples, num_vars, dtype=torch.long)
        y[:, 0] = torch.randint(0, k, (num_examples,), generator=gen)
        for i in range(1, num_vars):
            y[:, i] = perm[y[:, i - 1]]
        groups = torch.nn.functional.one_hot(y // 2, k // 2).float()
        clear = (torch.rand(num_examples, num_vars, 1, generator=gen) < clear_prob).float()
        states = torch.nn.functional.one_hot(y, k).float() * clear
        x = torch.cat([groups, states], dim=2)
        x = x + noise * torch.randn(x.shape, generator=gen)
        self.images: Tensor = x
        self.labels: Tensor = y
        self.perm: Tensor = perm
        self.num_features = x.shape[2]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


class SyntheticChainDataModule(pl.LightningDataModule):
    """Train/val/test splits of :class:`SyntheticChainDataset`.

    Args:
        num_train: training sequences.
        num_val: validation sequences.
        num_test: test sequences.
        batch_size: batch size of every loader.
        shuffle: shuffle the training set (per-epoch seeded permutation).
        num_vars, num_states, clear_prob, noise: see :class:`SyntheticChainDataset`.
        seed: seed of the data (splits use ``seed``, ``seed + 1``, ``seed + 2``) and of the
            shuffling.

    Attributes:
        num_train_examples: ``num_train`` (sizes the message store).
        num_features: input features per position, ``K // 2 + K``.
    """

    def __init__(
        self,
        num_train: int = 200,
        num_val: int = 100,
        num_test: int = 100,
        batch_size: int = 20,
        shuffle: bool = True,
        num_vars: int = 5,
        num_states: int = 10,
        clear_prob: float = 0.5,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        kw = dict(num_vars=num_vars, num_states=num_states, clear_prob=clear_prob, noise=noise)
        self.train_set = SyntheticChainDataset(num_train, seed=seed, **kw)
        self.val_set = SyntheticChainDataset(num_val, seed=seed + 1, **kw)
        self.test_set = SyntheticChainDataset(num_test, seed=seed + 2, **kw)
        self.num_train_examples = num_train
        self.num_features = self.train_set.num_features

    def train_dataloader(self) -> DataLoader:
        sampler = EpochShuffleSampler(len(self.train_set), self.seed) if self.shuffle else None
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

"""Padding collate and length-grouped sampling (structlight.batching)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from structlight.batching import PAD_LABEL, LengthGroupedSampler, PadCollate, pad_collate
from structlight.distributed import ShardedSampler
from structlight.head.labels import IGNORE_LABEL


def _example(i: int, length: int, features: int = 3) -> dict[str, torch.Tensor]:
    return {
        "image": torch.full((length, 1, 2, 2), float(i + 1)),
        "feat": torch.arange(length * features, dtype=torch.float64).reshape(length, features),
        "label": torch.arange(length) % 26,
        "index": torch.tensor(i),
    }


class _Words(Dataset):
    """Examples whose length is given; item ``i`` has index ``i``."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return _example(i, self.lengths[i])


def test_pad_label_is_the_heads_ignore_label() -> None:
    assert PAD_LABEL == IGNORE_LABEL == -100


def test_pad_collate_pads_to_the_longest_and_adds_lengths() -> None:
    batch = pad_collate([_example(0, 2), _example(1, 5), _example(2, 3)])
    assert list(batch) == ["image", "feat", "label", "index", "length"]
    assert batch["length"].dtype == torch.int64 and batch["length"].tolist() == [2, 5, 3]
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch["image"].shape == (3, 5, 1, 2, 2) and batch["image"].dtype == torch.float32
    assert batch["feat"].shape == (3, 5, 3) and batch["feat"].dtype == torch.float64
    assert batch["label"].shape == (3, 5) and batch["label"].dtype == torch.int64
    for i, n in enumerate([2, 5, 3]):
        assert torch.equal(batch["label"][i, :n], torch.arange(n))
        assert (batch["label"][i, n:] == -100).all()
        assert (batch["image"][i, :n] == i + 1).all() and (batch["image"][i, n:] == 0).all()
        assert torch.equal(batch["feat"][i, :n], _example(i, n)["feat"])
        assert (batch["feat"][i, n:] == 0).all()


def test_pad_collate_to_a_fixed_size_and_options() -> None:
    batch = pad_collate([_example(0, 2), _example(1, 4)], pad_to=6)
    assert batch["image"].shape == (2, 6, 1, 2, 2) and batch["label"].shape == (2, 6)
    assert batch["length"].tolist() == [2, 4]
    collate = PadCollate(pad_to=4, sequence_keys=["image", "label"], pad_values={"image": -1.0})
    examples = [{**_example(i, n), "feat": torch.ones(3) * i} for i, n in enumerate([1, 3])]
    out = pickle.loads(pickle.dumps(collate))(examples)
    assert out["image"].shape == (2, 4, 1, 2, 2) and (out["image"][0, 1:] == -1).all()
    assert torch.equal(out["feat"], torch.tensor([[0.0] * 3, [1.0] * 3]))  # stacked, not padded
    with pytest.raises(ValueError, match="'feat' .* sequence_keys"):
        collate([_example(0, 1), _example(1, 3)])  # a per-position key left out of sequence_keys
    other = pad_collate([_example(0, 2)], label_key="feat", length_key="n")
    assert other["n"].tolist() == [2] and other["label"].shape == (1, 2)


def test_pad_collate_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        pad_collate([])
    with pytest.raises(ValueError, match="example 1 of the batch has length 5, more than pad_to=4"):
        pad_collate([_example(0, 2), _example(1, 5)], pad_to=4)
    with pytest.raises(ValueError, match="pad_to must be"):
        pad_collate([_example(0, 2)], pad_to=0)
    with pytest.raises(ValueError, match="pad_to must be"):
        PadCollate(pad_to=-3)
    bad = _example(0, 3)
    bad["label"] = bad["label"][:2]
    with pytest.raises(ValueError, match="example 1 .* different lengths"):
        pad_collate([_example(1, 3), bad])
    with pytest.raises(ValueError, match="length 0"):
        pad_collate([_example(0, 0)])
    with pytest.raises(ValueError, match="already have a 'length' entry"):
        pad_collate([{**_example(0, 2), "length": torch.tensor(2)}])
    with pytest.raises(ValueError, match="keys"):
        pad_collate([_example(0, 2), {"image": torch.zeros(2, 1, 2, 2)}])
    odd = _example(1, 2)
    odd["image"] = torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match="only the first dimension may differ"):
        pad_collate([_example(0, 2), odd])
    with pytest.raises(ValueError, match="sequence_keys"):
        pad_collate([_example(0, 2)], sequence_keys=["nope"])
    with pytest.raises(TypeError, match="mappings"):
        pad_collate([torch.zeros(3)])


LENGTHS = [int(v) for v in np.random.default_rng(0).integers(2, 15, size=103)]


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_sampler_covers_every_example_once_and_groups_lengths() -> None:
    sampler = LengthGroupedSampler(LENGTHS, batch_size=8, seed=3, window=4)
    assert isinstance(sampler, ShardedSampler) and len(sampler) == 103
    grouped, shuffled = 0, 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert [len(b) for b in batches] == [8] * 12 + [7]  # full batches, the short one last
        flat = list(sampler)
        assert flat == [i for b in batches for i in b]
        assert sorted(flat) == list(range(103))
        grouped += _padding(batches, LENGTHS)
        perm = torch.randperm(103, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        shuffled += _padding([perm[i : i + 8] for i in range(0, 103, 8)], LENGTHS)
    assert grouped < shuffled / 2  # far less padding than random batches


def test_sampler_whole_epoch_window_gives_pure_batches() -> None:
    lengths = [2] * 8 + [7] * 12 + [3] * 4  # every length fills whole batches of 4
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=0, window=None)
    for batch in sampler.batches(5):
        assert len({lengths[i] for i in batch}) == 1
    in_order = LengthGroupedSampler(lengths, batch_size=4, shuffle=False, window=None)
    assert [lengths[i] for i in in_order] == sorted(lengths)
    assert list(in_order) == list(in_order)  # no randomness


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    a = LengthGroupedSampler(LENGTHS, batch_size=8, seed=1)
    b = LengthGroupedSampler(torch.tensor(LENGTHS), batch_size=8, seed=1)
    assert a.batches(0) == b.batches(0) and a.batches(4) == b.batches(4)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != LengthGroupedSampler(LENGTHS, batch_size=8, seed=2).batches(0)
    b.set_epoch(4)
    assert list(b) == [i for batch in a.batches(4) for i in batch]


def test_sampler_default_seed_reads_pl_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert LengthGroupedSampler(LENGTHS, batch_size=8).seed == 7


def test_sampler_resumes_in_the_middle_of_an_epoch() -> None:
    """A DataLoader over the sampler; a resume skips whole batches via fast_forward."""
    data = _Words(LENGTHS)
    sampler = LengthGroupedSampler(LENGTHS, batch_size=8, seed=5, window=3)
    loader = DataLoader(data, batch_size=8, sampler=sampler, collate_fn=PadCollate())
    assert loader.batch_sampler.sampler is sampler  # where a resume looks for fast_forward
    sampler.set_epoch(2)
    full = [b["index"].tolist() for b in loader]
    assert full == sampler.batches(2)
    for b in DataLoader(data, batch_size=8, sampler=sampler, collate_fn=PadCollate()):
        assert b["length"].max() == b["image"].shape[1]  # padded to the batch's longest
    sampler.fast_forward(2, 5 * 8)  # five batches of epoch 2 were trained on
    assert [b["index"].tolist() for b in loader] == full[5:]
    assert [b["index"].tolist() for b in loader] == full  # once: the next pass is whole again
    sampler.fast_forward(1, 16)  # another epoch's skip does not touch epoch 2
    assert [b["index"].tolist() for b in loader] == full


def test_sampler_shards_like_sharded_sampler() -> None:
    n, world = 103, 2
    ranks = [
        LengthGroupedSampler(LENGTHS, batch_size=8, seed=0, num_replicas=world, rank=r)
        for r in range(world)
    ]
    seen = [list(s) for s in ranks]
    assert [len(s) for s in seen] == [n // world] * world == [len(s) for s in ranks]
    for r, s in enumerate(seen):
        assert all(i % world == r for i in s) and len(set(s)) == len(s)
    skipped = [i for s in ranks for i in s.skipped()]
    assert sorted(seen[0] + seen[1] + skipped) == list(range(n))


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        LengthGroupedSampler([[1, 2]], batch_size=2)
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        LengthGroupedSampler([1.5, 2.0], batch_size=2)
    with pytest.raises(ValueError, match=">= 0, got -1 at example 1"):
        LengthGroupedSampler([3, -1], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedSampler([3, 4], batch_size=0)
    with pytest.raises(ValueError, match="window"):
        LengthGroupedSampler([3, 4], batch_size=1, window=0)
    with pytest.raises(ValueError, match="rank"):
        LengthGroupedSampler([3, 4], batch_size=1, num_replicas=2, rank=2)

"""Message store index checks: immediate for CPU indices, deferred (no host reads) on a GPU.

Without a GPU the deferred path is exercised on the CPU through the store's private switch
``_defer_checks``, which treats CPU indices as a GPU's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from structlight.store import MessageStore

RANGE = r"got indices in \[{lo}, {hi}\], but the message store has {n} slots"
REPEAT = "an example index repeats within the batch"


def _store(n: int = 5, m: int = 3, defer: bool = False) -> MessageStore:
    store = MessageStore(m, n)
    store.messages = torch.arange(float(n * m)).view(n, m)
    store._defer_checks = defer
    return store


def _sharded(defer: bool = False) -> MessageStore:
    store = MessageStore(2, 9)  # rank 1 of 2 holds examples 1, 3, 5, 7
    store.shard(1, 2)
    store.messages = torch.arange(8.0).view(4, 2)
    store._defer_checks = defer
    return store


@pytest.fixture
def no_host_reads(monkeypatch: pytest.MonkeyPatch):
    """Every way of reading a tensor's value on the host raises while active."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    def patch() -> None:
        for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, refuse)

    return patch


# ---------------------------------------------------------------- CPU indices: at once
def test_cpu_indices_raise_at_once_with_their_messages():
    store = _store()
    before = store.messages.clone()
    with pytest.raises(IndexError, match=RANGE.format(lo=-1, hi=3, n=5)):
        store.gather(torch.tensor([3, -1]))
    with pytest.raises(IndexError, match=RANGE.format(lo=0, hi=5, n=5)):
        store.scatter(torch.tensor([0, 5]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=REPEAT):
        store.scatter(torch.tensor([2, 4, 2]), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"shape \(2, 3\) for 2 indices"):
        store.scatter(torch.tensor([0, 1]), torch.zeros(3, 3))
    big = MessageStore(3, 1000)  # batches over 256: another repeat check
    with pytest.raises(ValueError, match=REPEAT):
        big.scatter(torch.cat([torch.arange(300), torch.tensor([7])]), torch.zeros(301, 3))
    big.scatter(torch.arange(300), torch.ones(300, 3))
    assert torch.equal(store.messages, before)
    assert not store._unchecked
    sharded = _sharded()
    with pytest.raises(
        IndexError, match="example 4 belongs to the message store's shard on rank 0"
    ):
        sharded.gather(torch.tensor([1, 4, 6]))
    with pytest.raises(IndexError, match=RANGE.format(lo=1, hi=9, n=9)):
        sharded.scatter(torch.tensor([1, 9]), torch.zeros(2, 2))
    # valid indices
    assert torch.equal(sharded.gather(torch.tensor([7, 1])), torch.tensor([[6.0, 7], [0, 1]]))
    store.scatter(torch.tensor([4, 0]), torch.ones(2, 3))
    assert torch.equal(store.messages[[0, 4]], torch.ones(2, 3))


def test_cpu_indices_are_read_on_the_host(no_host_reads):
    """The CPU path does read the indices (which is free there): the patch is effective."""
    store = _store()
    no_host_reads()
    with pytest.raises(AssertionError, match="read on the host"):
        store.gather(torch.tensor([0, 1]))


# ---------------------------------------------------------------- GPU indices: later
@pytest.mark.parametrize("sharded", [False, True])
def test_deferred_path_reads_no_tensor_value(no_host_reads, sharded):
    store = _sharded(defer=True) if sharded else _store(defer=True)
    good, bad = (
        (torch.tensor([5, 1]), torch.tensor([2, -3, 11]))
        if sharded
        else (
            torch.tensor([4, 0]),
            torch.tensor([1, 1, 9, -2]),
        )
    )
    no_host_reads()
    store.gather(good)
    store.scatter(good, torch.ones(2, store.num_message_entries))
    store.gather(bad)
    store.scatter(bad, torch.ones(bad.numel(), store.num_message_entries))
    assert len(store._unchecked) == 4


def test_deferred_out_of_range_raises_later_and_writes_nothing_invalid():
    store = _store(defer=True)
    before = store._messages.clone()
    rows = store.gather(torch.tensor([2, 7, -1]))  # no error yet
    assert rows.shape == (3, 3) and torch.equal(rows[0], before[2])
    store.scatter(torch.tensor([1, 9, -4]), torch.full((3, 3), -1.0))  # no error yet
    want = before.clone()
    want[1] = -1.0  # the valid row is written; 9 and -4 change no slot
    assert torch.equal(store._messages, want)
    with pytest.raises(IndexError, match=RANGE.format(lo=-1, hi=7, n=5)):
        _ = store.messages  # the first bad access's error
    assert not store._unchecked
    assert torch.equal(store.messages, want)  # checked: reading works again


def test_deferred_checks_raise_the_immediate_errors():
    store = _store(defer=True)
    store.scatter(torch.tensor([3, 0, 3]), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=REPEAT):
        store.check()
    store.check()  # nothing left
    store.gather(torch.tensor([4, 4]))  # repeats are fine when reading
    store.check()
    sharded = _sharded(defer=True)
    before = sharded._messages.clone()
    sharded.scatter(torch.tensor([3, 6]), torch.full((2, 2), -1.0))
    want = before.clone()
    want[1] = -1.0  # example 3 in slot 1; example 6 (rank 0's) changes nothing
    assert torch.equal(sharded._messages, want)
    with pytest.raises(
        IndexError, match="example 6 belongs to the message store's shard on rank 0"
    ):
        sharded.check()


def test_deferred_indices_never_leave_the_storage():
    for store in (_store(defer=True), _sharded(defer=True)):
        index = torch.tensor([-100, -1, 0, 1, 2, 3, 4, 5, 8, 9, 10, 1000])
        local, ok = store._local_index(index, write=True)
        assert ((local >= 0) & (local < store.num_local)).all()
        assert ok is not None and ok.shape == index.shape
        store._unchecked.clear()


def test_deferred_checks_run_at_the_latest_after_check_interval():
    store = _store(defer=True)
    store.check_interval = 3
    store.gather(torch.tensor([6]))
    store.gather(torch.tensor([0]))
    store.gather(torch.tensor([1]))
    with pytest.raises(IndexError, match=RANGE.format(lo=6, hi=6, n=5)):
        store.gather(torch.tensor([2]))  # the 4th unchecked access checks the first three


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.resize(8),
        lambda s: s.shard(0, 2),
        lambda s: s.to(torch.float64),
        lambda s: s.state_dict(),
        lambda s: copy.deepcopy(s),
    ],
    ids=["resize", "shard", "to", "state_dict", "deepcopy"],
)
def test_deferred_checks_run_before_the_store_changes(change):
    store = _store(defer=True)
    store.gather(torch.tensor([0, 5]))
    with pytest.raises(IndexError, match=RANGE.format(lo=0, hi=5, n=5)):
        change(store)


def test_empty_shard_raises_at_once():
    store = MessageStore(2, 1)
    store.shard(1, 2)  # rank 1 of 2 holds no example of 1
    store._defer_checks = True
    with pytest.raises(IndexError, match="belongs to the message store's shard on rank 0"):
        store.gather(torch.tensor([0]))

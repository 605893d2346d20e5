"""Blended learning under DDP: sharded message store, rank-stable sampler, checkpoints, memory.

The DDP runs (gloo, 2 CPU processes) are launched as subprocesses of
``tests/ddp_scripts/train.py``, two launches in all (several fits each), and compared with
single-process twins run here; see that script for the runs.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from structlight.distributed import (
    ShardedSampler,
    _shard_loader,
    gather_store,
    message_bytes_per_example,
)
from structlight.head import ChainHead, FullyConnectedHead
from structlight.store import MessageStore, shard_size
from structlight.testing import EpochShuffleSampler, SyntheticChainDataset
from tests.helpers.synthetic import (
    MergedDataModule,
    Recorder,
    k_sweeps_from_zero,
    make_data,
    make_model,
    make_trainer,
    parameters,
    scalar_metrics,
)

SCRIPT = Path(__file__).parent / "ddp_scripts" / "train.py"
TRAIN = dict(num_train=48, batch_size=6, num_val=24, lr=0.2)  # the script's ``train`` run
EPOCHS = 3
WORLD = 2


# ---------------------------------------------------------------------------- sampler
def test_sharded_sampler_partitions_and_rotates():
    n, w = 11, 3  # shards of 4, 4, 3 examples; every rank visits 3 per epoch
    samplers = [ShardedSampler(n, w, r, seed=5) for r in range(w)]
    assert [s.shard_size for s in samplers] == [4, 4, 3] == [shard_size(n, w, r) for r in range(w)]
    assert [len(s) for s in samplers] == [3, 3, 3]
    skipped: dict[int, int] = {}
    orders = []
    for epoch in range(8):
        seen = []
        for r, s in enumerate(samplers):
            s.set_epoch(epoch)
            order = list(s)
            assert len(order) == 3 and len(set(order)) == 3
            assert all(i % w == r for i in order)  # the example stays on its rank
            seen += order
            for i in s.skipped():
                skipped[i] = skipped.get(i, 0) + 1
        missing = set(range(n)) - set(seen)
        assert missing == {i for s in samplers for i in s.skipped()}  # skipped, never repeated
        orders.append(list(samplers[0]))
    # rotation: ranks 0 and 1 skip each of their 4 examples exactly twice in 8 epochs
    assert skipped == {i: 2 for i in (0, 3, 6, 9, 1, 4, 7, 10)}
    assert len({tuple(o) for o in orders}) > 1  # reshuffled per epoch
    # one process: the same order as EpochShuffleSampler (a permutation seeded by seed + epoch)
    one, ref = ShardedSampler(20, 1, 0, seed=3), EpochShuffleSampler(20, seed=3)
    for e in (0, 4):
        one.set_epoch(e)
        ref.set_epoch(e)
        assert list(one) == list(ref)
    assert list(ShardedSampler(7, 2, 1, shuffle=False)) == [1, 3, 5]
    with pytest.raises(ValueError, match="at least 4 training examples"):
        ShardedSampler(3, 4, 0)
    with pytest.raises(ValueError, match="rank"):
        ShardedSampler(10, 2, 2)


def test_training_loader_is_recreated_around_the_sharded_sampler():
    ds = SyntheticChainDataset(10)

    def collate(items: list[dict]) -> dict:
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    for sampler, shuffle in ((RandomSampler(ds), True), (SequentialSampler(ds), False)):
        loader = DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate, drop_last=True)
        out = _shard_loader(loader, 1, 2)
        assert isinstance(out.sampler, ShardedSampler)
        assert (out.sampler.rank, out.sampler.num_replicas, out.sampler.shuffle) == (1, 2, shuffle)
        assert out.dataset is ds and out.batch_size == 3 and out.drop_last
        assert out.collate_fn is collate
        batches = list(out)
        assert len(batches) == 1 and all(int(i) % 2 == 1 for i in batches[0]["index"])
        assert _shard_loader(out, 1, 2) is out  # already sharded: kept
    seeded = _shard_loader(DataLoader(ds, sampler=EpochShuffleSampler(10, seed=7)), 0, 2)
    assert seeded.sampler.seed == 7


# ---------------------------------------------------------------------------- store
def test_sharded_store_slots_errors_and_state_dict():
    full = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)
    whole = MessageStore(3, 7)
    whole.messages.copy_(full)
    store = MessageStore(3, 7)
    store.load_state_dict(whole.state_dict())
    store.shard(1, 2)  # examples 1, 3, 5 in local slots 0, 1, 2
    assert (store.num_examples, store.num_local, store.is_sharded) == (7, 3, True)
    assert torch.equal(store.messages, full[1::2])
    assert torch.equal(store.owned_indices(), torch.tensor([1, 3, 5]))
    assert torch.equal(store.gather(torch.tensor([5, 1])), full[[5, 1]])
    store.scatter(torch.tensor([3]), torch.ones(1, 3))
    assert torch.equal(store.messages[1], torch.ones(3))
    with pytest.raises(IndexError, match=r"example 2 belongs to .* rank 0.*ShardedSampler"):
        store.gather(torch.tensor([1, 2]))
    with pytest.raises(IndexError, match="out of range"):
        store.gather(torch.tensor([7]))
    store.shard(1, 2)  # same partition: nothing happens
    with pytest.raises(RuntimeError, match="cannot become shard 0 of 3"):
        store.shard(0, 3)
    store.resize(9)  # example 7 joins rank 1's shard
    assert store.num_local == 4 and store.messages[3].abs().sum() == 0
    # a raw sharded state_dict says so, and refuses to load into another partition
    sd = store.state_dict()
    assert sd["shard"].tolist() == [1, 2, 9] and sd["messages"].shape == (4, 3)
    same = MessageStore(3)
    same.shard(1, 2)
    same.load_state_dict(sd)
    assert torch.equal(same.messages, store.messages) and same.num_examples == 9
    with pytest.raises(RuntimeError, match=r"only shard 1 of 2.*trainer.save_checkpoint"):
        MessageStore(3).load_state_dict(sd)
    # a whole store loads into any partition: each rank keeps its rows (re-sharding)
    other = MessageStore(3)
    other.shard(0, 3)
    other.load_state_dict(whole.state_dict())
    assert torch.equal(other.messages, full[0::3]) and other.num_examples == 7
    with pytest.raises(RuntimeError, match="message entries per example"):
        MessageStore(4).load_state_dict(whole.state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        MessageStore(3).load_state_dict({})
    assert gather_store(whole) is whole.messages  # unsharded: no communication


def test_store_width_is_num_message_entries_also_in_older_pickles():
    head = ChainHead(5, 4, 6, num_train_examples=3)
    assert head.store.num_message_entries == head.bp.num_message_entries
    assert "num_message_entries=" in repr(head.store)
    with pytest.raises(ValueError, match="num_message_entries must be an int >= 0, got -1"):
        MessageStore(-1)
    # a store pickled when M was called num_messages unpickles under the new name
    older = MessageStore(3, 2)
    older.__dict__["num_messages"] = older.__dict__.pop("num_message_entries")
    store = pickle.loads(pickle.dumps(older))
    assert store.num_message_entries == 3 and "num_messages" not in store.__dict__
    store.scatter(torch.tensor([1]), torch.ones(1, 3))
    assert torch.equal(store.messages, torch.tensor([[0.0, 0, 0], [1, 1, 1]]))


def test_store_is_not_a_buffer_and_pinned_location_stays_on_host():
    head = ChainHead(5, 4, 6, num_train_examples=3)
    assert "store.messages" in head.state_dict()
    assert not any(name.startswith("store.") for name, _ in head.named_buffers())  # DDP ignores it
    head.double()  # a "device" store follows the module, as a buffer did
    assert head.store.messages.dtype == torch.float64
    pinned = ChainHead(5, 4, 6, num_train_examples=3, store_location="pinned")
    pinned.double()
    assert pinned.store.messages.dtype == torch.float32 and pinned.store.location == "pinned"
    assert pinned.store.messages.device.type == "cpu"
    idx = torch.tensor([2, 0])
    msgs = torch.randn(2, pinned.store.num_message_entries, dtype=torch.float64)
    pinned.store.scatter(idx, msgs)
    assert torch.allclose(pinned.store.gather(idx), msgs.float())
    assert pinned.store.gather(idx, device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="location must be one of"):
        MessageStore(3, location="disk")  # type: ignore[arg-type]


def test_message_memory_per_example_of_the_paper_models():
    word1 = ChainHead(5, 26, 1024)
    word2 = ChainHead(5, 26, 1024, order=2)
    flickr = FullyConnectedHead(38, 4096)
    got = [message_bytes_per_example(h.store) for h in (word1, word2, flickr)]
    assert got == [208 * 4, 364 * 4, 2812 * 4]  # the numbers in docs/distributed.md


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_store_copies_to_and_from_cuda_asynchronously():
    store = MessageStore(8, 100, location="pinned")
    assert store.messages.is_pinned()
    idx = torch.tensor([3, 50, 7], device="cuda")
    msgs = torch.randn(3, 8, device="cuda")
    store.scatter(idx, msgs)
    assert store._pending  # the copy back runs on a side stream
    got = store.gather(idx, device="cuda")
    assert got.is_cuda and torch.equal(got, msgs) and not store._pending
    assert torch.equal(store.messages[[3, 50, 7]], msgs.cpu())


# ---------------------------------------------------------------------------- DDP runs
def _start(out: Path, phase: str, *extra: str) -> tuple[list[str], subprocess.Popen]:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--phase", phase, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return cmd, proc


def _wait(started: tuple[list[str], subprocess.Popen], timeout: float = 300) -> None:
    cmd, proc = started
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{stdout[-3000:]}\n{stderr[-6000:]}")


def _single(
    epochs: int,
    merged: bool = True,
    ckpt_in: str | None = None,
    ckpt_out: Path | None = None,
    seed: int = 0,
    **cfg: Any,
) -> dict[str, Any]:
    """The twin of a DDP(2) run in this process (same global batches when ``merged``)."""
    cfg = {**TRAIN, **cfg}
    if merged:
        dm = MergedDataModule(cfg["num_train"], cfg["batch_size"], cfg["num_val"], WORLD)
    else:
        dm = make_data(cfg["num_train"], cfg["batch_size"], cfg["num_val"])
    model = make_model(dm, cfg["lr"], seed=seed)
    rec = Recorder()
    trainer = make_trainer(epochs, 1, val=cfg["num_val"] > 0, callbacks=[rec])
    trainer.fit(model, dm, ckpt_path=ckpt_in)
    if ckpt_out is not None:
        trainer.save_checkpoint(ckpt_out)
    return {
        "model": model,
        "dm": dm,
        "params": parameters(model),
        "messages": model.head.store.messages.detach().clone(),
        "peak_bytes": rec.peak_bytes,
        "epoch_loss": rec.epoch_loss,
        "metrics": scalar_metrics(trainer),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The DDP runs, and single-process twins run here while the first launch is busy."""
    out = tmp_path_factory.mktemp("ddp")
    first = _start(out, "first")
    try:
        single_stop = out / "single_stop.ckpt"
        _single(1, ckpt_out=single_stop)  # resumed under DDP(2) by the "resume" phase (1 -> 2)
        single_train = _single(EPOCHS)
    finally:
        _wait(first)
    _wait(_start(out, "resume", "--single-ckpt", str(single_stop)))
    res: dict[str, Any] = {p.stem: torch.load(p, weights_only=False) for p in out.glob("*.pt")}
    res["dir"] = out
    res["single_train"] = single_train
    return res


@pytest.fixture(scope="module")
def single_train(runs: dict[str, Any]) -> dict[str, Any]:
    return runs["single_train"]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=tol), (k, (a[k] - b[k]).abs().max())


def _check_visits(visits: list[list[list[int]]], n: int, epochs: int) -> None:
    assert len(visits) == WORLD and all(len(v) == epochs for v in visits)
    for r, per_epoch in enumerate(visits):
        for order in per_epoch:
            assert len(order) == len(set(order)) == n // WORLD  # once per epoch at most
            assert all(i % WORLD == r for i in order)  # always on the same rank
        assert len({tuple(o) for o in per_epoch}) == epochs  # reshuffled every epoch


@pytest.mark.slow
def test_ddp_lr0_messages_are_k_sweeps_from_zero_as_in_one_process(runs):
    r = runs["lr0_even"]
    n, k = 24, 3
    assert r["world_size"] == WORLD and r["samplers"] == ["ShardedSampler"] * WORLD
    # after fit, rank 0's store holds every example again (gathered in on_fit_end)
    assert r["sharded_after_fit"] == [[False, n], [True, n // WORLD]]
    _check_visits(r["visits"], n, k)
    for e in range(k):  # every example once per epoch, on one rank
        assert sorted(r["visits"][0][e] + r["visits"][1][e]) == list(range(n))
    dm = make_data(n, 4)
    model = make_model(dm, 0.0)
    model.load_state_dict({**r["params"], "head.store.messages": r["messages"]})
    want = k_sweeps_from_zero(model, dm, k)
    assert torch.allclose(r["messages"], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(r["messages"], k_sweeps_from_zero(model, dm, k - 1), atol=1e-3)
    single = _single(k, merged=False, num_train=n, batch_size=4, num_val=0, lr=0.0)
    assert torch.allclose(r["messages"], single["messages"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_ddp_uneven_shards_skip_one_example_per_epoch_in_rotation(runs):
    r = runs["lr0_odd"]  # 25 examples: rank 0 holds 13 and visits 12 per epoch
    n, k = 25, 3
    assert r["location"] == "pinned"  # the host-memory store (no CUDA here: synchronous copies)
    _check_visits(r["visits"], n, k)
    skipped = [sorted(set(range(0, n, 2)) - set(r["visits"][0][e])) for e in range(k)]
    assert skipped == [[0], [2], [4]]  # local slot epoch % 13 on the larger shard
    assert [sorted(set(range(1, n, 2)) - set(v)) for v in r["visits"][1]] == [[]] * k
    dm = make_data(n, 4)
    model = make_model(dm, 0.0)
    model.load_state_dict({**r["params"], "head.store.messages": r["messages"]})
    want = k_sweeps_from_zero(model, dm, k)
    want[[0, 2, 4]] = k_sweeps_from_zero(model, dm, k - 1)[[0, 2, 4]]  # skipped once
    assert torch.allclose(r["messages"], want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_ddp_training_matches_a_single_process_on_the_same_batches(runs, single_train):
    r, s = runs["train"], single_train
    _check_visits(r["visits"], TRAIN["num_train"], EPOCHS)
    # the loss falls, and the epoch losses are the means over both ranks' examples
    assert r["epoch_loss"][-1] < 0.6 * r["epoch_loss"][0]
    assert r["epoch_loss"] == pytest.approx(s["epoch_loss"], rel=1e-4)
    _close(r["params"], s["params"], 1e-4)
    assert torch.allclose(r["messages"], s["messages"], atol=1e-4, rtol=1e-4)
    # validation metrics reduced over the ranks (each rank saw half the validation set)
    for key in ("train/loss_epoch", "val/loss", "val/char_acc", "val/word_acc"):
        assert r["metrics"][key] == pytest.approx(s["metrics"][key], rel=1e-4, abs=1e-4), key
    assert r["metrics"]["val/word_acc"] > 50.0


@pytest.mark.slow
def test_ddp_resume_after_one_epoch_continues_where_it_stopped(runs):
    ckpt = torch.load(runs["dir"] / "stop.ckpt", weights_only=False)
    state = ckpt["state_dict"]
    assert state["head.store.messages"].shape == (TRAIN["num_train"], 140)  # every shard
    assert "head.store.shard" not in state
    assert ckpt["message_stores"]["head.store"]["world_size"] == WORLD
    assert torch.equal(state["head.store.messages"], runs["stop"]["messages"])
    after = torch.load(runs["dir"] / "stop.after_fit.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(after["head.store.messages"], state["head.store.messages"])
    full, resumed = runs["train"], runs["resume"]
    _close(full["params"], resumed["params"], 1e-6)
    assert torch.allclose(full["messages"], resumed["messages"], atol=1e-6)
    assert resumed["epoch_loss"] == pytest.approx(full["epoch_loss"][1:], rel=1e-5)


@pytest.mark.slow
def test_checkpoints_reshard_between_world_sizes(runs, single_train):
    # 2 -> 1: the DDP checkpoint resumed in one process (on the same global batches)
    two_to_one = _single(EPOCHS, ckpt_in=str(runs["dir"] / "stop.ckpt"), seed=97)
    _close(two_to_one["params"], single_train["params"], 1e-5)
    assert torch.allclose(two_to_one["messages"], single_train["messages"], atol=1e-5)
    _close(two_to_one["params"], runs["train"]["params"], 1e-4)
    # 1 -> 2: a single-process checkpoint resumed under DDP(2)
    one_to_two = runs["reshard"]
    _close(one_to_two["params"], runs["train"]["params"], 1e-4)
    assert torch.allclose(one_to_two["messages"], runs["train"]["messages"], atol=1e-4)


@pytest.mark.slow
def test_peak_store_memory_per_rank_is_half_of_one_process(runs, single_train):
    m = single_train["model"].head.store.num_message_entries
    single = single_train["peak_bytes"]
    assert single == TRAIN["num_train"] * message_bytes_per_example(m)
    assert runs["train"]["peak_bytes"] == [single // 2, single // 2]
    assert runs["lr0_odd"]["peak_bytes"] == [13 * m * 4, 12 * m * 4]


def test_model_trained_under_ddp_refuses_another_world_size_in_process():
    dm = make_data(8, 4)
    model = make_model(dm, 0.1)
    model.head.store.shard(0, 2)  # as left in rank 0 after a DDP fit
    with pytest.raises(RuntimeError, match="holds only shard 0 of 2.*resume from a checkpoint"):
        make_trainer(1, 1, val=False).fit(model, dm)


_EXIT_SCRIPT = """
import atexit, sys, tempfile
import torch.distributed as dist
from structlight.distributed import destroy_process_group_at_exit

# Registered first, so it runs last (atexit is last-in, first-out): after structlight's handler.
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
store = tempfile.NamedTemporaryFile(delete=False).name
dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
if sys.argv[1] == "hook":
    destroy_process_group_at_exit()
    destroy_process_group_at_exit()  # idempotent: one handler
print("registered", flush=True)
"""


@pytest.mark.parametrize("hook", ["hook", pytest.param("none", marks=pytest.mark.slow)])
def test_process_group_is_destroyed_at_exit_once_registered(tmp_path, hook):
    """A gloo group left alive can abort a finished DDP run at exit (SIGABRT in finalisation).
    ``none`` (the group stays alive at exit without the handler) is the control, marked slow."""
    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), hook], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "registered" in done.stdout
    assert f"initialized at exit: {hook == 'none'}" in done.stdout

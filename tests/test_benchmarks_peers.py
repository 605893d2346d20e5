"""Smoke tests of the peer benchmarks (``benchmarks/peers_*.py``) on tiny sizes.

Nothing here is timed. Each script runs with ``--quick``; the peers (PGMax, pytorch-crf,
torch-struct) are optional extras, so one test per script hides them and checks that their
columns are skipped with a message, and one runs them for real where they are installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
PEERS = {"jax", "pgmax", "torchcrf", "torch_struct"}


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _hide_peers(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> None:
    """Make the script's ``optional_import`` treat every peer as missing."""
    real = module.optional_import

    def fake(name: str, pip_name: str):
        if name in PEERS:
            print(f"skipping {pip_name}: hidden by the test")
            return None
        return real(name, pip_name)

    monkeypatch.setattr(module, "optional_import", fake)


@pytest.fixture
def common() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return _load("_common")
    finally:
        sys.path.remove(str(BENCH))


def test_common_helpers(common: ModuleType) -> None:
    calls = []
    t = common.timeit(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t.repeats == 3 and 0 <= t.low <= t.median <= t.high
    ts = common.timeit_interleaved({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=0)
    assert set(ts) == {"a", "b"}
    table = common.format_table(["x", "y"], [["a", 1.23456], ["b", None]])
    assert table.splitlines()[2].startswith("| a") and "1.23" in table and "| -" in table
    assert common.optional_import("surely_not_a_module_xyz", "nothing") is None
    with pytest.raises(ValueError):
        common.timeit(lambda: None, repeats=0)


def test_peers_mp_quick_without_peers(monkeypatch, capsys) -> None:
    mp = _load("peers_mp")
    _hide_peers(monkeypatch, mp)
    out = mp.main(["--quick"])
    text = capsys.readouterr().out
    assert "skipping jax" in text and "Per iteration" in text and "Tree sanity" in text
    assert len(out["iteration"]) == 3
    for row in out["iteration"]:
        assert row[3] > 0 and row[4] is None and row[5] is None  # ours timed, PGMax skipped
    for row in out["convergence"]:
        assert row[3].split("/")[0] == row[3].split("/")[1]  # every example converged
    assert len(out["tree"]) == 1 and out["tree"][0][2] >= 0.5  # ours only; argmax agreement


def test_peers_mp_quick_with_pgmax(monkeypatch, capsys) -> None:
    pytest.importorskip("jax")
    pytest.importorskip("numba")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    mp = _load("peers_mp")
    out = mp.main(["--quick"])
    if "skipping pgmax" in capsys.readouterr().out:
        pytest.skip("pgmax not importable here")
    for row in out["iteration"]:
        assert row[4] > 0 and row[5] > 0
    pgmax_tree = out["tree"][1]
    assert pgmax_tree[1] < 1e-3 and pgmax_tree[2] == 1.0  # loopy BP is exact on a tree


def test_peers_chain_quick_without_peers(monkeypatch, capsys) -> None:
    chain = _load("peers_chain")
    _hide_peers(monkeypatch, chain)
    out = chain.main(["--quick", "--profile"])
    text = capsys.readouterr().out
    assert "skipping pytorch-crf" in text and "skipping torch-struct" in text
    assert set(out) == {
        "unary (cross-entropy)",
        "ours exact",
        "ours blended",
        "ours blended, ChainHead",
    }
    assert out["unary (cross-entropy)"][4] == pytest.approx(1.0)
    # the blended loss bounds the exact NLL from above (convex upper bound on log Z)
    assert out["ours blended"][5] >= out["ours exact"][5] - 1e-4
    # the library's ChainHead runs the same model and step: the same first loss
    assert out["ours blended, ChainHead"][5] == pytest.approx(out["ours blended"][5], rel=1e-5)
    assert "Blended step, profiled" in text


def test_peers_chain_quick_with_peers(capsys) -> None:
    pytest.importorskip("torchcrf")
    pytest.importorskip("torch_struct")
    chain = _load("peers_chain")
    out = chain.main(["--quick"])
    assert {"pytorch-crf", "torch-struct"} <= set(out)
    # the same model and the same exact NLL on all three exact paths
    exact = out["ours exact"][5]
    assert out["pytorch-crf"][5] == pytest.approx(exact, rel=1e-4)
    assert out["torch-struct"][5] == pytest.approx(exact, rel=1e-4)
    assert "target (blended adds no more than pytorch-crf)" in capsys.readouterr().out


def test_peers_chain_quick_lengths(capsys) -> None:
    """``--lengths``: a padded batch of variable-length words; pytorch-crf (with its mask) and
    our exact chain agree on the NLL, our ChainHead's blended loss bounds it from above."""
    chain = _load("peers_chain")
    out = chain.main(["--quick", "--lengths", "2-4"])
    text = capsys.readouterr().out
    assert "lengths 2..4" in text and "padded to 4 positions" in text
    assert {
        "unary (cross-entropy)",
        "ours exact (lengths)",
        "ours blended, ChainHead (length)",
    } <= set(out)
    assert out["unary (cross-entropy)"][4] == pytest.approx(1.0)
    exact = out["ours exact (lengths)"][5]
    assert out["ours blended, ChainHead (length)"][5] >= exact - 1e-4
    if "pytorch-crf (mask)" in out:
        assert out["pytorch-crf (mask)"][5] == pytest.approx(exact, rel=1e-4)
        assert "target (blended adds no more than pytorch-crf with mask)" in text
    # all lengths equal to the fixed length: the same losses as the fixed-length mode
    fixed = chain.main(["--quick"])
    same = chain.main(["--quick", "--lengths", "3-3"])
    assert same["ours exact (lengths)"][5] == pytest.approx(fixed["ours exact"][5], rel=1e-5)
    assert same["ours blended, ChainHead (length)"][5] == pytest.approx(
        fixed["ours blended, ChainHead"][5], rel=1e-5
    )

"""Fixtures shared by the test modules (shared functions live in ``tests/helpers/``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.compiler import CompiledSweepCalls, record_compiled_sweeps
from tests.helpers.recipes import tiny_varwords, tiny_word50
from tests.helpers.scoring import brute_force_scores

# Two cores: keep intra-op threads modest so parallel subprocess tests don't oversubscribe.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def brute_force():
    return brute_force_scores


@pytest.fixture(scope="session")
def word50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny generated Word50 (20/10/10 words), made once per test run and only read."""
    return tiny_word50(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def varwords_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny generated VarWords (20/10/10 words), made once per test run and only read."""
    return tiny_varwords(tmp_path_factory.getbasetemp())


@pytest.fixture
def compiled_sweeps(monkeypatch: pytest.MonkeyPatch) -> CompiledSweepCalls:
    """Every compiled sweep of the test, recorded (``.check()`` asserts they all compiled);
    skips, saying why, where ``torch.compile`` has no compiler."""
    return record_compiled_sweeps(monkeypatch)

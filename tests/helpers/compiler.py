"""Whether ``torch.compile`` can compile on this machine, and a record of compiled sweeps.

The compiled-sweep tests run where a compiler is present and must then see the compiled sweep
run: the engine's eager fallback (taken, with a warning, when compiling fails) would otherwise
pass them without testing anything compiled. They skip, saying why, only without a compiler.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from typing import Any

import pytest

#: C and C++ compilers; torch inductor's CPU backend builds its kernels with one of them.
COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++")


@functools.cache
def compiler_missing() -> str | None:
    """Why ``torch.compile`` cannot compile here, or None where it can.

    It can where TorchDynamo supports this Python, torch inductor imports and a C/C++ compiler
    is on ``PATH`` (and, where this torch tells, is the C++ compiler inductor will use).
    """
    try:
        import torch._dynamo
        import torch._inductor.config  # noqa: F401
    except Exception as err:  # a torch built without them
        return f"torch.compile is not available: {type(err).__name__}: {err}"
    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python"
    if not any(shutil.which(c) for c in COMPILERS):
        return f"no C/C++ compiler on PATH (looked for {', '.join(COMPILERS)})"
    if importlib.util.find_spec("torch._inductor.cpp_builder") is None:
        return None  # a torch that does not tell: the compiler on PATH has to do
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as err:
        return f"torch inductor finds no C++ compiler: {type(err).__name__}: {err}"
    return None


class CompiledSweepCalls(list):
    """One entry per call of a compiled sweep: True if it returned compiled messages, False if
    compiling failed (the engine then swept eagerly)."""

    def check(self, *engines: Any, warnings: Any = ()) -> None:
        """Assert that compiled sweeps ran, none fell back to eager, and every engine in
        ``engines`` still uses compiled sweeps; ``warnings`` (pytest's ``recwarn``) are quoted
        in the failure message."""
        said = [str(w.message) for w in warnings if issubclass(w.category, RuntimeWarning)]
        assert self, "no compiled sweep ran (the engine swept eagerly without trying)"
        assert all(self), (
            f"torch.compile is available here, yet {self.count(False)} of {len(self)} compiled "
            f"sweeps fell back to eager: {said}"
        )
        for bp in engines:
            assert bp.uses_compiled_sweeps, f"{bp!r} gave up its compiled sweeps: {said}"


def record_compiled_sweeps(monkeypatch: pytest.MonkeyPatch) -> CompiledSweepCalls:
    """Skip without a compiler (naming what is missing); else record every compiled sweep."""
    reason = compiler_missing()
    if reason is not None:
        pytest.skip(f"needs torch.compile: {reason}")
    from structlight.inference.sweep import CompiledSweep

    calls = CompiledSweepCalls()
    real = CompiledSweep.__call__

    def spy(self: CompiledSweep, *args: Any, **kwargs: Any) -> Any:
        out = real(self, *args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(CompiledSweep, "__call__", spy)
    return calls

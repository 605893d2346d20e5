"""The speed/accuracy scripts of benchmarks/ run end to end on tiny sizes (no timing asserted)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_paper_speed_quick(capsys):
    import paper_speed

    out = paper_speed.main(["--quick"])
    assert set(out) == {"unary only", "1st order", "2nd order", "MLP pairwise"}
    assert all(t > 0 for t in out.values())
    assert "paper / ours" in capsys.readouterr().out


def test_blending_quick(tmp_path, capsys):
    import blending

    res = blending.main(["--quick", "--plot", str(tmp_path / "fig9.png")])
    assert (tmp_path / "fig9.png").stat().st_size > 1000
    assert math.isfinite(res["level"]) and res["t_blend"] > 0
    text = capsys.readouterr().out
    assert "blended" in text and "double loop" in text


def test_time_to_reach_interpolates():
    import blending

    curve = [(0.0, 10.0, 0, 0), (2.0, 6.0, 0, 5), (4.0, 2.0, 0, 9)]
    assert blending.time_to_reach(curve, 8.0) == pytest.approx(1.0)
    assert blending.time_to_reach(curve, 2.0) == pytest.approx(4.0)
    assert blending.time_to_reach(curve, 1.0) == math.inf


def test_flickr_step_quick(capsys):
    import flickr_step

    out = flickr_step.main(["--quick"])
    assert set(out) == {"backbone fwd+bwd", "head fwd+bwd", "full step"}
    assert "of the step" in capsys.readouterr().out


@pytest.mark.slow  # its parts' own scripts run quick by default (above)
def test_gpu_script_quick_runs_its_parts_on_whatever_device_is_here(tmp_path, monkeypatch, capsys):
    import gpu
    import torch

    monkeypatch.setenv("OUT", str(tmp_path))
    gpu.main(["--quick"])
    text = capsys.readouterr().out
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for part in (
        "ConvexBP sweep",
        "Word50 training iteration",
        "chain CRF training step",
        "blending",
    ):
        assert part in text
    assert (tmp_path / f"blending_{dev}.png").stat().st_size > 1000


def test_blending_refuses_a_missing_cuda_device(monkeypatch):
    import blending
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        blending.main(["--quick", "--device", "cuda"])


def test_guard_cost_quick(capsys):
    import guard_cost

    out = guard_cost.main(["--quick"])
    assert set(out) == {"unguarded", "immediate", "deferred"}
    assert all(t > 0 for t in out.values())
    assert "x unguarded" in capsys.readouterr().out


@pytest.mark.slow  # writes a fake MIRFLICKR tree and trains three small models
def test_missing_tags_quick(tmp_path, capsys):
    import missing_tags

    out = missing_tags.main(["--quick", "--root", str(tmp_path), "--threads", "1"])
    rows = {row[0]: row for row in out["rows"]}
    assert sorted(rows) == ["latent", "negative", "none"]
    for _, hamming, exact, missed, _ in rows.values():
        assert 0 <= hamming <= 100 and 0 <= exact <= 100 and 0 <= missed <= 100
    assert "Hamming error %" in capsys.readouterr().out

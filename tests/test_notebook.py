"""``notebooks/quickstart.ipynb`` runs from top to bottom (tiny settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(word50_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = word50_root  # the notebook's tiny sizes: 20/10/10
    monkeypatch.setenv("STRUCTLIGHT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("STRUCTLIGHT_NOTEBOOK_DATA", str(root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is a second process on 2 cores
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    text = "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "2nd-order joint" in text and "unary only" in text
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= 5  # samples, 2 x predictions, 2 pairwise tables, unary tiles

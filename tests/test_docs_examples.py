"""The guides' code runs: every ``python`` block of the pages below is executed, a page's blocks
in one namespace (a later block may use an earlier one's names), in a temporary folder.

Not run: ``datasets.md`` (its first block generates the full Word50, 15 s, which the quick start
covers) and ``distributed.md`` (fragments of multi-GPU and multi-node runs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
RUN = ("heads.md", "inference.md", "missing-labels.md", "variable-size.md")
NOT_RUN = ("datasets.md", "distributed.md")


def _python_blocks(page: str) -> list[str]:
    return [body for kind, body in _BLOCK.findall((DOCS / page).read_text()) if kind == "python"]


def test_every_page_with_python_is_run_or_listed() -> None:
    pages = {p.name for p in DOCS.glob("*.md") if _python_blocks(p.name)}
    assert pages == set(RUN) | set(NOT_RUN), sorted(pages)


@pytest.mark.parametrize("page", RUN)
def test_page_python_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace = {"__name__": "docs"}
    try:
        for index, code in enumerate(_python_blocks(page)):
            exec(compile(code, f"docs/{page} python block {index}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)

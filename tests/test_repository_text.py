"""The repository's text speaks of the product: no notes on how the repository was made.

Every text file git tracks is searched (binary files and the VarWords word list, whose English
words are data, are left out). The patterns and samples below are written so that this file
does not match itself (``\\s`` between words, samples assembled from pieces).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Tracked files that are data, not the repository's own words.
SKIPPED = {"datamodules/varwords/english_words.txt"}
#: pytest's fixture scope, the one use of the word that code needs.
ALLOWED = re.compile(r"""scope=(["'])ses""" r"""sion\1""")
PATTERNS = {
    "work period": re.compile(r"\bsessions?\b", re.IGNORECASE),
    "issue number": re.compile(r"\bissue\s*#?\d+", re.IGNORECASE),
    "design note reference": re.compile(r"DESIGN\s§", re.IGNORECASE),
    "shared folder": re.compile(r"\.\./shared", re.IGNORECASE),
    "machine loan": re.compile(r"\blent\sa\sGPU\b|\bnot\slent\b|\bwas\slent\b", re.IGNORECASE),
    "parallel writing": re.compile(r"\bwritten\sin\sparallel\b", re.IGNORECASE),
}


def tracked_text_files() -> dict[str, str]:
    """``{path: text}`` of every tracked file that is text (no NUL byte, valid UTF-8)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    files: dict[str, str] = {}
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or name in SKIPPED or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def offences(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what, line)`` for every line of ``text`` that matches a pattern."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        cleaned = ALLOWED.sub("", line)
        for what, pattern in PATTERNS.items():
            if pattern.search(cleaned):
                found.append((number, what, line.strip()))
    return found


def test_the_patterns_find_what_they_look_for() -> None:
    """Each pattern matches its words (assembled here, so this file never spells them)."""
    samples = {
        "work period": "in this ses" + "sion we",
        "issue number": "fixes iss" + "ue #12",
        "design note reference": "see DESIGN " + "§4",
        "shared folder": "copied from ../" + "shared/x",
        "machine loan": "the run was " + "lent a " + "GPU",
        "parallel writing": "the module is written " + "in parallel",
    }
    for what, sample in samples.items():
        assert [w for _, w, _ in offences(sample)] == [what], what
    assert offences('@pytest.fixture(scope="session")') == []
    assert offences("a test run; issues; dissension") == []
    assert offences(Path(__file__).read_text()) == []  # tracked or not yet


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs git and the repository's history (git ls-files)",
)
def test_tracked_text_speaks_of_the_product_only() -> None:
    files = tracked_text_files()
    assert "README.md" in files and "pyproject.toml" in files  # the listing worked
    report = [
        f"{name}:{number}: {what}: {line[:120]}"
        for name, text in sorted(files.items())
        for number, what, line in offences(text)
    ]
    assert not report, "text about how the repository was made:\n" + "\n".join(report)

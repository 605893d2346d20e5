"""The README's code runs: every ``python`` block is executed, every YAML config is parsed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in _BLOCK.findall(README.read_text()) if kind == lang]


def test_readme_has_the_two_quick_start_commands() -> None:
    bash = "\n".join(_blocks("bash"))
    assert (
        'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test]" && '
        "python -m pytest -q" in bash
    )
    assert "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e . && " in bash
    assert "recipes/word50/quickstart_unary.yaml recipes/word50/quickstart.yaml" in bash
    for recipe in re.findall(r"recipes/[\w/]+\.yaml", README.read_text()):
        assert (README.parent / recipe).is_file(), recipe


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster and steadier on 2 cores
    try:
        code = _blocks("python")[index]
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out  # every block prints its result


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("index", range(len(_blocks("yaml"))))
def test_yaml_block_parses(index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Config snippets are valid ``structlight`` configs (keys and class paths are checked)."""
    from structlight.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(_blocks("yaml")[index])
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(config), "--print_config"])
    assert err.value.code in (0, None), capsys.readouterr().err
    assert "class_path" in capsys.readouterr().out

"""Generate VarWords from the shell: ``python -m datamodules.varwords [ROOT] [options]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datamodules.varwords.constants import DEFAULT_FILENAME, MAX_LENGTH, MIN_LENGTH
from datamodules.varwords.generate import generate_varwords
from datamodules.word50.generate import Word50Difficulty


def main(argv: list[str] | None = None) -> Path:
    """Parse arguments and generate ``<root>/varwords.h5``."""
    parser = argparse.ArgumentParser(prog="python -m datamodules.varwords", description=__doc__)
    parser.add_argument("root", nargs="?", default="data/varwords", help="output folder")
    parser.add_argument("--filename", default=DEFAULT_FILENAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--num-val", type=int, default=2_000)
    parser.add_argument("--num-test", type=int, default=2_000)
    parser.add_argument("--min-length", type=int, default=MIN_LENGTH)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    parser.add_argument("--font-dir", default=None, help="add every usable font in this folder")
    parser.add_argument("--difficulty", default=None, help="JSON overrides of Word50Difficulty")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = generate_varwords(
        Path(args.root) / args.filename,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        min_length=args.min_length,
        max_length=args.max_length,
        font_dir=args.font_dir,
        difficulty=Word50Difficulty(**json.loads(args.difficulty or "{}")),
        overwrite=args.overwrite,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()

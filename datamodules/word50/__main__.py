"""Generate Word50 from the shell: ``python -m datamodules.word50 [ROOT] [options]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datamodules.word50.constants import DEFAULT_FILENAME
from datamodules.word50.generate import Word50Difficulty, generate_word50
from datamodules.word50.io import export_folder


def main(argv: list[str] | None = None) -> Path:
    """Parse arguments, generate ``<root>/word50.h5``, optionally export the folder layout."""
    parser = argparse.ArgumentParser(prog="python -m datamodules.word50", description=__doc__)
    parser.add_argument("root", nargs="?", default="data/word50", help="output folder")
    parser.add_argument("--filename", default=DEFAULT_FILENAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--num-val", type=int, default=2_000)
    parser.add_argument("--num-test", type=int, default=2_000)
    parser.add_argument("--font-dir", default=None, help="add every usable font in this folder")
    parser.add_argument(
        "--chars74k-root", default=None, help="use Chars74K letters instead of fonts"
    )
    parser.add_argument("--difficulty", default=None, help="JSON overrides of Word50Difficulty")
    parser.add_argument(
        "--export-folder", default=None, help="also write the PNG folder layout here"
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = generate_word50(
        Path(args.root) / args.filename,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        font_dir=args.font_dir,
        chars74k_root=args.chars74k_root,
        difficulty=Word50Difficulty(**json.loads(args.difficulty or "{}")),
        overwrite=args.overwrite,
    )
    print(f"wrote {path}")
    if args.export_folder:
        print(f"wrote {export_folder(path, args.export_folder, progress=True)}")
    return path


if __name__ == "__main__":
    main()

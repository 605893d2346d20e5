#!/usr/bin/env python3
"""Write every recipe of ``recipes/`` and its tiny twin under ``tests/conf/`` (deterministic).

The grid is the paper's Word50 experiments (Chen et al., ICML 2015):

* Table 1: strategies {unary only, JointTrain, PwTrain, PreTrainJoint} x {1st, 2nd order} x
  unary MLP {one layer H1 in 128, 256, 512, 768, 1024; two layers H1 = 512, H2 in 32 .. 512}
  -> ``recipes/word50/table1/<strategy><order>_<mlp>.yaml`` (unary only: ``unary_<mlp>.yaml``);
* Fig. 6: 1st-order JointTrain with a one-layer MLP pairwise function of 16, 32 or 64 hidden
  units on the two characters' pixels (1568 inputs) -> ``recipes/word50/fig6/``;
* the quick start: ``recipes/word50/quickstart.yaml`` (2nd-order JointTrain) and
  ``quickstart_unary.yaml`` (its unary-only baseline), a few minutes on 2 CPU cores;
* missing labels: ``recipes/word50/missing/{discard,latent,full}.yaml``, the quick start's
  2nd-order JointTrain when 2 of the 5 letters of half the training words are hidden
  (``datamodules.missing.MissingLabels``): discarded words, the latent loss, or all labels;
* variable-size examples: ``recipes/varwords/{unary,joint1,joint2}.yaml``, unary only, 1st- and
  2nd-order JointTrain with a one-layer MLP (H1 = 512) on VarWords (English words of 2 to 14
  letters, ``datamodules.varwords``): ``ChainHead(num_vars=14)`` on batches of similar lengths,
  each padded to its longest word (the head pads to 14 positions itself), each word a chain of
  its own length (``batch["length"]``); :data:`VAR_EPOCHS`
  epochs; validation runs up to 50 sweeps and stops when the messages converge (longer chains
  than Word50's five letters need more than 10).

Settings (the paper's, docs/design.md §3): mini-batch 100, SGD step 0.01 (0.001 for
PreTrainJoint), momentum 0.95, the step halved whenever the validation accuracy does not improve
(``ReduceLROnPlateau(mode=max, factor=0.5, patience=0)``), eps = 1, c_r = 1, one message-passing
sweep per step, 10 sweeps at validation/test. The schedule watches the *character* accuracy
(``scheduler_monitor: val/char_acc``): a unary-only model's word accuracy stays near zero for
many epochs, and a schedule on it halves the step at every epoch until learning stops. The paper ran 100,000 iterations (1,000 epochs of
the 10,000 training words); the recipes run :data:`EPOCHS` epochs (:data:`EPOCHS` x 100
iterations), which a GPU or a patient CPU can afford; override with ``--trainer.max_epochs`` or
the grid runner's ``--max_epochs``.

PwTrain and PreTrainJoint start from the unary-only run with the same MLP: their
``unary_checkpoint`` is ``runs/word50/unary_<mlp>/checkpoints/last.ckpt``, which that recipe
writes (``structlight-table`` runs the unary recipe first and passes its checkpoint itself).

Twins (``tests/conf/...``, same path below the folder): the same classes and settings with tiny
data (20/10/10 words, batch 2) and ``fast_dev_run``; the tests point ``data.init_args.root`` at a
tiny generated Word50 (or VarWords) and ``unary_checkpoint`` at a stand-in checkpoint.

Usage::

    python recipes/make_recipes.py            # rewrite recipes/ and tests/conf/
    python recipes/make_recipes.py --check    # exit 1 if a file on disk differs (CI-friendly)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TWINS = ROOT / "tests" / "conf"

#: Epochs of the Table 1 / Fig. 6 recipes (x 100 iterations of 100 words).
EPOCHS = 100
#: The quick start: epochs of the unary-only and of the 2nd-order joint run.
QUICK_EPOCHS = 15
QUICK_TRAINER: tuple[tuple[str, Any], ...] = ()
#: Word50 and VarWords of the twins (the tests generate them with these sizes).
TINY_DATA = {"num_train": 20, "num_val": 10, "num_test": 10}
#: Epochs of the VarWords recipes (x 100 iterations of 100 words).
VAR_EPOCHS = 30
#: VarWords' longest word: the chain head's number of positions.
VAR_N_MAX = 14
#: Data module of each data set.
DATA_CLASSES = {
    "word50": "datamodules.word50.Word50DataModule",
    "varwords": "datamodules.varwords.VarWordsDataModule",
}

ONE_LAYER = (128, 256, 512, 768, 1024)
TWO_LAYER_H2 = (32, 64, 128, 256, 512)
PAIR_HIDDEN = (16, 32, 64)
STRATEGY_NAMES = {
    "joint": "joint",
    "piecewise": "piecewise",
    "pretrain_joint": "pretrain",
}

#: The paper's Table 1 (word / character %), for the headers of the recipes.
PAPER_TABLE1: dict[tuple[str, int, str], tuple[float, float]] = {}


def _fill_paper() -> None:
    rows = ("unary", "joint1", "piecewise1", "pretrain1", "joint2", "piecewise2", "pretrain2")
    one = {
        128: ((8.60, 61.32), (16.80, 65.28), (12.70, 64.35), (20.65, 67.42), (25.50, 67.13),
              (10.05, 58.90), (28.15, 69.07)),
        256: ((10.80, 64.41), (25.20, 70.75), (18.00, 68.27), (25.70, 71.65), (34.60, 73.19),
              (14.10, 63.44), (36.85, 75.21)),
        512: ((12.50, 65.69), (31.80, 74.90), (22.80, 71.29), (31.70, 75.56), (45.55, 79.60),
              (18.10, 67.31), (45.75, 80.09)),
        768: ((12.95, 66.66), (33.05, 76.42), (23.25, 72.62), (34.50, 77.14), (51.55, 82.37),
              (20.40, 70.14), (50.10, 82.30)),
        1024: ((13.40, 67.02), (34.30, 77.02), (26.30, 73.96), (35.85, 78.05), (54.05, 83.57),
               (22.20, 71.25), (52.25, 83.39)),
    }  # fmt: skip
    two = {
        32: ((15.25, 69.04), (35.95, 76.92), (34.85, 79.11), (42.25, 81.10), (54.65, 83.98),
             (39.95, 81.14), (62.60, 88.03)),
        64: ((18.15, 70.66), (43.80, 81.64), (38.95, 80.93), (44.85, 82.96), (61.80, 87.30),
             (48.25, 84.45), (65.80, 89.32)),
        128: ((19.00, 71.43), (44.75, 82.22), (42.75, 82.38), (46.85, 83.50), (66.15, 89.09),
              (52.65, 86.24), (68.75, 90.47)),
        256: ((19.20, 72.06), (46.00, 82.96), (45.10, 83.67), (47.95, 84.21), (64.85, 88.93),
              (57.10, 87.61), (68.60, 90.42)),
        512: ((20.40, 72.51), (47.70, 83.64), (45.75, 83.88), (47.05, 84.08), (68.00, 89.96),
              (62.90, 89.49), (69.35, 90.75)),
    }  # fmt: skip
    for h1, vals in one.items():
        for row, v in zip(rows, vals, strict=True):
            PAPER_TABLE1[(f"h{h1}", 0, row)] = v
    for h2, vals in two.items():
        for row, v in zip(rows, vals, strict=True):
            PAPER_TABLE1[(f"h512x{h2}", 0, row)] = v


_fill_paper()


@dataclass(frozen=True)
class Recipe:
    """One run of the grid."""

    path: str  # below recipes/ (and tests/conf/)
    title: str
    dataset: str = "word50"  # word50 | varwords
    hidden: tuple[int, ...] = (512,)
    strategy: str = "joint"
    order: int = 1
    pairwise: str = "table"  # table | mlp | none
    pair_hidden: int | None = None
    epochs: int = EPOCHS
    data_extra: tuple[tuple[str, Any], ...] = ()
    trainer_extra: tuple[tuple[str, Any], ...] = ()
    paper: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def mlp_tag(self) -> str:
        return "h" + "x".join(str(h) for h in self.hidden)


def _unary_run(mlp_tag: str) -> str:
    return f"runs/word50/unary_{mlp_tag}/checkpoints/last.ckpt"


def _config(r: Recipe, twin: bool) -> dict[str, Any]:
    lr = 0.001 if r.strategy == "pretrain_joint" else 0.01
    varwords = r.dataset == "varwords"
    head: dict[str, Any] = {
        "num_vars": VAR_N_MAX if varwords else 5,
        "num_states": 26,
        "in_features": r.hidden[-1],
        "order": r.order,
        "pairwise": r.pairwise,
        "share": "type",
    }
    if r.pairwise == "mlp":
        head["pairwise_hidden"] = [r.pair_hidden]
        head["pairwise_in_features"] = 1568
    head["inference"] = {"eps": 1.0, "sweeps_per_step": 1}
    model_args: dict[str, Any] = {"strategy": r.strategy, "scheduler_monitor": "val/char_acc"}
    if r.strategy in ("piecewise", "pretrain_joint"):
        model_args["unary_checkpoint"] = _unary_run(r.mlp_tag)
    if varwords:  # up to 50 sweeps, until the messages converge (val_tol's default)
        model_args["val_sweeps"] = 50
    else:  # the paper's prediction: exactly 10 sweeps (enough for 5-letter words)
        model_args.update({"val_sweeps": 10, "val_tol": None})
    model_args.update(
        {
            "backbone": {
                "class_path": "structlight.backbones.PerPosition",
                "init_args": {
                    "module": {
                        "class_path": "structlight.potentials.MLP",
                        "init_args": {"in_features": 784, "hidden": list(r.hidden)},
                    }
                },
            },
            "head": {"class_path": "structlight.head.ChainHead", "init_args": head},
            "optimizer": {
                "class_path": "torch.optim.SGD",
                "init_args": {"lr": lr, "momentum": 0.95},
            },
            "lr_scheduler": {
                "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                "init_args": {"mode": "max", "factor": 0.5, "patience": 0},
            },
        }
    )
    data_args: dict[str, Any] = {
        "root": f"data/{r.dataset}",
        "batch_size": 100,
        "eval_batch_size": 500,
    }
    if r.dataset == "varwords":  # each batch padded to its longest word (ChainHead pads to 14)
        data_args["pad_to"] = "longest"
    data_args.update(dict(r.data_extra))
    trainer: dict[str, Any] = {"max_epochs": r.epochs, "log_every_n_steps": 20}
    trainer.update(dict(r.trainer_extra))
    log_name = trainer.pop("logger_name", r.dataset)
    if twin:
        data_args.update({"root": f"data/{r.dataset}_tiny", "batch_size": 2, "eval_batch_size": 2})
        data_args.update(TINY_DATA)
        data_args["progress"] = False
        trainer = {"fast_dev_run": True, "enable_model_summary": False}
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": log_name, "version": r.name},
    }
    return {
        "seed_everything": 0,
        "trainer": trainer,
        "checkpoint": {"monitor": "val/word_acc", "mode": "max", "filename": "best"},
        "model": {"class_path": "structlight.task.DeepStructuredModel", "init_args": model_args},
        "data": {"class_path": DATA_CLASSES[r.dataset], "init_args": data_args},
    }


def _header(r: Recipe, twin: bool) -> str:
    lines = [f"# {r.title}"]
    if r.paper is not None:
        lines.append(f"# Paper (word / character accuracy %): {r.paper[0]:.2f} / {r.paper[1]:.2f}")
    if twin:
        lines.append(f"# Tiny twin of recipes/{r.path} for the smoke test (tests/test_recipes.py).")
    else:
        lines.append(f"# Run: structlight fit --config recipes/{r.path}")
        if r.strategy in ("piecewise", "pretrain_joint"):
            lines.append(
                f"# Needs the unary-only run first: {_unary_run(r.mlp_tag)} "
                f"(recipes/word50/table1/unary_{r.mlp_tag}.yaml)"
            )
    lines.append("# Written by recipes/make_recipes.py; edit that script, not this file.")
    return "\n".join(lines) + "\n"


def _dump(r: Recipe, twin: bool) -> str:
    body = yaml.safe_dump(_config(r, twin), sort_keys=False, default_flow_style=False, width=100)
    return _header(r, twin) + body


def grid() -> list[Recipe]:
    """Every recipe, in a fixed order (unary-only runs before the runs that load them)."""
    out: list[Recipe] = []
    mlps = [(h,) for h in ONE_LAYER] + [(512, h2) for h2 in TWO_LAYER_H2]
    for hidden in mlps:
        tag = "h" + "x".join(map(str, hidden))
        layers = "one-layer" if len(hidden) == 1 else "two-layer"
        sizes = ", ".join(f"H{i + 1}={h}" for i, h in enumerate(hidden))
        out.append(
            Recipe(
                path=f"word50/table1/unary_{tag}.yaml",
                title=f"Word50, Table 1: unary only, {layers} MLP ({sizes}).",
                hidden=hidden,
                strategy="unary_only",
                pairwise="none",
                paper=PAPER_TABLE1.get((tag, 0, "unary")),
            )
        )
        for order in (1, 2):
            for strategy, short in STRATEGY_NAMES.items():
                name = f"{short}{order}_{tag}"
                label = {"joint": "JointTrain", "piecewise": "PwTrain"}.get(
                    strategy, "PreTrainJoint"
                )
                out.append(
                    Recipe(
                        path=f"word50/table1/{name}.yaml",
                        title=(
                            f"Word50, Table 1: {'1st' if order == 1 else '2nd'} order Markov, "
                            f"{label}, {layers} MLP ({sizes})."
                        ),
                        hidden=hidden,
                        strategy=strategy,
                        order=order,
                        paper=PAPER_TABLE1.get((tag, 0, f"{short}{order}")),
                    )
                )
    for hidden in mlps:
        tag = "h" + "x".join(map(str, hidden))
        layers = "one-layer" if len(hidden) == 1 else "two-layer"
        sizes = ", ".join(f"H{i + 1}={h}" for i, h in enumerate(hidden))
        for ph in PAIR_HIDDEN:
            out.append(
                Recipe(
                    path=f"word50/fig6/joint1_pair{ph}_{tag}.yaml",
                    title=(
                        f"Word50, Fig. 6: 1st order Markov, JointTrain, pairwise MLP 1568-{ph}-676 "
                        f"on the two characters' pixels, {layers} unary MLP ({sizes})."
                    ),
                    hidden=hidden,
                    strategy="joint",
                    order=1,
                    pairwise="mlp",
                    pair_hidden=ph,
                )
            )
    out.append(
        Recipe(
            path="word50/quickstart_unary.yaml",
            title=(
                "Quick start, baseline: unary only, one-layer MLP (H1=512) on the generated "
                f"Word50, {QUICK_EPOCHS} epochs."
            ),
            hidden=(512,),
            strategy="unary_only",
            pairwise="none",
            epochs=QUICK_EPOCHS,
            trainer_extra=QUICK_TRAINER,
        )
    )
    out.append(
        Recipe(
            path="word50/quickstart.yaml",
            title=(
                "Quick start: 2nd order Markov, JointTrain, one-layer MLP (H1=512) on the "
                f"generated Word50, {QUICK_EPOCHS} epochs (a few minutes on 2 CPU cores)."
            ),
            hidden=(512,),
            strategy="joint",
            order=2,
            epochs=QUICK_EPOCHS,
            trainer_extra=QUICK_TRAINER,
        )
    )
    for handling, what in (
        ("discard", "the partly labelled words discarded"),
        ("latent", "the missing letters unobserved (the latent loss)"),
        ("none", "every letter labelled (the ceiling)"),
    ):
        out.append(
            Recipe(
                path=f"word50/missing/{'full' if handling == 'none' else handling}.yaml",
                title=(
                    "Missing labels: 2nd order Markov, JointTrain, one-layer MLP (H1=512) on the "
                    f"generated Word50, 2 of the 5 letters of half the training words hidden; "
                    f"{what}; {QUICK_EPOCHS} epochs."
                ),
                hidden=(512,),
                strategy="joint",
                order=2,
                epochs=QUICK_EPOCHS,
                trainer_extra=QUICK_TRAINER + (("logger_name", "word50_missing"),),
                data_extra=(
                    (
                        "missing_labels",
                        {"fraction": 0.5, "per_example": 2, "handling": handling, "seed": 0},
                    ),
                ),
            )
        )
    varwords = "VarWords (English words of 2 to 14 letters), one-layer MLP (H1=512)"
    out.append(
        Recipe(
            path="varwords/unary.yaml",
            title=f"Variable-size examples: unary only, {varwords}, {VAR_EPOCHS} epochs.",
            dataset="varwords",
            strategy="unary_only",
            pairwise="none",
            epochs=VAR_EPOCHS,
        )
    )
    for order in (1, 2):
        out.append(
            Recipe(
                path=f"varwords/joint{order}.yaml",
                title=(
                    f"Variable-size examples: {'1st' if order == 1 else '2nd'} order Markov, "
                    f"JointTrain, {varwords}, {VAR_EPOCHS} epochs."
                ),
                dataset="varwords",
                order=order,
                epochs=VAR_EPOCHS,
            )
        )
    return out


def files() -> dict[Path, str]:
    """``{path: text}`` of every recipe and twin."""
    out: dict[Path, str] = {}
    for r in grid():
        out[RECIPES / r.path] = _dump(r, twin=False)
        out[TWINS / r.path] = _dump(r, twin=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) the recipes and twins; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in files().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    print(f"wrote {len(stale)} files ({len(files())} in the grid)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

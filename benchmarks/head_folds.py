"""Does class-fold selection rank meta-trained heads the way novel classes do, and what does it cost?

Every config with a `train:` section (the meta-trained protonets, MAML and Proto-MAML heads on each
fusion) is compared on split 0 on 4 class folds of base ∪ validation classes (`fsl train CONFIG...
--folds 4 --no-final`: each head trained four times, fold f on the other folds' classes, its step
chosen on half of fold f's held-out episodes at 5-way 1 and 5 shots and all-way 5 shots, its score read
on the other half; step 0, the untrained start, is a candidate). Each head is then trained as `fsl
train` trains it (on every base class, its step chosen on the six validation classes) and read once on
the novel classes to report (novel-5w1s, novel-5w5s, novel-15w5s, 600 frozen episodes each; its
figure: the mean over the three sets). Printed: each head's fold figure, the steps its folds chose,
its six-validation-class figure (the old selection) and its novel figures; Spearman's rank
correlation of folds vs novel and of validation vs novel (issue 33's target: 0.6 or more); the power
lines of the fold choice; how often the folds chose the untrained start; the wall times. Offline
encoder, real data, this 2-core CPU. Runs resume from --root.

    python benchmarks/head_folds.py [--data DIR] [--folds 4] [--out results/head-folds.json]
        [--root DIR] [--configs NAME ...] [--fold-by COLUMN]

`--fold-by subCategory`: folds hold whole subCategories (`fsl train --folds 4 --fold-by subCategory`), so
no held-out class has a sibling among the training classes (pass another --out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from fold_report import NOVEL_SETS, print_fold_report

from fsl.config import EncoderConfig, load_config
from fsl.data.prepared import load_catalog
from fsl.files import write_json
from fsl.harness.experiment import run_experiment
from fsl.harness.select import compare_heads
from fsl.harness.train import train
from fsl.paths import Workspace
from fsl.store.open import open_store


def trainable_configs() -> list:
    """Every shipped experiment with a train: section, by name."""
    configs = [load_config(path) for path in sorted(Path("experiments").glob("*.yaml"))]
    return [config for config in configs if config.train is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", default="results/head-folds.json")
    parser.add_argument("--root", default="checkpoints/head-folds", help="checkpoints and TensorBoard runs")
    parser.add_argument("--configs", nargs="+", help="compare these configs only (names as printed)")
    parser.add_argument("--fold-by", help="folds hold whole groups of this column (e.g. subCategory)")
    args = parser.parse_args()
    candidates = trainable_configs()
    if args.configs:
        unknown = sorted(set(args.configs) - {config.name for config in candidates})
        if unknown:
            parser.error(f"unknown config {unknown[0]!r}; known: {[config.name for config in candidates]}")
        candidates = [config for config in candidates if config.name in args.configs]
    torch.set_num_threads(2)

    catalog = load_catalog(args.data)
    open_store(catalog, EncoderConfig("offline"))
    root = Path(args.root)
    workspace = Workspace(checkpoints=root / "checkpoints", runs=root / "runs", results=root / "results")
    started = time.perf_counter()
    folds = compare_heads(candidates, catalog, workspace, 0, args.folds, progress=False, fold_by=args.fold_by)
    folds_s = time.perf_counter() - started

    rows = []
    started = time.perf_counter()
    for config, fold_row in zip(candidates, folds["candidates"]):
        trained = train(config, catalog, workspace, 0, progress=False)
        novel = {result.episode_set: float(np.mean(result.accuracy))
                 for result in run_experiment(config, catalog, workspace, 0, progress=False)}  # fmt: skip
        rows.append({"config": config.name, "folds": fold_row["mean"], "folds_ci": fold_row["ci"],
                     "steps": [fold["step"] for fold in fold_row["folds"]],
                     "validation": trained["best_val_accuracy"], "validation_step": trained["best_step"],
                     "novel": novel, "novel_mean": float(np.mean([novel[name] for name in NOVEL_SETS]))})  # fmt: skip
        print(f"  {config.name}: trained on base classes and read on novel classes", flush=True)
    final_s = time.perf_counter() - started

    untrained = sum(step == 0 for row in rows for step in row["steps"])
    whole = "" if args.fold_by is None else f", folds holding whole {args.fold_by} groups"
    print(f"\nsplit 0, offline encoder, {len(rows)} meta-trained heads{whole}, each scored as it answers "
          "(accuracy, %)\n")  # fmt: skip
    by_folds, by_validation = print_fold_report(
        rows, "config", folds, args.folds, "6 validation classes (chosen step)",
        lambda row: f"{100 * row['validation']:.1f} ({row['validation_step']})",
    )  # fmt: skip
    print(f"the untrained start chosen on {untrained} of {len(rows) * args.folds} fold runs")
    print(f"wall time: {args.folds}-fold comparison of {len(rows)} heads {folds_s:.0f} s "
          f"({folds_s / len(rows) / args.folds:.0f} s a fold run; finished runs resumed count too), final runs and "
          f"novel report {final_s:.0f} s")  # fmt: skip
    write_json(Path(args.out), {"rows": rows, "spearman_folds": by_folds, "spearman_validation": by_validation,
                                "folds": folds, "seconds": {"folds": folds_s, "final": final_s}})  # fmt: skip


if __name__ == "__main__":
    main()

"""Does class-fold selection rank alignments the way novel classes do, and what does it cost?

`fsl align` settings (the learning rates of docs/align.md's sweep, an MLP head, a wider space, the
class-prompt term off and doubled) are compared on split 0 on 4 class folds of base ∪ validation
classes (`fsl align --folds 4 --no-final --lr ... `: each alignment trained four times, fold f on the
other folds' classes' products and prompts, its step chosen on half of fold f's held-out episodes and
its score, zero-shot photo accuracy from the held classes' names, read on the other half). Each is then
trained as `fsl align` trains it (on every base class, its step chosen on the six validation classes'
products: zero-shot accuracy and text->photo recall@10) and read once on the novel classes to report,
as the README's aligned rows are (experiments/aligned-zero-shot-image.yaml: zero-shot on photos from
class names, novel-5w1s, novel-5w5s, novel-15w5s, 600 frozen episodes each; its figure: the mean over
the three sets). Printed: each alignment's fold figure, the steps its folds chose, its six-validation-
class score (the old selection) and its novel figures; Spearman's rank correlation of folds vs novel and
of validation vs novel (issue 33's target: 0.6 or more); the power lines of the fold choice; the wall
times. Offline encoder, real data, this 2-core CPU. Runs resume from --root.

    python benchmarks/align_folds.py [--data DIR] [--folds 4] [--out results/align-folds.json] [--root DIR]
        [--fold-by COLUMN]

`--fold-by subCategory`: folds hold whole subCategories (`fsl align --folds 4 --fold-by subCategory`),
so no held-out class has a sibling among the training classes (pass another --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from fold_report import NOVEL_SETS, print_fold_report

from fsl.config import EncoderConfig, load_config
from fsl.data.prepared import load_catalog
from fsl.files import write_json
from fsl.harness.align import AlignConfig, align
from fsl.harness.experiment import run_experiment
from fsl.harness.select import compare_alignments
from fsl.paths import Workspace
from fsl.store.open import open_store

SHIPPED = AlignConfig()  # lr 3e-4, a 256-d linear map per tower, prompt weight 1
CANDIDATES = {
    "lr-0.001": {"lr": 1e-3},
    "shipped": {},
    "lr-0.0001": {"lr": 1e-4},
    "lr-1e-05": {"lr": 1e-5},
    "hidden-512": {"hidden": 512},
    "dim-512": {"dim": 512},
    "prompt-weight-0": {"prompt_weight": 0.0},
    "prompt-weight-2": {"prompt_weight": 2.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", default="results/align-folds.json")
    parser.add_argument("--root", default="checkpoints/align-folds", help="checkpoints and TensorBoard runs")
    parser.add_argument("--fold-by", help="folds hold whole groups of this column (e.g. subCategory)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    catalog = load_catalog(args.data)
    open_store(catalog, EncoderConfig("offline"))
    root = Path(args.root)
    workspace = Workspace(checkpoints=root / "checkpoints", runs=root / "runs", results=root / "results")
    candidates = [dataclasses.replace(SHIPPED, name=name, **changes) for name, changes in CANDIDATES.items()]
    started = time.perf_counter()
    folds = compare_alignments(
        candidates, catalog, workspace, args.folds, root / "folds", progress=False, fold_by=args.fold_by
    )
    folds_s = time.perf_counter() - started

    rows = []
    started = time.perf_counter()
    zero_shot = load_config("experiments/aligned-zero-shot-image.yaml")
    by_name = {row["name"]: row for row in folds["candidates"]}
    for config in candidates:
        if config.name not in by_name:
            print(f"  {config.name}: left out (a fold run did not finish)")
            continue
        trained = align(config, catalog, workspace, root / "final", progress=False)
        encoder = EncoderConfig("aligned", pretrained=str(trained["folder"]))
        reading = dataclasses.replace(zero_shot, name=f"aligned-zero-shot-image--{config.name}", encoder=encoder,
                                      episodes=NOVEL_SETS)  # fmt: skip
        novel = {result.episode_set: float(np.mean(result.accuracy))
                 for result in run_experiment(reading, catalog, workspace, 0, progress=False)}  # fmt: skip
        fold_row = by_name[config.name]
        rows.append({"alignment": config.name, "folds": fold_row["mean"], "folds_ci": fold_row["ci"],
                     "steps": [fold["step"] for fold in fold_row["folds"]],
                     "validation": trained["best_val_accuracy"], "validation_step": trained["best_step"],
                     "novel": novel, "novel_mean": float(np.mean([novel[name] for name in NOVEL_SETS]))})  # fmt: skip
        print(f"  {config.name}: trained on base classes and read on novel classes", flush=True)
    final_s = time.perf_counter() - started

    whole = "" if args.fold_by is None else f", folds holding whole {args.fold_by} groups"
    print(f"\nsplit 0, offline encoder, {len(rows)} alignments{whole}, zero-shot photo accuracy from class names (%)\n")
    by_folds, by_validation = print_fold_report(
        rows, "alignment", folds, args.folds, "6 validation classes: score (chosen step)",
        lambda row: f"{100 * row['validation']:.1f} ({row['validation_step']})",
    )  # fmt: skip
    print(f"wall time: {args.folds}-fold comparison of {len(candidates)} alignments {folds_s:.0f} s "
          f"({folds_s / len(candidates) / args.folds:.0f} s a fold run; finished runs resumed count too), final "
          f"runs and novel report {final_s:.0f} s")  # fmt: skip
    write_json(Path(args.out), {"rows": rows, "spearman_folds": by_folds, "spearman_validation": by_validation,
                                "folds": folds, "seconds": {"folds": folds_s, "final": final_s}})  # fmt: skip


if __name__ == "__main__":
    main()

"""Does class-fold selection rank adaptation recipes the way novel classes do, and what does it cost?

Twelve recipes of `fsl adapt` (the three shipped ones, four variants of the ablation in
docs/adaptation.md and cut 3, both towers together, and three augmentations of the episodic recipe's maps beyond
its flips: random crops, class blends, both) are compared on split 0 on 4 class folds of base ∪
validation classes (`fsl adapt ... --folds 4`: each recipe trained four times, fold f on the other
folds' classes, its step chosen on half of fold f's held-out episodes at 5-way 1 and 5 shots and
all-way 5 shots, its score read on the other half). Each fold's tower never saw a novel class, so it
is then read once on the novel classes to report (its adapted store under the fused-masked protonet
that selection uses, novel-5w1s, novel-5w5s and novel-15w5s, 600 frozen episodes each; the recipe's
figure: the mean over its four towers and the three sets). Printed: each recipe's fold and novel
figures beside its figure on the six validation classes (docs/adaptation.md's ablation: the old
selection), Spearman's rank correlation of folds vs novel and of validation vs novel (issue 33's
target: 0.6 or more for the folds), the power lines of the fold choice (over episodes and over
folds), and the wall time of the four-fold comparison (one activation cache per cut, shared by every
fold and recipe). Offline encoder, real data, this 2-core CPU. Fold runs resume from --adapt-root.

    python benchmarks/fold_selection.py [--data DIR] [--folds 4] [--out results/fold-selection.json]
        [--adapt-root DIR] [--runs DIR] [--recipes NAME ...] [--fold-by COLUMN] [--split S]

`--recipes` compares some of them only (their names as printed; the fold comparison and its power
lines are then among those, the rank agreement too). `--fold-by subCategory`: folds hold whole
subCategories (`fsl adapt --folds 4 --fold-by subCategory`), so no held-out class has a sibling among
the training classes; its fold towers go to fold<f>-by-subCategory beside the plain folds' (pass
another --out). `--split S` compares them on class split S instead (its folds, its novel sets; pass
another --out); its six-class figures are the shipped recipes' chosen-step scores on that split's
validation classes (results/summary/adaptation-runs.json, from `fsl adapt --split-seeds`). The
variants and the augmented recipes have no six-class figure off split 0 (the augmented ones none at
all: they came after that selection): '–' there, and the validation Spearman leaves them out.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from fold_report import NOVEL_SETS, print_fold_report

from fsl.config import EncoderConfig, ExperimentConfig, load_adapt_config, override
from fsl.data.prepared import load_catalog
from fsl.encoders.offline import OfflineEncoder
from fsl.files import read_json, write_json
from fsl.harness.experiment import run_experiment
from fsl.harness.select import compare_recipes
from fsl.paths import ADAPT_DIR, Workspace, split_root
from fsl.store.activations import cached_activations
from fsl.store.open import open_store

# each recipe's chosen-step score on split 0's six validation classes (mean of val-5w5s and
# val-allway-5s, %), from docs/adaptation.md's ablation (measured 2026-12-03 with these recipes;
# episodic-both from benchmarks/adapt_towers.py, 2026-12-05)
SIX_CLASS = {"episodic": (98.4, 98.0), "episodic--lr-3e-05": (98.3, 97.8), "episodic--lr-0.0003": (98.1, 97.6),
             "episodic--objective-supervised+episodic": (98.2, 97.8), "lora": (98.6, 98.3),
             "supervised": (95.6, 94.8), "episodic-both": (98.1, 97.5), "episodic--cut-2": (98.8, 98.5)}  # fmt: skip


def recipes() -> list:
    """The shipped recipes, five variants (the ablation's four and cut 3; names say what changed), both towers, and
    the episodic recipe with its maps cropped (5x5 of 7x7), blended within their class, or both."""
    episodic, lora, supervised, both = (load_adapt_config(f"experiments/adapt/{n}.yaml")
                                        for n in ("episodic", "lora", "supervised", "episodic-both"))  # fmt: skip
    return [
        episodic,
        override(episodic, [("lr", 3e-5)]),
        override(episodic, [("lr", 3e-4)]),
        override(episodic, [("objective", "supervised+episodic")]),
        override(episodic, [("cut", 2)]),
        override(episodic, [("cut", 3)]),
        lora,
        supervised,
        both,
        override(episodic, [("crop", 0.7)]),
        override(episodic, [("mix", 0.3)]),
        override(episodic, [("crop", 0.7), ("mix", 0.3)]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", default="results/fold-selection.json")
    parser.add_argument("--adapt-root", default=str(ADAPT_DIR / "fold-selection"))
    parser.add_argument("--runs", default="runs/fold-selection", help="TensorBoard root of the fold runs")
    parser.add_argument("--recipes", nargs="+", help="compare these recipes only (names as printed)")
    parser.add_argument("--fold-by", help="folds hold whole groups of this column (e.g. subCategory)")
    parser.add_argument("--split", type=int, default=0, help="the class split compared on (default 0)")
    parser.add_argument("--runs-summary", default="results/summary/adaptation-runs.json",
                        help="the shipped recipes' validation scores off split 0")  # fmt: skip
    args = parser.parse_args()
    candidates = [dataclasses.replace(recipe, split_seed=args.split) for recipe in recipes()]  # names kept
    six_class = SIX_CLASS if args.split == 0 else shipped_validation(Path(args.runs_summary), args.split)
    if args.recipes:
        unknown = sorted(set(args.recipes) - {recipe.name for recipe in candidates})
        if unknown:
            parser.error(f"unknown recipe {unknown[0]!r}; known: {[recipe.name for recipe in candidates]}")
        candidates = [recipe for recipe in candidates if recipe.name in args.recipes]
    torch.set_num_threads(2)

    catalog = load_catalog(args.data)
    open_store(catalog, EncoderConfig("offline"))
    started = time.perf_counter()
    for cut in sorted({recipe.cut for recipe in candidates}):  # the image cuts (the text tokens: in the folds)
        cached_activations(catalog, OfflineEncoder(), cut)
    cache_s = time.perf_counter() - started

    started = time.perf_counter()
    workspace = Workspace(runs=args.runs)
    folds = compare_recipes(
        candidates, catalog, workspace, args.folds, args.adapt_root, progress=False, fold_by=args.fold_by
    )
    folds_s = time.perf_counter() - started

    rows, novel_s = [], 0.0
    started = time.perf_counter()
    for recipe, fold_row in zip(candidates, folds["candidates"]):
        novel = {name: [] for name in NOVEL_SETS}
        for fold in fold_row["folds"]:
            by = "" if args.fold_by is None else f"-by-{args.fold_by}"
            tower = split_root(args.adapt_root, args.split) / recipe.name / f"fold{fold['fold']}{by}" / "best"
            config = ExperimentConfig(
                name=f"fold-selection-{recipe.name}-fold{fold['fold']}{by}",
                method="protonet",
                fusion="concat",
                fusion_options={"image_weight": recipe.image_weight},
                text_variant=recipe.text_variant,
                encoder=EncoderConfig("adapted", pretrained=str(tower)),
                episodes=NOVEL_SETS,
            )
            for result in run_experiment(config, catalog, split_seed=args.split, progress=False):
                novel[result.episode_set].append(float(np.mean(result.accuracy)))
        novel = {name: float(np.mean(values)) for name, values in novel.items()}
        rows.append({"recipe": recipe.name, "folds": fold_row["mean"], "folds_ci": fold_row["ci"],
                     "validation": float(np.mean(six_class[recipe.name])) / 100 if recipe.name in six_class else None,
                     "novel": novel,
                     "novel_mean": float(np.mean(list(novel.values()))),
                     "steps": [fold["step"] for fold in fold_row["folds"]]})  # fmt: skip
        print(f"  {recipe.name}: read on novel classes", flush=True)
    novel_s = time.perf_counter() - started

    print(f"\nsplit {args.split}, offline encoder, {len(rows)} recipes; fused-masked protonet throughout "
          "(accuracy, %)\n")  # fmt: skip
    by_folds, by_validation = print_fold_report(
        rows,
        "recipe",
        folds,
        args.folds,
        "6 validation classes" + (" (2026-12-03)" if args.split == 0 else ""),
        lambda row: six_classes(row["validation"]),
    )
    print(f"wall time: activation caches {cache_s:.0f} s (once per cut; 0 when warm), {args.folds}-fold comparison of "
          f"{len(rows)} recipes {folds_s:.0f} s ({folds_s / len(rows) / args.folds:.0f} s a fold run; finished runs "
          f"resumed count too), novel report {novel_s:.0f} s")  # fmt: skip
    seconds = {"cache": cache_s, "folds": folds_s, "novel": novel_s}
    write_json(Path(args.out), {"rows": rows, "spearman_folds": by_folds, "spearman_validation": by_validation,
                                "folds": folds, "seconds": seconds})  # fmt: skip


def shipped_validation(summary: Path, split: int) -> dict[str, tuple[float, ...]]:
    """The shipped recipes' chosen-step scores (%) on split `split`'s validation classes, as
    docs/adaptation.md's runs table records them."""
    if not summary.is_file():
        raise SystemExit(f"{summary}: no adaptation runs summary (python benchmarks/update_readme.py writes it)")
    return {run["recipe"]: (100 * run["validation"]["val-5w5s"], 100 * run["validation"]["val-allway-5s"])
            for run in read_json(summary) if run["split_seed"] == split}  # fmt: skip


def six_classes(score: float | None) -> str:
    return "–" if score is None else f"{100 * score:.2f}"


if __name__ == "__main__":
    main()

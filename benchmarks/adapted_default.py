"""Your own categories on an adapted image tower, measured on classes it never trained on. Per split,
the tower adapted on every class but the split's novel ones (`fsl adapt RECIPE --set
classes=selection`; `--all-classes` adapts on all of them for users), its default head calibrated on
the split's selection classes, all seen by it, as a tower adapted on every class would be (`fsl
calibrate`), then the own-categories rule as shipped (the selection classes as known negatives, the
threshold fitted with them) on the split's novel sets, paired with the frozen tower's default on the
same episodes:

- novel-hard-7w5s: 5 classes taught, 2 untaught siblings of taught ones (close neighbours);
- novel-15w5s: its first 5 classes taught, 10 random untaught ones.

Per set: taught photos right and answered and untaught photos answered "unknown" under the shipped
rule; taught photos whose best guess is right (no threshold); untaught photos answered "unknown" where
one threshold answers 85% of taught photos right (the trade-off, free of where the threshold was fitted).

The steps: the recipe's, or `--steps` (the class folds' choice, which `fsl adapt RECIPE --all-classes
--folds 4` prints). `--classes base` reads the README's tower instead (base classes only, its step
chosen and its calibration fitted on the validation classes, which it never saw): whether a calibration
held out from the tower's training keeps the frozen operating point. Offline encoder, real data; split
0's frozen calibration is the shipped one.

`--all-classes-tower DIR` (`fsl adapt RECIPE --all-classes`'s best/) also reads the tower users would
get on the catalog's classes too small for any split (SMALL_CLASSES photos), which it never trained on:
EPISODES episodes, 5 of them taught (5 shots), the others untaught (5 queries each), against the frozen
tower; each calibrated on split 0's selection classes, the catalog's classes as known negatives.

    python benchmarks/adapted_default.py [--data DIR] [--splits 0 1 2 3 4] [--recipe PATH] [--steps N]
                                         [--classes selection|base]
                                         [--all-classes-tower checkpoints/adapt/episodic--classes-all/best]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from hard_open_set import QUANTILES, DefaultHead, Queries, cell, queries_of

from fsl.config import EncoderConfig, load_adapt_config
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.siblings import HARD_TAUGHT
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import load_episode_set
from fsl.harness.adapt import adapt
from fsl.harness.negatives import class_means
from fsl.inference.heads import DEFAULT_HEAD
from fsl.inference.negatives import MARGIN, KnownNegatives
from fsl.paths import ADAPT_DIR
from fsl.store.rows import store_rows

SETS = ("novel-hard-7w5s", "novel-15w5s")
MEASURES = ("taught: right and answered", "untaught: answered unknown", "taught: best guess right",
            "untaught: unknown at 85% taught right")  # fmt: skip
TAUGHT_RIGHT = 0.85
SMALL_CLASSES = (10, 19)  # photos: below a split's 20, enough for 5 shots and 5 queries
EPISODES = 600


def unknown_at(queries: Queries, taught_right: float) -> np.ndarray | None:
    """Per episode, untaught photos answered unknown (negatives answering) at the threshold that turns
    the most of them away while answering `taught_right` of the taught photos right, over all
    episodes; None where no threshold answers that many right (the negatives turn more away)."""
    away = queries.turned_away(MARGIN, "support")
    best = None
    for threshold in np.quantile(queries.score[queries.taught], QUANTILES):
        right, unknown = queries.rates(threshold, away)
        if right.mean() >= taught_right and (best is None or unknown.mean() > best.mean()):
            best = unknown
    return best


def read(setup: DefaultHead, calibration, episode_set, negatives: KnownNegatives) -> list[np.ndarray | None]:
    """An episode set's per-episode figures (MEASURES, in order) for the default head of `setup`."""
    queries = queries_of(setup.head, calibration, setup.image, lambda ids: store_rows(setup.store.ids, ids),
                         episode_set, negatives, exclude_untaught=False)  # fmt: skip
    right, unknown = queries.rule_rates(calibration.answering_with_negatives().threshold_at(HARD_TAUGHT), MARGIN,
                                        "support")  # fmt: skip
    count = queries.episode.max() + 1
    best_right = np.bincount(queries.episode, queries.correct & queries.taught, count) / np.bincount(
        queries.episode, queries.taught, count
    )
    return [right, unknown, best_right, unknown_at(queries, TAUGHT_RIGHT)]


def measures(setup: DefaultHead, split_seed: int) -> dict[str, list[np.ndarray | None]]:
    """Each novel set's figures for the default head of `setup`, the split's selection classes its
    calibration and known negatives."""
    calibration = setup.calibration(split_seed)
    split = ClassSplit.load(setup.catalog, "articleType", split_seed, setup.workspace.episodes_of(split_seed))
    pool = split.classes("select")
    negatives = KnownNegatives(tuple(pool), class_means(setup.image, setup.labels, pool))
    return {
        name: read(setup, calibration, load_episode_set(setup.config, setup.catalog, name,
                                                        setup.workspace.episodes_of(split_seed)), negatives)
        for name in SETS
    }  # fmt: skip


def small_classes(setup: DefaultHead) -> list[np.ndarray | None]:
    """The figures on the catalog's classes too small for a split (none trained on, none a negative):
    every one in each episode, HARD_TAUGHT of them taught; the catalog's split classes as negatives."""
    counts = setup.catalog.labels().value_counts()
    small = sorted(counts.index[(counts >= SMALL_CLASSES[0]) & (counts <= SMALL_CLASSES[1])])
    sampler = EpisodeSampler(setup.store.ids, setup.labels, small, None, 5, 5, seed=0)
    episodes = SimpleNamespace(episodes=sampler.sample(EPISODES), meta={"classes": small})
    split = ClassSplit.load(setup.catalog, "articleType", 0, setup.workspace.episodes_of(0))
    pool = split.classes("all")
    negatives = KnownNegatives(tuple(pool), class_means(setup.image, setup.labels, pool))
    return read(setup, setup.calibration(0), episodes, negatives)


def cells(old: np.ndarray | None, new: np.ndarray | None) -> str:
    """Frozen, adapted and their paired difference; "–" where a side never reached the measure."""
    if old is None or new is None:
        return " | ".join(cell(v) if v is not None else "– (not reached)" for v in (old, new)) + " | –"
    return f"{cell(old)} | {cell(new)} | {cell(new - old)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--splits", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", default="experiments/adapt/episodic.yaml")
    parser.add_argument("--steps", type=int, help="steps of each adaptation (default: the recipe's)")
    parser.add_argument("--classes", choices=["selection", "base"], default="selection",
                        help="what the tower trains on: every class but the novel ones (default), or the base "
                        "classes alone, its step chosen and its calibration fitted on the validation classes it "
                        "never saw")  # fmt: skip
    parser.add_argument("--out", default=str(ADAPT_DIR), help=f"where the adaptations go (default {ADAPT_DIR})")
    parser.add_argument("--all-classes-tower", help="an adaptation on every class (fsl adapt --all-classes)")
    args = parser.parse_args()
    recipe = load_adapt_config(args.recipe)
    recipe = replace(recipe, name=f"{recipe.name}--classes-{args.classes}", classes=args.classes,
                     steps=args.steps or recipe.steps)  # fmt: skip
    frozen = DefaultHead.open(args.data)
    print(f"{DEFAULT_HEAD}, offline encoder: the frozen tower against the tower adapted by {args.recipe} "
          f"({recipe.steps} steps) on its {args.classes} classes; the shipped rule (known negatives, "
          "the threshold fitted with them) on the novel sets, paired on the same episodes (%)\n")  # fmt: skip
    print("| split | set | measure | frozen | adapted | adapted − frozen |")
    print("|---|---|---|---|---|---|")
    split_means = {}
    for split_seed in args.splits:
        started = time.perf_counter()
        adapt(replace(recipe, split_seed=split_seed), frozen.catalog, frozen.workspace, args.out, progress=False)
        pretrained = str(Path(args.out) / recipe.name / "best")  # as a config names it: split 0's layout
        adapted = DefaultHead.open(args.data, EncoderConfig("adapted", pretrained=pretrained), split_seed)
        before, after = measures(frozen, split_seed), measures(adapted, split_seed)
        for name in SETS:
            for measure, old, new in zip(MEASURES, before[name], after[name]):
                print(f"| {split_seed} | {name} | {measure} | {cells(old, new)} |")
                if old is not None and new is not None:  # the summary counts the splits that reached it
                    split_means.setdefault((name, measure), []).append([old.mean(), new.mean(), (new - old).mean()])
        print(f"| {split_seed} | | (adapted, calibrated and read in {time.perf_counter() - started:.0f} s) | | | |",
              flush=True)  # fmt: skip
    if args.all_classes_tower:
        tower = DefaultHead.open(args.data, EncoderConfig("adapted", pretrained=args.all_classes_tower))
        before, after = small_classes(frozen), small_classes(tower)
        print(f"\nThe tower adapted on every class ({args.all_classes_tower}) on the catalog's classes of "
              f"{SMALL_CLASSES[0]}-{SMALL_CLASSES[1]} photos, too small for a split (never trained on): {EPISODES} "
              f"episodes, {HARD_TAUGHT} taught, the rest untaught; split 0's calibrations")  # fmt: skip
        print("| measure | frozen | adapted on every class | adapted − frozen |")
        print("|---|---|---|---|")
        for measure, old, new in zip(MEASURES, before, after):
            print(f"| {measure} | {cells(old, new)} |")
    if len(args.splits) > 1:
        print(f"\nOver the {len(args.splits)} splits: the mean of the split means ± a 95% t interval over them")
        print("| set | measure | splits | frozen | adapted | adapted − frozen (paired per split) |")
        print("|---|---|---|---|---|---|")
        for (name, measure), values in split_means.items():
            columns = [cell(np.array(column)) for column in zip(*values)]
            print(f"| {name} | {measure} | {len(values)} | {' | '.join(columns)} |")


if __name__ == "__main__":
    main()

"""Which towers should learn? The offline pair's image tower, its text tower (MiniLM's last layer) or
both, each adapted episodically on every split's base classes (experiments/adapt/episodic.yaml,
episodic-text.yaml, episodic-both.yaml; the step chosen on that split's validation classes), against
the frozen pair under linear-probe-fused-masked, protonet-fused-masked and linear-probe-image on the
novel classes of five splits: the paired difference per split on the same frozen episodes, combined
over the splits (mean ± t interval of the split means, the form of the README's adaptation table).
Printed beside it: each recipe's chosen steps and validation score, which is all selection saw.
The commands are the ones users run (`fsl adapt`, `fsl eval`); finished adaptations resume as done.
With --shifted, also each shift's paired drop (shifted queries minus their control, per split) of the
adapted head minus the frozen head's, mean ± t interval over the splits (above 0: the adapted tower
loses less; docs/robustness.md's shifts). Offline encoder, real data. Issue 35's targets: an interval
above 0 on all three settings for linear-probe-fused-masked, and no drop change whose interval lies
below 0 (MISSED is printed where one is not met).

    python benchmarks/adapt_towers.py [--data DIR] [--splits 0 1 2 3 4] [--out checkpoints/adapt]
        [--results results/adapt-towers] [--recipes episodic episodic-text episodic-both] [--shifted]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fsl.config import load_config, override, parse_assignment
from fsl.encoders.adapted import adaptation_for_split, load_adaptation
from fsl.episodes.shift import SHIFTED_PAIRS, SUBPOPULATIONS, subpopulation_set_name
from fsl.harness.evaluate import mean_ci
from fsl.harness.results import across_splits, load_results, split_drops

FSL = str(Path(sys.executable).with_name("fsl"))
HEADS = ("linear-probe-fused-masked", "protonet-fused-masked", "linear-probe-image")
SETS = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
TARGET_HEAD = "linear-probe-fused-masked"


def fsl(*args: str) -> None:
    done = subprocess.run([FSL, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fsl {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def pretrained_flag(out: str, recipe: str) -> str:
    return f"encoder.pretrained={Path(out) / recipe / 'best'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--splits", nargs="+", default=["0", "1", "2", "3", "4"])
    parser.add_argument("--out", default="checkpoints/adapt", help="where the adaptations go (and are resumed)")
    parser.add_argument("--results", default="results/adapt-towers", help="where the per-episode CSVs go")
    parser.add_argument("--recipes", nargs="+", default=["episodic", "episodic-text", "episodic-both"])
    parser.add_argument("--shifted", action="store_true", help="also the shifted query sets and their drops")
    args = parser.parse_args()
    data = ["--data", args.data] if args.data else []
    common = ["--splits", *args.splits, "--results", args.results, "--runs", f"{args.results}/runs", *data]
    common += ["--shifted"] if args.shifted else []

    recipes = [f"experiments/adapt/{recipe}.yaml" for recipe in args.recipes]
    fsl("adapt", *recipes, "--split-seeds", *args.splits, "--out", args.out, "--runs", f"{args.results}/runs", *data)
    fsl("eval", *[f"experiments/{head}.yaml" for head in HEADS], *common)
    for recipe in args.recipes:
        configs = [f"experiments/adapted-episodic-{head}.yaml" for head in HEADS]
        fsl("eval", *configs, "--set", pretrained_flag(args.out, recipe), *common)

    print("\nOffline encoder; each recipe's step chosen on its split's validation classes (fused-masked protonet):")
    for recipe in args.recipes:
        chosen = []
        for split in args.splits:
            meta = load_adaptation(adaptation_for_split(Path(args.out) / recipe / "best", int(split)))[1]
            chosen.append(f"split {split}: step {meta['step']}, {100 * meta['validation']['score']:.1f}%")
        print(f"  {recipe}: " + "; ".join(chosen))

    print(f"\nNovel classes, {len(args.splits)} class splits: frozen accuracy (mean ± t interval over splits, %), "
          "then each adapted tower's paired difference to it (points)\n")  # fmt: skip
    print("| head | towers | " + " | ".join(SETS) + " |")
    print("|---|---|" + "---|" * len(SETS))
    below = {recipe: [] for recipe in args.recipes}  # the target head's sets whose interval is not above 0
    for head in HEADS:
        frame = results_of(head, args)
        frame = frame[frame["episode_set"].isin(SETS)]
        table = across_splits(frame, baseline="frozen").set_index(["method", "episode_set"])
        frozen = [f"{100 * table.loc[('frozen', s), 'accuracy']:.1f} ± {100 * table.loc[('frozen', s), 'ci95']:.1f}"
                  for s in SETS]  # fmt: skip
        print(f"| {head} | frozen | " + " | ".join(frozen) + " |")
        for recipe in args.recipes:
            cells = []
            for episode_set in SETS:
                mean, ci = (100 * table.loc[(recipe, episode_set), key] for key in ("difference", "difference_ci95"))
                cells.append(f"{mean:+.1f} ± {ci:.1f}")
                if head == TARGET_HEAD and mean - ci <= 0:
                    below[recipe].append(episode_set)
            print(f"| | {recipe.removeprefix('episodic-') if recipe != 'episodic' else 'image'} | "
                  + " | ".join(cells) + " |")  # fmt: skip
    met = [recipe for recipe, sets in below.items() if not sets]
    short = "".join(f"; {recipe}: not above 0 at {', '.join(sets)}" for recipe, sets in below.items() if sets)
    print(f"\ntarget: every {TARGET_HEAD} interval above 0 for one recipe: "
          + (f"met by {', '.join(met)}" if met else "MISSED") + short)  # fmt: skip
    if args.shifted:
        print_drop_changes(args)


def results_of(head: str, args) -> pd.DataFrame:
    """The per-episode results of the frozen head ("frozen") and of each recipe's adapted twin (its
    recipe's name), on the benchmark's splits."""
    frames = [load_results([Path(args.results) / f"{head}.csv"]).assign(method="frozen")]
    for recipe in args.recipes:
        config = load_config(f"experiments/adapted-episodic-{head}.yaml")
        name = override(config, [parse_assignment(pretrained_flag(args.out, recipe))]).name  # as `--set` names it
        frames.append(load_results([Path(args.results) / f"{name}.csv"]).assign(method=recipe))
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["split"].astype(str).isin(args.splits)]


def print_drop_changes(args) -> None:
    """Each shift's drop under the adapted tower minus the frozen tower's (per split, then over splits);
    the sub-population shifts averaged per split first."""
    subpopulations = {subpopulation_set_name("novel", kind) for kind in SUBPOPULATIONS}
    columns = [shifted for shifted in SHIFTED_PAIRS if shifted not in subpopulations]
    print("\nDrop change under the shifts (adapted drop minus frozen drop, points; above 0: loses less)\n")
    print("| head | towers | " + " | ".join(columns) + " | sub-populations (mean) |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    worse = []
    for head in HEADS:
        frame = results_of(head, args)
        for recipe in args.recipes:
            changes = {}
            for shifted, control in SHIFTED_PAIRS.items():
                ours, theirs = (
                    split_drops(frame, recipe, shifted, control),
                    split_drops(frame, "frozen", shifted, control),
                )
                changes[shifted] = {split: ours[split] - theirs[split] for split in ours if split in theirs}
            per_split = [
                np.mean([changes[name][split] for name in subpopulations])
                for split in changes[next(iter(subpopulations))]
                if all(split in changes[name] for name in subpopulations)
            ]
            cells = []
            for name, values in [*((c, list(changes[c].values())) for c in columns), ("sub-populations", per_split)]:
                if len(values) < 2:
                    cells.append("—")
                    continue
                mean, ci = mean_ci(np.asarray(values))
                cells.append(f"{100 * mean:+.1f} ± {100 * ci:.1f}")
                if mean + ci < 0:
                    worse.append(f"{head}, {recipe}, {name}")
            print(f"| {head} | {recipe} | " + " | ".join(cells) + " |")
    print("\ntarget: no drop change below 0: " + (("; ".join(worse) + "  MISSED") if worse else "met"))


if __name__ == "__main__":
    main()

"""Levers that may hold accuracy when the photos come from another sub-population: each chosen on
selection classes' shifted sets only, the old way and the new, then reported once on the novel ones,
paired, over the class splits.

For one config (default linear-probe-fused-masked) and each lever family, every setting is scored by
its mean sub-population drop (shifted minus control accuracy, per split over the kinds it has, then
over splits) on two selections: the six validation classes (val-{gender,brand,usage,season}-5s, the
old selection), and, where no setting of the family learns from base classes, the selection pool of
base ∪ validation classes (select-*-5s: about 22 classes in a split, so more of them qualify for each
kind; issue 33); a family with a setting that learns from base classes (centring on the base classes'
mean) is chosen on validation classes only. The setting with the smallest drop is chosen. On novel
classes the table shows, per setting, the mean sub-population drop (per split over the four kinds,
then mean ± 95% t interval over the splits), and the paired change against the config's own setting:
the per-split difference of the two drops, combined the same way; then the new choice against the old
one, paired the same way. Families: the fused heads' image weight (fusion_options.image_weight),
feature centring (method_options.centering: none, the episode's support mean, the base classes'
mean), and test-time augmentation (test_time_views: [flip], the mirrored photo's image feature
averaged in, for support and queries). The transductive heads are in docs/robustness.md. Offline
encoder.

    python benchmarks/shift_levers.py [--data DIR] [--config experiments/linear-probe-fused-masked.yaml]
                                      [--splits 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from fsl.config import ExperimentConfig, load_config
from fsl.data.prepared import load_catalog
from fsl.episodes.shift import SUBPOPULATIONS, subpopulation_set_name
from fsl.harness.evaluate import mean_ci
from fsl.harness.experiment import chooses_on_validation, run_experiment
from fsl.paths import DEFAULT_EPISODES_DIR, available_splits, episode_set_path, split_root


def settings(config: ExperimentConfig) -> dict[str, list[tuple[str, ExperimentConfig]]]:
    """Each lever family: (setting in words, the config with it), the config's own setting first."""
    weight = config.fusion_options.get("image_weight", 0.5)

    def fused(value):
        return dataclasses.replace(config, fusion_options={**config.fusion_options, "image_weight": value})

    def centred(value):
        return dataclasses.replace(config, method_options={**config.method_options, "centering": value})

    return {
        "image weight": [(f"image_weight {v}", fused(v)) for v in dict.fromkeys([weight, 0.5, 0.9])],
        "centring": [(f"centering {v}", centred(v)) for v in ("none", "support", "base")],
        "test-time augmentation": [
            ("none", config),
            ("flip", dataclasses.replace(config, test_time_views=("flip",))),
        ],
    }


def drops(config: ExperimentConfig, catalog, split: int, split_name: str) -> dict[str, tuple[float, float]]:
    """kind -> (mean over episodes of shifted minus control accuracy, shifted accuracy), for the
    kinds this split has."""
    root = split_root(DEFAULT_EPISODES_DIR, split)
    names = []
    for kind in SUBPOPULATIONS:
        name = subpopulation_set_name(split_name, kind)
        if episode_set_path(catalog, config.label_column, name, root).is_file():
            names += [name, f"{name}-control"]
    if not names:
        return {}
    results = run_experiment(
        dataclasses.replace(config, episodes=tuple(names)), catalog, progress=False, split_seed=split
    )
    accuracy = {r.episode_set: r.accuracy for r in results}
    return {
        kind: (float((accuracy[name] - accuracy[f"{name}-control"]).mean()), float(accuracy[name].mean()))
        for kind in SUBPOPULATIONS
        if (name := subpopulation_set_name(split_name, kind)) in accuracy
    }


def cell(values: list[float]) -> str:
    mean, ci = mean_ci(np.asarray(values))
    return f"{100 * mean:+.2f} ± {100 * ci:.2f}"


def mean_drop(per_split: list[dict]) -> float:
    """The mean over splits of each split's mean drop over its kinds (splits with none left out)."""
    return float(np.mean([np.mean([d for d, _ in s.values()]) for s in per_split if s]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--config", default="experiments/linear-probe-fused-masked.yaml")
    parser.add_argument("--splits", type=int, nargs="+")
    args = parser.parse_args()
    catalog = load_catalog(args.data)
    config = load_config(args.config)
    splits = args.splits if args.splits is not None else available_splits(catalog)
    rows, changes = [], []
    for family, options in settings(config).items():
        validation, pooled, novel, shifted = {}, {}, {}, {}
        on_pool = not any(chooses_on_validation(variant, split) for _, variant in options for split in splits)
        for setting, variant in options:
            validation[setting] = mean_drop([drops(variant, catalog, split, "val") for split in splits])
            if on_pool:
                pooled[setting] = mean_drop([drops(variant, catalog, split, "select") for split in splits])
            print(f"  {family}, {setting}: scored on the selection sets", flush=True)
        old = max(validation, key=validation.get)  # the smallest drop on the six validation classes
        new = max(pooled, key=pooled.get) if on_pool else old
        for setting, variant in options:  # only now is a novel-class episode read
            per_split = [drops(variant, catalog, split, "novel") for split in splits]
            novel[setting] = [np.mean([d for d, _ in s.values()]) for s in per_split]
            shifted[setting] = [np.mean([a for _, a in s.values()]) for s in per_split]
        print(f"  {family}: read on the novel sets", flush=True)
        own = options[0][0]
        for setting, _ in options:
            change = np.asarray(novel[setting]) - np.asarray(novel[own])
            marks = (
                (" (chosen on validation)" if setting == old else "")
                + (" (chosen on selection classes)" if on_pool and setting == new else "")
                + (" (the config's)" if setting == own else "")
            )
            rows.append(
                (
                    family,
                    setting + marks,
                    f"{100 * validation[setting]:+.2f}",
                    f"{100 * pooled[setting]:+.2f}" if on_pool else "– (learns from base)",
                    cell(novel[setting]),
                    "—" if setting == own else cell(list(change)),
                    f"{100 * np.mean(shifted[setting]):.1f}",
                )
            )
        if new != old:
            paired = cell(list(np.asarray(novel[new]) - np.asarray(novel[old])))
            changes.append(f"{family}: {new} (selection classes) against {old} (validation): {paired} on novel classes")
        else:
            changes.append(f"{family}: both selections chose {old}")
    print(
        f"{config.name}, offline encoder, class splits {', '.join(map(str, splits))}: mean sub-population drop "
        "(points; shifted minus control, per split over the kinds, then over splits ± 95% t interval)\n"
    )
    print(
        "| lever | setting | drop, validation classes | drop, base ∪ validation classes | drop, novel classes "
        "| change vs the config's setting (novel) | accuracy on the shifted novel queries (%) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nthe new choice against the old, paired over the splits (points; above 0: the new one shrinks the drop):")
    for line in changes:
        print(f"  {line}")


if __name__ == "__main__":
    main()

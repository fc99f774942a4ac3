"""Selection with power: the chosen point against the runner-up (the power line), and choices that
learn from base classes made on class folds (fsl/episodes/folds.py).

A choice is only as good as the episodes that made it: each says whether the chosen option beats the
runner-up with a paired interval clear of zero ("separable"), or is only the better mean. Recipes of
`fsl adapt`, meta-trained heads of `fsl train` and alignments of `fsl align` are compared on k class
folds of base ∪ validation classes (compare_on_folds): each candidate is trained k times (fold f on the
other folds' classes; recipes share one activation cache) and scored on fold f's held-out classes in
each of FOLD_SETTINGS; a fold's step is chosen on half of its episodes and its score read on the other
half (folds.CHOOSE, REPORT); the choice is the best mean over every fold's reporting episodes, paired
across candidates, with its power line over those episodes (these classes) and over the folds
(fold_power_line: classes the folds did not hold)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from fsl.config import AdaptConfig, ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.folds import DEFAULT_FOLDS, FOLD_SETTINGS, REPORT, ClassFold, class_folds
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import near_duplicate_index
from fsl.errors import FslError
from fsl.files import write_json
from fsl.harness.adapt import adapt, check_adapt_config
from fsl.harness.align import AlignConfig, align, check_align_config
from fsl.harness.evaluate import mean_ci, paired_difference
from fsl.harness.experiment import check_learned_nothing
from fsl.harness.loop import plain
from fsl.harness.train import train
from fsl.paths import Workspace
from fsl.store.open import open_store


def power_line(names: list[str], accuracies: list[np.ndarray], best: int, unit: str = "points") -> dict:
    """The chosen option against the runner-up (the next best mean), paired over the same episodes:
    {"chosen", "runner_up", "difference", "ci", "episodes", "separable", "verdict"} (power_verdict)."""
    if len(names) < 2:
        return {"chosen": names[best], "verdict": "one option: nothing to compare", "separable": None}
    second = max((i for i in range(len(names)) if i != best), key=lambda i: accuracies[i].mean())
    difference, ci = paired_difference(accuracies[best], accuracies[second])
    line = {"chosen": names[best], "runner_up": names[second], "difference": float(difference), "ci": float(ci),
            "episodes": len(accuracies[best]), "separable": bool(difference - ci > 0)}  # fmt: skip
    return {**line, "verdict": power_verdict(line, unit)}


def power_verdict(line: dict, unit: str = "points") -> str:
    """A power line in words: "separable" (the interval of the difference above zero), "not separable",
    or "reversed" (below zero: possible where the choice was made by another criterion, e.g. a pooled
    AUROC, and these episodes do not back it). Paired over its "episodes", or its "folds"."""
    difference, ci = line["difference"], line["ci"]
    shown = f"{100 * difference:+.2f} ± {100 * ci:.2f}" if unit == "points" else f"{difference:+.3f} ± {ci:.3f}"
    over = f"{line['folds']} folds" if "folds" in line else f"{line['episodes']} episodes"
    said = f"{line['chosen']} - {line['runner_up']}: {shown} {unit}, paired over {over}"
    if difference - ci > 0:
        return f"separable ({said})"
    if difference + ci < 0:
        return f"reversed ({said}): the runner-up is better on these episodes; the choice rests on its criterion"
    return f"not separable ({said}): the choice is the better mean"


def fold_power_line(rows: list[dict], power: dict) -> dict:
    """The power line's difference fold by fold, with its t interval over the folds: a fold's episodes
    share its held classes and its trained towers, so the interval over episodes speaks for these
    classes only, and the one over folds (k - 1 degrees of freedom) for classes the folds did not hold.
    {"chosen", "runner_up", "differences", "difference", "ci", "folds", "separable", "verdict"}."""
    if "runner_up" not in power:
        return {"verdict": power["verdict"], "separable": None}
    by_name = {row["name"]: [fold["score"] for fold in row["folds"]] for row in rows}
    differences = np.subtract(by_name[power["chosen"]], by_name[power["runner_up"]])
    difference, ci = mean_ci(differences)
    line = {"chosen": power["chosen"], "runner_up": power["runner_up"], "differences": differences.tolist(),
            "difference": difference, "ci": ci, "folds": len(differences),
            "separable": bool(difference - ci > 0)}  # fmt: skip
    return {**line, "verdict": f"over the {len(differences)} folds' class sets: {power_verdict(line)}"}


def folds_step(summary: dict) -> int:
    """The step count a run with nothing held out takes from a class-fold comparison: the median of
    the chosen recipe's per-fold chosen steps (0 where the frozen tower won on most folds). A fold
    trains on most of the classes the final run does, with the same step size (one episode)."""
    row = next(r for r in summary["candidates"] if r["name"] == summary["chosen"])
    return int(round(float(np.median([fold["step"] for fold in row["folds"]]))))


def compare_on_folds(
    candidates: list[tuple[str, dict]],
    fold_list: list[ClassFold],
    run_fold: Callable[[int, ClassFold], dict],
    split_seed: int,
    runs: Path,
    results: str | os.PathLike | None,
    scored_on: str,
) -> dict:
    """Candidate i (a name and its config as a record) run on every fold by `run_fold(i, fold)`, which
    trains on the fold's training classes and returns {"accuracies" (per FOLD_SETTINGS set, every
    episode), "best_step", "best", "start" (None where the untrained start is no candidate)} with the
    step chosen on the CHOOSE half; scored here on the REPORT half. The best mean wins (the first on
    ties). Returns (and with `results`, writes as JSON) the folds (and "fold_by", the column they hold
    whole, or None), each candidate's per-fold chosen step and score, its mean ± 95% interval over
    every fold's reporting episodes (and per setting), and the power lines over episodes and over folds. A
    candidate whose fold run fails (a diverging run) is left out of the comparison, named with its
    error under "failed"; the others are still compared."""
    if len({name for name, _ in candidates}) < len(candidates):
        raise FslError("the candidates compared on class folds need distinct names (--set appends the change to one)")
    rows, accuracies, failed = [], [], []
    for i, (name, config) in enumerate(candidates):
        per_fold, episodes = [], {setting: [] for setting in FOLD_SETTINGS}
        try:
            for fold in fold_list:
                summary = run_fold(i, fold)
                reported = {setting: values[REPORT] for setting, values in summary["accuracies"].items()}
                for setting, values in reported.items():
                    episodes[setting].append(values)
                score, chosen_on = float(np.mean([v.mean() for v in reported.values()])), summary["best"]["score"]
                start = None if summary["start"] is None else summary["start"]["score"]
                per_fold.append({"fold": fold.index, "step": summary["best_step"], "score": score,
                                 "chosen_on": chosen_on, "start": start})  # fmt: skip
        except FslError as error:
            failed.append({"name": name, "fold": fold.index, "error": str(error)})
            continue
        accuracies.append(np.concatenate([np.concatenate(values) for values in episodes.values()]))
        mean, ci = mean_ci(accuracies[-1])
        settings = {setting: float(np.concatenate(values).mean()) for setting, values in episodes.items()}
        rows.append({"name": name, "mean": mean, "ci": ci, "settings": settings, "folds": per_fold, "config": config})
    if not rows:
        raise FslError("no candidate finished its class folds: " + "; ".join(f["error"] for f in failed))
    best = max(range(len(rows)), key=lambda i: (rows[i]["mean"], -i))
    power = power_line([r["name"] for r in rows], accuracies, best)
    summary = {
        "split_seed": split_seed,
        "folds": [{**f.record(), "train": list(f.train)} for f in fold_list],
        "fold_by": fold_list[0].by,
        "candidates": rows,
        "chosen": rows[best]["name"],
        "power": power,
        "power_over_folds": fold_power_line(rows, power),
        "failed": failed,
        "scored_on": scored_on,
    }
    writer = SummaryWriter(str(runs))
    for i, row in enumerate(rows):
        writer.add_scalar("folds/mean_accuracy", row["mean"], i)
    writer.add_text("folds/power", summary["power"]["verdict"])
    writer.add_text("folds/power_over_folds", summary["power_over_folds"]["verdict"])
    writer.close()
    if results is not None:
        write_json(Path(results), summary)
    return summary


def split_folds(
    catalog: Catalog, workspace: Workspace, label_column: str, split_seed: int, folds: int, by: str | None = None
) -> list[ClassFold]:
    """Class split `split_seed`'s k class folds (near-duplicate groups kept together; with `by`, a
    coarser catalog column, each of its groups held whole)."""
    split = ClassSplit.load(catalog, label_column, split_seed, workspace.episodes_of(split_seed))
    labels = catalog.labels(label_column).to_numpy()
    groups = near_duplicate_index(catalog, workspace.episodes_of(split_seed))
    return class_folds(split, labels, groups, folds, split_seed, None if by is None else catalog.labels(by))


def shared_value(candidates: list, key: str, what: str):
    """The one value of `key` that every candidate has: the class folds are drawn once for all of them."""
    values = {getattr(candidate, key) for candidate in candidates}
    if len(values) != 1:
        raise FslError(f"{what} compared on class folds share one {key}; got {sorted(values)}")
    return values.pop()


def compare_recipes(
    recipes: list[AdaptConfig],
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    folds: int = DEFAULT_FOLDS,
    out: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    fold_by: str | None = None,
) -> dict:
    """`fsl adapt --folds`: each recipe trained and scored on every class fold of its split, the tower
    scored by the fused-masked protonet (compare_on_folds)."""
    split_seed = shared_value(recipes, "split_seed", "recipes")
    for recipe in recipes:
        check_adapt_config(recipe)
    fold_list = split_folds(catalog, workspace, recipes[0].label_column, split_seed, folds, fold_by)
    return compare_on_folds(
        [(recipe.name, config_record(recipe)) for recipe in recipes],
        fold_list,
        lambda i, fold: adapt(recipes[i], catalog, workspace, out, resume, progress, fold=fold),
        split_seed,
        workspace.runs_of("adapt", split_seed) / "folds",
        results,
        "class folds of base and validation classes (novel classes never read), each tower scored by the "
        "fused-masked protonet; each fold's step chosen on half of its episodes, its score read on the other half",
    )


def compare_heads(
    configs: list[ExperimentConfig],
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    split_seed: int = 0,
    folds: int = DEFAULT_FOLDS,
    results: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    fold_by: str | None = None,
) -> dict:
    """`fsl train --folds`: each config's head meta-trained on every class fold of the split (on the
    fold's training classes) and scored as it answers, on the fold's held classes (compare_on_folds);
    a fold whose chosen step is 0 says the untrained head was better there."""
    label_column = shared_value(configs, "label_column", "configs")
    for config in configs:  # every candidate checked before the first trains
        if config.train is None:
            raise FslError(f"experiment {config.name!r} has no train: section, so nothing to compare on class folds")
        check_learned_nothing(open_store(catalog, config.encoder, workspace.features), "class folds")
    fold_list = split_folds(catalog, workspace, label_column, split_seed, folds, fold_by)
    return compare_on_folds(
        [(config.name, config_record(config)) for config in configs],
        fold_list,
        lambda i, fold: train(configs[i], catalog, workspace, split_seed, resume, progress, fold=fold),
        split_seed,
        workspace.runs_of("train", split_seed) / "folds",
        results,
        "class folds of base and validation classes (novel classes never read), each head scored as it answers; "
        "each fold's step chosen on half of its episodes, its score read on the other half",
    )


def compare_alignments(
    configs: list[AlignConfig],
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    folds: int = DEFAULT_FOLDS,
    out: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    fold_by: str | None = None,
) -> dict:
    """`fsl align --folds`: each alignment trained on every class fold of its split (on the fold's
    training classes' products and prompts) and scored by zero-shot photo accuracy from the held
    classes' names (compare_on_folds)."""
    split_seed = shared_value(configs, "split_seed", "alignments")
    label_column = shared_value(configs, "label_column", "alignments")
    for config in configs:  # every candidate checked before the first trains
        check_align_config(config)
    fold_list = split_folds(catalog, workspace, label_column, split_seed, folds, fold_by)
    return compare_on_folds(
        [(config.name, config_record(config)) for config in configs],
        fold_list,
        lambda i, fold: align(configs[i], catalog, workspace, out, resume, progress, fold=fold),
        split_seed,
        workspace.runs_of("align", split_seed) / "folds",
        results,
        "class folds of base and validation classes (novel classes never read), each space scored by zero-shot "
        "photo accuracy from the held classes' names; each fold's step chosen on half of its episodes, its score "
        "read on the other half",
    )


def config_record(config) -> dict:
    """A config dataclass as JSON takes it (tuples as lists)."""
    return plain(dataclasses.asdict(config))

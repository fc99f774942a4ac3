"""`fsl sweep`: a grid over config values, scored on validation-class episodes only; the best point
is written as a config of its own, and only then evaluated on the novel (test) sets. Choosing on
novel episodes is the leakage users of Tip-Adapter and CLIP's linear-probe code reported: the
selection refuses any episode set that is not drawn from the validation classes."""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsl.config import ExperimentConfig, override, read_yaml, to_yaml
from fsl.data.catalog import Catalog
from fsl.errors import FslError, shown
from fsl.files import write_bytes
from fsl.harness.evaluate import EvalResult, mean_ci, paired_difference, percent
from fsl.harness.experiment import check_runnable, check_validation_only, run_experiment
from fsl.harness.train import train
from fsl.paths import DEFAULT_CHECKPOINTS, DEFAULT_EPISODES_DIR, FEATURES_ROOT


def parse_grid(texts: list[str]) -> list[tuple[str, list[Any]]]:
    """`--grid method_options.C=0.1,1,10` -> [("method_options.C", [0.1, 1, 10])]; values typed as YAML."""
    grid = []
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise FslError(f"--grid {shown(text)}: expected KEY=V1,V2,..., e.g. method_options.C=0.1,1,10")
        values = [read_yaml(v, f"--grid {shown(text)}") for v in raw.split(",")]
        grid.append((key.strip(), values))
    if not grid:
        raise FslError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


@dataclass
class SweepResult:
    chosen: ExperimentConfig
    scores: list[tuple[dict, float, float]]  # (grid point, mean validation accuracy, 95% CI)
    header: str  # what was tried and what chose: the comment of the written config
    verdict: str = ""  # the chosen point against the runner-up, paired on the same validation episodes


def sweep(
    config: ExperimentConfig,
    grid: list[tuple[str, list[Any]]],
    catalog: Catalog,
    on: tuple[str, ...] = ("val-5w5s",),
    episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR,
    store_root: str | os.PathLike | None = None,
    checkpoints_root: str | os.PathLike = DEFAULT_CHECKPOINTS,
    runs_root: str | os.PathLike = "runs/sweep",
    progress: bool = True,
) -> SweepResult:
    """Score every grid point on the `on` (validation) sets; the best mean accuracy wins (first on ties).

    A config with a train: section is trained at every point (its checkpoint chosen on its own
    validation episodes) before it is scored."""

    store_root = store_root or FEATURES_ROOT
    points = [dict(zip([k for k, _ in grid], values)) for values in itertools.product(*[v for _, v in grid])]
    candidates = [override(config, list(point.items()), "--grid") for point in points]
    for candidate in candidates:  # every point checked before any work
        check_runnable(candidate)
    check_validation_only(config, catalog, on, episodes_root, "fsl sweep", "--on val-5w5s")

    scores, accuracies = [], []
    for point, candidate in zip(points, candidates):
        if candidate.train is not None:
            train(candidate, catalog, episodes_root, store_root, checkpoints_root, runs_root, progress=progress)
        results: list[EvalResult] = run_experiment(
            dataclasses.replace(candidate, episodes=on), catalog, episodes_root, store_root, progress, checkpoints_root
        )
        accuracies.append(np.concatenate([r.accuracy for r in results]))  # pooled over the `on` sets
        mean, ci = mean_ci(accuracies[-1])
        scores.append((point, mean, ci))
        if progress:
            print(f"  {point}: {', '.join(on)} {percent(mean, ci)}")
    best = max(range(len(points)), key=lambda i: (scores[i][1], -i))
    lines = [f"chosen by `fsl sweep` on validation classes only ({', '.join(on)}), mean accuracy:"]
    lines += [
        f"  {'->' if i == best else '  '} {point}: {percent(mean, ci)}" for i, (point, mean, ci) in enumerate(scores)
    ]
    verdict = separability(points, accuracies, best)
    lines += [verdict, f"swept from {config.name}; novel-class sets were read only after this choice"]
    return SweepResult(candidates[best], scores, "\n".join(lines), verdict)


def separability(points: list[dict], accuracies: list[np.ndarray], best: int) -> str:
    """The chosen point against the runner-up, paired on the same validation episodes: whether the
    choice is a clearly better setting or only the better mean of two the episodes cannot tell apart."""
    if len(points) < 2:
        return "one grid point: nothing to compare"
    second = max((i for i in range(len(points)) if i != best), key=lambda i: accuracies[i].mean())
    difference, ci = paired_difference(accuracies[best], accuracies[second])
    said = f"{points[best]} - {points[second]}: {100 * difference:+.2f} ± {100 * ci:.2f} points, paired"
    if difference - ci > 0:
        return f"the chosen point beats the runner-up on validation ({said})"
    return (
        f"the best points are not separable on validation ({said}): the choice is the better mean, "
        "not a clearly better setting"
    )


def write_chosen(result: SweepResult, path: str | os.PathLike) -> Path:

    return write_bytes(path, to_yaml(result.chosen, result.header).encode())

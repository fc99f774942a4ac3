"""`fsl sweep`: choose config values on selection episodes only, as an Optuna study, then test once.

A grid (`--grid`, Optuna's GridSampler) or ranges searched by TPE (`--space`, `--trials`). The study
lives in SQLite beside the results by default; any database Optuna takes (`--storage`) lets several
machines run one study together, each started with the same command. A trial that claims a point
another live trial holds (or one already scored) is not run; a worker killed mid-trial is noticed by
Optuna's heartbeat and its point run again, so a killed sweep resumes where it stopped.

Selection reads validation-class episodes, or the selection pool (base ∪ validation classes) for
configs that learn nothing from base classes (experiment.check_validation_only). Choosing on novel
episodes is the leakage users of Tip-Adapter and CLIP's linear-probe code reported: novel sets are
read only after the study ends, for the chosen point only."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from torch.utils.tensorboard import SummaryWriter

from fsl.config import ExperimentConfig, override, read_yaml, to_yaml
from fsl.data.catalog import Catalog
from fsl.errors import FslError, shown
from fsl.files import write_bytes
from fsl.harness.evaluate import EvalResult, mean_ci, percent
from fsl.harness.experiment import check_runnable, check_validation_only, run_experiment
from fsl.harness.select import power_line
from fsl.harness.train import train
from fsl.paths import Workspace

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30  # a running trial says it is alive this often; silent for GRACE_S, it is failed and run again
GRACE_S = 90
SKIPPED = "skipped"  # user attr of a trial that was not run: another trial holds its point
STARTED = "started"  # user attr: the number of the trial whose objective began (a retried trial copies attrs)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines


# The search space ---------------------------------------------------------------------------------


def parse_grid(texts: list[str]) -> list[tuple[str, list[Any]]]:
    """`--grid method_options.C=0.1,1,10` -> [("method_options.C", [0.1, 1, 10])]; values typed as YAML."""
    grid = []
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise FslError(f"--grid {shown(text)}: expected KEY=V1,V2,..., e.g. method_options.C=0.1,1,10")
        values = [read_yaml(v, f"--grid {shown(text)}") for v in raw.split(",")]
        grid.append((key.strip(), values))
    return grid


def parse_space(texts: list[str]) -> dict[str, Any]:
    """`--space method_options.C=log:1e-3:1e2` -> {"method_options.C": FloatDistribution(1e-3, 1e2, log=True)}.

    KIND:LOW:HIGH with KIND one of float, log (a float on a log scale), int, or choice:V1,V2,..."""
    space = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        kind, _, rest = raw.partition(":")
        where = f"--space {shown(text)}"
        if not sep or not key.strip() or not rest:
            raise FslError(f"{where}: expected KEY=KIND:LOW:HIGH (float, log or int) or KEY=choice:V1,V2,...")
        if kind == "choice":
            space[key.strip()] = CategoricalDistribution([read_yaml(v, where) for v in rest.split(",")])
            continue
        bounds = rest.split(":")
        try:
            low, high = (int(b) if kind == "int" else float(b) for b in bounds)
        except ValueError:
            raise FslError(f"{where}: expected {kind}:LOW:HIGH with two numbers") from None
        if kind not in ("float", "log", "int") or not low < high or (kind == "log" and low <= 0):
            raise FslError(f"{where}: KIND is float, log (LOW > 0) or int, and LOW < HIGH")
        space[key.strip()] = (
            IntDistribution(low, high) if kind == "int" else FloatDistribution(low, high, log=kind == "log")
        )
    return space


# Results ---------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    chosen: ExperimentConfig
    scores: list[tuple[dict, float, float]]  # (point, mean selection accuracy, 95% CI), by trial number
    header: str  # what was tried and what chose: the comment of the written config
    verdict: str = ""  # the chosen point against the runner-up, paired on the same selection episodes
    study: str = ""  # the Optuna study's name and storage


def separability(points: list[dict], accuracies: list[np.ndarray], best: int) -> str:
    """The power line of a sweep: the chosen point against the runner-up, paired on the same selection
    episodes (select.power_line)."""
    return power_line([str(point) for point in points], accuracies, best)["verdict"]


def write_chosen(result: SweepResult, path: str | os.PathLike) -> Path:
    return write_bytes(path, to_yaml(result.chosen, result.header).encode())


# The study -------------------------------------------------------------------------------------


def default_storage(workspace: Workspace) -> str:
    """SQLite beside the results: one embedded file, nothing to run."""
    path = workspace.results / "sweeps" / "studies.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_study(
    storage: str,
    name: str,
    identity: dict,
    sampler: optuna.samplers.BaseSampler,
    heartbeat_s: int,
    grace_s: int,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """The study `name` in `storage`, created on first use; one started for another config, space or
    selection sets is refused (a study's trials are only comparable when they answer the same question)."""
    for attempt in range(3):  # two workers creating one new SQLite file race to write its schema: try again
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5: it is what resumes
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    storage,
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                    engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None,
                )
            study = optuna.create_study(storage=rdb, study_name=name, sampler=sampler, pruner=pruner,
                                        direction="maximize", load_if_exists=True)  # fmt: skip
            break
        except Exception as error:  # noqa: BLE001 - sqlalchemy, a missing driver, a refused connection: one line
            if attempt == 2:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise FslError(
                    f"storage {shown(storage)}: cannot open it as an Optuna storage ({first})", "storage"
                ) from None
            time.sleep(0.5 + attempt)
    started_for = study.user_attrs.get("identity")
    if started_for is None:
        study.set_user_attr("identity", identity)
    elif started_for != identity:
        differs = ", ".join(k for k in identity if started_for.get(k) != identity[k])
        raise FslError(
            f"study {name!r} in {storage} was started for another question (its {differs} differ: "
            f"{started_for.get('config')} on {started_for.get('on')}); name another --study, or run its own command"
        )
    return study


def point_of(params: dict) -> tuple:
    """A point as a key: trials with equal parameters hold the same point."""
    return tuple(sorted((key, repr(value)) for key, value in params.items()))


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, less those that were not run (SKIPPED)."""
    return [t for t in study.get_trials(deepcopy=False) if SKIPPED not in t.user_attrs]


def claims_its_point(study: optuna.Study, trial: optuna.Trial, n_trials: int | None) -> bool:
    """Whether this trial may run: on a grid (`n_trials` None), no other trial has scored its point
    and it is the lowest-numbered live one holding it; by TPE, it is among the first live trials
    that fit in the trials left. Trial numbers are handed out by the storage atomically, so two
    workers never both run one point, and a trial a dead worker held (failed by the heartbeat) frees
    its point."""
    trials = counted(study)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    live = [t for t in trials if t.state == TrialState.RUNNING]
    if n_trials is None:
        mine = point_of(trial.params)
        if any(point_of(t.params) == mine for t in done):
            return False
        return min(t.number for t in live if point_of(t.params) == mine) == trial.number
    return trial.number in sorted(t.number for t in live)[: max(0, n_trials - len(done))]


def fail_unstarted_trials(study: optuna.Study, grace_s: int) -> None:
    """Fail the running trials whose objective has not begun `grace_s` seconds after they were created,
    and queue their point again. Optuna's heartbeat never fails a trial that has no heartbeat yet (optuna
    PR #4055 tests that on purpose), so a worker killed between creating a trial and its first beat leaves
    a trial that every other worker would wait on forever. Starts are the creating machine's clock: the grace
    covers small skews between machines."""
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        began = trial.user_attrs.get(STARTED) == trial.number
        if began or now - trial.datetime_start < datetime.timedelta(seconds=grace_s):
            continue
        try:  # through the storage, as optuna.storages.fail_stale_trials does (study.tell runs the sampler's hooks)
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker finished or failed it first
        pointless = isinstance(study.sampler, optuna.samplers.GridSampler) and "grid_id" not in trial.system_attrs
        if not pointless:  # a grid trial holds its point from its creation: run that point again
            RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study._storage.get_trial(trial._trial_id))


def still_to_score(study: optuna.Study, n_points: int, n_trials: int | None) -> tuple[int, int]:
    """(the grid's `n_points` not yet scored, or the `n_trials` of TPE not yet run; trials running now)."""
    trials = counted(study)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    left = n_points - len({point_of(t.params) for t in done}) if n_trials is None else n_trials - len(done)
    return max(0, left), running


def sweep(
    config: ExperimentConfig,
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    grid: list[tuple[str, list[Any]]] | None = None,
    space: dict[str, Any] | None = None,
    trials: int | None = None,
    on: tuple[str, ...] = ("val-5w5s",),
    progress: bool = True,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
) -> SweepResult:
    """Score points of the config on the `on` (selection) sets in an Optuna study; the best mean
    accuracy wins (the lowest trial number on ties). A grid alone runs every point once; `space`
    with `trials` runs that many TPE trials (grid keys join the space as choices). A config with a
    train: section is trained at every point (its checkpoint chosen on its own validation episodes). The
    study lives in the workspace's results (results/sweeps/studies.db) unless `storage` names another."""
    grid, space = list(grid or []), dict(space or {})
    if not grid and not space:
        raise FslError(
            "grid: a sweep needs a grid of values (KEY=V1,V2,...) or a space (KEY=KIND:LOW:HIGH, with trials)", "grid"
        )
    if space and trials is None:
        raise FslError("trials: a search space needs how many points TPE tries (a whole number >= 1)", "trials")
    if trials is not None and (type(trials) is not int or trials < 1):
        raise FslError(f"trials must be a whole number >= 1, got {shown(trials)}", "trials")
    keys = [key for key, _ in grid] + list(space)
    if len(set(keys)) < len(keys):
        raise FslError(
            f"grid: a key is in the grid or the space twice: {sorted(k for k in keys if keys.count(k) > 1)}", "grid"
        )
    for key, values in grid:  # every grid value and both ends of every range checked before any work
        for value in values:
            check_runnable(override(config, [(key, value)], "grid"))
    for key, distribution in space.items():
        ends = distribution.choices if isinstance(distribution, CategoricalDistribution) else (
            distribution.low, distribution.high)  # fmt: skip
        for value in ends:
            check_runnable(override(config, [(key, value)], "space"))
    check_validation_only(config, catalog, on, workspace.episodes, "fsl sweep", "--on val-5w5s (or select-5w5s)")

    n_points = math.prod(len(values) for _, values in grid)
    if trials is None:  # a grid: every point once
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(dict(grid), seed=seed)
    else:
        space |= {key: CategoricalDistribution(values) for key, values in grid}
        sampler = optuna.samplers.TPESampler(seed=seed)
    identity = {
        "config": hashlib.sha256(to_yaml(config).encode()).hexdigest()[:16],
        "space": sorted(f"{key}={values}" for key, values in grid) + sorted(f"{k}={d!r}" for k, d in space.items()),
        "on": list(on),
        "trials": trials,
    }
    # a trained config reports each validation point; the median of earlier trials there stops a hopeless one
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if config.train is not None else optuna.pruners.NopPruner()
    storage = storage or default_storage(workspace)
    name = study_name or config.name
    study = open_study(storage, name, identity, sampler, heartbeat_s, grace_s, pruner)
    writer = SummaryWriter(str(workspace.runs_of("sweep") / name))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(STARTED, trial.number)  # its heartbeat runs from here: see fail_unstarted_trials
        values = {key: trial.suggest_categorical(key, vals) for key, vals in grid} if trials is None else {
            key: suggest(trial, key, distribution) for key, distribution in space.items()}  # fmt: skip
        if not claims_its_point(study, trial, trials):
            trial.set_user_attr(SKIPPED, "another trial holds or has scored this point")
            raise optuna.TrialPruned()
        candidate = override(config, list(values.items()), "grid" if trials is None else "space")
        if candidate.train is not None:  # each validation point is an intermediate value: the median pruner reads it

            def report(step: int, accuracy: float) -> None:
                trial.report(accuracy, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"step {step}: {100 * accuracy:.1f}%, below the median of earlier trials")

            train(candidate, catalog, workspace, progress=progress, on_validation=report)
        results: list[EvalResult] = run_experiment(
            dataclasses.replace(candidate, episodes=on), catalog, workspace, progress=progress
        )
        accuracy = np.concatenate([r.accuracy for r in results])  # pooled over the `on` sets
        trial.set_user_attr("accuracy", accuracy.tolist())
        mean, ci = mean_ci(accuracy)
        writer.add_scalar("sweep/selection_accuracy", mean, trial.number)
        if progress:
            logger.info(f"trial {trial.number} {values}: {', '.join(on)} {percent(mean, ci)}")
        return mean

    def stop_when_done(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if still_to_score(study, n_points, trials)[0] == 0:
            study.stop()

    while True:
        left, running = still_to_score(study, n_points, trials)
        if left > running:
            study.optimize(objective, n_trials=left - running, callbacks=[stop_when_done])
        elif running:  # another worker's trials, or a dead worker's: wait until they end or the heartbeat fails them
            time.sleep(min(heartbeat_s, 5))
            with warnings.catch_warnings():  # both "experimental" in Optuna 5; they are what resumes a killed sweep
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # their points queued again (the retry callback)
                fail_unstarted_trials(study, grace_s)
        else:
            break
    return study_result(study, config, grid, on, f"{name} in {storage}", writer)


def suggest(trial: optuna.Trial, key: str, distribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high)
    return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)


def study_result(
    study: optuna.Study, config: ExperimentConfig, grid, on: tuple[str, ...], where: str, writer: SummaryWriter
) -> SweepResult:
    """The chosen point of a finished study, with every scored point and the power line."""
    scored = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "accuracy" in t.user_attrs),
        key=lambda t: t.number,
    )
    unique = list({point_of(t.params): t for t in reversed(scored)}.values())[::-1]  # a retried point: its first score
    if not unique:
        raise FslError(f"study {where} has no scored trial")
    points = [dict(t.params) for t in unique]
    accuracies = [np.asarray(t.user_attrs["accuracy"]) for t in unique]
    scores = [(point, *mean_ci(acc)) for point, acc in zip(points, accuracies)]
    best = max(range(len(points)), key=lambda i: (scores[i][1], -i))
    chosen = override(config, list(points[best].items()), "grid")  # a point that ran: its values were checked
    lines = [f"chosen by `fsl sweep` on selection episodes only ({', '.join(on)}), mean accuracy:"]
    lines += [
        f"  {'->' if i == best else '  '} {point}: {percent(mean, ci)}" for i, (point, mean, ci) in enumerate(scores)
    ]
    verdict = separability(points, accuracies, best)
    lines += [
        verdict,
        f"swept from {config.name} (Optuna study {where}); novel-class sets were read only after this choice",
    ]
    writer.add_text("sweep/power", verdict)
    writer.close()
    return SweepResult(chosen, scores, "\n".join(lines), verdict, where)

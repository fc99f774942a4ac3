"""`fsl eval`, `fsl train`, `fsl sweep`, `fsl compare`, `fsl analyse`: experiments on episode sets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fsl.cli.common import (
    add_experiment_options,
    add_folds_options,
    check_folds_options,
    folds_results,
    non_negative_int,
    positive_int,
    workspace_from,
)
from fsl.errors import FslError
from fsl.paths import COMPARE_PLOT, RESULTS_DIR

if TYPE_CHECKING:  # the CLI imports its heavy modules only in the command that needs them
    from fsl.config import ExperimentConfig


def _print_tables(results) -> None:
    from fsl.harness.results import across_splits, format_table, results_frame, summary_table

    frame = results_frame(results)
    print(format_table(summary_table(frame)))
    if frame["split"].nunique() > 1:
        print("\nacross class splits: the mean of the split means, 95% t interval over splits:")
        print(format_table(across_splits(frame)))


def _save(results, config, args, chosen_on: str = "as written (no selection)", catalog=None) -> None:
    """One config's results file (with the earlier sets it keeps), its resolved config, TensorBoard:
    written as soon as that config has run, so a later failure loses nothing of it."""
    import pandas as pd

    from fsl.config import to_yaml
    from fsl.files import write_bytes, write_csv
    from fsl.harness.results import earlier_results, log_to_tensorboard, results_frame

    workspace = workspace_from(args)
    path = workspace.results / f"{config.name}.csv"
    resolved = to_yaml(config, f"chosen on: {chosen_on}").encode()
    ran = results_frame(results)
    current = None
    if catalog is not None:
        from fsl.harness.experiment import episode_set_digest

        current = lambda split, name: episode_set_digest(config, catalog, name, split, workspace)  # noqa: E731
    kept = earlier_results(path, resolved, ran, current)
    write_csv(pd.concat([kept, ran], ignore_index=True), path)
    write_bytes(path.with_suffix(".config.yaml"), resolved)
    for result in results:
        log_to_tensorboard(result, workspace.runs_of("eval"))
    said = (
        f"; kept {kept.groupby(['split', 'episode_set']).ngroups} earlier set(s) of the same config"
        if len(kept)
        else ""
    )
    print(f"per-episode accuracy: {path} (its resolved config beside it{said})")


def _configs(args) -> list:
    """Every config of the command line with its --set overrides, all checked before any work."""
    from fsl.config import load_config, override, parse_assignment
    from fsl.harness.experiment import check_runnable

    assignments = [parse_assignment(text, "--set") for text in args.set or []]
    configs = [override(load_config(path), assignments, "--set") for path in args.configs]
    for config in configs:
        check_runnable(config)
    return configs


def _one_config(args) -> ExperimentConfig:
    """Commands that work on one experiment (sweep, analyse) take exactly one config."""
    if len(args.configs) != 1:
        raise FslError(f"fsl {args.command} takes one config, got {len(args.configs)}: {' '.join(args.configs)}")
    return _configs(args)[0]


def _announce(command: str, configs: list, catalog, args) -> dict[str, list[int]]:
    """The class splits each config will run on, said before any of them starts (with how long the
    last run took), so nobody waits six minutes for five splits they did not know about."""
    from fsl.harness.experiment import splits_for
    from fsl.harness.timings import plan_line

    plan = {
        config.name: list(args.splits) if args.splits is not None else splits_for(config, catalog, workspace_from(args))
        for config in configs
    }
    print(
        f"fsl {command}: {len(configs)} config(s), each on every class split drawn unless --splits says:",
        file=sys.stderr,
    )
    for config in configs:
        print(f"  {plan_line(command, config.name, plan[config.name])}", file=sys.stderr)
    if any(len(splits) > 1 for splits in plan.values()) and args.splits is None:
        print(f"  (`fsl {command} ... --splits 0` runs split 0 alone)", file=sys.stderr)
    return plan


def cmd_eval(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.harness.experiment import episode_sets_to_run, run_experiment
    from fsl.harness.timings import record_run

    configs = _configs(args)
    catalog = load_catalog(args.data)
    workspace = workspace_from(args)
    plan = _announce("eval", configs, catalog, args)
    for config in configs:  # a config with no episode set on a split is an error before any work
        for split in plan[config.name]:
            episode_sets_to_run(config, catalog, workspace, split)
    results = []
    for config in configs:
        started = time.perf_counter()
        splits = plan[config.name]
        ran = []
        for split in splits:
            ran += run_experiment(config, catalog, workspace, split, shifted=args.shifted)
        results += ran
        _save(ran, config, args, catalog=catalog)
        record_run("eval", config.name, splits, time.perf_counter() - started)
        print(
            f"{config.name}: {len(ran)} episode set(s) over {len(splits)} class split(s) in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    _print_tables(results)


def cmd_train(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.episodes.folds import fold_column
    from fsl.harness.experiment import check_validation_only
    from fsl.harness.select import compare_heads
    from fsl.harness.timings import record_run
    from fsl.harness.train import train

    configs = _configs(args)
    check_folds_options(args, "config")
    catalog = load_catalog(args.data)
    workspace = workspace_from(args)
    plan = _announce("train", configs, catalog, args)
    for config in configs:  # every run's selection set checked before the first one trains
        for split in plan[config.name]:
            check_validation_only(
                config,
                catalog,
                (config.train.val_episodes,) if config.train else (),
                workspace.episodes_of(split),
                "fsl train",
                "train.val_episodes=val-5w5s",
            )
    failed = []
    if args.folds is not None:  # the head is chosen on class folds, then trained on every base class
        splits = sorted({split for splits in plan.values() for split in splits})
        fold_by = fold_column(args.fold_by, configs[0].label_column)
        chosen: dict[int, str] = {}
        for split in splits:
            out = folds_results(workspace, "train", split, fold_by)
            summary = compare_heads(
                configs, catalog, workspace, split, args.folds, out, not args.restart, fold_by=fold_by
            )
            print_fold_comparison(summary, split, args.folds, out, "each head as it answers")
            chosen[split] = summary["chosen"]
            failed += [f"{failure['name']} (split {split}, fold {failure['fold']})" for failure in summary["failed"]]
        if args.no_final:
            configs, plan = [], {}
        else:
            plan = {name: [split for split in splits if chosen[split] == name] for name in plan}
            configs = [config for config in configs if plan[config.name]]
    for config in configs:  # one config's failure does not stop the others
        started, splits = time.perf_counter(), plan[config.name]
        for split in splits:  # one checkpoint per split, selected on that split's validation classes
            checkpoints = workspace.checkpoints_of(split)
            try:
                summary = train(config, catalog, workspace, split, resume=not args.restart)
            except FslError as error:
                print(f"fsl train: error: {error}", file=sys.stderr)
                failed.append(f"{config.name} (split {split})")
                continue
            print(
                f"{config.name}, split {split}: best validation accuracy {100 * summary['best_val_accuracy']:.1f}% "
                f"at step {summary['best_step']} of {summary['steps']}; checkpoint {checkpoints / config.name / 'best'}"
            )
        if not any(f.startswith(f"{config.name} (") for f in failed):
            record_run("train", config.name, splits, time.perf_counter() - started)
    if failed:
        raise FslError(f"{len(failed)} training run(s) did not finish: {', '.join(failed)}")


def print_fold_comparison(summary: dict, split: int, folds: int, out, scored: str) -> None:
    """A class-fold comparison (fsl adapt --folds, fsl train --folds) as a table and its power lines."""
    whole = "" if summary["fold_by"] is None else f", each holding whole {summary['fold_by']} groups"
    print(
        f"split {split}, {folds} class folds of base and validation classes{whole} ({scored}, per-episode accuracy "
        "on each fold's held-out classes; steps chosen on half of the episodes, scores read on the other half):"
    )
    for row in summary["candidates"]:
        steps = ", ".join(str(f["step"]) for f in row["folds"])
        settings = ", ".join(f"{setting} {100 * value:.1f}" for setting, value in row["settings"].items())
        mark = "  <- chosen" if row["name"] == summary["chosen"] else ""
        score = f"{100 * row['mean']:.1f} ± {100 * row['ci']:.1f}%"
        print(f"  {row['name']}: {score} ({settings}; chosen steps {steps}){mark}")
    for failure in summary["failed"]:
        print(f"  {failure['name']}: left out, its fold {failure['fold']} run did not finish: {failure['error']}")
    print(f"  {summary['power']['verdict']}")
    print(f"  {summary['power_over_folds']['verdict']}; written to {out}")


def cmd_sweep(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.harness.evaluate import percent
    from fsl.harness.experiment import run_experiment
    from fsl.harness.sweep import parse_grid, parse_space, sweep, write_chosen

    config = _one_config(args)
    grid, space = parse_grid(args.grid or []), parse_space(args.space or [])
    catalog = load_catalog(args.data)
    print(f"sweeping {config.name} on {', '.join(args.on)} (selection episodes):")
    workspace = workspace_from(args)
    result = sweep(
        config,
        catalog,
        workspace,
        grid,
        space,
        args.trials,
        tuple(args.on),
        storage=args.storage,
        study_name=args.study,
    )
    chosen = write_chosen(result, workspace.results / "sweeps" / f"{config.name}.yaml")
    _, mean, ci = max(result.scores, key=lambda score: score[1])  # the first best, as the sweep chose
    print(f"chosen: {result.chosen.name} ({', '.join(args.on)}: {percent(mean, ci)}); {result.verdict}")
    print(f"config written to {chosen} (study {result.study})")
    if args.no_test:
        return
    print(f"now, and only now, on the test sets: {', '.join(result.chosen.episodes)}")
    results = run_experiment(result.chosen, catalog, workspace)
    chosen_on = f"selection episodes ({', '.join(args.on)}), by fsl sweep (study {result.study}); {result.verdict}"
    _save(results, result.chosen, args, chosen_on=chosen_on, catalog=catalog)
    _print_tables(results)


def cmd_compare(args) -> None:
    from fsl.files import read_csv
    from fsl.harness.results import (
        across_splits,
        format_table,
        load_results,
        paired_table,
        plot_paired,
        plot_summary,
        summary_table,
    )

    if all(Path(path).is_file() and "class" in read_csv(path, nrows=0).columns for path in args.results):
        from fsl.harness.analysis import per_class_difference

        print(format_table(per_class_difference([read_csv(path) for path in args.results])))
        return
    frame = load_results(args.results)
    summary = summary_table(frame)
    print(format_table(summary))
    paired = paired_table(frame)
    if frame["split"].nunique() > 1:  # one bar per config: the mean over splits ± its t interval
        print("\nacross class splits: the mean of the split means, 95% t interval over splits:")
        combined = across_splits(frame)
        print(format_table(combined))
        print(f"plot: {plot_summary(combined, args.plot, interval='over class splits')}")
    else:
        print(f"plot: {plot_summary(summary, args.plot)}")
    if len(paired):
        print("\npaired differences on the same episodes (a - b):")
        print(format_table(paired))
        print(f"paired plot: {plot_paired(paired, Path(args.plot).with_name(Path(args.plot).stem + '-paired.png'))}")


def cmd_analyse(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.harness.analysis import analyse, projector
    from fsl.store.open import open_store

    config = _one_config(args)
    catalog = load_catalog(args.data)
    workspace = workspace_from(args)
    for path in analyse(config, catalog, args.episodes, workspace):
        print(f"wrote {path}")
    if args.projector:
        logdir = projector(
            open_store(catalog, config.encoder, workspace.features),
            catalog,
            workspace.runs_of("analysis") / "projector",
            args.projector,
        )
        print(f"projector: tensorboard --logdir {logdir} --host 127.0.0.1 (PROJECTOR tab)")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Register the experiments commands on `fsl`'s sub-parsers."""
    evaluate = commands.add_parser(
        "eval",
        help="run experiment configs on the frozen episodes",
        description="Evaluate each experiment (YAML) on its frozen episode sets: "
        "mean accuracy ± 95% CI, per-episode CSV, TensorBoard.",
    )
    add_experiment_options(evaluate)
    evaluate.add_argument("--results", default=str(RESULTS_DIR), help="per-episode CSVs go here (default results/)")
    evaluate.add_argument(
        "--splits",
        type=non_negative_int,
        nargs="+",
        metavar="SEED",
        help="class splits to run (default: every split `fsl episodes --split-seeds` drew)",
    )
    evaluate.add_argument(
        "--shifted",
        action="store_true",
        help="also run the shifted query sets and their controls (re-rendered query photos, "
        "queries from later years): docs/robustness.md's table",
    )
    evaluate.set_defaults(run=cmd_eval)

    training = commands.add_parser(
        "train",
        help="meta-train heads on base-class episodes",
        description="Episodic meta-training of each experiment's head on base-class "
        "episodes; validation episodes choose the checkpoint. Resumes "
        "from checkpoints/NAME/last unless --restart.",
    )
    add_experiment_options(training)
    training.add_argument("--restart", action="store_true", help="ignore an earlier run's last checkpoint")
    add_folds_options(
        training,
        "config",
        "over folds is then trained on every base class, its step chosen on validation classes as without "
        "--folds (needs a store of the frozen encoder)",
        "train-folds",
    )
    training.add_argument(
        "--splits",
        type=non_negative_int,
        nargs="+",
        metavar="SEED",
        help="class splits to train on (default: every split `fsl episodes --split-seeds` drew)",
    )
    training.set_defaults(run=cmd_train)

    sweeping = commands.add_parser(
        "sweep",
        help="choose config values on selection episodes (an Optuna study), then test once",
        description="Score a grid of config values (--grid), or --trials points of ranges searched by TPE "
        "(--space), on selection episodes only (validation classes, or base and validation classes for "
        "configs that learn nothing from base classes); write the best as a config (with every point's "
        "score and the chosen point against the runner-up as a comment), then evaluate that one config on "
        "its novel sets. The study is an Optuna study in SQLite beside the results (--storage: any "
        "database Optuna takes, so several machines run one study with the same command); a killed "
        "sweep resumes where it stopped.",
    )
    add_experiment_options(sweeping)
    sweeping.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2,...",
        help="values to try for one key (method_options.C=0.1,1,10); repeat for a full grid",
    )
    sweeping.add_argument(
        "--space",
        action="append",
        metavar="KEY=KIND:LOW:HIGH",
        help="a range TPE searches (method_options.C=log:1e-3:1e2; KIND float, log, int, or choice:V1,V2); "
        "needs --trials",
    )
    sweeping.add_argument("--trials", type=positive_int, metavar="N", help="with --space: how many points TPE tries")
    sweeping.add_argument(
        "--storage",
        metavar="URL",
        help="the Optuna storage (default sqlite:///RESULTS/sweeps/studies.db; postgresql://... for several machines)",
    )
    sweeping.add_argument("--study", metavar="NAME", help="the study's name (default: the config's name)")
    sweeping.add_argument(
        "--on",
        nargs="+",
        default=["val-5w5s"],
        metavar="SET",
        help="selection episode sets that choose (default val-5w5s; select-5w5s and the other select-* sets "
        "hold base and validation classes, for configs that learn nothing from base classes); novel sets "
        "are refused",
    )
    sweeping.add_argument(
        "--results", default=str(RESULTS_DIR), help="results and the chosen config go here (default results/)"
    )
    sweeping.add_argument("--no-test", action="store_true", help="stop after choosing: do not read the novel sets")
    sweeping.set_defaults(run=cmd_sweep)

    analysing = commands.add_parser(
        "analyse",
        help="per-class accuracy, confusion matrix and confusion gallery",
        description="Which classes a config gets wrong, and with what: per-class "
        "accuracy (CSV + PNG), the confusion matrix and a gallery of the "
        "most frequent confusions per episode set, also as TensorBoard figures.",
    )
    add_experiment_options(analysing)
    analysing.add_argument(
        "--episodes",
        nargs="+",
        default=["novel-allway-5s"],
        metavar="SET",
        help="episode sets to analyse (default novel-allway-5s, every novel class at once)",
    )
    analysing.add_argument(
        "--results",
        default=str(RESULTS_DIR),
        help=f"results root: the files go in DIR/analysis/NAME (default {RESULTS_DIR}/)",
    )
    analysing.add_argument(
        "--projector",
        type=positive_int,
        metavar="N",
        help="also write TensorBoard's projector view of N products' image features",
    )
    analysing.set_defaults(run=cmd_analyse)

    compare = commands.add_parser(
        "compare",
        help="paired comparison of result files, with a plot",
        description="Mean ± 95% CI per method and the paired difference of every two "
        "methods on the episodes both ran; saves a bar plot.",
    )
    compare.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS_CSV",
        help="per-episode CSVs written by `fsl eval`, or per-class CSVs of `fsl analyse` "
        "(then: the per-class differences)",
    )
    compare.add_argument("--plot", default=str(COMPARE_PLOT), help=f"PNG to write (default {COMPARE_PLOT})")
    compare.set_defaults(run=cmd_compare)

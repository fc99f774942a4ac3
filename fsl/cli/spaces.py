"""`fsl align`, `fsl adapt`, `fsl calibrate` and `fsl negatives`: an image-text space, an adapted image
tower and calibrated confidences, trained on base classes and chosen on validation classes, and a
catalog's classes as known negatives."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from fsl.cli.common import (
    STORE_HELP,
    add_data_option,
    add_encoder_options,
    add_experiment_options,
    add_folds_options,
    add_runs_option,
    check_folds_options,
    encoder_config,
    folds_results,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    workspace_from,
)
from fsl.cli.experiments import _configs, print_fold_comparison
from fsl.config import UNKNOWN_SCORES
from fsl.errors import FslError
from fsl.paths import (
    ADAPT_DIR,
    ALIGN_DIR,
    DEFAULT_EPISODES_DIR,
    FEATURES_ROOT,
    SHIPPED_CALIBRATION_DIR,
    SHIPPED_NEGATIVES_DIR,
    USER_CALIBRATION_DIR,
    USER_NEGATIVES_DIR,
)


def cmd_align(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.episodes.folds import fold_column
    from fsl.harness.align import align
    from fsl.harness.select import compare_alignments

    candidates = align_candidates(args)
    check_folds_options(args, "alignment")
    if args.folds is None and len(candidates) > 1:
        raise FslError(
            "several values of --dim, --hidden, --lr or --prompt-weight go with --folds K (each combination is a "
            "candidate compared on class folds)"
        )
    catalog = load_catalog(args.data)
    workspace = workspace_from(args)
    config = candidates[0]
    if args.folds is not None:  # the settings chosen on class folds, then trained on every base class
        fold_by = fold_column(args.fold_by, config.label_column)
        out = folds_results(workspace, "align", args.split_seed, fold_by)
        summary = compare_alignments(
            candidates, catalog, workspace, args.folds, args.out, out, not args.restart, fold_by=fold_by
        )
        print_fold_comparison(summary, args.split_seed, args.folds, out, "each space by zero-shot photo accuracy")
        failed = [f"{failure['name']} (fold {failure['fold']})" for failure in summary["failed"]]
        if not args.no_final:
            config = next(candidate for candidate in candidates if candidate.name == summary["chosen"])
            report_alignment(align(config, catalog, workspace, args.out, resume=not args.restart), catalog, workspace)
        if failed:
            raise FslError(
                f"{len(failed)} class-fold run(s) did not finish, left out of the comparison: {', '.join(failed)}"
            )
        return
    report_alignment(align(config, catalog, workspace, args.out, resume=not args.restart), catalog, workspace)


def align_candidates(args) -> list:
    """The alignments a command line names: every combination of the values given to --dim, --hidden,
    --lr and --prompt-weight, each named NAME--KEY-VALUE for the keys given several values."""
    from fsl.harness.align import AlignConfig

    grid = {"dim": args.dim, "hidden": args.hidden, "lr": args.lr, "prompt_weight": args.prompt_weight}
    varied = [key for key, values in grid.items() if len(set(values)) > 1]
    candidates = []
    for values in itertools.product(*(dict.fromkeys(values) for values in grid.values())):
        setting = dict(zip(grid, values))
        name = args.name + "".join(f"--{key.replace('_', '-')}-{setting[key]:g}" for key in varied)
        candidates.append(
            AlignConfig(
                name=name,
                steps=args.steps,
                batch_size=args.batch_size,
                val_every=args.val_every,
                split_seed=args.split_seed,
                **setting,
            )
        )
    return candidates


def report_alignment(summary: dict, catalog, workspace) -> None:
    """A trained alignment's chosen step and figures, and its retrieval on novel classes."""
    from fsl.harness.align import novel_retrieval

    best = summary["best"]
    print(
        f"{summary['folder'].parent.name}: chosen at step {summary['best_step']} of {summary['steps']} on the "
        f"validation classes: zero-shot photo accuracy {100 * best['zero_shot']:.1f}% (class-balanced), masked text "
        f"-> own photo recall@10 {100 * best['text_recall@10']:.1f}%; use it with --encoder aligned --pretrained "
        f"{summary['folder']}"
    )
    figures = novel_retrieval(summary["folder"], catalog, workspace)
    print(
        f"text-to-photo retrieval among the {figures['products']} products of the {figures['classes']} novel classes "
        "(never seen in alignment; class-name prompts: a photo of the class in the top k, and the share of the top k "
        "that are; masked product texts: their own photo in the top k):"
    )
    for name in ("aligned", "random projection"):
        print(f"  {name:>17}: " + ", ".join(f"{key} {100 * value:.1f}%" for key, value in figures[name].items()))


def cmd_adapt(args) -> None:
    import dataclasses

    from fsl.config import load_adapt_config, override, parse_assignment
    from fsl.data.prepared import load_catalog
    from fsl.episodes.folds import fold_column
    from fsl.harness.adapt import adapt, check_adapt_config
    from fsl.harness.select import compare_recipes, folds_step

    recipes = [load_adapt_config(path) for path in args.recipe]
    assignments = [parse_assignment(text, "--set") for text in args.set or []]
    if args.all_classes:
        assignments.append(("classes", "all"))
    if assignments:
        recipes = [override(recipe, assignments, "--set") for recipe in recipes]
    by_split = {
        seed: [check_adapt_config(dataclasses.replace(recipe, split_seed=seed)) for recipe in recipes]
        for seed in args.split_seeds
    }
    check_folds_options(args, "recipe")
    catalog = load_catalog(args.data)
    workspace = workspace_from(args)
    failed = []
    for seed, candidates in by_split.items():
        if args.folds is not None:  # the recipe is chosen on class folds, then trained on every base class
            fold_by = fold_column(args.fold_by, candidates[0].label_column)
            out = folds_results(workspace, "adapt", seed, fold_by)
            summary = compare_recipes(
                candidates, catalog, workspace, args.folds, args.out, out, not args.restart, fold_by=fold_by
            )
            print_fold_comparison(summary, seed, args.folds, out, "each tower by the fused-masked protonet")
            failed += [f"{failure['name']} (split {seed}, fold {failure['fold']})" for failure in summary["failed"]]
            if args.no_final:
                continue
            chosen = next(r for r in candidates if r.name == summary["chosen"])
            if chosen.classes != "base":  # nothing held out to choose a step: the folds' median chosen step
                steps = folds_step(summary)
                if steps == 0:
                    print(f"  {chosen.name}: the frozen tower won on most folds (median chosen step 0); nothing "
                          "trained: the frozen tower is the one to use")  # fmt: skip
                    continue
                print(f"  {chosen.name}: {steps} steps, the median of the folds' chosen steps")
                chosen = dataclasses.replace(chosen, steps=steps)
            candidates = [chosen]
        for recipe in candidates:  # one adaptation per split, its step chosen on that split's validation classes
            report_adaptation(recipe, adapt(recipe, catalog, workspace, args.out, resume=not args.restart))
    if failed:
        raise FslError(
            f"{len(failed)} class-fold run(s) did not finish, left out of the comparison: {', '.join(failed)}"
        )


def report_adaptation(recipe, summary: dict) -> None:
    if recipe.classes != "base":
        print(
            f"{recipe.name} (split {recipe.split_seed}): trained {summary['steps']} steps on its {recipe.classes} "
            "classes (nothing held out, so no step chosen and no figures); use it with --encoder adapted "
            f"--pretrained {summary['folder']}"
        )
        return
    best, start = summary["best"], summary["start"]
    sets = [name for name in start if name != "score"]
    chosen = (
        "step 0: no step beat the frozen tower on the validation classes"
        if summary["best_step"] == 0
        else f"step {summary['best_step']} of {summary['steps']}"
    )
    print(
        f"{recipe.name} (split {recipe.split_seed}): chosen at {chosen}; validation "
        + ", ".join(f"{name} {100 * best[name]:.1f}% (frozen {100 * start[name]:.1f}%)" for name in sets)
        + f"; use it with --encoder adapted --pretrained {summary['folder']}"
    )


def cmd_calibrate(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.harness.calibration import calibrate, format_calibration

    if not 0 < args.false_accept < 1:
        raise FslError(f"--false-accept must lie strictly between 0 and 1, got {args.false_accept}")
    if not 0 <= args.taught_right < 1:
        raise FslError(f"--taught-right must lie within [0, 1) (0: no floor), got {args.taught_right}")
    configs = _configs(args)
    catalog = load_catalog(args.data)
    for config in configs:
        calibration = calibrate(
            config,
            catalog,
            workspace_from(args),
            args.calibration_dir,
            false_accept=args.false_accept,
            score=args.score,
            taught_right=args.taught_right,
        )
        print(format_calibration(calibration))
        print(f"wrote {Path(args.calibration_dir) / (config.name + '.json')}")


def cmd_negatives(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.harness.negatives import catalog_negatives

    negatives = catalog_negatives(
        encoder_config(args), load_catalog(args.data), workspace_from(args), args.column, args.min_count
    )
    path = negatives.save(args.out)
    print(f"{negatives.describe()}, encoder {negatives.encoder}: {', '.join(negatives.names)}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); fsl predict --support, the API and the demo use it")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Register the spaces commands on `fsl`'s sub-parsers."""
    aligning = commands.add_parser(
        "align",
        help="learn one image-text space over the offline towers (base classes only)",
        description="Train two projection heads (and a temperature) on the offline store's features with CLIP's "
        "contrastive loss: photo vs text, and both vs the base classes' name prompts. Base-split "
        "products only; validation-class products choose the step (zero-shot photo accuracy and text-to-photo "
        "recall@10). "
        "Writes checkpoints/align/NAME/{best,last} and TensorBoard curves; resumes from last.",
    )
    add_data_option(aligning)
    aligning.add_argument("--name", default="offline-base", help="the alignment's name (default offline-base)")
    aligning.add_argument(
        "--dim",
        type=positive_int,
        nargs="+",
        default=[256],
        help="size of the shared space (default 256; with --folds, several are candidates)",
    )
    aligning.add_argument(
        "--hidden",
        type=non_negative_int,
        nargs="+",
        default=[0],
        help="0: a linear map per tower (default); N: an MLP with N hidden units (with --folds, several are "
        "candidates)",
    )
    aligning.add_argument("--steps", type=positive_int, default=1000, help="training steps (default 1000)")
    aligning.add_argument("--batch-size", type=positive_int, default=512, help="products per step (default 512)")
    aligning.add_argument(
        "--lr",
        type=positive_float,
        nargs="+",
        default=[3e-4],
        help="AdamW learning rate (default 3e-4, chosen on validation classes; with --folds, several are candidates)",
    )
    aligning.add_argument(
        "--prompt-weight",
        type=non_negative_float,
        nargs="+",
        default=[1.0],
        help="weight of the class-prompt term against the photo-text pairs (default 1; 0: pairs only; with --folds, "
        "several are candidates)",
    )
    aligning.add_argument(
        "--val-every",
        type=positive_int,
        default=25,
        help="steps between validations, each may become the best checkpoint (default 25)",
    )
    aligning.add_argument(
        "--split-seed",
        type=non_negative_int,
        default=0,
        help="the class split whose base classes it trains on (default 0)",
    )
    aligning.add_argument(
        "--episodes-dir", default=str(DEFAULT_EPISODES_DIR), help="root of the class splits (default episodes/)"
    )
    aligning.add_argument("--store-root", default=str(FEATURES_ROOT), metavar="DIR", help=STORE_HELP)
    aligning.add_argument("--out", default=str(ALIGN_DIR), help=f"where alignments go (default {ALIGN_DIR})")
    add_runs_option(aligning, "align")
    aligning.add_argument("--restart", action="store_true", help="start over instead of resuming from last")
    add_folds_options(
        aligning,
        "alignment",
        "is then trained on every base class, its step chosen on validation classes as without --folds",
        "align-folds",
    )
    aligning.set_defaults(run=cmd_align)

    adapting = commands.add_parser(
        "adapt",
        help="train a tower's last layers on base classes (image, text or both; offline or CLIP; full or LoRA)",
        description="Train the last layers of a pair's image tower, text tower or both (recipe `towers`) on "
        "base-split products only, from activations cached at the cut (computed once, kept beside the store): "
        "the offline pair's last MBConv block(s) and MiniLM layer(s), or a CLIP model's last transformer "
        "blocks (recipe `encoder: {name: clip, model, pretrained}`). A learning text tower reads the "
        "fused-masked heads' features. Objectives: supervised (cosine classifier over the base classes), "
        "episodic (prototypical loss on base episodes), or both in sequence; modes: full or lora (PEFT, "
        "merged when saved). Step 0 (the frozen tower) and every "
        "val_every steps are scored on validation-class episodes (fused-masked protonet); the best is kept. "
        "Writes checkpoints/adapt/NAME/{best,last} (split s: checkpoints/adapt/split<s>/NAME), TensorBoard "
        "under runs/adapt; resumes from last.",
    )
    adapting.add_argument("recipe", metavar="RECIPE", nargs="+", help="experiments/adapt/*.yaml (one or more)")
    add_data_option(adapting)
    adapting.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe value (lr=3e-4, mode=lora, rank=4); repeatable; the name gets the change appended",
    )
    adapting.add_argument(
        "--split-seeds",
        type=non_negative_int,
        nargs="+",
        default=[0],
        metavar="SEED",
        help="the class splits to adapt on, one adaptation each (default 0)",
    )
    adapting.add_argument(
        "--episodes-dir", default=str(DEFAULT_EPISODES_DIR), help="root of the class splits (default episodes/)"
    )
    adapting.add_argument("--store-root", default=str(FEATURES_ROOT), metavar="DIR", help=STORE_HELP)
    adapting.add_argument("--out", default=str(ADAPT_DIR), help=f"where adaptations go (default {ADAPT_DIR})")
    add_runs_option(adapting, "adapt")
    adapting.add_argument("--restart", action="store_true", help="start over instead of resuming from last")
    add_folds_options(
        adapting,
        "recipe",
        "is then trained on every base class (with --all-classes: on every class, for the median of the "
        "folds' chosen steps)",
        "adapt-folds",
    )
    adapting.add_argument(
        "--all-classes",
        action="store_true",
        help="train on every class of the split (base, validation and novel: a tower for your own categories, "
        "--set classes=all; classes=selection leaves the novel ones out to measure it). Nothing is held out: it "
        "runs the recipe's steps, or with --folds the median of the steps the class folds chose",
    )
    adapting.set_defaults(run=cmd_adapt)

    calibrating = commands.add_parser(
        "calibrate",
        help="calibrated confidences and a 'none of these' threshold, chosen without novel classes",
        description="Fit a temperature (softmax(logits / T)) on select-5w5s and choose the 'unknown' score and "
        "its threshold on open-set episodes of select-15w5s (2, 3, 5 or 8 classes taught, the rest unknown) "
        "for a target false-accept rate: both sets are drawn over the base and validation classes; a config "
        "that learned from base classes uses val-5w5s and val-allway-5s instead (a tower adapted on every "
        "class, fsl adapt --all-classes, keeps the first pair: it saw them all). Saves them (used by fsl "
        "predict and the demo), then reports expected calibration error before and after, AUROC known vs "
        "unknown and the scores' rank agreement on the novel sets.",
    )
    add_experiment_options(calibrating)
    calibrating.add_argument(
        "--false-accept",
        type=float,
        default=0.2,
        metavar="RATE",
        help="share of photos of untaught classes the threshold may still accept, on validation classes (default 0.2)",
    )
    calibrating.add_argument(
        "--taught-right",
        type=float,
        default=0.0,
        metavar="FLOOR",
        help="a floor of taught photos right and answered on the selection episodes: where the false-accept "
        "target would answer fewer, each threshold is lowered to keep it (default 0: none; the shipped fused "
        "heads keep 0.88, docs/calibration.md)",
    )
    calibrating.add_argument(
        "--score",
        default="auto",
        choices=["auto", *UNKNOWN_SCORES],
        help="the 'none of these' score the threshold applies to (default auto: the best AUROC on the "
        "open-set validation episodes)",
    )
    calibrating.add_argument(
        "--calibration-dir",
        default=str(USER_CALIBRATION_DIR),
        metavar="DIR",
        help=f"where the calibration is saved (default {USER_CALIBRATION_DIR}: found before the shipped ones "
        f"by fsl predict and the demo, from any folder; the shipped ones are in {SHIPPED_CALIBRATION_DIR})",
    )
    calibrating.set_defaults(run=cmd_calibrate)

    negatives = commands.add_parser(
        "negatives",
        help="a catalog's classes as known negatives for your own categories",
        description="Average each class's image and text features in the catalog's store (embedded first if "
        "needed) into one file per encoder: fsl predict --support, the Python API and the demo answer a photo "
        "nearer one of these classes than any taught category 'unknown', and say which class it looks like. "
        "A class that is a taught category (the same name, or a near-identical mean) is left out for that "
        "support. The offline encoder's, from Fashion Product Images, ship with fsl.",
    )
    add_data_option(negatives)
    add_encoder_options(negatives)
    negatives.add_argument("--column", default="articleType", help="label column of the classes (default articleType)")
    negatives.add_argument(
        "--min-count", type=positive_int, default=20, help="products a class needs to be one (default 20)"
    )
    negatives.add_argument(
        "--out",
        default=str(USER_NEGATIVES_DIR),
        metavar="DIR",
        help=f"where the file goes (default {USER_NEGATIVES_DIR}: found before the shipped ones in "
        f"{SHIPPED_NEGATIVES_DIR})",
    )
    negatives.set_defaults(run=cmd_negatives)

"""Regenerate every generated table of the README and docs/ from a real run (never typed by hand): the
README's headline (a dozen heads, five-split means and paired differences, docs/headline.png); the
README's adaptation table (frozen vs adapted image towers, five splits, paired); docs/adaptation.md's
record of each adaptation run (from checkpoints/adapt); docs/results.md (every experiments/*.yaml on the
frozen episodes of $FSL_DATA, mean ± 95% CI, inductive and transductive heads apart, paired differences
against the image-only prototype baseline, docs/results.png); docs/calibration.md from
fsl/calibration/*.json (what `fsl calibrate` wrote); docs/robustness.md (shifted query sets, `fsl eval
--shifted`); docs/methods.md from the head registry (each head's paper and options, and the configs that
use it); docs/usage.md's paragraph on what the best inductive head gets wrong, with docs/confusion.png
and docs/confusions.png.

    python benchmarks/update_readme.py [--data DIR] [--results results] [--only BLOCK ...]

With --results, the per-episode CSVs that `fsl eval experiments/*.yaml` just wrote are used instead
of running every experiment again (each must be newer than its config). --only regenerates some
blocks (e.g. `--only headline methods` needs the results of the headline configs only).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fsl.config import load_config
from fsl.data.prepared import load_catalog
from fsl.encoders.adapted import WEIGHTS_FILE
from fsl.encoders.factory import encoder_id
from fsl.episodes.frozen import STANDARD_BENCHMARKS
from fsl.episodes.shift import SHIFTED_PAIRS, SUBPOPULATIONS
from fsl.errors import FslError
from fsl.files import atomic_path, read_json
from fsl.harness.analysis import (
    _pyplot,
    confusion_figure,
    confusion_gallery_figure,
    confusion_matrix,
    per_class_accuracy,
    predict_episodes,
)
from fsl.harness.calibration import REPORT_SETS
from fsl.harness.evaluate import mean_ci, paired_difference
from fsl.harness.experiment import run_experiment
from fsl.harness.results import (
    across_splits,
    load_results,
    plot_summary,
    results_frame,
    split_drops,
    summary_table,
    with_split,
)
from fsl.inference.calibration import Calibration
from fsl.methods import HEADS
from fsl.paths import ADAPT_DIR, FEATURES_ROOT, SHIPPED_CALIBRATION_DIR

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "protonet-image"
# The README's headline: the best-known config of each head family with five-split results and no
# training step, inductive first (a fixed list, not chosen on the test results it reports).
HEADLINE = (
    "linear-probe-fused-masked",
    "gda-fused-masked",
    "protonet-fused-masked",
    "simpleshot-fused-masked",
    "cosine-prototypes-fused-masked",
    "linear-probe-image",
    BASELINE,
    "bd-cspn-fused-masked",
    "laplacian-shot-fused-masked",
    "tim-fused-masked",
    "pt-map-image",
)
BLOCKS = {
    "headline": "README.md",
    "adaptation": "README.md",
    "adaptation-runs": "docs/adaptation.md",
    "adaptation-shift": "docs/adaptation.md",
    "results": "docs/results.md",
    "calibration": "docs/calibration.md",
    "robustness": "docs/robustness.md",
    "methods": "docs/methods.md",
    "analysis": "docs/usage.md",
}
ANALYSED = "linear-probe-fused-masked"  # the best honest inductive head: what it gets wrong, in docs/usage.md
# Each picture names its split, encoder and the command that made it, on it and under it.
MADE_BY = "`python benchmarks/update_readme.py --results results`"
ENCODER_NAMED = "offline encoder (EfficientNet-Lite0 + MiniLM)"
ON_SPLIT_0 = f"split 0, {ENCODER_NAMED}; made by {MADE_BY}"  # written on the pictures
HEADLINE_PICTURE = f"Picture: split 0 (the table: five splits), {ENCODER_NAMED}; made by {MADE_BY}"
RESULTS_PICTURE = f"Picture: every config on split 0, {ENCODER_NAMED}; made by {MADE_BY}"
ANALYSIS_PICTURES = (
    f"Both pictures: split 0, {ENCODER_NAMED}; made by `fsl analyse experiments/{ANALYSED}.yaml` and {MADE_BY}"
)


TRANSDUCTIVE_HEADER = (
    "| **transductive heads** (they see every query of an episode; compare them only with each other) |"
)


def kinds(frame) -> dict[str, bool]:
    """method -> transductive, inductive methods first (files from before the column: inductive)."""
    column = frame["transductive"] if "transductive" in frame.columns else False
    flags = frame.assign(t=np.asarray(column).astype(str) == "True").groupby("method", sort=False)["t"].first()
    return dict(sorted(flags.items(), key=lambda item: item[1]))


def rows_by_kind(methods: dict[str, bool], cells, width: int) -> list[str]:
    """Table rows, the transductive ones under one header of their own."""
    lines, header = [], False
    for method, transductive in methods.items():
        if transductive and not header:
            lines.append(TRANSDUCTIVE_HEADER + " |" * width)
            header = True
        lines.append(f"| {method} | " + " | ".join(cells(method)) + " |")
    return lines


def markdown(catalog, frame) -> str:
    summary = summary_table(frame).set_index(["method", "episode_set"])
    sets = list(dict.fromkeys(frame["episode_set"]))
    methods = kinds(frame)

    def accuracy(method):
        return [
            "—"
            if (method, name) not in summary.index
            else f"{100 * summary.at[(method, name), 'accuracy']:.1f} ± {100 * summary.at[(method, name), 'ci95']:.1f}"
            for name in sets
        ]

    base = frame[frame["method"] == BASELINE]

    def paired(method):
        group, cells = frame[frame["method"] == method], []
        for name in sets:
            a = group[group["episode_set"] == name].sort_values("episode")["accuracy"].to_numpy()
            b = base[base["episode_set"] == name].sort_values("episode")["accuracy"].to_numpy()
            cells.append(
                "—"
                if len(a) == 0 or len(a) != len(b)
                else "{:+.1f} ± {:.1f}".format(*(100 * v for v in paired_difference(a, b)))
            )
        return cells

    header = [f"| experiment | {' | '.join(sets)} |", "|---|" + "---|" * len(sets)]
    lines = header + rows_by_kind(methods, accuracy, len(sets))
    lines += ["", f"Paired difference against `{BASELINE}` on the same episodes (points, 95% CI):", "", *header]
    lines += rows_by_kind({m: t for m, t in methods.items() if m != BASELINE}, paired, len(sets))
    return "\n".join(lines)


META_PAIRS = {
    "protonet-meta-image": "protonet-image",
    "protonet-meta-fused-masked": "protonet-fused-masked",
    "protonet-meta-fused": "protonet-fused",
    "protonet-meta-text-masked": "protonet-text-masked",
    "protonet-meta-text": "protonet-text",
    "maml-image": "maml-untrained-image",
    "maml-fused-masked": "maml-untrained-fused-masked",
    "proto-maml-fused-masked": "proto-maml-untrained-fused-masked",
}  # meta-trained head: its untrained counterpart


def across_markdown(frame) -> str:
    """The several-split table: mean over splits ± t interval over the split means, and the paired
    difference to the baseline computed per split then combined; configs run on fewer splits say so."""
    splits = frame.groupby("method")["split"].nunique()
    most = int(splits.max())
    table = across_splits(frame, BASELINE).set_index(["method", "episode_set"])
    sets = list(dict.fromkeys(frame["episode_set"]))
    methods = kinds(frame)

    def cell(method, name, mean_key, ci_key, signed=False):
        if (method, name) not in table.index or pd.isna(table.at[(method, name), mean_key]):
            return "—"
        mean, ci = 100 * table.at[(method, name), mean_key], 100 * table.at[(method, name), ci_key]
        if table.at[(method, name), "splits"] < most:
            only = int(frame[frame["method"] == method]["split"].iloc[0])
            return f"{mean:{'+' if signed else ''}.1f} (split {only} only)"
        return f"{mean:{'+' if signed else ''}.1f} ± {ci:.1f}"

    header = [f"| experiment | {' | '.join(sets)} |", "|---|" + "---|" * len(sets)]
    lines = header + rows_by_kind(methods, lambda m: [cell(m, n, "accuracy", "ci95") for n in sets], len(sets))
    lines += [
        "",
        f"Paired difference against `{BASELINE}`, per split on the same episodes, then the mean over splits "
        "± its t interval (points):",
        "",
        *header,
    ]
    lines += rows_by_kind(
        {m: t for m, t in methods.items() if m != BASELINE},
        lambda m: [cell(m, n, "difference", "difference_ci95", True) for n in sets],
        len(sets),
    )
    pairs = {a: b for a, b in META_PAIRS.items() if a in methods and b in methods}
    if pairs:
        lines += [
            "",
            "Meta-trained minus untrained, the same way (points; above 0 with its interval: training pays):",
            "",
            *header,
        ]
        for trained, untrained in pairs.items():
            paired = across_splits(frame[frame["method"].isin([trained, untrained])], untrained).set_index(
                ["method", "episode_set"]
            )

            def difference(name):
                if (trained, name) not in paired.index or pd.isna(paired.at[(trained, name), "difference"]):
                    return "—"
                mean, ci = (100 * paired.at[(trained, name), k] for k in ("difference", "difference_ci95"))
                if paired.at[(trained, name), "splits"] < most:
                    return f"{mean:+.1f} (split {int(frame[frame['method'] == trained]['split'].iloc[0])} only)"
                return f"{mean:+.1f} ± {ci:.1f}"

            lines.append(f"| {trained} − {untrained} | " + " | ".join(difference(n) for n in sets) + " |")
    return "\n".join(lines)


ADAPTED_HEADS = ("linear-probe-fused-masked", "protonet-fused-masked", "linear-probe-image")
ADAPTATIONS = ("supervised", "episodic", "lora")  # experiments/adapt/*.yaml; configs adapted-RECIPE-HEAD


def adaptation_markdown(frame) -> str:
    """The README's adaptation table: per head, the frozen encoder's accuracy, then each adapted tower's
    paired difference to it (per split on the same episodes, then mean ± t interval over the splits)."""
    sets = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
    present = set(frame["method"])
    splits = sorted(frame[frame["method"].str.startswith("adapted-")]["split"].unique())
    lines = [
        f"Offline encoder, {len(splits)} class splits; split s's image tower adapted on its base classes and chosen "
        "on its validation classes. Frozen: accuracy, mean ± 95% t interval over the splits (%). Adapted: the "
        "paired difference to the frozen tower under the same head, per split, combined the same way (points).",
        "",
        f"| head | image tower | {' | '.join(s.removeprefix('novel-') for s in sets)} |",
        "|---|---|" + "---|" * len(sets),
    ]
    for head in (h for h in ADAPTED_HEADS if h in present):
        frozen = across_splits(frame[frame["method"] == head]).set_index("episode_set")
        cells = [
            f"{100 * frozen.at[s, 'accuracy']:.1f} ± {100 * frozen.at[s, 'ci95']:.1f}" if s in frozen.index else "—"
            for s in sets
        ]
        lines.append(f"| {head} | frozen | {' | '.join(cells)} |")
        for recipe in ADAPTATIONS:
            adapted = f"adapted-{recipe}-{head}"
            if adapted not in present:
                continue
            paired = across_splits(frame[frame["method"].isin([adapted, head])], head)
            paired = paired[paired["method"] == adapted].set_index("episode_set")

            def cell(name):
                if name not in paired.index or pd.isna(paired.at[name, "difference"]):
                    return "—"
                return f"{100 * paired.at[name, 'difference']:+.1f} ± {100 * paired.at[name, 'difference_ci95']:.1f}"

            lines.append(f"| | {recipe} | {' | '.join(cell(s) for s in sets)} |")
    return "\n".join(lines)


def adaptation_runs_markdown(root: Path) -> str:
    """docs/adaptation.md's record of every adaptation the table used: its chosen step and the validation
    scores of the frozen start and the chosen step, read from each best checkpoint's sidecar."""
    lines = [
        "| recipe | split | mode, objective | trainable parameters | chosen step | validation (fused-masked protonet): "
        "frozen → chosen |",
        "|---|---|---|---|---|---|",
    ]
    for recipe in ADAPTATIONS:
        for meta in sorted(
            (read_json(p) for p in root.glob(f"**/{recipe}/best/adapt.json")), key=lambda m: m["split_seed"]
        ):
            start = meta["start"]
            scores = meta.get("validation", {})
            figures = ", ".join(
                f"{name} {100 * start[name]:.1f} → {100 * scores[name]:.1f}"
                if name in start
                else f"{name} {100 * scores[name]:.1f}"
                for name in scores
                if name != "score"
            )
            lines.append(
                f"| {recipe} | {meta['split_seed']} | {meta['mode']}, {meta['objective']} | "
                f"{meta['trainable_parameters']:,} | {meta['step']} of {meta['config']['steps']} | {figures} |"
            )
    return "\n".join(lines)


def adaptation_shift_markdown(frame) -> str:
    """docs/adaptation.md's robustness comparison: per head and adapted tower, the change of each shift's
    paired drop against the frozen tower's (adapted drop minus frozen drop, per split, then mean ± t
    interval over the splits; above 0: adaptation makes the head more robust)."""
    columns = [c for c in ROBUSTNESS_COLUMNS if c[0] not in SUBPOPULATIONS] + [("sub-populations (mean)", None, None)]
    lines = [
        f"| adapted tower − frozen | {' | '.join(c[0] for c in columns)} |",
        "|---|" + "---|" * len(columns),
    ]
    for head in ADAPTED_HEADS:
        for recipe in ADAPTATIONS:
            adapted = f"adapted-{recipe}-{head}"
            if adapted not in set(frame["method"]) or head not in set(frame["method"]):
                continue
            cells, subpopulation = [], {}
            for heading, shifted, control in ROBUSTNESS_COLUMNS:
                ours, theirs = split_drops(frame, adapted, shifted, control), split_drops(frame, head, shifted, control)
                changes = [ours[s] - theirs[s] for s in ours if s in theirs]
                if heading in SUBPOPULATIONS:
                    for split in ours:
                        if split in theirs:
                            subpopulation.setdefault(split, []).append(ours[split] - theirs[split])
                elif changes:
                    mean, ci = mean_ci(np.asarray(changes))
                    cells.append(f"{100 * mean:+.1f} ± {100 * ci:.1f}")
                else:
                    cells.append("—")
            complete = [np.mean(c) for c in subpopulation.values() if len(c) == len(SUBPOPULATIONS)]
            mean, ci = mean_ci(np.asarray(complete)) if len(complete) > 1 else (float("nan"), float("nan"))
            cells.append(f"{100 * mean:+.1f} ± {100 * ci:.1f}" if complete else "—")
            lines.append(f"| {head}, {recipe} | {' | '.join(cells)} |")
    return "\n".join(lines)


def headline_markdown(frame) -> str:
    """The README's table: per headline config, the five-split mean ± t interval of each standard
    set, and its paired difference to the baseline (per split on the same episodes, then combined)."""
    frame = frame[frame["method"].isin(HEADLINE)]
    table = across_splits(frame, BASELINE).set_index(["method", "episode_set"])
    sets = [name for name in ("novel-5w1s", "novel-5w5s", "novel-15w5s") if name in set(frame["episode_set"])]
    splits = int(frame.groupby("method")["split"].nunique().min())

    def cell(method, name, mean_key, ci_key, signed=""):
        if (method, name) not in table.index or pd.isna(table.at[(method, name), mean_key]):
            return "—"
        return f"{100 * table.at[(method, name), mean_key]:{signed}.1f} ± {100 * table.at[(method, name), ci_key]:.1f}"

    lines = [
        f"Offline encoder; mean over {splits} class splits ± 95% t interval over the splits (%); the last "
        f"column is the paired difference to `{BASELINE}` per split on the same episodes, combined the same way "
        f"(points; {' / '.join(s.removeprefix('novel-') for s in sets)}). Every config is in "
        "[docs/results.md](docs/results.md).",
        "",
        f"| head config | {' | '.join(s.removeprefix('novel-') for s in sets)} | vs {BASELINE} |",
        "|---|" + "---|" * (len(sets) + 1),
    ]
    transductive_of = kinds(frame)
    for method in (m for m in HEADLINE if m in transductive_of):  # the list's order: inductive first
        transductive = transductive_of[method]
        name = f"{method} (transductive)" if transductive else method
        difference = " / ".join(cell(method, s, "difference", "difference_ci95", "+") for s in sets)
        lines.append(
            f"| {name} | {' | '.join(cell(method, s, 'accuracy', 'ci95') for s in sets)} | "
            f"{'baseline' if method == BASELINE else difference} |"
        )
    return "\n".join(lines + ["", "![accuracy per head, split 0](docs/headline.png)", "", f"*{HEADLINE_PICTURE}.*"])


def plain(caption: str) -> str:
    """A caption as a picture writes it: no Markdown backticks."""
    return caption.replace("`", "")


def analysis_markdown(catalog) -> str:
    """docs/usage.md's paragraph on what the analysed head gets wrong on the all-way set, with the
    confusion matrix and gallery pictures: written from `fsl analyse`'s own tables, so its figures
    are the pictures' figures."""
    config = load_config(ROOT / "experiments" / f"{ANALYSED}.yaml")
    p = predict_episodes(config, catalog, "novel-allway-5s", ROOT / "episodes", FEATURES_ROOT, ROOT / "checkpoints")
    table = per_class_accuracy(p).set_index("class")
    matrix = confusion_matrix(p)
    plt = _pyplot()
    for name, fig in (
        ("confusion", confusion_figure(matrix, f"{ANALYSED} on novel-allway-5s; {plain(ON_SPLIT_0)}")),
        ("confusions", confusion_gallery_figure(p, catalog, note=plain(ON_SPLIT_0))),
    ):
        fig.savefig(ROOT / "docs" / f"{name}.png", dpi=110)
        plt.close(fig)

    def taken_for(name: str, least: float = 0.1) -> str:
        row = matrix.loc[name].drop(name) / table.at[name, "queries"]
        shares = [
            f"{other} {100 * share:.0f}%" for other, share in row.sort_values(ascending=False).items() if share >= least
        ]
        return f", taken for {' and '.join(shares)}" if shares else ""

    weakest = [name for name in table.index if table.at[name, "accuracy"] < 1][:3]
    said = [
        f"{name} ({100 * table.at[name, 'accuracy']:.0f}% ± {100 * table.at[name, 'ci95']:.0f}{taken_for(name)})"
        for name in weakest
    ]
    perfect = sorted(name for name in table.index if table.at[name, "accuracy"] == 1)
    episodes = len(p.episode_set.episodes)
    return "\n".join(
        [
            f"What the best honest inductive head (`{ANALYSED}`: image + label-masked text) gets wrong on the "
            f"all-way set (all {len(table)} novel classes at once, {episodes} frozen episodes, split 0; "
            f"`fsl analyse experiments/{ANALYSED}.yaml`, offline encoder; per class: accuracy over its queries ± a 95% "
            "interval over the episodes, and the classes it is taken for in 10% of its queries or more): "
            f"weakest {'; then '.join(said)}."
            + (f" {', '.join(perfect)} {'is' if len(perfect) == 1 else 'are'} never wrong." if perfect else ""),
            "",
            f"![confusion matrix of {ANALYSED} on the all-way set](confusion.png)",
            "",
            "Its most frequent confusions, each a query photo next to support photos of the class it was taken for:",
            "",
            "![most frequent confusions](confusions.png)",
            "",
            f"*{ANALYSIS_PICTURES}.*",
        ]
    )


def methods_markdown(configs) -> str:
    """docs/methods.md's block: each registered head, its paper, capabilities and options (its class
    docstring), and the experiment configs that use it."""
    lines = []
    for name, head in HEADS.items():
        doc = inspect.cleandoc(head.__doc__ or "")
        summary, _, options = doc.partition("Options (`method_options` in a config):")
        traits = [
            trait
            for trait, on in (("transductive", head.transductive), ("may read class names", head.uses_class_names))
            if on
        ]
        used_by = sorted(c.name for c in configs if c.method == name)
        lines += [
            f"### `{name}`{f' ({chr(44).join(traits)})' if traits else ''}",
            "",
            " ".join(summary.split()),
            "",
            "Options (`method_options`):",
            "",
            options.strip() or "none",
            "",
            f"Configs: {', '.join(f'`{c}`' for c in used_by) or 'none yet'}.",
            "",
        ]
    return "\n".join(lines).rstrip()


# The robustness table's columns: (heading, shifted set, the set it pairs with). Re-rendering measures
# how a head takes other photographs of the same products; the others, queries from elsewhere.
ROBUSTNESS_COLUMNS = [
    ("rendering sensitivity 5w5s", "novel-5w5s+rerendered", "novel-5w5s"),
    ("rendering sensitivity 15w5s", "novel-15w5s+rerendered", "novel-15w5s"),
    ("temporal", "novel-5w5s-temporal", "novel-5w5s-temporal-control"),
    *[(kind, f"novel-{kind}-5s", f"novel-{kind}-5s-control") for kind in SUBPOPULATIONS],
]


def shifted_markdown(frame) -> str:
    """Per head: the paired drop on each shift (shifted minus its control, per split on the same
    episodes, then mean ± 95% t interval over the splits), and the mean over the sub-population
    columns (per split, then over splits)."""
    present = set(frame["episode_set"])
    columns = [c for c in ROBUSTNESS_COLUMNS if c[1] in present]
    if not columns:
        return "No shifted results yet: run `fsl eval experiments/*.yaml --shifted`."
    methods = kinds(frame[frame["episode_set"].isin([c[1] for c in columns])])

    def cell(drops: list[float]) -> str:
        if not drops:
            return "—"
        mean, ci = mean_ci(np.asarray(drops))
        return f"{100 * mean:+.1f}" + ("" if len(drops) < 2 else f" ± {100 * ci:.1f}") + f" ({len(drops)})"

    def cells(method):
        out, subpopulation = [], {}
        for heading, shifted, control in columns:
            drops = split_drops(frame, method, shifted, control)
            out.append(cell(list(drops.values())))
            if heading in SUBPOPULATIONS:
                for split, drop in drops.items():
                    subpopulation.setdefault(split, []).append(drop)
        complete = [np.mean(d) for d in subpopulation.values() if len(d) == len(SUBPOPULATIONS)]
        return [*out, cell(complete)]

    headings = [heading for heading, _, _ in columns] + ["mean over sub-populations"]
    return "\n".join(
        [
            f"| experiment | {' | '.join(headings)} |",
            "|---|" + "---|" * len(headings),
            *rows_by_kind(methods, cells, len(headings)),
        ]
    )


def from_results(configs, folders: list[Path]):
    """The results of every config, as `fsl eval` wrote them into the first folder; a missing file, or
    one older than its config or its trained checkpoint, is an error. A config's file in a further
    folder adds the sets it holds, replacing those sets' rows of the first."""
    paths = []
    for config in configs:
        path = folders[0] / f"{config.name}.csv"
        sources = [ROOT / "experiments" / f"{config.name}.yaml"]
        if config.train is not None:
            sources.append(ROOT / "checkpoints" / config.name / "best" / "head.safetensors")
        if config.encoder.name == "adapted":
            sources.append(ROOT / config.encoder.pretrained / WEIGHTS_FILE)
        if not path.is_file() or any(not f.is_file() or path.stat().st_mtime < f.stat().st_mtime for f in sources):
            raise FslError(
                f"{path} is missing or older than {' or '.join(map(str, sources))}: "
                "run `fsl eval experiments/*.yaml` (after `fsl train`) first"
            )
        paths.append(path)
    encoders = {encoder_id(c.encoder.name, c.encoder.model, c.encoder.pretrained) for c in configs}
    frame = with_split(load_results(paths))
    for folder in folders[1:]:
        extra = [folder / f"{c.name}.csv" for c in configs if (folder / f"{c.name}.csv").is_file()]
        if extra:
            added = with_split(load_results(extra))
            keys = ["method", "split", "episode_set"]
            replaced = frame.set_index(keys).index.isin(added.set_index(keys).index)
            frame = pd.concat([frame[~replaced], added], ignore_index=True)
    return frame, sorted(encoders)


def calibration_markdown(folder: Path) -> str:
    """ECE before -> after on the novel sets, the unknown rule on selection and novel classes (every
    taught count), the "none of these" scores compared, their rank agreement and the power line."""
    calibrations = [Calibration.load(path) for path in sorted(folder.glob("*.json"))]
    if not calibrations:
        return "No calibration yet: run `fsl calibrate experiments/NAME.yaml --calibration-dir fsl/calibration`."
    sets = [name for name in REPORT_SETS if name in calibrations[0].novel]
    first = calibrations[0].validation
    counts = first.get("taught_counts", [])
    lines = [
        f"Encoder: `{', '.join(sorted({c.encoder for c in calibrations}))}`. Temperature, score and thresholds "
        f"chosen on base and validation classes of split 0 ({first['temperature_set']}; open-set "
        f"{first['open_set']}: {', '.join(map(str, counts))} classes taught, the rest of each episode unknown; a "
        f"threshold for each count, {calibrations[0].false_accept:.0%} false accepts); figures on novel classes, "
        "600 frozen episodes. ECE: expected calibration error of the top answer, 15 bins, in points, raw softmax → "
        "calibrated. Open set: novel-15w5s episodes with 5 classes taught and the queries of all 15 (10 classes "
        "unknown).",
        "",
        "| config | T | unknown rule | "
        + " | ".join(f"ECE {s.removeprefix('novel-')}" for s in sets)
        + " | AUROC selection / novel | taught: right and answered (without the rule) | taught answered unknown"
        " | untaught accepted (selection / novel) |",
        "|---" * (5 + len(sets) + 2) + "|",
    ]
    for c in calibrations:
        v, n = c.validation, next(f for name, f in c.novel.items() if "auroc" in f)
        ece = " | ".join(f"{100 * c.novel[s]['ece_before']:.1f} → {100 * c.novel[s]['ece_after']:.1f}" for s in sets)
        shown = (lambda t: f"{t:.0%}") if c.score == "max-softmax" else (lambda t: f"{t:.4g}")
        rule = f"{c.score} below {shown(c.threshold_at(5))} at 5 taught"
        lines.append(
            f"| {c.config} | {c.temperature:.3g} | {rule} | {ece} | {v['auroc']:.3f} / {n['auroc']:.3f}"
            f" | {100 * n['known_accuracy']:.1f}% ({100 * n['known_accuracy_without_rule']:.1f}%)"
            f" | {100 * n['known_unknown_rate']:.1f}% | {100 * v['false_accept']:.0f}%"
            f" / {100 * n['false_accept']:.1f}% |"
        )
    lines += [
        "",
        "Each count of taught classes, on novel classes (novel-15w5s episodes teaching that many): taught photos "
        "right and answered / untaught photos accepted, at the threshold fitted for that count.",
        "",
        "| config | " + " | ".join(f"{count} taught" for count in counts) + " |",
        "|---" * (1 + len(counts)) + "|",
    ]
    for c in calibrations:
        by_taught = next(f for f in c.novel.values() if "auroc" in f).get("by_taught", {})
        cells = [by_taught.get(str(count)) for count in counts]
        lines.append(
            f"| {c.config} | "
            + " | ".join(
                "" if f is None else f"{100 * f['known_accuracy']:.1f}% / {100 * f['false_accept']:.1f}%" for f in cells
            )  # fmt: skip
            + " |"
        )
    lines += [
        "",
        'The "none of these" scores (fsl/inference/open_set.py), each config\'s chosen one in bold (best pooled AUROC '
        "on the selection episodes). AUROC taught vs untaught pooled over episodes (one threshold serves every "
        "category set), then per category set: the mean and the 10th-percentile episode (a user's one set of "
        "categories can sit far from the mean); false accepts at the threshold that answers 80% of taught photos.",
        "",
        "| config | score | AUROC selection | AUROC novel | per set: mean / 10th pct (novel) "
        "| false accepts at 80% taught (novel) |",
        "|---|---|---|---|---|---|",
    ]
    for c in calibrations:
        val, novel = c.validation.get("scores", {}), next(f for f in c.novel.values() if "auroc" in f).get("scores", {})
        for score in val:
            mark = "**" if score == c.score else ""
            lines.append(
                f"| {c.config} | {mark}{score}{mark} | {val[score]['auroc']:.3f} | {novel[score]['auroc']:.3f} | "
                f"{novel[score]['episode_auroc_mean']:.3f} / {novel[score]['episode_auroc_p10']:.3f} | "
                f"{100 * novel[score]['false_accept_at_taught_answered']:.1f}% |"
            )
    agreement = [next(f for f in c.novel.values() if "auroc" in f).get("rank_agreement") for c in calibrations]
    lines += ["", "Whether the selection episodes rank the four scores as novel classes do (Spearman over the four "
              "AUROCs; 1: the same order), and the chosen score against the runner-up, paired over the selection "
              "episodes' per-episode AUROCs:", ""]  # fmt: skip
    for c, rho in zip(calibrations, agreement):
        rho_text = "n/a" if rho is None else f"{rho:+.2f}"
        lines.append(f"- {c.config}: Spearman {rho_text}; {c.validation.get('power', {}).get('verdict', '')}")
    known = [rho for rho in agreement if rho is not None]
    if known:
        lines.append(f"- mean Spearman over the {len(known)} configs: {np.mean(known):+.2f}")
    return "\n".join(lines)


def fill(text: str, name: str, block: str, target: Path) -> str:
    updated, found = re.subn(
        rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->",
        lambda m: f"<!-- {name}:start -->\n{block}\n<!-- {name}:end -->",
        text,
        flags=re.S,
    )
    if not found:
        sys.exit(f"{target} has no <!-- {name}:start --> ... <!-- {name}:end --> block to fill")
    return updated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument(
        "--results",
        nargs="+",
        metavar="DIR",
        help="use the per-episode CSVs `fsl eval` wrote here instead of re-running; further folders add the "
        "sets a config ran there (e.g. only its shifted sets), replacing the same sets of the first",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BLOCKS),
        default=list(BLOCKS),
        metavar="BLOCK",
        help=f"regenerate only these blocks ({', '.join(BLOCKS)}; default all)",
    )
    args = parser.parse_args()
    catalog = load_catalog(args.data)
    all_configs = [load_config(path) for path in sorted((ROOT / "experiments").glob("*.yaml"))]
    needs_all = bool({"results", "robustness"} & set(args.only))
    adapted = {f"adapted-{r}-{h}" for r in ADAPTATIONS for h in ADAPTED_HEADS} | set(ADAPTED_HEADS)
    needed = set(HEADLINE) | (adapted if {"adaptation", "adaptation-shift"} & set(args.only) else set())
    configs = [c for c in all_configs if needs_all or c.name in needed]
    if args.results and set(args.only) <= {"robustness", "methods", "analysis", "calibration"}:
        configs = [c for c in configs if (Path(args.results[0]) / f"{c.name}.csv").is_file()]  # the ones run
    blocks = {}
    if "methods" in args.only:
        blocks["methods"] = methods_markdown(all_configs)
    if "analysis" in args.only:
        blocks["analysis"] = analysis_markdown(catalog)
    if "calibration" in args.only:
        blocks["calibration"] = calibration_markdown(SHIPPED_CALIBRATION_DIR)
    if "adaptation-runs" in args.only:
        blocks["adaptation-runs"] = adaptation_runs_markdown(ROOT / ADAPT_DIR)
    if set(args.only) & {"headline", "adaptation", "adaptation-shift", "results", "robustness"}:
        if args.results:
            frame, encoders = from_results(configs, [Path(folder) for folder in args.results])
        else:
            results = []
            for config in configs:
                results += run_experiment(config, catalog, ROOT / "episodes", progress=False, shifted=needs_all)
            frame, encoders = results_frame(results), sorted({r.hparams["encoder"] for r in results})
        shifted = frame[
            frame["episode_set"].isin(list(SHIFTED_PAIRS) + list(SHIFTED_PAIRS.values()))
            & ~frame["episode_set"].isin(STANDARD_BENCHMARKS)
        ]
        frame = frame.drop(shifted.index)
        robustness = with_split(pd.concat([shifted, frame]))
        frame = with_split(frame)
        first = frame[frame["split"] == 0]
        if "headline" in args.only:
            plot_summary(
                summary_table(first[first["method"].isin(HEADLINE)]),
                ROOT / "docs" / "headline.png",
                provenance=plain(ON_SPLIT_0),
            )
            blocks["headline"] = headline_markdown(frame)
        if "adaptation" in args.only:
            blocks["adaptation"] = adaptation_markdown(frame)
        if "adaptation-shift" in args.only:
            blocks["adaptation-shift"] = adaptation_shift_markdown(robustness)
        if "results" in args.only:
            plot_summary(summary_table(first), ROOT / "docs" / "results.png", provenance=plain(ON_SPLIT_0))
            blocks["results"] = results_markdown(catalog, frame, encoders)
        if "robustness" in args.only:
            splits = sorted(robustness["split"].unique())
            shown = set(shifted["method"])
            encoders = sorted({encoder_id(c.encoder.name, c.encoder.model, c.encoder.pretrained) for c in configs
                               if c.name in shown})  # fmt: skip
            blocks["robustness"] = (
                f"Encoder: `{', '.join(encoders)}`; class splits {', '.join(map(str, splits))}. Each cell: the paired "
                "drop in accuracy (points) of the shifted queries against their control, computed per split on the "
                "same episodes, then the mean over splits ± a 95% t interval over them, and (in brackets) how many "
                "splits had the set. Rendering sensitivity: the same episodes with every query photo re-rendered "
                "(grey 3:4 backdrop, halved, JPEG 40). Temporal: support from before 2012, queries from 2012 on, "
                "control queries from before. Sub-populations (gender, brand, usage, season): support and control "
                "queries from one side of each class, shifted queries from the other (see above). The last column: "
                "per split, the mean of the four sub-population drops, then over the splits that have all four."
                "\n\n" + shifted_markdown(robustness)
            )
    for name, block in blocks.items():
        target = ROOT / BLOCKS[name]
        with atomic_path(target) as tmp:
            tmp.write_text(fill(target.read_text(), name, block, target))
        print(f"{target.relative_to(ROOT)}: {name} block regenerated")


def results_markdown(catalog, frame, encoders) -> str:
    """docs/results.md's block: every config over the splits it ran on, then split 0 alone."""
    n_splits = frame["split"].nunique()
    block = (
        f"Encoder: `{', '.join(encoders)}`; catalog `{catalog.fingerprint}` ({len(catalog)} products); "
        f"600 frozen novel-class episodes per column and split, 15 queries per class. Accuracy in %.\n\n"
    )
    if n_splits > 1:
        block += (
            f"**Over {n_splits} class splits** (`fsl episodes --split-seeds "
            f"{' '.join(str(s) for s in sorted(frame['split'].unique()))}`: the same fractions and "
            "stratification, other classes novel): the mean of the split means ± a 95% t interval over the "
            "splits, which shows how much the choice of novel classes moves a number.\n\n"
            + across_markdown(frame)
            + "\n\n**Split 0 alone** (mean ± 95% CI over its 600 episodes):\n\n"
        )
    first = frame[frame["split"] == 0]
    return (
        block + markdown(catalog, first) + f"\n\n![accuracy per method, split 0](results.png)\n\n*{RESULTS_PICTURE}.*"
    )


if __name__ == "__main__":
    main()

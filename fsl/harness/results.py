"""Results files and tables: per-episode CSVs, summaries with t intervals, paired differences,
across-split means, plots and TensorBoard scalars."""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fsl.errors import FslError
from fsl.files import atomic_path, read_csv, write_csv
from fsl.harness.evaluate import EvalResult, mean_ci, paired_difference, percent

logger = logging.getLogger(__name__)

DESCRIBING = ("head", "fusion", "transductive")  # what a plot groups, colours and marks by
# results_frame also records `episodes_sha`, the digest of the episode file each row ran on: pairing
# rows of two draws of a set would compare different episodes as if they were the same


def results_frame(results: list[EvalResult]) -> pd.DataFrame:
    """Long table: one row per method, class split, episode set and episode, with the head, fusion and
    whether it is transductive, so a results file describes itself."""
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "method": r.method,
                    "split": r.hparams.get("split", 0),
                    "episode_set": r.episode_set,
                    "episode": np.arange(len(r.accuracy)),
                    "accuracy": r.accuracy,
                    **{k: r.hparams.get(k, "") for k in DESCRIBING},
                    "episodes_sha": r.hparams.get("episodes_sha", ""),
                }
            )
            for r in results
        ],
        ignore_index=True,
    )


def save_results(results: list[EvalResult], path: str | os.PathLike) -> Path:
    return write_csv(results_frame(results), path)


def load_results(paths: list[str | os.PathLike]) -> pd.DataFrame:
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise FslError(f"no results file at {path}; `fsl eval` writes them under results/")
        try:
            frame = read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise FslError(f"{path} is not a readable results CSV ({type(error).__name__})") from None
        missing = {"method", "episode_set", "episode", "accuracy"} - set(frame.columns)
        if missing:
            raise FslError(f"{path} is no results file: it lacks columns {sorted(missing)}")
        frames.append(with_split(frame).assign(source=str(path)))
    frame = pd.concat(frames, ignore_index=True).drop_duplicates(
        ["method", "split", "episode_set", "episode"], keep="last"
    )
    check_same_draws(frame)
    return frame.drop(columns="source")


def check_same_draws(frame: pd.DataFrame) -> None:
    """Results of one (split, episode set) that ran on different draws of it (an episode file
    redrawn in between) cannot be compared episode by episode: refused, naming the files."""
    if "episodes_sha" not in frame.columns:
        return
    known = frame[frame["episodes_sha"].fillna("").astype(str) != ""]
    for (split, episode_set), group in known.groupby(["split", "episode_set"]):
        if group["episodes_sha"].nunique() > 1:
            files = group.groupby("episodes_sha")["source"].first()
            raise FslError(
                f"{episode_set} (split {split}) was run on different draws of its episodes: "
                + "; ".join(f"{source} on {sha}" for sha, source in files.items())
                + ". Re-run the older config(s) with `fsl eval` on the current episode files"
            )


def with_split(frame: pd.DataFrame) -> pd.DataFrame:
    """Results files from before several splits existed are split 0."""
    return frame if "split" in frame.columns else frame.assign(split=0)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI over episodes per method, episode set and class split (with head, fusion and
    transductive, where known); the split column only where there is more than one."""
    frame = with_split(frame)
    several = frame["split"].nunique() > 1
    rows = []
    for (method, episode_set, split), group in frame.groupby(["method", "episode_set", "split"], sort=False):
        mean, ci = mean_ci(group.sort_values("episode")["accuracy"].to_numpy())
        described = {k: group[k].iloc[0] for k in DESCRIBING if k in group.columns}
        rows.append(
            {
                "method": method,
                "episode_set": episode_set,
                **({"split": split} if several else {}),
                "accuracy": mean,
                "ci95": ci,
                "episodes": len(group),
                **described,
            }
        )
    return pd.DataFrame(rows)


def across_splits(frame: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Per method and episode set: the mean over class splits of each split's mean accuracy, with a
    t interval over the S split means (S − 1 degrees of freedom): split-to-split variation, which the
    episode CIs of one split do not show. With `baseline`, also the paired difference to it, computed
    per split on the same episodes, then combined the same way."""
    frame = with_split(frame)
    means = frame.groupby(["method", "episode_set", "split"], sort=False)["accuracy"].mean()
    rows = []
    for (method, episode_set), per_split in means.groupby(level=[0, 1], sort=False):
        mean, ci = mean_ci(per_split.to_numpy())
        row = {"method": method, "episode_set": episode_set, "splits": len(per_split), "accuracy": mean, "ci95": ci}
        ours = frame[(frame["method"] == method) & (frame["episode_set"] == episode_set)]
        row.update({k: ours[k].iloc[0] for k in DESCRIBING if k in ours.columns})
        if baseline is not None:
            differences = []
            for split in per_split.index.get_level_values("split"):
                ours = frame[
                    (frame["method"] == method) & (frame["episode_set"] == episode_set) & (frame["split"] == split)
                ]
                theirs = frame[
                    (frame["method"] == baseline) & (frame["episode_set"] == episode_set) & (frame["split"] == split)
                ]
                if len(theirs) == len(ours) > 0:
                    differences.append(
                        paired_difference(
                            ours.sort_values("episode")["accuracy"].to_numpy(),
                            theirs.sort_values("episode")["accuracy"].to_numpy(),
                        )[0]
                    )
            if len(differences) == len(per_split):
                row["difference"], row["difference_ci95"] = mean_ci(np.array(differences))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every pair of methods on every episode set (and class split) both ran: mean difference ± 95% CI."""
    frame = with_split(frame)
    several = frame["split"].nunique() > 1
    rows = []
    for (episode_set, split), group in frame.groupby(["episode_set", "split"], sort=False):
        by_method = {m: g.set_index("episode")["accuracy"] for m, g in group.groupby("method", sort=False)}
        for a, b in itertools.combinations(by_method, 2):
            joined = pd.concat([by_method[a], by_method[b]], axis=1, join="inner")
            mean, ci = paired_difference(joined.iloc[:, 0].to_numpy(), joined.iloc[:, 1].to_numpy())
            rows.append(
                {
                    "episode_set": episode_set,
                    **({"split": split} if several else {}),
                    "a": a,
                    "b": b,
                    "a_minus_b": mean,
                    "ci95": ci,
                    "episodes": len(joined),
                    "significant": abs(mean) > ci,
                }
            )
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """A table as people read it: accuracy in percent with its 95% CI in one column (files keep fractions)."""
    shown = table.copy()
    if {"accuracy", "ci95"} <= set(shown.columns) and "a_minus_b" not in shown.columns:
        shown.insert(
            list(shown.columns).index("accuracy"),
            "accuracy % (95% CI)",
            [percent(m, c)[:-1] for m, c in zip(shown["accuracy"], shown["ci95"])],
        )
        shown = shown.drop(columns=["accuracy", "ci95"])
    if {"a_minus_b", "ci95"} <= set(shown.columns):
        shown.insert(
            list(shown.columns).index("a_minus_b"),
            "a - b, points (95% CI)",
            [f"{100 * d:+.1f} ± {100 * c:.1f}" for d, c in zip(shown["a_minus_b"], shown["ci95"])],
        )
        shown = shown.drop(columns=["a_minus_b", "ci95"])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def log_to_tensorboard(result: EvalResult, logdir: str | os.PathLike) -> Path:
    """Scalars per episode set, and the hparams view that puts methods side by side."""
    from torch.utils.tensorboard import SummaryWriter

    summary = result.summary
    split = result.hparams.get("split", 0)
    run_dir = (
        Path(logdir) / f"{result.method}" / (result.episode_set if not split else f"split{split}-{result.episode_set}")
    )
    with SummaryWriter(str(run_dir)) as writer:
        for step, value in enumerate(result.accuracy):
            writer.add_scalar(f"eval/{result.episode_set}/episode_accuracy", value, step)
        writer.add_hparams(
            {**result.hparams, "method": result.method, "episode_set": result.episode_set},
            {"hparam/accuracy": summary["accuracy"], "hparam/ci95": summary["ci95"]},
            run_name=".",
        )
    return run_dir


FUSION_COLOURS = {
    "image": "tab:blue",
    "text": "tab:orange",
    "concat": "tab:green",
    "weighted": "tab:purple",
    "gate": "tab:red",
}


def plot_summary(
    summary: pd.DataFrame, path: str | os.PathLike, interval: str = "over episodes", provenance: str = ""
) -> Path:
    """Accuracy in % with 95% CI bars, axes from 0: one panel per episode set on one shared x-axis; bars
    grouped by head, coloured by fusion; transductive heads hatched (they see every query of an episode).
    Differences between heads are judged by `plot_paired`, not by overlapping bars. One row per config
    and episode set: several class splits are first combined by `across_splits`. `provenance` (the
    split(s), the encoder, the command that made it) is written on the picture, top left."""
    if "split" in summary.columns and summary.duplicated(["method", "episode_set"]).any():
        raise FslError("plot_summary takes one row per config and episode set: combine splits with across_splits")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    summary = summary.copy()
    for column, default in (("head", ""), ("fusion", ""), ("transductive", False)):
        if column not in summary.columns:
            summary[column] = default
    summary["transductive"] = summary["transductive"].astype(str).str.lower() == "true"
    info = summary.groupby("method", sort=False)[["head", "fusion", "transductive"]].first()
    methods = info.sort_values(["transductive", "head", "fusion"], kind="stable").index.tolist()
    sets = list(dict.fromkeys(summary["episode_set"]))
    fig, axes = plt.subplots(
        1,
        len(sets),
        sharey=True,
        sharex=True,
        squeeze=False,
        figsize=(3.2 * len(sets) + 2.8, 0.26 * len(methods) + 1.6),
    )
    colours = [FUSION_COLOURS.get(info.at[m, "fusion"], "tab:gray") for m in methods]
    hatches = ["//" if info.at[m, "transductive"] else "" for m in methods]
    heads = info.loc[methods, "head"].tolist()
    breaks = [i - 0.5 for i in range(1, len(methods)) if heads[i] != heads[i - 1]]
    for ax, name in zip(axes[0], sets):
        part = summary[summary["episode_set"] == name].set_index("method").reindex(methods)
        ax.barh(
            np.arange(len(methods)),
            100 * part["accuracy"],
            xerr=100 * part["ci95"],
            capsize=2,
            color=colours,
            hatch=hatches,
            edgecolor="white",
            linewidth=0,
        )
        for y in breaks:
            ax.axhline(y, color="black", linewidth=0.5, alpha=0.4)
        ax.set_xlim(0, 100)  # from 0: bar lengths compare as the numbers do
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(np.arange(len(methods)), methods, fontsize=8)
    axes[0][0].invert_yaxis()
    legend = [Patch(color=c, label=f) for f, c in FUSION_COLOURS.items() if f in set(info["fusion"])]
    if info["transductive"].any():
        legend.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="transductive"))
    if legend:
        fig.legend(handles=legend, loc="upper right", fontsize=8, ncol=len(legend), frameon=False)
    fig.supxlabel(f"accuracy % (mean ± 95% CI {interval}, as the tables print it); heads grouped", fontsize=9)
    if provenance:
        fig.text(0.01, 1 - 0.08 / fig.get_figheight(), provenance, fontsize=7, va="top", color="dimgray")
    top = 1 - (0.6 if provenance else 0.45) / fig.get_figheight()  # room for the legend above the panels
    fig.tight_layout(rect=(0, 0, 1, top))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def plot_paired(paired: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The paired differences of `paired_table` (a − b on the same episodes), in points with their 95%
    CI and 0 marked: a bar whose interval does not cross 0 is a difference the episodes support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{row.a} − {row.b} · {row.episode_set}" + (f" · split {row.split}" if "split" in paired.columns else "")
        for row in paired.itertuples()
    ]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(paired) + 1.2))
    colours = ["tab:green" if s else "tab:gray" for s in paired["significant"]]
    ax.barh(np.arange(len(paired)), 100 * paired["a_minus_b"], xerr=100 * paired["ci95"], capsize=2, color=colours)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(np.arange(len(paired)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("a − b, paired on the same episodes (points, 95% CI; green: the interval excludes 0)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def earlier_results(path: Path, resolved_config: bytes, new, current_draw=None):
    """Rows of an earlier results file of the very same resolved config for (split, episode set)
    pairs not run now, so splits or shifted sets can be added one run at a time; nothing is kept
    from a file of another config, nor rows whose episode file has been redrawn since
    (`current_draw(split, set)` gives the digest of the file there now)."""

    config_file = path.with_suffix(".config.yaml")
    if not path.is_file() or not config_file.is_file() or config_file.read_bytes() != resolved_config:
        return new.iloc[:0]
    old = with_split(read_csv(path))
    if "episodes_sha" not in old.columns:  # from before results recorded their draw: never kept
        old = old.assign(episodes_sha="")
    ran = set(zip(new["split"], new["episode_set"]))
    keep = [(s, e) not in ran for s, e in zip(old["split"], old["episode_set"])]
    if current_draw is not None:
        drawn = old["episodes_sha"].fillna("").astype(str)
        same = {key: current_draw(*key) for key in set(zip(old["split"], old["episode_set"]))}
        keep = [k and sha == same[(s, e)] for k, sha, s, e in zip(keep, drawn, old["split"], old["episode_set"])]
        stale = sorted(
            {
                (int(s), e)
                for k, sha, s, e in zip(keep, drawn, old["split"], old["episode_set"])
                if not k and (s, e) not in ran
            }
        )
        if stale:
            logger.warning(
                f"{path}: dropped earlier rows of {', '.join(f'split {s} {e}' for s, e in stale)}: their "
                "episode files were redrawn since (or the rows predate recording which draw they ran on)"
            )
    return old[keep][list(new.columns)]


def split_drops(frame: pd.DataFrame, method: str, shifted: str, control: str) -> dict[int, float]:
    """Per class split: the mean over episodes of shifted minus control accuracy, paired episode by
    episode (the same support), for the splits where both sets ran."""
    frame = with_split(frame)
    ours = frame[frame["method"] == method]
    drops = {}
    for split, group in ours.groupby("split"):
        a = group[group["episode_set"] == shifted].sort_values("episode")["accuracy"].to_numpy()
        b = group[group["episode_set"] == control].sort_values("episode")["accuracy"].to_numpy()
        if len(a) and len(a) == len(b):
            drops[int(split)] = float((a - b).mean())
    return drops

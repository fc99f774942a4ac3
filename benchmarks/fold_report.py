"""The report the class-fold benchmarks share (fold_selection.py, head_folds.py, align_folds.py): each
candidate's fold figure beside its old selection's figure and its novel figures, and how well each
selection ranks the candidates as the novel classes do (Spearman; issue 33's target 0.6). Not a
benchmark itself (benchmarks/run_all.py skips it)."""

from __future__ import annotations

from collections.abc import Callable

from scipy.stats import spearmanr

TARGET = 0.6
NOVEL_SETS = ("novel-5w1s", "novel-5w5s", "novel-15w5s")


def print_fold_report(
    rows: list[dict], name: str, folds: dict, n_folds: int, old: str, old_cell: Callable[[dict], str]
) -> tuple[float, float]:
    """rows: one per candidate, {name: ..., "folds", "folds_ci", "steps", "validation" (the old
    selection's figure, None where not measured), "novel" (per NOVEL_SETS), "novel_mean"}; `folds`: the
    comparison (its "chosen" and power lines); `old`: the old selection's column header and `old_cell`
    its cell. Prints the table, the rank agreements and the power lines; returns Spearman's rank
    correlation with the novel means of the folds and of the old selection (over the rows it measured)."""
    print(f"| {name} | {n_folds} class folds (mean ± 95%) | chosen steps | {old} | novel 5w1s | novel 5w5s | "
          "novel 15w5s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        mark = " (chosen)" if row[name] == folds["chosen"] else ""
        print(f"| {row[name]}{mark} | {100 * row['folds']:.1f} ± {100 * row['folds_ci']:.1f} | "
              f"{', '.join(map(str, row['steps']))} | {old_cell(row)} | "
              + " | ".join(f"{100 * row['novel'][set_name]:.1f}" for set_name in NOVEL_SETS) + " |")  # fmt: skip
    by_folds = float(spearmanr([row["folds"] for row in rows], [row["novel_mean"] for row in rows]).statistic)
    judged = [row for row in rows if row["validation"] is not None]
    by_old = float(spearmanr([row["validation"] for row in judged], [row["novel_mean"] for row in judged]).statistic)
    flag = "" if by_folds >= TARGET else "  MISSED"
    among = "" if len(judged) == len(rows) else f" (the {len(judged)} measured there)"
    print(f"\nrank agreement with novel classes (Spearman): class folds {by_folds:+.2f} (target {TARGET}){flag}; "
          f"6 validation classes {by_old:+.2f}{among}")  # fmt: skip
    print(f"power line of the fold choice: {folds['power']['verdict']}; {folds['power_over_folds']['verdict']}")
    return by_folds, by_old

"""Disjoint base / validation / novel class splits, drawn once per seed and saved as CSV."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fsl.errors import FslError
from fsl.files import escape_cell, read_csv
from fsl.paths import DEFAULT_EPISODES_DIR, HasFingerprint, split_file

DEFAULT_FRACTIONS = (
    0.4,
    0.15,
    0.45,
)  # base, val, novel: the 39 real classes with >= 20 photos leave 17 novel, enough for 15-way
SPLITS = ("base", "val", "novel")
# Pools of splits. "select": the base and validation classes together, where the choices that learn
# nothing from base classes (temperature, "none of these" score and threshold, head options) are
# scored: 22 classes instead of 6 in split 0, so a choice has classes enough to see a difference.
# "all": every class of the split, what a tower adapted for your own categories trains on.
POOLS = {"select": ("base", "val"), "all": SPLITS}


# Class splits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSplit:
    """Disjoint base / val / novel classes of one label column, with the counts behind them."""

    column: str
    seed: int
    min_count: int
    table: pd.DataFrame  # columns: class, count, split, parent

    def classes(self, split: str) -> list[str]:
        """The classes of a split, or of a pool of splits (POOLS)."""
        if split not in SPLITS and split not in POOLS:
            raise FslError(f"unknown split {split!r}; choose one of {[*SPLITS, *POOLS]}")
        return sorted(self.table.loc[self.table["split"].isin(POOLS.get(split, (split,))), "class"])

    @property
    def name(self) -> str:
        return f"{self.column}-seed{self.seed}"

    def to_bytes(self) -> bytes:
        return self.table.map(escape_cell).to_csv(index=False).encode()

    @classmethod
    def load(
        cls, catalog: HasFingerprint, column: str, seed: int, root: str | os.PathLike = DEFAULT_EPISODES_DIR
    ) -> ClassSplit:
        """The split `fsl episodes` saved for this catalog, label column and seed (under one split's root)."""
        path = split_file(catalog, column, seed, root)
        if not path.is_file():
            raise FslError(f"no class split at {path}; run `fsl episodes` first")
        table = read_csv(path)
        if not {"class", "count", "split"} <= set(table.columns):
            raise FslError(f"{path} is not a class split (expected columns class, count, split)")
        return cls(column, seed, int(table["count"].min()) if len(table) else 0, table)


def distinct_photos(labels, groups: np.ndarray | None = None) -> pd.Series:
    """Products per label, near-duplicates (a shared group number) counted once."""
    labels = np.asarray(labels)
    return pd.Series(np.arange(len(labels)) if groups is None else np.asarray(groups)).groupby(labels).nunique()


def parent_of_each(labels: pd.Series, parents: pd.Series) -> pd.Series:
    """Each class's parent category: the one its products most often have (a product filed under
    another parent now and then does not move its class)."""
    return parents.groupby(labels).agg(lambda values: values.mode().iloc[0])


def split_classes(
    labels: pd.Series,
    min_count: int,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    parents: pd.Series | None = None,
    groups: np.ndarray | None = None,
) -> ClassSplit:
    """Seeded split of the classes with >= min_count examples into base / val / novel.

    With `parents` (e.g. masterCategory), each parent's classes are split on their own, so every
    split sees every parent that has at least three eligible classes. With near-duplicate `groups`,
    a class also needs min_count distinct photos (groups), so its episodes can always find queries
    that are no twin of the support.
    """
    counts = labels.value_counts()
    distinct = distinct_photos(labels, groups)
    eligible = counts[(counts >= min_count) & (distinct.reindex(counts.index) >= min_count)]
    if eligible.empty:
        raise FslError(
            f"no {labels.name} class has {min_count} examples (largest: {counts.idxmax()} with {counts.max()})"
        )
    parent_of = parent_of_each(labels, parents) if parents is not None else pd.Series("", index=eligible.index)
    rng = np.random.default_rng(seed)
    rows = []
    for parent, group in sorted(pd.Series(eligible.index).groupby(parent_of.reindex(eligible.index).values)):
        classes = sorted(group)
        rng.shuffle(classes)
        n_novel = round(fractions[2] * len(classes))
        n_val = round(fractions[1] * len(classes))
        if len(classes) >= 3:  # every split gets at least one class of this parent
            n_novel, n_val = max(n_novel, 1), max(n_val, 1)
            n_novel = min(n_novel, len(classes) - 1 - n_val)
        for i, name in enumerate(classes):
            split = "novel" if i < n_novel else "val" if i < n_novel + n_val else "base"
            rows.append({"class": name, "count": int(eligible[name]), "split": split, "parent": parent})
    table = pd.DataFrame(rows).sort_values(["split", "parent", "class"], kind="stable").reset_index(drop=True)
    return ClassSplit(str(labels.name), seed, min_count, table)

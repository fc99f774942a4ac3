"""Class folds of the selection pool (base ∪ validation classes), for choices that learn from base classes.

A choice that trains on base classes (an adaptation recipe, a meta-trained head, an alignment) cannot
be scored on those classes, and a split's few validation classes saturate (98% at 6 classes). Folds
give it more classes to see: the pool is cut into k folds; fold f trains on the other folds' classes
and is scored on its own, held out; the choice is the mean over folds. Novel classes are never in the
pool. Classes whose products share a near-duplicate group (the same photo filed under two classes)
go to one fold, so no held-out photo has a twin among the training products. Folds may also hold
whole groups of a coarser column (`--fold-by subCategory`: every class of Topwear in one fold), so a
held-out class has no sibling among the training classes, as a novel class need not have one.

A fold is scored as the README's result table reads a tower (FOLD_SETTINGS: 5-way 1- and 5-shot, and
every held class at 5 shots, where a gain that grows with the ways shows), and its step is chosen on
half of each set's episodes and its score read on the other half (CHOOSE, REPORT): a score read on the
episodes that chose the step would be the best of many noisy points, flattering every recipe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from fsl.episodes.frozen import SAMPLER_VERSION, EpisodeSet, file_digest
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.siblings import PARENT_COLUMN
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError

DEFAULT_FOLDS = 4
MAX_FOLDS = 50  # each scoring setting's seeds take 50 values
FOLD_SEED_OFFSET = 700  # split seed * 1000 + 700 + MAX_FOLDS * setting + f: below the selection sets' 900
# name: (n_way, or None for every held class; k_shot), in seed order
FOLD_SETTINGS = {"5w5s": (5, 5), "5w1s": (5, 1), "allway-5s": (None, 5)}
CHOOSE, REPORT = slice(0, None, 2), slice(1, None, 2)  # a scoring set's episodes: choosing the step, reporting


@dataclass(frozen=True)
class ClassFold:
    """One fold: the classes it trains on and the ones it holds out (scored on, never trained on)."""

    index: int
    train: tuple[str, ...]
    held: tuple[str, ...]
    by: str | None = None  # the coarser column whose groups folds hold whole (None: classes alone)

    @property
    def name(self) -> str:
        """Its checkpoint folder and run name: fold<f>, or fold<f>-by-<column>."""
        return f"fold{self.index}" if self.by is None else f"fold{self.index}-by-{self.by}"

    def record(self) -> dict:
        """What a fold run's sidecar says of its fold."""
        return {"index": self.index, "held": list(self.held), **({} if self.by is None else {"by": self.by})}


def linked_classes(
    classes: list[str], labels: np.ndarray, groups: np.ndarray | None, parents: np.ndarray | None = None
) -> list[list[str]]:
    """The pool's classes as components: two classes are linked when a near-duplicate group holds
    products of both, or (`parents`) when most products of each have the same parent value (labels,
    groups and parents: one entry per catalog product)."""
    index = {c: i for i, c in enumerate(classes)}
    edges: list[tuple[int, int]] = []
    in_pool = np.isin(labels, classes)
    for links in (groups, parents):
        if links is None:
            continue
        frame = pd.DataFrame({"link": np.asarray(links)[in_pool], "label": np.asarray(labels)[in_pool]})
        if links is parents:  # a class's parent: the value most of its products have
            frame = frame.groupby("label")["link"].agg(lambda values: values.mode().iloc[0]).reset_index()
        for members in frame.groupby("link")["label"].unique():
            edges += [(index[members[0]], index[other]) for other in members[1:]]
    rows, cols = (np.array([edge[i] for edge in edges], dtype=np.int64) for i in (0, 1))
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(classes), len(classes)))
    _, component = connected_components(graph, directed=False)
    components: dict[int, list[str]] = {}
    for c in classes:
        components.setdefault(int(component[index[c]]), []).append(c)
    return sorted(components.values(), key=lambda members: (-len(members), members))


def fold_column(choice: str | None, label_column: str) -> str | None:
    """The column whose groups the folds hold whole (`--fold-by`): by default (None) the label column's
    parent (subCategory for articleType; none for a column without one), so a held-out class has no
    sibling among its fold's training classes, as a novel class need not; "none": classes alone."""
    if choice is None:
        return PARENT_COLUMN.get(label_column)
    return None if choice == "none" else choice


def class_folds(
    split: ClassSplit,
    labels,
    groups: np.ndarray | None = None,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    parents: pd.Series | None = None,
) -> list[ClassFold]:
    """k folds of the split's base ∪ validation classes, near-duplicate-linked classes together (and
    with `parents`, a catalog column per product, classes of one parent value together), sizes as even
    as the links allow (largest component first, each to the fold with fewest classes, ties broken by a
    seeded order)."""
    pool = split.classes("select")
    if type(k) is not int or not 2 <= k <= min(len(pool) // 2, MAX_FOLDS):
        raise FslError(
            f"folds must be a whole number from 2 to {min(len(pool) // 2, MAX_FOLDS)} (each fold holds at least "
            f"2 of the {len(pool)} base and validation classes); got {k!r}"
        )
    by = None if parents is None else str(parents.name)
    if by == split.column:
        raise FslError(f"folds by {by!r} would hold each class alone: name a coarser column (e.g. subCategory)")
    components = linked_classes(pool, np.asarray(labels), groups, None if parents is None else parents.to_numpy())
    rng = np.random.default_rng(seed)
    order = rng.permutation(k)  # which fold wins a tie
    held: list[list[str]] = [[] for _ in range(k)]
    for members in components:
        target = min(range(k), key=lambda f: (len(held[f]), order[f]))
        held[target].extend(members)
    if min(len(h) for h in held) < 2:
        links = "near-duplicate links" + ("" if by is None else f" and {by} groups")
        fix = "use fewer folds" + ("" if by is None else " or folds of classes alone (--fold-by none)")
        raise FslError(f"{links} tie the pool's classes into too few groups for {k} folds of 2 classes or more; {fix}")
    return [ClassFold(f, tuple(c for c in pool if c not in held[f]), tuple(sorted(held[f])), by) for f in range(k)]


def fold_episodes(
    fold: ClassFold,
    split: ClassSplit,
    ids: np.ndarray,
    labels,
    catalog_fingerprint: str,
    groups: np.ndarray | None = None,
    setting: str = "5w5s",
    q_query: int = 15,
    n_episodes: int = 300,
) -> EpisodeSet:
    """Scoring episodes over a fold's held classes in one of FOLD_SETTINGS (ways capped at the held
    classes), seeded by split, setting and fold, so every recipe compared on the fold meets the very
    same episodes (paired)."""
    n_way, k_shot = FOLD_SETTINGS[setting]
    n_way = len(fold.held) if n_way is None else min(n_way, len(fold.held))
    seed = split.seed * 1000 + FOLD_SEED_OFFSET + MAX_FOLDS * list(FOLD_SETTINGS).index(setting) + fold.index
    sampler = EpisodeSampler(ids, labels, list(fold.held), n_way, k_shot, q_query, seed, groups)
    meta = {
        "label_column": split.column,
        "split": fold.name,
        "split_seed": split.seed,
        "classes": list(fold.held),
        "train_classes": list(fold.train),
        "seed": seed,
        "sampler_version": SAMPLER_VERSION,
        "catalog_fingerprint": catalog_fingerprint,
    }
    episode_set = EpisodeSet(f"{split.column}-{fold.name}-{n_way}w{k_shot}s", sampler.sample(n_episodes), meta)
    episode_set.digest = file_digest(episode_set.to_bytes())
    return episode_set


def fold_sets(
    fold: ClassFold, split: ClassSplit, ids: np.ndarray, labels, catalog_fingerprint: str, groups=None
) -> dict[str, EpisodeSet]:
    """A fold's scoring sets, one per FOLD_SETTINGS entry, named by setting."""
    return {
        setting: fold_episodes(fold, split, ids, labels, catalog_fingerprint, groups, setting)
        for setting in FOLD_SETTINGS
    }


def check_fold(fold: ClassFold, split: ClassSplit) -> None:
    """A fold never trains on its held classes, and neither side holds a novel (test) class."""
    novel = set(split.classes("novel"))
    if set(fold.train) & set(fold.held):
        raise FslError(f"fold {fold.index} trains on classes it holds out: {sorted(set(fold.train) & set(fold.held))}")
    if novel & (set(fold.train) | set(fold.held)):
        raise FslError(
            f"fold {fold.index} holds novel classes, which are read only to report: "
            f"{sorted(novel & (set(fold.train) | set(fold.held)))}"
        )

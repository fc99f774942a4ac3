"""Hard open-set episodes: every untaught class is a sibling of a taught one (the same parent category).

Random open-set episodes mostly leave out classes far from the taught ones, so "none of these" looks
solved on them while a user's untaught sports shoe is answered "Heels". Here each episode teaches
HARD_TAUGHT classes and asks about HARD_UNTAUGHT more, and each untaught class shares its parent
(the subCategory of an articleType, the masterCategory of a subCategory) with a taught one: slots 0
and 1 are taught classes from two different families, slots 2..4 taught classes drawn from the
rest, and the untaught slots 5 and 6 are a sibling of slot 0 and of slot 1. Teaching the first
HARD_TAUGHT slots of an episode (harness.calibration.open_set_episodes) gives the open-set episode;
teaching only the first two keeps both siblings among the untaught.
"""

from __future__ import annotations

import logging

import numpy as np

from fsl.data.catalog import Catalog
from fsl.episodes.frozen import EpisodeSet, episode_meta
from fsl.episodes.near_duplicates import NearDuplicates
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.splits import ClassSplit, parent_of_each

HARD_TAUGHT = 5
HARD_UNTAUGHT = 2  # one sibling of each of two taught classes, from two different families
logger = logging.getLogger(__name__)

PARENT_COLUMN = {"articleType": "subCategory", "subCategory": "masterCategory"}
# name: (split or pool, shots); 5 + 2 ways, 15 queries per class; the selection set chooses, novel reports
HARD_BENCHMARKS = {"select-hard-7w5s": ("select", 5), "novel-hard-7w5s": ("novel", 5)}
HARD_SEED_OFFSET = 950  # seed * 1000 + 950 + i: clear of the standard, shifted and selection sets' seeds


def parents_of(catalog: Catalog, column: str) -> dict[str, str] | None:
    """Each class of `column` with its parent category (splits.parent_of_each), or None where the
    column has no parent (gender, colour, season, usage)."""
    if column not in PARENT_COLUMN:
        return None
    return parent_of_each(catalog.labels(column), catalog.labels(PARENT_COLUMN[column])).to_dict()


def families(classes: list[str], parents: dict[str, str]) -> list[list[int]]:
    """The classes (indices into `classes`) grouped by parent, only the groups with two or more."""
    grouped: dict[str, list[int]] = {}
    for index, name in enumerate(classes):
        grouped.setdefault(parents[name], []).append(index)
    return [members for _, members in sorted(grouped.items()) if len(members) >= 2]


def sibling_picks(classes: list[str], parents: dict[str, str], n_episodes: int, seed: int) -> np.ndarray | None:
    """[E, HARD_TAUGHT + HARD_UNTAUGHT] class indices laid out as the module says, or None where the
    classes hold fewer than two families or too few classes for the taught slots."""
    grouped = families(classes, parents)
    if len(grouped) < HARD_UNTAUGHT or len(classes) < HARD_TAUGHT + HARD_UNTAUGHT:
        return None
    rng = np.random.default_rng(seed)
    picks = np.empty((n_episodes, HARD_TAUGHT + HARD_UNTAUGHT), dtype=np.int64)
    for episode in range(n_episodes):
        chosen = rng.choice(len(grouped), HARD_UNTAUGHT, replace=False)
        pairs = [rng.choice(grouped[family], 2, replace=False) for family in chosen]  # (taught, its sibling)
        anchors, siblings = [int(p[0]) for p in pairs], [int(p[1]) for p in pairs]
        rest = np.setdiff1d(np.arange(len(classes)), anchors + siblings)
        others = rng.choice(rest, HARD_TAUGHT - HARD_UNTAUGHT, replace=False).tolist()
        picks[episode] = anchors + others + siblings
    return picks


def draw_hard_sets(
    catalog: Catalog,
    split: ClassSplit,
    seed: int,
    n_episodes: int,
    q_query: int,
    near_duplicates: NearDuplicates | None = None,
) -> dict[str, EpisodeSet]:
    """The hard open-set sets the split allows (HARD_BENCHMARKS), by file stem; a split or pool with
    fewer than two families of siblings has none."""
    parents = parents_of(catalog, split.column)
    if parents is None:
        return {}
    ids = catalog.products["id"].to_numpy()
    labels = catalog.labels(split.column)
    groups = None if near_duplicates is None else near_duplicates.group_index(ids)
    drawn = {}
    n_way = HARD_TAUGHT + HARD_UNTAUGHT
    for offset, (name, (split_name, k_shot)) in enumerate(HARD_BENCHMARKS.items()):
        classes = split.classes(split_name)
        picks = sibling_picks(classes, parents, n_episodes, seed + offset)
        if picks is None:
            logger.warning(f"skipping {name}: the {split_name} classes hold fewer than two families of siblings")
            continue
        sampler = EpisodeSampler(ids, labels, classes, n_way, k_shot, q_query, seed + offset, groups)
        meta = episode_meta(
            catalog.fingerprint, split, split_name, classes, seed + offset, n_way, k_shot, q_query, n_episodes,
            near_duplicates,
        )  # fmt: skip
        meta["open_set"] = {"kind": "siblings", "taught": HARD_TAUGHT, "parent": PARENT_COLUMN[split.column]}
        stem = f"{split.column}-{name}"
        drawn[stem] = EpisodeSet(stem, sampler.sample(n_episodes, picks), meta)
    return drawn

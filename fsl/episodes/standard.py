"""The standard benchmarks of a catalog: its class split, the frozen sets each split allows, the
near-duplicate groups they are drawn with, and a set read back checked."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fsl.config import EncoderConfig, ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.encoders.factory import encoder_from_config
from fsl.episodes.frozen import (
    SELECTION_BENCHMARKS,
    SELECTION_SEED_OFFSET,
    STANDARD_BENCHMARKS,
    EpisodeSet,
    digests_bytes,
    draw_episode_set,
    file_digest,
    read_digests,
)
from fsl.episodes.near_duplicates import (
    NEAR_DUPLICATE_THRESHOLD,
    NearDuplicates,
    near_duplicate_groups,
)
from fsl.episodes.shift import draw_subpopulation_sets, draw_temporal_sets
from fsl.episodes.siblings import HARD_SEED_OFFSET, draw_hard_sets
from fsl.episodes.splits import ClassSplit, split_classes
from fsl.errors import FslError
from fsl.files import write_bytes
from fsl.paths import (
    DEFAULT_EPISODES_DIR,
    FEATURES_ROOT,
    episode_digests_path,
    episode_set_path,
    episodes_dir_for,
    near_duplicates_path,
)
from fsl.store.open import open_store

logger = logging.getLogger(__name__)

MIN_COUNT = 20  # 5 shots + 15 queries: every class of a split serves every standard benchmark


def saved_near_duplicates(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> NearDuplicates | None:
    """The near-duplicate groups the episode sets under `root` were drawn with, if any."""
    path = near_duplicates_path(catalog, root)
    return NearDuplicates.load(path, catalog.fingerprint) if path.is_file() else None


def near_duplicate_index(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> np.ndarray | None:
    """[P] each catalog product's near-duplicate group number, where the sets under `root` were drawn with them."""
    near_duplicates = saved_near_duplicates(catalog, root)
    return None if near_duplicates is None else near_duplicates.group_index(catalog.products["id"].to_numpy())


def near_duplicates_for(
    catalog: Catalog,
    root: str | os.PathLike = DEFAULT_EPISODES_DIR,
    encoder: EncoderConfig = EncoderConfig("offline"),
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    store_root: str | os.PathLike = FEATURES_ROOT,
) -> NearDuplicates:
    """The catalog's near-duplicate groups: read from root/<fingerprint>/near-duplicates.json when it was
    computed with this encoder and threshold, else computed from the encoder's store (embedded if cold)."""
    saved = saved_near_duplicates(catalog, root)
    if saved is not None and saved.encoder_id == encoder_from_config(encoder).id and saved.threshold == threshold:
        return saved
    store = open_store(catalog, encoder, store_root)
    found = near_duplicate_groups(store.ids, store.image, store.encoder_id, catalog.fingerprint, threshold)
    logger.info(
        f"near-duplicate photos (image cosine >= {threshold:g}, {store.encoder_id}): {len(found.groups)} groups "
        f"of {sum(map(len, found.groups))} products"
    )
    return found


def draw_standard_episodes(
    catalog: Catalog,
    root: str | os.PathLike = DEFAULT_EPISODES_DIR,
    column: str = "articleType",
    seed: int = 0,
    n_episodes: int = 600,
    q_query: int = 15,
    stratify: str | None = "masterCategory",
    benchmarks: dict = STANDARD_BENCHMARKS,
    force: bool = False,
    selection: dict = SELECTION_BENCHMARKS,
    near_duplicates: NearDuplicates | None = None,
) -> tuple[ClassSplit, list[Path]]:
    """The split (saved as CSV) and one frozen file per standard benchmark the split allows, and per
    `selection` set (over base ∪ validation classes); with `near_duplicates`, their groups (saved beside
    them) are never split between support and queries.

    Frozen files are test sets: one that exists with other content is never replaced unless `force`."""
    if type(n_episodes) is not int or n_episodes < 1 or type(q_query) is not int or q_query < 1:
        raise FslError(f"episodes and queries must be whole numbers >= 1, got {n_episodes} and {q_query}")
    labels = catalog.labels(column)
    parents = catalog.labels(stratify) if stratify else None
    groups = None if near_duplicates is None else near_duplicates.group_index(catalog.products["id"].to_numpy())
    split = split_classes(labels, MIN_COUNT, seed, parents=parents, groups=groups)
    out = episodes_dir_for(catalog, root)
    files = {out / f"{split.name}-split.csv": split.to_bytes()}
    if near_duplicates is not None:
        files[near_duplicates_path(catalog, root)] = near_duplicates.to_bytes()
    seeds = {name: seed * 1000 + offset for offset, name in enumerate(benchmarks)}
    seeds |= {name: seed * 1000 + SELECTION_SEED_OFFSET + offset for offset, name in enumerate(selection)}
    for name, (split_name, n_way, k_shot) in (benchmarks | selection).items():
        available = len(split.classes(split_name))
        if (n_way or available) > available or available < 2:
            logger.warning(f"skipping {name}: the {split_name} split has only {available} class(es)")
            continue
        episode_set = draw_episode_set(
            f"{column}-{name}",
            catalog.products["id"].to_numpy(),
            labels,
            split,
            split_name,
            catalog.fingerprint,
            n_way,
            k_shot,
            q_query,
            n_episodes,
            seed=seeds[name],
            near_duplicates=near_duplicates,
        )
        files[out / f"{episode_set.name}.npz"] = episode_set.to_bytes()
    drawn_apart = draw_temporal_sets(catalog, split, seed * 1000 + len(benchmarks), n_episodes, near_duplicates)
    drawn_apart |= draw_subpopulation_sets(
        catalog, split, seed * 1000 + len(benchmarks) + 1, n_episodes, near_duplicates
    )
    drawn_apart |= draw_hard_sets(catalog, split, seed * 1000 + HARD_SEED_OFFSET, n_episodes, q_query, near_duplicates)
    for name, episode_set in drawn_apart.items():
        files[out / f"{name}.npz"] = episode_set.to_bytes()
    changed = [path for path, payload in files.items() if path.exists() and path.read_bytes() != payload]
    if changed and not force:
        raise FslError(
            f"{changed[0]} exists with other content{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; "
            "frozen episode sets are test sets and are never replaced silently. Keep them, move them "
            "away, or pass --force to replace them"
        )
    digests_file = episode_digests_path(catalog, root)  # derived from the files: merged, never refused
    drawn = {path.name: file_digest(payload) for path, payload in files.items() if path.suffix == ".npz"}
    files[digests_file] = digests_bytes({**read_digests(digests_file), **drawn})
    written = [
        write_bytes(path, payload)
        for path, payload in files.items()
        if not path.exists() or path.read_bytes() != payload
    ]
    if not written:
        logger.info(f"episode sets under {out} are unchanged (same split and seed give the same bytes)")
    return split, written


def load_episode_set(
    config: ExperimentConfig, catalog: Catalog, name: str, episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR
) -> EpisodeSet:
    """A frozen set of the config's label column, checked: byte for byte the file drawn (its digest in
    digests.json), every product present under its slot's class, and no query a near-duplicate of its
    support (by the groups it was drawn with)."""
    path = episode_set_path(catalog, config.label_column, name, episodes_root)
    episode_set = EpisodeSet.load(path, catalog.fingerprint)
    episode_set.check_digest(read_digests(episode_digests_path(catalog, episodes_root)).get(path.name), path)
    ids = catalog.products["id"].to_numpy()
    episode_set.check_labels(ids, catalog.labels(config.label_column).to_numpy(), path)
    drawn_with = episode_set.meta.get("near_duplicates") or {}
    saved = saved_near_duplicates(catalog, episodes_root)
    if saved is not None and drawn_with.get("sha256") == saved.digest:
        episode_set.check_near_duplicates(saved.group_index(ids), ids, path)
    return episode_set

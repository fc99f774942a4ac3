"""The data flow end to end, shared by the CLI and the quickstart: store, episodes, experiments."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from fsl.catalog import Catalog
from fsl.config import EncoderConfig, ExperimentConfig
from fsl.encoder import Encoder, create_encoder
from fsl.episodes import STANDARD_BENCHMARKS, ClassSplit, EpisodeSet, draw_episode_set, split_classes
from fsl.evaluate import EvalResult, run_episodes
from fsl.features import DEFAULT_ROOT, FeatureStore, embed_catalog
from fsl.fusion import fused_features
from fsl.methods import create_head

DEFAULT_EPISODES_DIR = Path("episodes")
MIN_COUNT = 20  # 5 shots + 15 queries: every class of a split serves every standard benchmark


@lru_cache(maxsize=4)
def encoder_from_config(config: EncoderConfig) -> Encoder:
    options = {"model": config.model, "pretrained": config.pretrained} if config.name == "clip" else {}
    return create_encoder(config.name, device=config.device, **options)


def open_store(catalog: Catalog, config: EncoderConfig, store_root: str | os.PathLike = DEFAULT_ROOT) -> FeatureStore:
    """The catalog's features by this encoder: loaded when warm, embedded (resumably) when not."""
    return embed_catalog(catalog, encoder_from_config(config), store_root)


def episodes_dir_for(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> Path:
    """Episode sets live under episodes/<catalog fingerprint>/, so each catalog finds its own."""
    return Path(root) / catalog.fingerprint


def draw_standard_episodes(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                           column: str = "articleType", seed: int = 0, n_episodes: int = 600,
                           q_query: int = 15, stratify: str | None = "masterCategory",
                           benchmarks: dict = STANDARD_BENCHMARKS) -> tuple[ClassSplit, list[Path]]:
    """The split (saved as CSV) and one frozen file per standard benchmark the split allows."""
    labels = catalog.labels(column)
    parents = catalog.labels(stratify) if stratify else None
    split = split_classes(labels, MIN_COUNT, seed, parents=parents)
    out = episodes_dir_for(catalog, root)
    split.save(out / f"{split.name}-split.csv")
    written = []
    for offset, (name, (split_name, n_way, k_shot)) in enumerate(benchmarks.items()):
        if n_way and n_way > len(split.classes(split_name)):
            print(f"skipping {name}: the {split_name} split has only {len(split.classes(split_name))} classes")
            continue
        episode_set = draw_episode_set(f"{column}-{name}", catalog.products["id"].to_numpy(), labels, split,
                                       split_name, catalog.fingerprint, n_way, k_shot, q_query, n_episodes,
                                       seed=seed * 1000 + offset)
        written.append(episode_set.save(out / f"{episode_set.name}.npz"))
    return split, written


def run_experiment(config: ExperimentConfig, catalog: Catalog, episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                   store_root: str | os.PathLike = DEFAULT_ROOT, progress: bool = True) -> list[EvalResult]:
    """One config's head on each of its frozen episode sets."""
    store = open_store(catalog, config.encoder, store_root)
    features = fused_features(store, config.fusion, config.text_variant)
    head = create_head(config.method, **config.method_options)
    hparams = {"fusion": config.fusion, "text_variant": config.text_variant if config.fusion != "image" else "-",
               "encoder": store.encoder_id}
    results = []
    for name in config.episodes:
        episode_set = EpisodeSet.load(episodes_dir_for(catalog, episodes_root) / f"{config.label_column}-{name}.npz",
                                      catalog.fingerprint)
        accuracy = run_episodes(head, features, store.ids, episode_set, config.batch_size, progress)
        results.append(EvalResult(config.name, name, accuracy,
                                  {**hparams, "n_way": episode_set.episodes.n_way,
                                   "k_shot": episode_set.episodes.k_shot}))
    return results

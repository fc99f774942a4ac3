"""The data flow end to end, shared by the CLI and the quickstart: store, episodes, experiments."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsl import FslError
from fsl.catalog import Catalog
from fsl.checkpoint import load_head
from fsl.config import EncoderConfig, ExperimentConfig
from fsl.encoder import Encoder, create_encoder, encoder_id
from fsl.episodes import (
    NEAR_DUPLICATE_THRESHOLD,
    NEAR_DUPLICATES_FILE,
    STANDARD_BENCHMARKS,
    ClassSplit,
    EpisodeSet,
    NearDuplicates,
    draw_episode_set,
    file_digest,
    near_duplicate_groups,
    split_classes,
)
from fsl.evaluate import EvalResult, run_episodes, store_rows
from fsl.features import DEFAULT_ROOT, FeatureStore, embed_catalog
from fsl.fusion import create_fusion, store_features
from fsl.io import CACHE_DIR, read_csv, write_bytes
from fsl.methods import FewShotHead, create_head
from fsl.shift import RERENDERED, SHIFTED_PAIRS, ReplacedImages, draw_temporal_sets, rerendered_image_features

DEFAULT_EPISODES_DIR = Path("episodes")
DEFAULT_CHECKPOINTS = Path("checkpoints")
MIN_COUNT = 20  # 5 shots + 15 queries: every class of a split serves every standard benchmark


class LazyEncoder:
    """The encoder a config names, built on first use: warm commands need only its id (the store
    key), so `fsl eval` and `fsl train` on a warm store never load weights."""

    def __init__(self, config: EncoderConfig):
        self.config = config
        self.id = encoder_id(config.name, config.model, config.pretrained)
        self._built: Encoder | None = None
        self._runtime_chosen = False

    def __getattr__(self, name: str):  # only for what __init__ did not set: the model's own parts
        return getattr(self.load(images=name in ("embed_pixels", "encode_images")), name)

    def load(self, images: bool = True) -> Encoder:
        """The built encoder; with `images`, its image runtime chosen too (ONNX Runtime or eager). A
        server calls this before its first request; everything else, on first use."""
        if self._built is None:
            config = self.config
            options = ({"model": config.model, "pretrained": config.pretrained} if config.name == "clip"
                       else {"pretrained": config.pretrained} if config.name == "aligned" else {})
            self._built = create_encoder(config.name, device=config.device, **options)
        if images and not self._runtime_chosen:
            self._runtime_chosen = True
            if self.config.runtime != "eager" and self.config.device == "cpu":
                said = self._built.use_onnx(CACHE_DIR / "onnx")
                if self.config.runtime == "onnx" and self._built.runtime is None:
                    raise FslError(f"runtime onnx was asked for, but: {said}")
                print(f"fsl: {said}", file=sys.stderr)
        return self._built


@lru_cache(maxsize=4)
def encoder_from_config(config: EncoderConfig) -> LazyEncoder:
    return LazyEncoder(config)


def open_store(catalog: Catalog, config: EncoderConfig, store_root: str | os.PathLike = DEFAULT_ROOT) -> FeatureStore:
    """The catalog's features by this encoder: loaded when warm, embedded (resumably) when not; an
    aligned store is computed from the offline store's features."""
    if config.name == "aligned":
        from fsl.align import aligned_store

        return aligned_store(catalog, config.pretrained, store_root, encoder_from_config(config).id, config.runtime)
    return embed_catalog(catalog, encoder_from_config(config), store_root)


def shared_space(encoder_id: str) -> bool:
    """Whether image and text features live in one space (class-name texts compare with photos)."""
    return encoder_id.startswith(("clip:", "aligned:"))


def check_alignment(store: FeatureStore, episode_set: EpisodeSet) -> None:
    """An aligned space was trained on one split's base classes: episodes of another split (whose
    novel classes it may have trained on) are refused."""
    alignment = store.manifest.get("alignment")
    if alignment and alignment["split_seed"] != episode_set.meta.get("split_seed"):
        raise FslError(f"feature store {store.path.name} is aligned on the base classes of split seed "
                       f"{alignment['split_seed']}; episode set {episode_set.name!r} comes from split seed "
                       f"{episode_set.meta.get('split_seed')}, whose test classes it may have trained on. "
                       "Align on that split (fsl align --split-seed N)")


def split_root(root: str | os.PathLike, split_seed: int) -> Path:
    """Where the files of class split `split_seed` live under an episodes (or checkpoints, runs) root:
    split 0 at the root itself (as before several splits existed), split s in root/split<s>, so every
    function that takes a root works on any split unchanged."""
    return Path(root) if split_seed == 0 else Path(root) / f"split{split_seed}"


def available_splits(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                     column: str = "articleType") -> list[int]:
    """The split seeds drawn for this catalog (`fsl episodes --split-seeds ...`), 0 first."""
    seeds = [0] if (episodes_dir_for(catalog, root) / f"{column}-seed0-split.csv").is_file() else []
    for folder in sorted(Path(root).glob("split*")):
        seed = folder.name.removeprefix("split")
        if seed.isdigit() and int(seed) > 0 and (episodes_dir_for(catalog, folder) / f"{column}-seed{seed}-split.csv").is_file():
            seeds.append(int(seed))
    return sorted(seeds)


def splits_for(config: ExperimentConfig, catalog: Catalog, episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR,
               store_root: str | os.PathLike = DEFAULT_ROOT) -> list[int]:
    """Every split drawn for the catalog, less those the config's store cannot serve: an aligned space
    trained on one split's base classes has seen the other splits' novel classes (said, then skipped)."""
    splits = available_splits(catalog, episodes_root, config.label_column)
    if not splits:
        raise FslError(f"no class split under {episodes_root} for this catalog; run `fsl episodes` first")
    store = open_store(catalog, config.encoder, store_root)
    alignment = store.manifest.get("alignment")
    if alignment and len(splits) > 1:
        print(f"fsl: {config.name}: its aligned space was trained on split {alignment['split_seed']}; "
              f"the other splits ({', '.join(str(s) for s in splits if s != alignment['split_seed'])}) are skipped",
              file=sys.stderr)
        splits = [s for s in splits if s == alignment["split_seed"]]
    return splits


def episodes_dir_for(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> Path:
    """Episode sets live under episodes/<catalog fingerprint>/, so each catalog finds its own."""
    return Path(root) / catalog.fingerprint


def saved_near_duplicates(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> NearDuplicates | None:
    """The near-duplicate groups the episode sets under `root` were drawn with, if any."""
    path = episodes_dir_for(catalog, root) / NEAR_DUPLICATES_FILE
    return NearDuplicates.load(path, catalog.fingerprint) if path.is_file() else None


def near_duplicates_for(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                        encoder: EncoderConfig = EncoderConfig("offline"), threshold: float = NEAR_DUPLICATE_THRESHOLD,
                        store_root: str | os.PathLike = DEFAULT_ROOT) -> NearDuplicates:
    """The catalog's near-duplicate groups: read from root/<fingerprint>/near-duplicates.json when it was
    computed with this encoder and threshold, else computed from the encoder's store (embedded if cold)."""
    saved = saved_near_duplicates(catalog, root)
    if saved is not None and saved.encoder_id == encoder_from_config(encoder).id and saved.threshold == threshold:
        return saved
    store = open_store(catalog, encoder, store_root)
    found = near_duplicate_groups(store.ids, store.image, store.encoder_id, catalog.fingerprint, threshold)
    print(f"near-duplicate photos (image cosine >= {threshold:g}, {store.encoder_id}): {len(found.groups)} groups "
          f"of {sum(map(len, found.groups))} products")
    return found


def draw_standard_episodes(catalog: Catalog, root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                           column: str = "articleType", seed: int = 0, n_episodes: int = 600,
                           q_query: int = 15, stratify: str | None = "masterCategory",
                           benchmarks: dict = STANDARD_BENCHMARKS, force: bool = False,
                           near_duplicates: NearDuplicates | None = None) -> tuple[ClassSplit, list[Path]]:
    """The split (saved as CSV) and one frozen file per standard benchmark the split allows; with
    `near_duplicates`, their groups (saved beside them) are never split between support and queries.

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
        files[out / NEAR_DUPLICATES_FILE] = near_duplicates.to_bytes()
    for offset, (name, (split_name, n_way, k_shot)) in enumerate(benchmarks.items()):
        available = len(split.classes(split_name))
        if (n_way or available) > available or available < 2:
            print(f"skipping {name}: the {split_name} split has only {available} class(es)")
            continue
        episode_set = draw_episode_set(f"{column}-{name}", catalog.products["id"].to_numpy(), labels, split,
                                       split_name, catalog.fingerprint, n_way, k_shot, q_query, n_episodes,
                                       seed=seed * 1000 + offset, near_duplicates=near_duplicates)
        files[out / f"{episode_set.name}.npz"] = episode_set.to_bytes()
    for name, episode_set in draw_temporal_sets(catalog, split, seed * 1000 + len(benchmarks), n_episodes,
                                                near_duplicates).items():
        files[out / f"{name}.npz"] = episode_set.to_bytes()
    changed = [path for path, payload in files.items() if path.exists() and path.read_bytes() != payload]
    if changed and not force:
        raise FslError(f"{changed[0]} exists with other content{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; "
                       "frozen episode sets are test sets and are never replaced silently. Keep them, move them "
                       "away, or pass --force to replace them")
    written = [write_bytes(path, payload) for path, payload in files.items()
               if not path.exists() or path.read_bytes() != payload]
    if not written:
        print(f"episode sets under {out} are unchanged (same split and seed give the same bytes)")
    return split, written


def build_head(config: ExperimentConfig, store: FeatureStore) -> FewShotHead:
    """The config's fusion and head, sized for the store's features."""
    fusion = create_fusion(config.fusion, store.manifest["image_dim"], store.manifest["text_dim"],
                           **config.fusion_options)
    return create_head(config.method, fusion, shared_space=shared_space(store.encoder_id),
                       **config.method_options)


def class_text_table(config: ExperimentConfig, classes: list[str], store: FeatureStore) -> torch.Tensor:
    """[C, Dt] text-tower embeddings of the class names, put through the config's prompt (cached in the store)."""
    prompts = [config.class_prompt.format(name) for name in classes]
    encoder = encoder_from_config(config.encoder)
    return torch.from_numpy(store.short_texts(prompts, lambda texts: encoder.encode_texts(texts, progress=False)))


def flat_options(config: ExperimentConfig) -> dict:
    """method_options and fusion_options as TensorBoard hparams (`method_options.C`: 10)."""
    flat = {}
    for section in ("method_options", "fusion_options"):
        for key, value in getattr(config, section).items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def checkpoint_dir(config: ExperimentConfig, root: str | os.PathLike = DEFAULT_CHECKPOINTS) -> Path:
    return Path(root) / config.name


def episode_set_path(config: ExperimentConfig, catalog: Catalog, name: str,
                     episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> Path:
    return episodes_dir_for(catalog, episodes_root) / f"{config.label_column}-{name}.npz"


def episode_set_digest(config: ExperimentConfig, catalog: Catalog, name: str, split_seed: int,
                       episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> str | None:
    """The digest of the episode file a set name (shifted names too) of a split runs on now, or None."""
    path = episode_set_path(config, catalog, name.removesuffix(RERENDERED), split_root(episodes_root, split_seed))
    return file_digest(path.read_bytes()) if path.is_file() else None


def load_episode_set(config: ExperimentConfig, catalog: Catalog, name: str,
                     episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> EpisodeSet:
    return EpisodeSet.load(episode_set_path(config, catalog, name, episodes_root), catalog.fingerprint)


def base_classes(catalog: Catalog, config: ExperimentConfig, split_seed: int,
                 episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> list[str]:
    """The base (training) classes of a saved class split."""
    path = episodes_dir_for(catalog, episodes_root) / f"{config.label_column}-seed{split_seed}-split.csv"
    if not path.is_file():
        raise FslError(f"no class split at {path}; run `fsl episodes` first")
    split = read_csv(path)
    return sorted(split.loc[split["split"] == "base", "class"])


def base_products(config: ExperimentConfig, catalog: Catalog, features, episodes_root) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features [n, D] and class indices [n] of the base-class products of the split the config's
    episodes come from: what SimpleShot's centring and GDA's covariance prior may know, never a val
    or novel class."""
    split_seed = load_episode_set(config, catalog, config.episodes[0], episodes_root).meta["split_seed"]
    classes = base_classes(catalog, config, split_seed, episodes_root)
    labels = catalog.labels(config.label_column)
    rows = np.flatnonzero(labels.isin(classes).to_numpy())
    codes = pd.Categorical(labels.iloc[rows], categories=classes).codes
    return (torch.from_numpy(np.asarray(features[rows], dtype=np.float32)), torch.from_numpy(codes.astype(np.int64)))


def experiment_head(config: ExperimentConfig, catalog: Catalog, store_root: str | os.PathLike = DEFAULT_ROOT,
                    checkpoints_root: str | os.PathLike = DEFAULT_CHECKPOINTS,
                    episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                    checkpoint: str | os.PathLike | None = None):
    """(store, its features as the config sees them, the head): a trained head loads `checkpoint`, or
    its best one; a head that learns from the base classes gets their products."""
    store = open_store(catalog, config.encoder, store_root)
    head = build_head(config, store)
    features = store_features(store, config.text_variant)
    if checkpoint is not None or config.train is not None:
        load_head(checkpoint or checkpoint_dir(config, checkpoints_root) / "best", head, store.encoder_id)
    if head.needs_base_classes:
        head.fit_base(*base_products(config, catalog, features, episodes_root))
    return store, features, head


def run_experiment(config: ExperimentConfig, catalog: Catalog, episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR,
                   store_root: str | os.PathLike = DEFAULT_ROOT, progress: bool = True,
                   checkpoints_root: str | os.PathLike = DEFAULT_CHECKPOINTS, shifted: bool = False,
                   split_seed: int = 0) -> list[EvalResult]:
    """One config's head on each of its frozen episode sets of one class split (a trained head: the
    checkpoint trained on that split); with `shifted`, on the shifted query sets of fsl/shift.py and
    their controls too (a set named X+rerendered is set X with re-rendered query photos)."""
    episodes_root, checkpoints_root = split_root(episodes_root, split_seed), split_root(checkpoints_root, split_seed)
    store, features, head = experiment_head(config, catalog, store_root, checkpoints_root, episodes_root)
    hparams = {"split": split_seed, "head": config.method, "fusion": config.fusion, "transductive": head.transductive,
               "text_variant": config.text_variant if config.fusion != "image" else "-", "encoder": store.encoder_id,
               **flat_options(config)}
    names = list(config.episodes)
    if shifted:
        for name in (name for pair in SHIFTED_PAIRS.items() for name in pair if name not in names):
            path = episode_set_path(config, catalog, name.removesuffix(RERENDERED), episodes_root)
            if path.is_file():
                names.append(name)
            else:
                print(f"fsl: {config.name}: no shifted set {name} for this catalog ({path.name} was not drawn)",
                      file=sys.stderr)
    results = []
    for name in names:
        episode_set = load_episode_set(config, catalog, name.removesuffix(RERENDERED), episodes_root)  # same episodes
        check_alignment(store, episode_set)
        class_text = class_text_table(config, episode_set.meta["classes"], store) if head.needs_class_text else None
        query_features = None
        if name.endswith(RERENDERED):
            ids, image = rerendered_image_features(store, catalog, encoder_from_config(config.encoder),
                                                   episode_set.episodes.query, progress)
            query_features = ReplacedImages(features, store_rows(store.ids, ids), image, store.manifest["image_dim"])
        accuracy = run_episodes(head, features, store.ids, episode_set, config.batch_size, progress, class_text,
                                query_features=query_features)
        results.append(EvalResult(config.name, name, accuracy,
                                  {**hparams, "n_way": episode_set.episodes.n_way,
                                   "k_shot": episode_set.episodes.k_shot, "episodes_sha": episode_set.digest}))
    return results

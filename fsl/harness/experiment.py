"""An experiment end to end: the config's store, fusion and head, run on its frozen episode sets."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TypeVar

import numpy as np

from fsl.config import ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.encoders.adapted import adaptation_classes, adaptation_for_split
from fsl.encoders.factory import encoder_from_config
from fsl.episodes.frozen import EpisodeSet, file_digest
from fsl.episodes.shift import (
    RERENDERED,
    SHIFTED_PAIRS,
    ReplacedImages,
    view_image_features,
)
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import SELECTION_BENCHMARKS, STANDARD_BENCHMARKS, load_episode_set
from fsl.errors import FslError
from fsl.harness.evaluate import EvalResult, run_episodes
from fsl.inference.heads import class_text_table, experiment_head, tiny_head
from fsl.paths import Workspace, available_splits, episode_set_path
from fsl.store.features import FeatureStore
from fsl.store.open import open_store
from fsl.store.rows import store_rows

logger = logging.getLogger(__name__)


def check_runnable(config: ExperimentConfig) -> None:
    """A bad method or option fails now, not after earlier configs have run for minutes."""
    tiny_head(config)


def learns_from_base(config: ExperimentConfig) -> bool:
    """Whether the config learned anything from base classes (a trained head, an aligned or adapted
    encoder, a head fitted on base products): then base-class episodes are its training data, and its
    choices are scored on validation classes (or class folds), never on the selection pool."""
    return (
        config.train is not None
        or config.encoder.name in ("aligned", "adapted")
        or tiny_head(config).needs_base_classes
    )


def holds_nothing_out(config: ExperimentConfig, split_seed: int) -> bool:
    """Whether the config's only learning is an adapted tower that trained on every class of the
    selection pool (fsl adapt `classes: selection | all`): then its validation classes are no more
    held out than its base ones, and its choices read the whole pool (22 classes, all seen, where
    validation would give 6, also seen)."""
    if config.encoder.name != "adapted" or not config.encoder.pretrained:
        return False
    if config.train is not None or tiny_head(config).needs_base_classes:
        return False
    folder = Path(adaptation_for_split(config.encoder.pretrained, split_seed))
    return folder.is_dir() and adaptation_classes(folder) in ("selection", "all")


def chooses_on_validation(config: ExperimentConfig, split_seed: int) -> bool:
    """Whether the config's choices are scored on validation classes only: it learned from base
    classes and holds its validation classes out of that learning."""
    return learns_from_base(config) and not holds_nothing_out(config, split_seed)


Choice = TypeVar("Choice")


def selection_sets(config: ExperimentConfig, pooled: Choice, validation: Choice, split_seed: int = 0) -> Choice:
    """The episode set a choice is scored on: `pooled` (over base ∪ validation classes) where the
    config learned nothing from base classes, or learned from all of them (holds_nothing_out), else
    `validation`."""
    return validation if chooses_on_validation(config, split_seed) else pooled


def check_alignment(store: FeatureStore, episode_set: EpisodeSet) -> None:
    """An aligned space or an adapted tower was trained on one split's base classes: episodes of
    another split (whose novel classes it may have trained on) are refused."""
    for key, fix in (("alignment", "Align on that split (fsl align --split-seed N)"),
                     ("adaptation", "Adapt on that split (fsl adapt RECIPE --split-seeds N)")):  # fmt: skip
        trained = store.manifest.get(key)
        seeds = trained.get("split_seeds", [trained["split_seed"]]) if trained else []
        if trained and episode_set.meta.get("split_seed") not in seeds:
            raise FslError(
                f"feature store {store.path.name} was trained ({key}) on the base classes of split seed "
                f"{' or '.join(map(str, seeds))}; episode set {episode_set.name!r} comes from split seed "
                f"{episode_set.meta.get('split_seed')}, whose test classes it may have trained on. {fix}"
            )
        if trained and trained.get("classes") == "all" and episode_set.meta.get("split") not in ("val", "select"):
            raise FslError(
                f"feature store {store.path.name} was adapted on every class of the split (fsl adapt --all-classes), "
                f"for your own categories: episode set {episode_set.name!r} holds classes it trained on, so its "
                "figures would flatter it. Measure a tower on novel classes with one adapted on the others "
                "(--set classes=selection)"
            )


def check_learned_nothing(store: FeatureStore, who: str) -> None:
    """An aligned space or an adapted tower learned from every base class: class folds hold base classes
    out, and a held class it trained on would flatter every fold's score, so such a store is refused."""
    for key in ("alignment", "adaptation"):
        if store.manifest.get(key):
            raise FslError(
                f"{who} hold base classes out, but feature store {store.path.name} was trained ({key}) on them, so "
                "every fold's held classes would be classes it learned; compare on a store of the frozen encoder"
            )


def config_for_split(config: ExperimentConfig, split_seed: int) -> ExperimentConfig:
    """The config as it runs on one class split: an adapted encoder reads that split's adaptation."""
    if config.encoder.name != "adapted" or not config.encoder.pretrained:
        return config
    encoder = dataclasses.replace(
        config.encoder, pretrained=adaptation_for_split(config.encoder.pretrained, split_seed)
    )
    return dataclasses.replace(config, encoder=encoder)


def splits_for(config: ExperimentConfig, catalog: Catalog, workspace: Workspace = Workspace()) -> list[int]:
    """Every split drawn for the catalog, less those the config's store cannot serve: an aligned space
    trained on one split's base classes has seen the other splits' novel classes, and an adapted tower
    runs only on the splits it was adapted for (said, then skipped)."""
    splits = available_splits(catalog, workspace.episodes, config.label_column)
    if not splits:
        raise FslError(f"no class split under {workspace.episodes} for this catalog; run `fsl episodes` first")
    if config.encoder.name == "adapted" and config.encoder.pretrained:
        missing = [s for s in splits if not Path(adaptation_for_split(config.encoder.pretrained, s)).is_dir()]
        if missing and len(missing) < len(splits):
            logger.warning(
                f"{config.name}: no adaptation for split(s) {', '.join(map(str, missing))} "
                f"(e.g. {adaptation_for_split(config.encoder.pretrained, missing[0])}); they are skipped"
            )
        return [s for s in splits if s not in missing] or splits  # none at all: the store says why
    store = open_store(catalog, config.encoder, workspace.features)
    alignment = store.manifest.get("alignment")
    if alignment and len(splits) > 1:
        logger.warning(
            f"{config.name}: its aligned space was trained on split {alignment['split_seed']}; "
            f"the other splits ({', '.join(str(s) for s in splits if s != alignment['split_seed'])}) are skipped"
        )
        splits = [s for s in splits if s == alignment["split_seed"]]
    return splits


def flat_options(config: ExperimentConfig) -> dict:
    """method_options and fusion_options as TensorBoard hparams (`method_options.C`: 10)."""
    flat = {}
    for section in ("method_options", "fusion_options"):
        for key, value in getattr(config, section).items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def episode_set_digest(
    config: ExperimentConfig, catalog: Catalog, name: str, split_seed: int, workspace: Workspace = Workspace()
) -> str | None:
    """The digest of the episode file a set name (shifted names too) of a split runs on now, or None."""
    path = episode_set_path(
        catalog, config.label_column, name.removesuffix(RERENDERED), workspace.episodes_of(split_seed)
    )
    return file_digest(path.read_bytes()) if path.is_file() else None


def why_not_drawn(catalog: Catalog, column: str, name: str, root: str | os.PathLike, split_seed: int) -> str:
    """Why an episode set is absent from one split's root, in words: a split too small for it (`fsl
    episodes` skips those), or not drawn yet."""
    known = STANDARD_BENCHMARKS | SELECTION_BENCHMARKS
    if name in known:
        split_name, n_way, _ = known[name]
        try:
            available = len(ClassSplit.load(catalog, column, split_seed, root).classes(split_name))
        except FslError:
            return "no class split drawn: run `fsl episodes`"
        if (n_way or available) > available or available < 2:
            return f"the {split_name} split of this catalog has {available} class(es), too few for it"
    return "not drawn: run `fsl episodes`"


def episode_sets_to_run(
    config: ExperimentConfig, catalog: Catalog, workspace: Workspace = Workspace(), split_seed: int = 0
) -> tuple[list[str], list[tuple[str, str]]]:
    """(the config's episode sets this split has, [(set, why not) for the others]); an error naming
    them when it has none, so a small catalog runs what it can and says what it skipped."""
    root = workspace.episodes_of(split_seed)
    present, skipped = [], []
    for name in config.episodes:
        if episode_set_path(catalog, config.label_column, name, root).is_file():
            present.append(name)
        else:
            skipped.append((name, why_not_drawn(catalog, config.label_column, name, root, split_seed)))
    if not present:
        raise FslError(
            f"{config.name}: none of its episode sets exist for split {split_seed} of this catalog: "
            + "; ".join(f"{name} ({why})" for name, why in skipped)
        )
    return present, skipped


def test_time_features(store, catalog: Catalog, config: ExperimentConfig, features, episodes, progress: bool = True):
    """The store's features with each support and query photo's image part averaged with its
    test-time views (config test_time_views; each view embedded once, cached beside the store)."""
    ids = np.unique(np.concatenate([episodes.support.ravel(), episodes.query.ravel()]))
    rows = store_rows(store.ids, ids)
    image_dim = store.manifest["image_dim"]
    total = np.asarray(features[rows], dtype=np.float32)[:, :image_dim].copy()
    for view in config.test_time_views:
        view_ids, image = view_image_features(store, catalog, encoder_from_config(config.encoder), ids, view, progress)
        total += image[np.searchsorted(view_ids, ids)]
    averaged = total / np.linalg.norm(total, axis=1, keepdims=True)
    return ReplacedImages(features, rows, averaged, image_dim)


def run_experiment(
    config: ExperimentConfig,
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    split_seed: int = 0,
    shifted: bool = False,
    progress: bool = True,
) -> list[EvalResult]:
    """One config's head on each of its frozen episode sets of one class split (a trained head: the
    checkpoint trained on that split); with `shifted`, on the shifted query sets of fsl/episodes/shift.py and
    their controls too (a set named X+rerendered is set X with re-rendered query photos)."""
    config = config_for_split(config, split_seed)
    names, skipped = episode_sets_to_run(config, catalog, workspace, split_seed)
    for name, why in skipped:
        logger.warning(f"{config.name}: skipped {name}: {why}")
    split_episodes = workspace.episodes_of(split_seed)
    store, features, head = experiment_head(config, catalog, workspace, split_seed)
    hparams = {
        "split": split_seed,
        "head": config.method,
        "fusion": config.fusion,
        "transductive": head.transductive,
        "text_variant": config.text_variant if config.fusion != "image" else "-",
        "encoder": store.encoder_id,
        **flat_options(config),
    }
    if shifted:
        for name in (name for pair in SHIFTED_PAIRS.items() for name in pair if name not in names):
            path = episode_set_path(catalog, config.label_column, name.removesuffix(RERENDERED), split_episodes)
            if path.is_file():
                names.append(name)
            else:
                logger.warning(f"{config.name}: no shifted set {name} for this catalog ({path.name} was not drawn)")
    results = []
    for name in names:
        episode_set = load_episode_set(config, catalog, name.removesuffix(RERENDERED), split_episodes)  # same episodes
        check_alignment(store, episode_set)
        class_text = class_text_table(config, episode_set.meta["classes"], store) if head.needs_class_text else None
        query_features, set_features = None, features
        if config.test_time_views:
            if name.endswith(RERENDERED):
                logger.warning(f"{config.name}: skipped {name}: test-time views of re-rendered photos are not embedded")
                continue
            set_features = test_time_features(store, catalog, config, features, episode_set.episodes, progress)
        if name.endswith(RERENDERED):
            ids, image = view_image_features(
                store, catalog, encoder_from_config(config.encoder), episode_set.episodes.query, "rerendered", progress
            )
            query_features = ReplacedImages(features, store_rows(store.ids, ids), image, store.manifest["image_dim"])
        accuracy = run_episodes(
            head,
            set_features,
            store.ids,
            episode_set,
            config.batch_size,
            progress,
            class_text,
            query_features=query_features,
        )
        results.append(
            EvalResult(
                config.name,
                name,
                accuracy,
                {
                    **hparams,
                    "n_way": episode_set.episodes.n_way,
                    "k_shot": episode_set.episodes.k_shot,
                    "episodes_sha": episode_set.digest,
                },
            )
        )
    return results


def check_validation_only(
    config: ExperimentConfig, catalog: Catalog, names, split_episodes, who: str, instead: str
) -> None:
    """Every selection (a checkpoint, a grid point, a temperature, a threshold) reads validation-class
    episodes, or the selection pool (base ∪ validation classes) where the config learned nothing from
    base classes or from all of them (holds_nothing_out): a set drawn from any other classes is
    refused, naming it, before any work starts."""
    for name in names:
        episode_set = load_episode_set(config, catalog, name, split_episodes)
        split = episode_set.meta.get("split")
        pooled = not chooses_on_validation(config, episode_set.meta.get("split_seed", 0))
        allowed = ("val", "select") if pooled else ("val",)
        if split == "select" and split not in allowed:
            raise FslError(
                f"{who}: {name!r} holds base classes, which {config.name} learned from (a trained head, an "
                f"aligned or adapted encoder, or base-class statistics); it chooses on validation classes. "
                f"Choose with {instead}"
            )
        if split not in allowed:
            also = " (or base ∪ validation ones: the select-* sets)" if "select" in allowed else ""
            raise FslError(
                f"{who} chooses on validation classes only; {name!r} is drawn from the {split!r} classes (a test "
                f"set), which are read only to report. Choose with {instead}{also}"
            )

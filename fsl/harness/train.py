"""Episodic meta-training: a head's meta-parameters learn on base-class episodes drawn fresh from
the sampler; validation-class episodes pick the best step (never the novel classes), or, on a class
fold (fsl train --folds), the fold's training classes teach and its held classes pick. TensorBoard
under runs/train/<name>; checkpoints/<name>/{best,last}; an interrupted run resumes from last."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fsl.config import ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.folds import CHOOSE, ClassFold, check_fold, fold_sets
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.splits import ClassSplit, distinct_photos
from fsl.episodes.standard import load_episode_set, near_duplicate_index
from fsl.errors import FslError
from fsl.harness.evaluate import run_episodes
from fsl.harness.experiment import check_alignment, check_learned_nothing, check_validation_only, flat_options
from fsl.harness.loop import Schedule, Trainable, run_loop
from fsl.inference.checkpoints import load_head, save_head
from fsl.inference.heads import base_classes, build_head
from fsl.paths import Workspace, checkpoint_dir
from fsl.store.open import open_store
from fsl.store.rows import store_features

logger = logging.getLogger(__name__)


def training_samplers(
    config: ExperimentConfig, catalog: Catalog, base: list[str], split_episodes: Path
) -> dict[str, EpisodeSampler]:
    """One sampler of catalog rows per source of training episodes: the label column's base classes,
    then each of `train.sources` (another label column), whose classes are its values among the
    base-class products only, so no validation or novel product ever enters a training episode.
    Near-duplicate groups, where the episode sets were drawn with them, apply to all."""
    settings = config.train
    groups = near_duplicate_index(catalog, split_episodes)
    rows = np.flatnonzero(catalog.labels(config.label_column).isin(base).to_numpy())  # base-class products
    columns = (config.label_column, *settings.sources)
    if len(set(columns)) < len(columns):
        raise FslError(
            f"train.sources {list(settings.sources)}: each column once, and not the label column "
            f"{config.label_column} itself (its episodes are always drawn)"
        )
    samplers = {}
    for column in columns:
        if column not in catalog.products.columns:
            known = [c for c in ("subCategory", "baseColour", "usage", "season", "gender") if c in catalog.products]
            raise FslError(
                f"train.sources: the catalog has no column {column!r}; its label columns include {', '.join(known)}"
            )
        labels = catalog.labels(column).to_numpy()[rows]
        group = None if groups is None else groups[rows]
        enough = settings.k_shot + settings.q_query
        distinct = distinct_photos(labels, group)
        classes = base if column == config.label_column else sorted(c for c, n in distinct.items() if n >= enough and c)
        if len(classes) < 2:
            raise FslError(
                f"train.sources: {column} has {len(classes)} value(s) with {enough} base-class "
                f"products; at least 2 are needed for an episode"
            )
        n_way = min(settings.n_way, len(classes))
        samplers[column] = EpisodeSampler(
            rows, labels, classes, n_way, settings.k_shot, settings.q_query, settings.seed + len(samplers), group
        )
    return samplers


def train(
    config: ExperimentConfig,
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    split_seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
    fold: ClassFold | None = None,
) -> dict:
    """Meta-train the config's head on class split `split_seed`'s base classes, its checkpoint chosen
    on that split's validation classes, or on a class fold's training classes, its checkpoint chosen on
    half of the episodes over the fold's held classes (fsl/episodes/folds.py: CHOOSE); returns
    {"best_val_accuracy", "best_step", "steps", "best", "start" (step 0's figures), "accuracies" (the
    chosen head's per-episode accuracies on each scoring set, every episode)}. A fold's checkpoints
    live under NAME/fold<f>. Each validation point is also passed to `on_validation(step, accuracy)`:
    a sweep's pruner reads them, and may stop the run by raising."""
    split_episodes = workspace.episodes_of(split_seed)
    settings = config.train
    if settings is None:
        raise FslError(f"experiment {config.name!r} has no train: section, so nothing to train")
    if fold is None:
        check_validation_only(
            config, catalog, (settings.val_episodes,), split_episodes, "fsl train", "train.val_episodes=val-5w5s"
        )
    store = open_store(catalog, config.encoder, workspace.features)
    folder = checkpoint_dir(config.name, workspace.checkpoints_of(split_seed))
    runs = workspace.runs_of("train", split_seed) / config.name
    if fold is None:
        val_set = load_episode_set(config, catalog, settings.val_episodes, split_episodes)
        check_alignment(store, val_set)  # an aligned space trained on another split's classes would leak them
        classes = base_classes(catalog, config, val_set.meta["split_seed"], split_episodes)
        sets, choose = {settings.val_episodes: val_set}, slice(None)
    else:
        split = ClassSplit.load(catalog, config.label_column, split_seed, split_episodes)
        check_fold(fold, split)
        check_learned_nothing(store, "class folds")
        classes, folder, runs = list(fold.train), folder / fold.name, runs / fold.name
        sets = fold_sets(fold, split, store.ids, catalog.labels(config.label_column).to_numpy(),
                         catalog.fingerprint, near_duplicate_index(catalog, split_episodes))  # fmt: skip
        choose = CHOOSE
    head = build_head(config, store)
    if not head.meta_trainable:
        raise FslError(f"{config.method} with fusion {config.fusion!r} has no meta-parameters to train")
    # training samples rows at random for many steps: hold the features in memory once
    features = torch.from_numpy(np.asarray(store_features(store, config.text_variant), dtype=np.float32))
    if not np.array_equal(store.ids, catalog.products["id"].to_numpy()):
        raise FslError(f"feature store {store.path} rows do not follow the catalog; re-run `fsl embed`")
    samplers = training_samplers(config, catalog, classes, split_episodes)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    meta = {
        "encoder_id": store.encoder_id,
        "catalog_fingerprint": catalog.fingerprint,
        "method": config.method,
        "fusion": config.fusion,
        "text_variant": config.text_variant,
        "label_column": config.label_column,
        "base_classes": classes,
        **({} if fold is None else {"fold": fold.record()}),
        "config": dataclasses.asdict(config),
    }
    job = EpisodicTraining(config, head, features, store, sets, choose, list(samplers.values()), meta)
    # a run may be resumed with more steps; anything else about it must be what last/ was trained with
    same_run = dataclasses.replace(config, train=dataclasses.replace(settings, steps=0))
    identity = {"config": dataclasses.asdict(same_run), "catalog_fingerprint": catalog.fingerprint}
    if fold is not None:  # a fold run scored on other episodes (another protocol) is not resumed
        identity["scored_on"] = {name: episode_set.digest for name, episode_set in sets.items()}
    hparams = {
        "head": config.method,
        "fusion": config.fusion,
        "text_variant": config.text_variant,
        **{
            f"train.{k}": v if not isinstance(v, tuple) else ",".join(v)
            for k, v in dataclasses.asdict(settings).items()
        },
        **flat_options(config),
    }
    best, start = run_loop(
        job,
        optimizer,
        Schedule(settings.steps, settings.val_every, settings.lr, "train.lr"),
        folder,
        runs,
        identity,
        resume,
        progress,
        on_validation=on_validation,
        hparams=hparams,
    )
    if best["step"] == 0:
        logger.warning(f"{config.name}: no training step beat the untrained start on {', '.join(sets)}; best is step 0")
    if job.best_step != best["step"]:  # resumed after the chosen step: its per-episode accuracies were not kept
        load_head(folder / "best", head, store.encoder_id)
        job.best_accuracies = job.accuracies()
    return {
        "best_val_accuracy": best["accuracy"],
        "best_step": best["step"],
        "steps": settings.steps,
        "best": best,
        "start": start,
        "accuracies": job.best_accuracies,
    }


class EpisodicTraining(Trainable):
    """A head's meta-parameters on base-class (or a fold's training-class) episodes, the label
    column's and each source's in turn; scored on the held-out sets' `choose` episodes (all of the
    validation set, or a fold's choosing half). Keeps the per-episode accuracies of the step saved as
    best, so the chosen head is not scored again."""

    task = "train"

    def __init__(self, config, head, features, store, sets, choose, sources, meta):
        self.name, self.config, self.head, self.features = config.name, config, head, features
        self.store, self.sets, self.choose, self.sources, self.meta = store, sets, choose, sources, meta
        self.last_accuracies: dict[str, np.ndarray] = {}
        self.best_accuracies: dict[str, np.ndarray] = {}
        self.best_step: int | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())

    def loss(self, step: int) -> tuple[str, torch.Tensor]:
        self.head.train()
        episodes = self.sources[(step - 1) % len(self.sources)].sample(self.config.train.episodes_per_step)
        logits = self.head(
            self.features[torch.from_numpy(episodes.support)],
            torch.as_tensor(episodes.support_labels).expand(len(episodes), -1),
            self.features[torch.from_numpy(episodes.query)],
            episodes.n_way,
        )
        return "loss", F.cross_entropy(
            logits.flatten(0, 1), torch.as_tensor(episodes.query_labels).repeat(len(episodes))
        )

    def accuracies(self) -> dict[str, np.ndarray]:
        """Each scoring set's per-episode accuracies under the head as it stands (every episode)."""
        features = self.features.numpy()
        return {
            name: run_episodes(self.head, features, self.store.ids, episode_set, progress=False)
            for name, episode_set in self.sets.items()
        }

    def validate(self) -> dict[str, float]:
        """The mean accuracy over sets of each set's choosing episodes: "accuracy", and "score", which
        chooses the checkpoint (with several sets, each set's own mean too)."""
        self.last_accuracies = self.accuracies()
        scores = {name: float(np.mean(values[self.choose])) for name, values in self.last_accuracies.items()}
        accuracy = float(np.mean(list(scores.values())))
        return {**(scores if len(scores) > 1 else {}), "accuracy": accuracy, "score": accuracy}

    def save(self, folder: Path, step: int, figures: dict, start: dict | None) -> None:
        if folder.name == "best":
            self.best_accuracies, self.best_step = self.last_accuracies, step
        save_head(folder, self.head, {**self.meta, "step": step, "val_accuracy": figures["accuracy"]})

    def state(self) -> dict:
        return {"sampler_rng": [sampler.generator.get_state() for sampler in self.sources]}

    def load_state(self, state: dict, folder: Path) -> None:
        load_head(folder, self.head, self.store.encoder_id)
        for sampler, saved in zip(self.sources, state["sampler_rng"]):
            sampler.generator.set_state(saved)

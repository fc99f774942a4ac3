"""Episodic meta-training: a head's meta-parameters learn on base-class episodes drawn fresh from
the sampler; validation-class episodes pick the best step (never the novel classes). TensorBoard
under runs/train/<name>; checkpoints/<name>/{best,last}; an interrupted run resumes from last."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import trange

from fsl.config import ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.splits import distinct_photos
from fsl.episodes.standard import load_episode_set, saved_near_duplicates
from fsl.errors import FslError
from fsl.harness.evaluate import mean_ci, percent, run_episodes
from fsl.harness.experiment import check_alignment, check_validation_only, flat_options
from fsl.inference.checkpoints import load_head, load_train_state, save_head, save_train_state
from fsl.inference.heads import base_classes, build_head
from fsl.paths import DEFAULT_CHECKPOINTS, DEFAULT_EPISODES_DIR, FEATURES_ROOT, checkpoint_dir
from fsl.store.open import open_store
from fsl.store.rows import store_features


def check_finite(name: str, step: int, loss: torch.Tensor, head: torch.nn.Module, lr: float) -> None:
    """Stop at the first non-finite loss or weight: nothing after it could be trusted or saved."""
    bad = [] if torch.isfinite(loss) else [f"the loss is {loss.item()}"]
    bad += [f"{n} holds NaN/inf" for n, p in head.named_parameters() if not torch.isfinite(p).all()][:3]
    if bad:
        raise FslError(
            f"training {name} stopped at step {step}: {'; '.join(bad)}. The likely cause is a "
            f"learning rate too high for this head (train.lr = {lr:g}); lower it (e.g. --restart with "
            "a 10x smaller lr). Checkpoints saved before this step are finite and kept"
        )


def training_samplers(
    config: ExperimentConfig, catalog: Catalog, base: list[str], episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR
) -> dict[str, EpisodeSampler]:
    """One sampler of catalog rows per source of training episodes: the label column's base classes,
    then each of `train.sources` (another label column), whose classes are its values among the
    base-class products only, so no validation or novel product ever enters a training episode.
    Near-duplicate groups, where the episode sets were drawn with them, apply to all."""
    settings = config.train
    near_duplicates = saved_near_duplicates(catalog, episodes_root)
    groups = None if near_duplicates is None else near_duplicates.group_index(catalog.products["id"].to_numpy())
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
    episodes_root: str | os.PathLike = DEFAULT_EPISODES_DIR,
    store_root: str | os.PathLike = FEATURES_ROOT,
    checkpoints_root: str | os.PathLike = DEFAULT_CHECKPOINTS,
    runs_root: str | os.PathLike = "runs/train",
    resume: bool = True,
    progress: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
) -> dict:
    """Meta-train the config's head; returns {"best_val_accuracy", "best_step", "steps"}. Each
    validation point is also passed to `on_validation(step, accuracy)`: a sweep's pruner reads them,
    and may stop the run by raising."""
    settings = config.train
    if settings is None:
        raise FslError(f"experiment {config.name!r} has no train: section, so nothing to train")
    check_validation_only(
        config, catalog, (settings.val_episodes,), episodes_root, "fsl train", "train.val_episodes=val-5w5s"
    )
    store = open_store(catalog, config.encoder, store_root)
    head = build_head(config, store)
    if not head.meta_trainable:
        raise FslError(f"{config.method} with fusion {config.fusion!r} has no meta-parameters to train")
    # training samples rows at random for many steps: hold the features in memory once
    features = torch.from_numpy(np.asarray(store_features(store, config.text_variant), dtype=np.float32))
    val_set = load_episode_set(config, catalog, settings.val_episodes, episodes_root)
    check_alignment(store, val_set)  # an aligned space trained on another split's classes would leak them
    classes = base_classes(catalog, config, val_set.meta["split_seed"], episodes_root)
    if not np.array_equal(store.ids, catalog.products["id"].to_numpy()):
        raise FslError(f"feature store {store.path} rows do not follow the catalog; re-run `fsl embed`")
    samplers = training_samplers(config, catalog, classes, episodes_root)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    folder = checkpoint_dir(config.name, checkpoints_root)
    meta = {
        "encoder_id": store.encoder_id,
        "catalog_fingerprint": catalog.fingerprint,
        "method": config.method,
        "fusion": config.fusion,
        "text_variant": config.text_variant,
        "label_column": config.label_column,
        "base_classes": classes,
        "config": dataclasses.asdict(config),
    }
    start, best, best_step = 0, -1.0, 0
    state = load_train_state(folder / "last") if resume else None
    if state is not None:
        load_head(folder / "last", head, store.encoder_id)
        optimizer.load_state_dict(state["optimizer"])
        rng = state["sampler_rng"]  # one state per source (a single tensor: a run from before sources)
        for sampler, saved in zip(samplers.values(), rng if isinstance(rng, list) else [rng]):
            sampler.generator.set_state(saved)
        start, best, best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
        print(f"resuming {config.name} at step {start} (best val accuracy {best:.4f} at step {best_step})")

    sources = list(samplers.values())
    with SummaryWriter(str(Path(runs_root) / config.name)) as writer:
        if state is None:  # step 0, the untrained start, is a candidate too: a chosen head never loses to it
            best, best_step = mean_ci(run_episodes(head, features.numpy(), store.ids, val_set, progress=False))[0], 0
            save_head(folder / "best", head, {**meta, "step": 0, "val_accuracy": best})
            writer.add_scalar("val/accuracy", best, 0)
            print(f"step 0 (untrained): {settings.val_episodes} {100 * best:.1f}%")
        bar = trange(start, settings.steps, desc=f"train {config.name}", disable=None if progress else True)
        report = bar.write if progress else print  # bar.write keeps the bar below the lines
        for step in bar:
            head.train()
            episodes = sources[step % len(sources)].sample(settings.episodes_per_step)  # the sources in turn
            logits = head(
                features[torch.from_numpy(episodes.support)],
                torch.as_tensor(episodes.support_labels).expand(len(episodes), -1),
                features[torch.from_numpy(episodes.query)],
                episodes.n_way,
            )
            loss = F.cross_entropy(logits.flatten(0, 1), torch.as_tensor(episodes.query_labels).repeat(len(episodes)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            check_finite(config.name, step + 1, loss, head, settings.lr)
            writer.add_scalar("train/loss", loss.item(), step + 1)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step + 1)

            if (step + 1) % settings.val_every == 0 or step + 1 == settings.steps:
                per_episode = run_episodes(head, features.numpy(), store.ids, val_set, progress=False)
                accuracy, ci = mean_ci(per_episode)
                writer.add_scalar("val/accuracy", accuracy, step + 1)
                improved = accuracy > best
                if improved:
                    best, best_step = accuracy, step + 1
                    save_head(folder / "best", head, {**meta, "step": best_step, "val_accuracy": best})
                report(
                    f"step {step + 1}/{settings.steps}: loss {loss.item():.4f}, {settings.val_episodes} "
                    f"{percent(accuracy, ci)}"
                    + (" (new best)" if improved else f" (best {100 * best:.1f}% at step {best_step})")
                )
                save_head(folder / "last", head, {**meta, "step": step + 1, "val_accuracy": accuracy})
                save_train_state(
                    folder / "last",
                    {
                        "optimizer": optimizer.state_dict(),
                        "step": step + 1,
                        "best": best,
                        "best_step": best_step,
                        "sampler_rng": [s.generator.get_state() for s in sources],
                    },
                )
                if on_validation is not None:
                    on_validation(step + 1, accuracy)
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
        writer.add_scalar("val/chosen_step", best_step, settings.steps)  # 0: the untrained start won
        writer.add_hparams(hparams, {"hparam/best_val_accuracy": best}, run_name="hparams")
    if best_step == 0:
        print(f"{config.name}: no training step beat the untrained start on {settings.val_episodes}; best is step 0")
    return {"best_val_accuracy": best, "best_step": best_step, "steps": settings.steps}

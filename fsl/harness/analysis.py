"""Which classes a head gets wrong, and with what: per-class accuracy over an episode set, the
confusion matrix, a gallery of the most frequent confusions (query photo -> the class it was taken
for, with that class's support photos), and a TensorBoard projector view of the feature space."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fsl.config import ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.frozen import EpisodeSet
from fsl.episodes.standard import load_episode_set
from fsl.errors import FslError
from fsl.files import atomic_path, write_csv
from fsl.harness.evaluate import mean_ci, run_episodes
from fsl.inference.heads import class_text_table, experiment_head
from fsl.paths import Workspace


@dataclass
class Predictions:
    """Every query of an episode set, flattened over episodes: [E * Q] arrays."""

    method: str
    episode_set: EpisodeSet
    true: np.ndarray  # class names
    predicted: np.ndarray  # class names
    query_ids: np.ndarray  # product ids
    episode: np.ndarray  # which episode each query came from
    predicted_label: np.ndarray  # the predicted label within its episode (0..N-1)


def predict_episodes(
    config: ExperimentConfig,
    catalog: Catalog,
    name: str,
    workspace: Workspace = Workspace(),
    split_seed: int = 0,
    progress: bool = False,
) -> Predictions:
    """Run a config on one frozen episode set of a class split, keeping every query's prediction."""
    store, features, head = experiment_head(config, catalog, workspace, split_seed)
    episode_set = load_episode_set(config, catalog, name, workspace.episodes_of(split_seed))
    episodes = episode_set.episodes
    class_text = class_text_table(config, episode_set.meta["classes"], store) if head.needs_class_text else None
    labels = np.empty(episodes.query.shape, dtype=np.int64)  # [E, Q]
    run_episodes(head, features, store.ids, episode_set, config.batch_size, progress, class_text, predictions=labels)
    names = np.asarray(episode_set.meta["classes"])
    rows = np.arange(len(episodes))[:, None]
    true = names[episodes.classes[rows, episodes.query_labels[None, :]]]
    predicted = names[episodes.classes[rows, labels]]
    episode = np.broadcast_to(rows, labels.shape)
    return Predictions(
        config.name,
        episode_set,
        true.ravel(),
        predicted.ravel(),
        episodes.query.ravel(),
        episode.ravel(),
        labels.ravel(),
    )


def per_class_accuracy(p: Predictions) -> pd.DataFrame:
    """Accuracy of each class over its queries in all episodes, with a t interval over the episodes the
    class appears in (every episode asks the same number of queries of each of its classes). `queries`
    counts answers, `photos` the distinct query photos behind them: episodes re-use the same photos.
    Columns: class, episodes, photos, queries, correct, accuracy, ci95."""
    frame = pd.DataFrame({"class": p.true, "episode": p.episode, "id": p.query_ids, "correct": p.true == p.predicted})
    table = (
        frame.groupby("class")
        .agg(
            episodes=("episode", "nunique"),
            photos=("id", "nunique"),
            queries=("correct", "size"),
            correct=("correct", "sum"),
        )
        .reset_index()
    )
    table["accuracy"] = table["correct"] / table["queries"]
    per_episode = frame.groupby(["class", "episode"])["correct"].mean()
    table["ci95"] = [mean_ci(per_episode.loc[name].to_numpy())[1] for name in table["class"]]
    table.insert(0, "episode_set", p.episode_set.name.split("-", 1)[-1])
    table.insert(0, "method", p.method)
    return table.sort_values("accuracy", kind="stable").reset_index(drop=True)


def per_class_difference(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-class accuracy of two methods on the same episode set side by side, largest difference first."""
    if len(tables) != 2:
        raise FslError(f"per-class differences compare two per-class files, got {len(tables)}")
    a, b = tables
    names = [str(t["method"].iloc[0]) for t in tables]
    joined = a[["class", "accuracy"]].merge(b[["class", "accuracy"]], on="class", suffixes=("_a", "_b"))
    if joined.empty:
        raise FslError("the two per-class files share no class: were they made on the same episode set?")
    joined[["accuracy_a", "accuracy_b"]] *= 100  # points, as the difference beside them
    joined["a_minus_b_points"] = joined["accuracy_a"] - joined["accuracy_b"]
    joined = joined.rename(columns={"accuracy_a": f"a: {names[0]} (%)", "accuracy_b": f"b: {names[1]} (%)"})
    return joined.reindex(joined["a_minus_b_points"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def confusion_matrix(p: Predictions) -> pd.DataFrame:
    """Counts [true class, predicted class] over every query; row sums are each class's query count."""
    classes = sorted(set(p.true) | set(p.predicted))
    return pd.crosstab(
        pd.Categorical(p.true, classes),
        pd.Categorical(p.predicted, classes),
        rownames=["true"],
        colnames=["predicted"],
        dropna=False,
    )


def top_confusions(p: Predictions, k: int = 6) -> list[tuple[str, str, int]]:
    wrong = pd.DataFrame({"true": p.true, "predicted": p.predicted})[p.true != p.predicted]
    counts = wrong.value_counts().head(k)
    return [(t, q, int(n)) for (t, q), n in counts.items()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # a long title or label is never cut
    return path


def confusion_figure(matrix: pd.DataFrame, title: str):
    """Row-normalised confusion matrix (each row: where that class's queries went)."""
    plt = _pyplot()
    rates = matrix.to_numpy() / np.maximum(matrix.to_numpy().sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.38 * len(matrix)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=8)
    for i, j in zip(*np.nonzero(rates >= 0.005)):
        ax.text(
            j,
            i,
            f"{100 * rates[i, j]:.0f}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if rates[i, j] > 0.5 else "black",
        )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the class's queries")
    fig.tight_layout()
    return fig


def per_class_figure(table: pd.DataFrame, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(table) + 1.2))
    labels = [f"{row['class']} ({row['photos']} photos)" for _, row in table.iterrows()]
    ax.barh(labels, 100 * table["accuracy"], xerr=100 * table["ci95"].fillna(0), capsize=2, color="tab:blue")
    ax.set_xlim(0, 100)
    ax.set_xlabel(
        textwrap.fill(
            f"accuracy % (95% CI over the up to {int(table['episodes'].max())} episodes a class is in; "
            "distinct query photos beside each class)",
            70,
        ),
        fontsize=8,
    )
    ax.set_title(textwrap.fill(title, 60, break_on_hyphens=False), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_gallery_figure(p: Predictions, catalog: Catalog, k: int = 6, shown_support: int = 3, note: str = ""):
    """One row per frequent confusion: a query photo, then support photos of the class it was taken for
    (`note`: where the figure comes from, under its title)."""
    from PIL import Image

    plt = _pyplot()
    pairs = top_confusions(p, k)
    path_of = dict(zip(catalog.products["id"], catalog.products["image_path"]))
    episodes = p.episode_set.episodes
    fig, axes = plt.subplots(
        max(1, len(pairs)),
        1 + shown_support,
        figsize=(2.0 * (1 + shown_support), 2.2 * max(1, len(pairs))),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.axis("off")
    for row, (true, predicted, count) in enumerate(pairs):
        index = np.flatnonzero((p.true == true) & (p.predicted == predicted))[0]
        episode, label = p.episode[index], p.predicted_label[index]
        support = episodes.support[episode].reshape(episodes.n_way, episodes.k_shot)[label][:shown_support]
        photos = [p.query_ids[index], *support]
        for column, product in enumerate(photos):
            with Image.open(path_of[int(product)]) as image:
                axes[row][column].imshow(image.convert("RGB"))
        axes[row][0].set_title(f"{true} → {predicted}\n({count} queries)", fontsize=8, color="tab:red")
        for column in range(1, len(photos)):
            axes[row][column].set_title(f"support: {predicted}", fontsize=7)
    title = f"{p.method}: most frequent confusions on {p.episode_set.name}"
    fig.suptitle(title + (f"\n{textwrap.fill(note, 90, break_on_hyphens=False)}" if note else ""), fontsize=9)
    fig.tight_layout()
    return fig


def analyse(
    config: ExperimentConfig, catalog: Catalog, names: list[str], workspace: Workspace = Workspace()
) -> list[Path]:
    """Per-class accuracy (CSV + PNG), confusion matrix and confusion gallery (PNG) per episode set of
    split 0, under results/analysis/<config>, also as TensorBoard figures under runs/analysis/<config>."""
    from torch.utils.tensorboard import SummaryWriter

    plt = _pyplot()
    out = workspace.analysis / config.name
    written = []
    with SummaryWriter(str(workspace.runs_of("analysis") / config.name)) as writer:
        for name in names:
            p = predict_episodes(config, catalog, name, workspace)
            table = per_class_accuracy(p)
            written.append(write_csv(table, out / f"{name}-per-class.csv"))
            figures = {
                "per-class": per_class_figure(table, f"{config.name} on {name}: accuracy per class"),
                "confusion": confusion_figure(confusion_matrix(p), f"{config.name} on {name}"),
                "confusions": confusion_gallery_figure(p, catalog),
            }
            for kind, fig in figures.items():
                written.append(_save(fig, out / f"{name}-{kind}.png"))
                writer.add_figure(f"analysis/{name}/{kind}", fig)
                plt.close(fig)
    return written


def projector(
    store, catalog: Catalog, logdir: str | os.PathLike, n: int = 500, seed: int = 0, column: str = "articleType"
) -> Path:
    """TensorBoard's projector over a sample of the store's image features, thumbnails as the sprite,
    labelled by `column`: a look at the feature space (tensorboard --logdir runs)."""
    import torch
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    rows = np.sort(np.random.default_rng(seed).choice(len(store.ids), min(n, len(store.ids)), replace=False))
    products = catalog.products.iloc[rows]
    thumbs = []
    for path in products["image_path"]:
        with Image.open(path) as image:
            thumbs.append(np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) / 255)
    with SummaryWriter(str(logdir)) as writer:
        writer.add_embedding(
            torch.from_numpy(np.asarray(store.image[rows])),
            metadata=products[column].tolist(),
            label_img=torch.from_numpy(np.stack(thumbs)).permute(0, 3, 1, 2),
            tag=f"image features by {column}",
        )
    return Path(logdir)

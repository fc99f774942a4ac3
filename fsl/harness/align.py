"""One image-text space without CLIP weights: contrastively trained projections over the frozen
offline towers (EfficientNet-Lite0 photos, MiniLM texts).

As LiT (Zhai et al., CVPR 2022) keeps a pretrained image tower locked and tunes the text side, both
towers stay frozen here and only two small heads learn, on the features already in the store (no
photo is decoded): a linear map (or an MLP) per tower into one space, and CLIP's learned
temperature. Loss: CLIP's symmetric InfoNCE between each product's photo and its text (plain or
label-masked, drawn at random), plus, as CLIP's class-name prompts, each photo and each text against
the prompts of the base classes. Trained on **base-split products only**; validation-class products
(zero-shot photo accuracy among the validation classes) choose the step; novel classes are never
read. `fsl align` writes checkpoints/align/NAME/{best,last}; the `aligned` encoder
(`--encoder aligned --pretrained checkpoints/align/NAME/best`) is the offline pair followed by the
heads, and its feature store is computed from the offline store's features.

On a class fold (`fsl align --folds`, fsl/harness/select.py) the projections train on the fold's
training classes and are scored as the README's aligned rows read a space on novel classes: zero-shot
photo accuracy from class names, per episode, on the fold's held-out episode sets (FOLD_SETTINGS),
the step chosen on half of their episodes."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fsl.config import EncoderConfig
from fsl.data.catalog import Catalog
from fsl.encoders.aligned import TOWERS, Projections, load_alignment, save_alignment
from fsl.encoders.factory import encoder_from_config
from fsl.episodes.folds import CHOOSE, ClassFold, check_fold, fold_sets
from fsl.episodes.frozen import EpisodeSet
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import near_duplicate_index
from fsl.errors import FslError
from fsl.harness.evaluate import run_episodes
from fsl.harness.loop import Schedule, Trainable, run_loop
from fsl.methods.fusion import ImageOnly
from fsl.methods.zero_shot import ZeroShot
from fsl.paths import Workspace
from fsl.store.open import open_store


@dataclass(frozen=True)
class AlignConfig:
    """`fsl align`'s settings. The defaults were chosen on validation classes by the validation score
    (the mean of class-balanced zero-shot photo accuracy and masked text -> own photo recall@10);
    the sweep behind them is in docs/align.md."""

    name: str = "offline-base"
    dim: int = 256  # the shared space
    hidden: int = 0  # 0: a linear map per tower; else a one-hidden-layer MLP of this width
    steps: int = 1000
    batch_size: int = 512
    lr: float = 3e-4
    weight_decay: float = 1e-4
    val_every: int = 25
    prompt_weight: float = 1.0  # weight of the photos-and-texts-vs-class-prompts term (0: photo-text pairs only)
    class_prompt: str = "{}"
    label_column: str = "articleType"
    split_seed: int = 0
    seed: int = 0


def contrastive_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    prompts: torch.Tensor,
    classes: torch.Tensor,
    scale: torch.Tensor,
    prompt_weight: float = 1.0,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the batch's photo-text pairs, plus photos and texts against
    the base classes' prompts (each product's own class the positive)."""
    logits = scale * images @ texts.T
    targets = torch.arange(len(images))
    pairs = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    by_class = (
        F.cross_entropy(scale * images @ prompts.T, classes) + F.cross_entropy(scale * texts @ prompts.T, classes)
    ) / 2
    return pairs + prompt_weight * by_class


# Training --------------------------------------------------------------------------------------


def check_align_config(config: AlignConfig) -> AlignConfig:
    """Refuse settings no alignment can train with, before any work."""
    for key in ("dim", "steps", "batch_size", "val_every"):
        if type(getattr(config, key)) is not int or getattr(config, key) < 1:
            raise FslError(f"align {key} must be a positive whole number, got {getattr(config, key)!r}")
    if (
        not (config.lr > 0 and math.isfinite(config.lr))
        or config.hidden < 0
        or config.weight_decay < 0
        or not config.prompt_weight >= 0
    ):
        raise FslError(f"align lr must be positive and finite, hidden and weight_decay >= 0 (got {config})")
    return config


def training_rows(labels: np.ndarray, base: list[str]) -> np.ndarray:
    """Store rows of the products whose class is a base class: the only rows alignment reads."""
    rows = np.flatnonzero(np.isin(labels, base))
    if len(rows) == 0:
        raise FslError("no product of a base class to align on")
    return rows


def align(
    config: AlignConfig,
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    fold: ClassFold | None = None,
) -> dict:
    """Train the projections on split `config.split_seed`'s base classes, into out/NAME (`out`: the
    workspace's alignments, checkpoints/align, unless given), or on a class fold's training classes
    into out/NAME/fold<f>, scored on its held ones (HeldOutZeroShot); returns {"best_val_accuracy"
    (the validation score), "best_step", "steps", "best" (the validation figures), "start" (None: random
    projections are no candidate), "folder", "accuracies" (a fold run's chosen step's per-episode
    zero-shot accuracies on each scoring set; empty otherwise)}."""
    check_align_config(config)
    store = open_store(catalog, EncoderConfig("offline"), workspace.features)
    if store.encoder_id != TOWERS:
        raise FslError(f"alignment needs the offline towers' store, got {store.encoder_id}")
    split_episodes = workspace.episodes_of(config.split_seed)
    split = ClassSplit.load(catalog, config.label_column, config.split_seed, split_episodes)
    labels = catalog.labels(config.label_column).to_numpy()
    folder = Path(out if out is not None else workspace.alignments) / config.name
    run_name = config.name
    base, held = split.classes("base"), split.classes("val")
    if fold is not None:
        check_fold(fold, split)
        base, held = list(fold.train), list(fold.held)
        folder, run_name = folder / fold.name, f"{config.name}/{fold.name}"
    rows = training_rows(labels, base)
    encoder = encoder_from_config(EncoderConfig("offline"))
    prompts = store.short_texts(
        [config.class_prompt.format(c) for c in base + held], lambda texts: encoder.encode_texts(texts, progress=False)
    )
    base_prompts, held_prompts = torch.from_numpy(prompts[: len(base)]), torch.from_numpy(prompts[len(base) :])
    image = torch.from_numpy(np.asarray(store.image[rows], dtype=np.float32))
    texts = [
        torch.from_numpy(np.asarray(store.text(v)[rows], dtype=np.float32))
        for v in ("plain", f"masked-{config.label_column}")
    ]
    classes = torch.as_tensor(np.searchsorted(base, labels[rows]))
    if fold is None:
        validation = ValidationProducts(store, labels, held, held_prompts, f"masked-{config.label_column}")
        identity = {"config": dataclasses.asdict(config), "catalog_fingerprint": catalog.fingerprint}
    else:
        groups = near_duplicate_index(catalog, split_episodes)
        sets = fold_sets(fold, split, store.ids, labels, catalog.fingerprint, groups)
        validation = HeldOutZeroShot(store, sets, held_prompts, config.dim)
        identity = {"config": dataclasses.asdict(config), "catalog_fingerprint": catalog.fingerprint,
                    "scored_on": {name: episode_set.digest for name, episode_set in sets.items()}}  # fmt: skip

    torch.manual_seed(config.seed)
    model = Projections(image.shape[1], texts[0].shape[1], config.dim, config.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    meta = {
        "towers": TOWERS,
        "catalog_fingerprint": catalog.fingerprint,
        "split_seed": config.split_seed,
        "label_column": config.label_column,
        "base_classes": base,
        "image_dim": image.shape[1],
        "text_dim": texts[0].shape[1],
        "dim": config.dim,
        "hidden": config.hidden,
        "config": dataclasses.asdict(config),
        "trained_on": f"{len(rows)} products of the "
        + ("base classes" if fold is None else f"training classes of class fold {fold.index}"),
        **({} if fold is None else {"fold": fold.record()}),
    }
    job = Alignment(run_name, config, model, (image, texts, classes, base_prompts), validation, meta)
    schedule = Schedule(config.steps, config.val_every, config.lr, "lr")
    runs = workspace.runs_of("align", config.split_seed) / run_name
    best, _ = run_loop(job, optimizer, schedule, folder, runs, identity, resume, progress, start_is_candidate=False)
    if fold is not None and job.best_step != best["step"]:  # resumed after the chosen step: score it again
        job.best_accuracies = validation.accuracies(load_alignment(folder / "best")[0])
    return {
        "best_val_accuracy": best["score"],
        "best_step": best["step"],
        "steps": config.steps,
        "best": best,
        "start": None,
        "folder": folder / "best",
        "accuracies": job.best_accuracies or {},
    }


class ValidationProducts:
    """`fsl align`'s validation: the validation classes' products. Zero-shot photo accuracy among
    those classes, averaged over classes (one large class cannot carry it), and masked text -> own
    photo recall@10; the score that chooses the step is their mean (six classes alone made a noisy
    judge)."""

    def __init__(self, store, labels: np.ndarray, classes: list[str], prompts: torch.Tensor, text_variant: str):
        rows = np.flatnonzero(np.isin(labels, classes))
        self.image = torch.from_numpy(np.asarray(store.image[rows], dtype=np.float32))
        self.texts = torch.from_numpy(np.asarray(store.text(text_variant)[rows], dtype=np.float32))
        self.prompts, self.classes = prompts, torch.as_tensor(np.searchsorted(classes, labels[rows]))

    def accuracies(self, model: Projections) -> dict[str, np.ndarray]:
        return {}  # figures over products, not episodes: nothing to pair across candidates

    def figures(self, model: Projections, accuracies: dict[str, np.ndarray]) -> dict[str, float]:
        with torch.no_grad():
            images = model.embed_image(self.image)
            predicted = (images @ model.embed_text(self.prompts).T).argmax(-1)
            recall = retrieval_figures(
                images, model.embed_text(self.texts), model.embed_text(self.prompts), self.classes, ks=(10,)
            )["text_recall@10"]
        correct = (predicted == self.classes).float()
        zero_shot = float(torch.stack([correct[self.classes == c].mean() for c in self.classes.unique()]).mean())
        return {"zero_shot": zero_shot, "text_recall@10": recall, "score": (zero_shot + recall) / 2}


class HeldOutZeroShot:
    """A class fold's validation: zero-shot photo accuracy from the held classes' names, per episode
    of each scoring set (the support is not read), as `experiments/aligned-zero-shot-image.yaml` reads
    an aligned space on novel classes. The mean over sets of each set's choosing half is the score
    that chooses the step; the reporting half is left to the comparison (select.compare_on_folds)."""

    def __init__(self, store, sets: dict[str, EpisodeSet], prompts: torch.Tensor, dim: int):
        self.sets, self.ids, self.prompts = sets, store.ids, prompts  # prompts in the held classes' order
        episode_ids = [np.concatenate([s.episodes.support.ravel(), s.episodes.query.ravel()]) for s in sets.values()]
        self.rows = np.searchsorted(store.ids, np.unique(np.concatenate(episode_ids)))
        self.image = torch.from_numpy(np.asarray(store.image[self.rows], dtype=np.float32))
        # [photo, nothing] rows for image fusion, allocated once: each validation point rewrites its rows
        self.features = np.zeros((len(self.ids), 2 * dim), dtype=np.float32)
        self.head = ZeroShot(ImageOnly(dim, dim), shared_space=True)

    def accuracies(self, model: Projections) -> dict[str, np.ndarray]:
        """Each set's per-episode accuracies (paired across candidates: the same episodes)."""
        with torch.no_grad():
            images, prompts = model.embed_image(self.image), model.embed_text(self.prompts)
        self.features[self.rows, : images.shape[1]] = images.numpy()
        return {
            name: run_episodes(self.head, self.features, self.ids, episode_set, progress=False, class_text=prompts)
            for name, episode_set in self.sets.items()
        }

    def figures(self, model: Projections, accuracies: dict[str, np.ndarray]) -> dict[str, float]:
        scores = {name: float(np.mean(values[CHOOSE])) for name, values in accuracies.items()}
        return {**scores, "score": float(np.mean(list(scores.values())))}


class Alignment(Trainable):
    """The projections on the training classes' products, each photo with its text (plain or masked
    at random) and the training classes' prompts; scored on held-out classes (ValidationProducts on a
    split's validation classes, HeldOutZeroShot on a class fold's). Keeps the per-episode accuracies of
    the step saved as best, so a fold's chosen step is not scored again."""

    task = "align"

    def __init__(
        self,
        name: str,
        config: AlignConfig,
        model: Projections,
        train: tuple,
        validation: ValidationProducts | HeldOutZeroShot,
        meta: dict,
    ):
        self.name, self.config, self.model, self.meta = name, config, model, meta
        self.image, self.texts, self.classes, self.prompts = train
        self.validation = validation
        self.last_accuracies: dict[str, np.ndarray] | None = None  # of the latest validation point
        self.best_accuracies: dict[str, np.ndarray] | None = None  # of the step saved as best
        self.best_step = -1

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def loss(self, step: int) -> tuple[str, torch.Tensor]:
        batch = torch.randint(len(self.image), (self.config.batch_size,))
        variant = torch.rand(self.config.batch_size, 1) < 0.5
        text = torch.where(variant, self.texts[0][batch], self.texts[1][batch])
        return "loss", contrastive_loss(
            self.model.embed_image(self.image[batch]),
            self.model.embed_text(text),
            self.model.embed_text(self.prompts),
            self.classes[batch],
            self.model.scale,
            self.config.prompt_weight,
        )

    def validate(self) -> dict[str, float]:
        self.last_accuracies = self.validation.accuracies(self.model)
        figures = self.validation.figures(self.model, self.last_accuracies)
        return {**figures, "temperature": 1 / self.model.scale.item()}

    def save(self, folder: Path, step: int, figures: dict, start: dict | None) -> None:
        if folder.name == "best":
            self.best_accuracies, self.best_step = self.last_accuracies, step
        save_alignment(folder, self.model, {**self.meta, "step": step, "validation": figures})

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "rng": torch.get_rng_state()}

    def load_state(self, state: dict, folder: Path) -> None:
        self.model.load_state_dict(state["model"])
        torch.set_rng_state(state["rng"])


# Reporting (novel classes, after the step was chosen) ------------------------------------------


def retrieval_figures(
    image: torch.Tensor,
    texts: torch.Tensor,
    prompts: torch.Tensor,
    classes: torch.Tensor,
    ks: tuple[int, ...] = (1, 10),
) -> dict:
    """Text-to-photo retrieval among the given products' photos (unit vectors, one space).

    Class-name prompts: recall@k (a photo of the class among the k found) and precision@k (the share
    of the k that are of the class). Product texts: recall@k (the product's own photo among the k)."""
    figures = {}
    by_name = (prompts @ image.T).topk(max(ks), dim=-1).indices  # [C, k]
    by_text = (texts @ image.T).topk(max(ks), dim=-1).indices  # [P, k]
    for k in ks:
        hits = classes[by_name[:, :k]] == torch.arange(len(prompts))[:, None]  # [C, k]
        figures[f"class_recall@{k}"] = float(hits.any(-1).float().mean())
        figures[f"class_precision@{k}"] = float(hits.float().mean())
        figures[f"text_recall@{k}"] = float(
            (by_text[:, :k] == torch.arange(len(texts))[:, None]).any(-1).float().mean()
        )
    return figures


def novel_retrieval(
    alignment: str | os.PathLike, catalog: Catalog, workspace: Workspace = Workspace(), seed: int = 0
) -> dict[str, dict]:
    """Retrieval on novel-class products (never seen in alignment): the trained projections next to
    random projections of the same sizes (the baseline: no learning)."""

    model, meta = load_alignment(alignment)
    store = open_store(catalog, EncoderConfig("offline"), workspace.features)
    split_seed, column = meta["split_seed"], meta["label_column"]
    novel = ClassSplit.load(catalog, column, split_seed, workspace.episodes_of(split_seed)).classes("novel")
    labels = catalog.labels(meta["label_column"]).to_numpy()
    rows = np.flatnonzero(np.isin(labels, novel))
    encoder = encoder_from_config(EncoderConfig("offline"))
    prompts = torch.from_numpy(
        store.short_texts(
            [meta["config"]["class_prompt"].format(c) for c in novel],
            lambda texts: encoder.encode_texts(texts, progress=False),
        )
    )
    image = torch.from_numpy(np.asarray(store.image[rows], dtype=np.float32))
    texts = torch.from_numpy(np.asarray(store.text(f"masked-{meta['label_column']}")[rows], dtype=np.float32))
    classes = torch.as_tensor(np.searchsorted(novel, labels[rows]))
    torch.manual_seed(seed)
    random = Projections(meta["image_dim"], meta["text_dim"], meta["dim"], meta["hidden"]).requires_grad_(False)
    out = {}
    for name, heads in (("aligned", model), ("random projection", random)):
        with torch.no_grad():
            out[name] = retrieval_figures(
                heads.embed_image(image), heads.embed_text(texts), heads.embed_text(prompts), classes
            )
    out["products"], out["classes"] = len(rows), len(novel)
    return out

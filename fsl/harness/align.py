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
heads, and its feature store is computed from the offline store's features."""

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
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.harness.loop import Schedule, Trainable, run_loop
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
) -> dict:
    """Train the projections on split `config.split_seed`'s base classes, into out/NAME (`out`: the
    workspace's alignments, checkpoints/align, unless given); returns {"best_val_accuracy" (the
    validation score), "best_step", "steps", "best" (the validation figures), "folder"}."""
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
    store = open_store(catalog, EncoderConfig("offline"), workspace.features)
    if store.encoder_id != TOWERS:
        raise FslError(f"alignment needs the offline towers' store, got {store.encoder_id}")
    split = ClassSplit.load(catalog, config.label_column, config.split_seed, workspace.episodes_of(config.split_seed))
    labels = catalog.labels(config.label_column).to_numpy()
    rows = training_rows(labels, split.classes("base"))
    val_rows = np.flatnonzero(np.isin(labels, split.classes("val")))
    encoder = encoder_from_config(EncoderConfig("offline"))
    prompts = store.short_texts(
        [config.class_prompt.format(c) for c in split.classes("base") + split.classes("val")],
        lambda texts: encoder.encode_texts(texts, progress=False),
    )
    base_prompts = torch.from_numpy(prompts[: len(split.classes("base"))])
    val_prompts = torch.from_numpy(prompts[len(split.classes("base")) :])
    image = torch.from_numpy(np.asarray(store.image[rows], dtype=np.float32))
    texts = [
        torch.from_numpy(np.asarray(store.text(v)[rows], dtype=np.float32))
        for v in ("plain", f"masked-{config.label_column}")
    ]
    classes = torch.as_tensor(np.searchsorted(split.classes("base"), labels[rows]))
    val_image = torch.from_numpy(np.asarray(store.image[val_rows], dtype=np.float32))
    val_classes = torch.as_tensor(np.searchsorted(split.classes("val"), labels[val_rows]))

    torch.manual_seed(config.seed)
    model = Projections(image.shape[1], texts[0].shape[1], config.dim, config.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    folder = Path(out if out is not None else workspace.alignments) / config.name
    meta = {
        "towers": TOWERS,
        "catalog_fingerprint": catalog.fingerprint,
        "split_seed": config.split_seed,
        "label_column": config.label_column,
        "base_classes": split.classes("base"),
        "image_dim": image.shape[1],
        "text_dim": texts[0].shape[1],
        "dim": config.dim,
        "hidden": config.hidden,
        "config": dataclasses.asdict(config),
        "trained_on": f"{len(rows)} products of the base classes",
    }
    val_texts = torch.from_numpy(np.asarray(store.text(f"masked-{config.label_column}")[val_rows], dtype=np.float32))
    validation = (val_image, val_texts, val_prompts, val_classes)
    job = Alignment(config, model, (image, texts, classes, base_prompts), validation, meta)
    identity = {"config": dataclasses.asdict(config), "catalog_fingerprint": catalog.fingerprint}
    schedule = Schedule(config.steps, config.val_every, config.lr, "lr")
    runs = workspace.runs_of("align", config.split_seed) / config.name
    best, _ = run_loop(job, optimizer, schedule, folder, runs, identity, resume, progress, start_is_candidate=False)
    return {
        "best_val_accuracy": best["score"],
        "best_step": best["step"],
        "steps": config.steps,
        "best": best,
        "folder": folder / "best",
    }


class Alignment(Trainable):
    """The projections on base-class products, each photo with its text (plain or masked at random)
    and the base classes' prompts; scored on the validation classes' products."""

    task = "align"

    def __init__(self, config: AlignConfig, model: Projections, train: tuple, validation: tuple, meta: dict):
        self.name, self.config, self.model, self.meta = config.name, config, model, meta
        self.image, self.texts, self.classes, self.prompts = train
        self.val_image, self.val_texts, self.val_prompts, self.val_classes = validation

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
        """On validation-class products: zero-shot photo accuracy among the validation classes, averaged
        over classes (one large class cannot carry it), and masked text -> own photo recall@10; the
        score that chooses the step is their mean (six classes alone made a noisy judge)."""
        with torch.no_grad():
            images = self.model.embed_image(self.val_image)
            predicted = (images @ self.model.embed_text(self.val_prompts).T).argmax(-1)
            recall = retrieval_figures(
                images,
                self.model.embed_text(self.val_texts),
                self.model.embed_text(self.val_prompts),
                self.val_classes,
                ks=(10,),
            )["text_recall@10"]
        correct = (predicted == self.val_classes).float()
        zero_shot = float(
            torch.stack([correct[self.val_classes == c].mean() for c in self.val_classes.unique()]).mean()
        )
        temperature = 1 / self.model.scale.item()
        return {"zero_shot": zero_shot, "text_recall@10": recall, "temperature": temperature,
                "score": (zero_shot + recall) / 2}  # fmt: skip

    def save(self, folder: Path, step: int, figures: dict, start: dict | None) -> None:
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

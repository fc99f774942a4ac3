"""Encoder adaptation: a tower's last layers learn on base-class products, from activations cached at
the cut (fsl/store/activations.py), so a step runs only the layers being trained and no photo is
decoded. A pair adapts its image tower, its text tower or both (`towers`): the offline pair's last
MBConv block(s) and head convolution and MiniLM's last layer(s); a CLIP model's last transformer blocks
(fsl/encoders/clip_cut.py). Where the text tower learns, under the fused loss of the fused-masked heads.

Objectives: `supervised` (cross-entropy of a cosine classifier over the base classes, its weights
imprinted from the class means: Tian et al., ECCV 2020), `episodic` (the prototypical loss on N-way
K-shot base episodes: P>M>F's meta-training stage, Hu et al., CVPR 2022) and `supervised+episodic`
(the first half of the steps one, the second the other). Modes: `full` (the layers' weights and
norm affines) and `lora` (PEFT low-rank adapters, merged into the weights when saved: CLIP-LoRA's
recipe, Zanella & Ben Ayed 2024; on the offline image tower's 1x1 convolutions, on the attention
projections of MiniLM's and CLIP's layers). The offline image maps are augmented where the recipe
says: mirrored (`flip`), cropped (`crop`), blended with another product of their class (`mix`).

Selection reads validation classes only: step 0 (the frozen tower) is scored first, so a chosen
checkpoint is never worse than its start on validation, and the run says when the start won.
checkpoints/adapt/NAME/{best,last}, TensorBoard under runs/adapt/NAME, resume from last."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from fsl.config import AdaptConfig, ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.encoders.adapted import (
    TOWERS,
    ImageTop,
    Tops,
    adapted_top,
    check_cut,
    check_text_cut,
    cut_tops,
    load_adaptation,
    save_adaptation,
)
from fsl.encoders.base import Encoder
from fsl.encoders.clip import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS
from fsl.encoders.clip_cut import CLIP_LORA_TARGETS
from fsl.encoders.factory import create_encoder
from fsl.encoders.offline import OfflineEncoder
from fsl.episodes.folds import CHOOSE, ClassFold, check_fold, fold_sets
from fsl.episodes.frozen import EpisodeSet
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import load_episode_set, near_duplicate_index
from fsl.errors import FslError
from fsl.harness.evaluate import run_episodes
from fsl.harness.experiment import check_validation_only
from fsl.harness.loop import Schedule, Trainable, run_loop
from fsl.inference.heads import head_for_features
from fsl.paths import Workspace, split_root
from fsl.store.activations import cached_tower, tower_cut
from fsl.store.features import FeatureStore, TextVariant
from fsl.store.open import open_store

MODES = ("full", "lora")
OBJECTIVES = ("supervised", "episodic", "supervised+episodic")
LORA_TARGETS = ["_expand_conv", "_project_conv", "conv_head"]  # the 1x1 convolutions (depthwise ones are left)
TEXT_LORA_TARGETS = ["query", "key", "value"]  # MiniLM's attention projections
ENCODERS = ("offline", "clip")
TOWER_CHOICES = {"image": ["image"], "text": ["text"], "both": ["image", "text"]}
# the classes a recipe trains on, as a ClassSplit names them (a split, or a pool of splits)
CLASSES = {"base": "base", "selection": "select", "all": "all"}
TRAINED_ON = {
    "base": "base classes",
    "selection": "base and validation classes (every class but the split's novel ones)",
    "all": "classes of the split (base, validation and novel ones: a tower for your own categories)",
}


def check_adapt_config(config: AdaptConfig) -> AdaptConfig:
    """Every option checked before any work (a CLIP cut's depth: once the model is built)."""
    if config.encoder.name not in ENCODERS:
        raise FslError(f"adapt encoder must be one of {list(ENCODERS)}, got {config.encoder.name!r}")
    if config.towers not in TOWER_CHOICES:
        raise FslError(f"adapt towers must be one of {list(TOWER_CHOICES)}, got {config.towers!r}")
    if config.encoder.name == "offline":
        if "image" in adapted_towers(config):
            check_cut(config.cut)
        if "text" in adapted_towers(config):
            check_text_cut(config.cut)
        if config.encoder.model or config.encoder.pretrained:
            raise FslError("adapt encoder offline takes no model or pretrained weights (those name a CLIP model)")
    elif config.flip:
        raise FslError(
            "adapt flip mirrors the offline tower's 7x7 maps; a CLIP tower's cached tokens carry their positions "
            "and cannot be mirrored: set flip: false"
        )
    elif config.crop != 1 or config.mix != 0:
        raise FslError(
            "adapt crop and mix augment the offline tower's 7x7 maps; a CLIP tower's cached tokens carry their "
            "positions: leave crop at 1 and mix at 0"
        )
    for key in ("cut", "rank", "steps", "batch_size", "n_way", "k_shot", "q_query", "val_every"):
        value = getattr(config, key)
        if type(value) is not int or value < 1:
            raise FslError(f"adapt {key} must be a positive whole number, got {value!r}")
    if config.classes not in CLASSES:
        raise FslError(f"adapt classes must be one of {list(CLASSES)}, got {config.classes!r}")
    if config.mode not in MODES:
        raise FslError(f"adapt mode must be one of {list(MODES)}, got {config.mode!r}")
    if config.objective not in OBJECTIVES:
        raise FslError(f"adapt objective must be one of {list(OBJECTIVES)}, got {config.objective!r}")
    if not (type(config.lr) in (int, float) and math.isfinite(config.lr) and config.lr > 0):
        raise FslError(f"adapt lr must be a finite number > 0, got {config.lr!r}")
    if not (
        type(config.weight_decay) in (int, float) and math.isfinite(config.weight_decay) and config.weight_decay >= 0
    ):
        raise FslError(f"adapt weight_decay must be a finite number >= 0, got {config.weight_decay!r}")
    if not (type(config.image_weight) in (int, float) and 0 <= config.image_weight <= 1):
        raise FslError(f"adapt image_weight must lie in [0, 1], got {config.image_weight!r}")
    if type(config.flip) is not bool:
        raise FslError(f"adapt flip must be true or false, got {config.flip!r}")
    if not (type(config.crop) in (int, float) and 0 < config.crop <= 1):
        raise FslError(f"adapt crop (the share of a map's side kept) must lie in (0, 1], got {config.crop!r}")
    if not (type(config.mix) in (int, float) and 0 <= config.mix <= 0.5):
        raise FslError(f"adapt mix (the most a map's class partner weighs) must lie in [0, 0.5], got {config.mix!r}")
    if (config.crop != 1 or config.mix != 0) and "image" not in adapted_towers(config):
        raise FslError(
            f"adapt crop and mix augment the image tower's maps, and towers {config.towers!r} does not train it: "
            "leave crop at 1 and mix at 0"
        )
    if type(config.split_seed) is not int or config.split_seed < 0 or type(config.seed) is not int or config.seed < 0:
        raise FslError(
            f"adapt split_seed and seed must be whole numbers >= 0 (got {config.split_seed!r}, {config.seed!r})"
        )
    return config


# What is trained --------------------------------------------------------------------------------


def adapted_towers(config: AdaptConfig) -> list[str]:
    return TOWER_CHOICES[config.towers]


def frozen_encoder(config: AdaptConfig) -> Encoder:
    """The frozen towers a recipe adapts: the offline pair, or its CLIP model with its weights."""
    if config.encoder.name == "offline":
        return OfflineEncoder()
    clip = clip_model(config)
    return create_encoder("clip", model=clip["model"], pretrained=clip["pretrained"])


def clip_model(config: AdaptConfig) -> dict:
    """The CLIP model and weights a recipe names, defaults filled in (what the sidecar records)."""
    return {
        "name": "clip",
        "model": config.encoder.model or DEFAULT_CLIP_MODEL,
        "pretrained": config.encoder.pretrained or DEFAULT_CLIP_WEIGHTS,
    }


def image_alone(config: AdaptConfig) -> bool:
    """The offline image tower alone: trained and saved as a plain ImageTop (the first adaptations' layout)."""
    return config.encoder.name == "offline" and config.towers == "image"


def trainable_top(encoder: Encoder, config: AdaptConfig) -> nn.Module:
    """A copy of the towers' top: every parameter trainable (full), or frozen with LoRA adapters (lora):
    the offline image tower's ImageTop, or the Tops of the recipe's towers."""
    if image_alone(config):
        top = ImageTop(copy.deepcopy(encoder.image_model), config.cut)
    else:
        top = cut_tops(encoder, config.cut, adapted_towers(config), copy_weights=True)
    if config.mode == "full":
        return top.requires_grad_(True)
    top.requires_grad_(False)
    if isinstance(encoder, OfflineEncoder):
        targets = {"image": LORA_TARGETS, "text": TEXT_LORA_TARGETS}
        targets = [name for tower in adapted_towers(config) for name in targets[tower]]
        if "image" in adapted_towers(config):
            as_plain_convolutions(top, LORA_TARGETS)
    else:
        targets = CLIP_LORA_TARGETS
    lora = LoraConfig(r=config.rank, lora_alpha=2 * config.rank, target_modules=targets, lora_dropout=0.0)
    return get_peft_model(top, lora)


def tower_cuts(encoder: Encoder, config: AdaptConfig, store: FeatureStore) -> dict:
    """Each adapted tower's cut, as the activations cache reads it; a text tower's of the recipe's text
    variant (the texts its fused heads read)."""
    variants = store.manifest.get("text_variants", {})
    if "text" in adapted_towers(config) and config.text_variant not in variants:
        raise FslError(
            f"the store {store.path} has no text variant {config.text_variant!r} (it has {sorted(variants)}); "
            "embed it with `fsl embed --mask-labels COLUMN`, or set text_variant"
        )
    return {
        tower: tower_cut(
            encoder, tower, config.cut, TextVariant(**variants[config.text_variant]) if tower == "text" else None
        )
        for tower in adapted_towers(config)
    }


def as_plain_convolutions(top: nn.Module, names: list[str]) -> None:
    """EfficientNet's 1x1 "same"-padded convolutions as plain nn.Conv2d holding the same weights (no
    padding is needed at 1x1): PEFT builds its adapters with the wrapped layer's own class, and the
    wrapper's constructor demands an image size."""
    for parent in list(top.modules()):
        for name, child in list(parent.named_children()):
            if name in names and isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1):
                plain = nn.Conv2d(child.in_channels, child.out_channels, 1, child.stride, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)


MEMORY_SHARE = 0.7  # of the memory available when the run starts, what one step may take


def check_step_memory(forward: Callable[[np.ndarray], torch.Tensor], what: str, products: int) -> None:
    """Refuse a step too large for this machine before it runs (the kernel would kill it without a
    word): what the forward of two products (`forward(rows)`) keeps for the backward pass, measured,
    scaled to the step's `products` and doubled for their gradients, against the memory available now."""
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        forward(np.arange(2))
    per_product = saved  # two products' saved tensors, doubled for their gradients, over two products
    available = psutil.virtual_memory().available
    if products * per_product > MEMORY_SHARE * available:
        raise FslError(
            f"adapt {what} = {products} products a step needs about {products * per_product / 2**30:.1f} GiB; "
            f"{available / 2**30:.1f} GiB is available. Lower it (about {int(MEMORY_SHARE * available / per_product)} "
            "fit)"
        )


def merged_top(model: nn.Module) -> ImageTop | Tops:
    """The plain top a trained model stands for: LoRA adapters merged into the weights."""
    if isinstance(model, (ImageTop, Tops)):
        return model
    return copy.deepcopy(model).merge_and_unload()


# Base-class batches -----------------------------------------------------------------------------


class BaseBatches:
    """Rows of base-class products only: supervised batches and episodic tasks. Validation and
    novel products are never among `rows`, so no batch can hold one (a test checks it)."""

    def __init__(self, catalog: Catalog, config: AdaptConfig, base: list[str], split_episodes):
        labels = catalog.labels(config.label_column).to_numpy()
        self.rows = np.flatnonzero(np.isin(labels, base))
        if len(self.rows) == 0:
            raise FslError("no product of a base class to adapt on")
        where = f"split {config.split_seed} has {len(base)} base classes and {len(self.rows)} base-class products"
        if config.objective != "episodic" and config.batch_size > len(self.rows):
            raise FslError(
                f"adapt batch_size {config.batch_size} is more than the products to draw from ({where}); lower it"
            )
        if config.objective != "supervised" and config.n_way > len(base):
            raise FslError(f"adapt n_way {config.n_way} is more than the classes to draw from ({where})")
        self.base = list(base)
        self.classes = torch.as_tensor(np.searchsorted(self.base, labels[self.rows]))
        # positions in `rows` grouped by class, to draw a product of a given class (partners)
        self.by_class = torch.argsort(self.classes, stable=True)
        self.class_sizes = torch.bincount(self.classes, minlength=len(self.base))
        self.class_starts = torch.cumsum(self.class_sizes, 0) - self.class_sizes
        self.generator = torch.Generator().manual_seed(config.seed)
        groups = near_duplicate_index(catalog, split_episodes)
        groups = None if groups is None else groups[self.rows]
        self.sampler = EpisodeSampler(
            self.rows, labels[self.rows], self.base, config.n_way, config.k_shot,
            config.q_query, config.seed, groups,
        )  # fmt: skip
        self.batch_size = config.batch_size

    def partners(self, rows: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """[B] for each of `rows`, a product of its class drawn at random (it may be itself), what `mix`
        blends its map with."""
        classes = self.classes[np.searchsorted(self.rows, rows)]
        drawn = (torch.rand(len(rows), generator=generator) * self.class_sizes[classes]).long()
        return self.rows[self.by_class[self.class_starts[classes] + drawn].numpy()]

    def supervised(self) -> tuple[np.ndarray, torch.Tensor]:
        """A batch of base products (catalog rows) and their base-class numbers."""
        picked = torch.randint(len(self.rows), (self.batch_size,), generator=self.generator)
        return self.rows[picked.numpy()], self.classes[picked]

    def episode(self):
        return self.sampler.sample(1)

    def state(self) -> list[torch.Tensor]:
        return [self.generator.get_state(), self.sampler.generator.get_state()]

    def set_state(self, state: list[torch.Tensor]) -> None:
        self.generator.set_state(state[0])
        self.sampler.generator.set_state(state[1])


def objective_at(config: AdaptConfig, step: int) -> str:
    """The objective of a step (1-based): supervised+episodic runs the first half supervised."""
    if config.objective != "supervised+episodic":
        return config.objective
    return "supervised" if step <= config.steps // 2 else "episodic"


# What the loss and the validation read ----------------------------------------------------------


class TowerFeatures:
    """Catalog rows' features under a trained top: each adapted tower's top run on its cached
    activations; a tower that does not learn gives its frozen store features. The loss reads the
    image features alone where only the image tower learns, else the fused-masked heads' fusion
    [√w·image, √(1-w)·text] of unit vectors, so the text tower learns what those heads read."""

    def __init__(self, config: AdaptConfig, model: nn.Module, activations: dict[str, np.ndarray], store):
        self.config, self.model, self.activations, self.store = config, model, activations, store
        self.offline, self.image_alone = config.encoder.name == "offline", image_alone(config)

    def tops(
        self, rows: np.ndarray, generator: torch.Generator | None = None, partners: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """{tower: [B, D]} the adapted towers' features of `rows`, unnormalised. With a `generator`, the
        offline image maps are augmented as the recipe says (`augment`), blended with `partners`' maps
        (products of the same classes) where it mixes."""
        inputs = {tower: self.cached(tower, rows) for tower in self.activations}
        if self.offline and "image" in inputs and generator is not None:
            partner_maps = None if partners is None else self.cached("image", partners)
            inputs["image"] = augment(inputs["image"], self.config, generator, partner_maps)
        return {"image": self.model(inputs["image"])} if self.image_alone else self.model(inputs)

    def cached(self, tower: str, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.activations[tower][rows], dtype=np.float32))

    @torch.no_grad()
    def features(self, rows: np.ndarray, batch: int = 256) -> dict[str, torch.Tensor]:
        """{tower: [R, D]} the adapted towers' unit features of `rows`, batched, without gradients."""
        parts = [self.tops(rows[i : i + batch]) for i in range(0, len(rows), batch)]
        return {tower: F.normalize(torch.cat([p[tower] for p in parts]), dim=-1) for tower in self.activations}

    def for_loss(
        self, rows: np.ndarray, generator: torch.Generator | None = None, partners: np.ndarray | None = None
    ) -> torch.Tensor:
        """[B, D] what the objectives compare (see the class)."""
        adapted = self.tops(rows, generator, partners)
        if set(adapted) == {"image"}:
            return adapted["image"]
        frozen = {"image": self.store.image, "text": self.store.text(self.config.text_variant)}
        image, text = (
            F.normalize(adapted[tower], dim=-1)
            if tower in adapted
            else torch.from_numpy(np.asarray(frozen[tower][rows], dtype=np.float32))
            for tower in ("image", "text")
        )
        weight = self.config.image_weight
        return torch.cat([math.sqrt(weight) * image, math.sqrt(1 - weight) * text], dim=-1)

    @torch.no_grad()
    def for_loss_without_gradients(self, rows: np.ndarray, batch: int = 256) -> torch.Tensor:
        return torch.cat([self.for_loss(rows[i : i + batch]) for i in range(0, len(rows), batch)])


# Losses -----------------------------------------------------------------------------------------


def prototypical_loss(support: torch.Tensor, query: torch.Tensor, n_way: int, scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of scaled cosine to class prototypes (support class-major, K per class)."""
    prototypes = F.normalize(F.normalize(support, dim=-1).view(n_way, -1, support.shape[-1]).mean(1), dim=-1)
    logits = scale * F.normalize(query, dim=-1) @ prototypes.T
    targets = torch.arange(n_way).repeat_interleave(len(query) // n_way)
    return F.cross_entropy(logits, targets)


def cosine_classifier_loss(
    features: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(scale * F.normalize(features, dim=-1) @ F.normalize(weights, dim=-1).T, classes)


def augment(
    maps: torch.Tensor, config: AdaptConfig, generator: torch.Generator, partner_maps: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, C, H, W] maps of a training step augmented as the recipe says: blended with their class
    partners' (`mix`), mirrored (`flip`), cropped (`crop`). The top pools over whatever map it is given,
    so a crop is a photo seen closer, as a random-resized crop would show it, without decoding one."""
    if partner_maps is not None:  # drawn only where the recipe mixes
        maps = mix(maps, partner_maps, config.mix, generator)
    if config.flip:
        maps = mirror(maps, generator)
    if config.crop < 1:
        maps = random_crop(maps, config.crop, generator)
    return maps


def mirror(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror about half of the activation maps left to right."""
    flip = torch.rand(len(maps), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], maps.flip(-1), maps)


def mix(maps: torch.Tensor, partner_maps: torch.Tensor, most: float, generator: torch.Generator) -> torch.Tensor:
    """Each map blended with its partner's (a product of the same class), the partner weighing a
    uniform draw in [0, most]: a product between two of its class, its label unchanged (within-class
    manifold mixup: no second label to weigh, so the prototypical loss takes it as it is)."""
    weight = most * torch.rand(len(maps), 1, 1, 1, generator=generator)
    return (1 - weight) * maps + weight * partner_maps


def random_crop(maps: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A random square of `share` of each map's side (at least one cell), at its own place in each map."""
    count, channels, height, width = maps.shape
    size_h, size_w = max(1, round(share * height)), max(1, round(share * width))
    top = torch.randint(height - size_h + 1, (count, 1), generator=generator) + torch.arange(size_h)
    left = torch.randint(width - size_w + 1, (count, 1), generator=generator) + torch.arange(size_w)
    return maps[
        torch.arange(count)[:, None, None, None],
        torch.arange(channels)[None, :, None, None],
        top[:, None, :, None],
        left[:, None, None, :],
    ]


# Training ---------------------------------------------------------------------------------------


def validation_sets(catalog: Catalog, config: AdaptConfig, split_episodes) -> dict[str, EpisodeSet]:
    """The recipe's validation-class episode sets, checked to hold validation classes only."""
    experiment = validation_experiment(config)
    check_validation_only(
        experiment, catalog, config.val_episodes, split_episodes, "fsl adapt", "val_episodes=[val-5w5s]"
    )
    return {name: load_episode_set(experiment, catalog, name, split_episodes) for name in config.val_episodes}


def validation_experiment(config: AdaptConfig) -> ExperimentConfig:
    """The head that scores a checkpoint: the fused-masked protonet of the README's main heads."""
    return ExperimentConfig(
        name="adapt-validation",
        method="protonet",
        fusion="concat",
        fusion_options={"image_weight": config.image_weight},
        text_variant=config.text_variant,
        label_column=config.label_column,
    )


class NothingHeldOut:
    """A run on every class it may see (`classes: selection | all`): no held-out episodes, so no
    figures and no chosen step; the loop keeps the last (run_loop's choose_step)."""

    def accuracies(self, towers: TowerFeatures) -> dict[str, np.ndarray]:
        return {}

    def summary(self, accuracies: dict[str, np.ndarray]) -> dict[str, float]:
        return {}


class Validation:
    """The fused-masked protonet on held-out episode sets (validation classes, or a class fold's held
    classes): the mean accuracy over sets, on each set's `choose` episodes (all, or a fold's choosing
    half), is the score that chooses the checkpoint."""

    def __init__(self, config: AdaptConfig, store, sets: dict[str, EpisodeSet], choose: slice = slice(None)):
        self.sets, self.choose = sets, choose
        self.ids = store.ids
        ids = np.unique(
            np.concatenate(
                [np.concatenate([s.episodes.support.ravel(), s.episodes.query.ravel()]) for s in sets.values()]
            )
        )
        self.rows = np.searchsorted(store.ids, ids)
        self.image_dim, text_dim = store.manifest["image_dim"], store.manifest["text_dim"]
        self.features = np.zeros((len(store.ids), self.image_dim + text_dim), dtype=np.float32)
        self.features[self.rows, : self.image_dim] = store.image[self.rows]
        self.features[self.rows, self.image_dim :] = store.text(config.text_variant)[self.rows]
        self.head = head_for_features(validation_experiment(config), self.image_dim, text_dim, store.encoder_id)

    def accuracies(self, towers: TowerFeatures) -> dict[str, np.ndarray]:
        """Each set's per-episode accuracies under the towers' top (paired across tops: the same episodes)."""
        for tower, values in towers.features(self.rows).items():
            columns = slice(None, self.image_dim) if tower == "image" else slice(self.image_dim, None)
            self.features[self.rows, columns] = values.numpy()
        return {
            name: run_episodes(self.head, self.features, self.ids, episode_set, progress=False)
            for name, episode_set in self.sets.items()
        }

    def summary(self, accuracies: dict[str, np.ndarray]) -> dict[str, float]:
        """Each set's mean accuracy on its choosing episodes and their mean, "score", which chooses the
        checkpoint."""
        scores = {name: float(np.mean(values[self.choose])) for name, values in accuracies.items()}
        return {**scores, "score": float(np.mean(list(scores.values())))}


def adapt(
    config: AdaptConfig,
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    fold: ClassFold | None = None,
) -> dict:
    """Train the top on split `config.split_seed`'s base classes, or on a class fold's training classes
    (scored on its held ones: fsl/episodes/folds.py); returns {"best" (validation figures), "best_step",
    "start" (step 0's figures), "steps", "folder", "accuracies" (the chosen top's per-episode accuracies
    on each scoring set)}. The checkpoints of split s live under split_root(out, s) (`out`: the
    workspace's adaptations, checkpoints/adapt, unless given), like fsl train's; a fold's under NAME/fold<f>.
    A recipe on more classes than the base ones (`classes`) holds none out: it runs every step and
    keeps the last, with no figures; its steps are the recipe's, or those class folds chose (fsl adapt --folds)."""
    check_adapt_config(config)
    split_episodes = workspace.episodes_of(config.split_seed)
    folder = split_root(out if out is not None else workspace.adaptations, config.split_seed) / config.name
    run_name = config.name
    split = ClassSplit.load(catalog, config.label_column, config.split_seed, split_episodes)
    base = split.classes("base")
    encoder = frozen_encoder(config)
    store = open_store(catalog, config.encoder, workspace.features)
    if not np.array_equal(store.ids, catalog.products["id"].to_numpy()):
        raise FslError(f"feature store {store.path} rows do not follow the catalog; re-run `fsl embed`")
    cuts = tower_cuts(encoder, config, store)
    holds_out = fold is not None or config.classes == "base"
    if not holds_out:
        base, sets = split.classes(CLASSES[config.classes]), {}
    elif fold is None:
        sets = validation_sets(catalog, config, split_episodes)  # checked before the long caching
    else:
        check_fold(fold, split)
        base, folder, run_name = list(fold.train), folder / fold.name, f"{config.name}/{fold.name}"
        sets = fold_sets(fold, split, store.ids, catalog.labels(config.label_column).to_numpy(),
                         catalog.fingerprint, near_duplicate_index(catalog, split_episodes))  # fmt: skip
    validation = (
        Validation(config, store, sets, slice(None) if fold is None else CHOOSE) if holds_out else NothingHeldOut()
    )
    batches = BaseBatches(catalog, config, base, split_episodes)  # likewise
    activations = {
        tower: cached_tower(catalog, cut, workspace.features, progress=progress) for tower, cut in cuts.items()
    }

    torch.manual_seed(config.seed)
    model = trainable_top(encoder, config)
    towers = TowerFeatures(config, model, activations, store)
    episode = config.n_way * (config.k_shot + config.q_query)
    step_sizes = {"supervised": ("batch_size", config.batch_size), "episodic": ("n_way x (k_shot + q_query)", episode)}
    for objective in config.objective.split("+"):
        check_step_memory(towers.for_loss, *step_sizes[objective])
    # the cosine classifier's weights start at the frozen top's base-class means ("imprinting"), so
    # step 0's supervised loss is already meaningful and the first steps do not wreck the features
    start_features = F.normalize(towers.for_loss_without_gradients(batches.rows), dim=-1)
    means = torch.zeros(len(base), start_features.shape[1]).index_add_(0, batches.classes, start_features)
    classifier = nn.Parameter(F.normalize(means, dim=-1))
    log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    meta = {
        "towers": TOWERS if towers.offline else encoder.id,
        **({} if towers.offline else {"encoder": clip_model(config)}),
        **({} if towers.image_alone else {"adapted": adapted_towers(config)}),
        "cut": config.cut,
        "mode": config.mode,
        "rank": config.rank if config.mode == "lora" else 0,
        "objective": config.objective,
        "split_seed": config.split_seed,
        "label_column": config.label_column,
        "catalog_fingerprint": catalog.fingerprint,
        "classes": config.classes if fold is None else "fold",
        "base_classes": base,
        "trained_on": f"{len(batches.rows)} products of the {len(base)} "
        + (TRAINED_ON[config.classes] if fold is None else f"training classes of class fold {fold.index}"),
        **({} if fold is None else {"fold": fold.record()}),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "config": dataclasses.asdict(config),
    }
    job = Adaptation(config, towers, (classifier, log_scale), batches, validation, meta)
    optimizer = torch.optim.AdamW(job.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    identity = {"config": dataclasses.asdict(config), "catalog_fingerprint": catalog.fingerprint}
    if fold is not None:  # a fold run scored on other episodes (another protocol) is not resumed
        identity["scored_on"] = {name: episode_set.digest for name, episode_set in sets.items()}
    schedule = Schedule(config.steps, config.val_every, config.lr, "lr")
    runs = workspace.runs_of("adapt", config.split_seed) / run_name
    best, start = run_loop(job, optimizer, schedule, folder, runs, identity, resume, progress, choose_step=holds_out)
    # resumed after the chosen step: its per-episode accuracies were not kept
    if holds_out and job.best_step != best["step"]:
        trained, source = (None, encoder.image_model) if towers.image_alone else (adapted_towers(config), encoder)
        state = load_adaptation(folder / "best")[0]
        chosen_top = adapted_top(source, state, config.cut, folder / "best", trained, copy_weights=True)
        job.best_accuracies = validation.accuracies(TowerFeatures(config, chosen_top, activations, store))
    return {
        "best": best,
        "best_step": best["step"],
        "start": start,
        "steps": config.steps,
        "folder": folder / "best",
        "accuracies": job.best_accuracies,
    }


class Adaptation(Trainable):
    """The towers' top on base-class batches (supervised: a cosine classifier over the base classes;
    episodic: the prototypical loss), from the cached activations at the cut; scored by the
    fused-masked protonet on the held-out episodes. Keeps the per-episode accuracies of the step saved
    as best, so the chosen top is not scored again."""

    task = "adapt"

    def __init__(self, config, towers: TowerFeatures, classifier_and_scale, batches, validation, meta):
        self.name, self.config, self.towers, self.meta = config.name, config, towers, meta
        self.model = towers.model
        self.classifier, self.log_scale = classifier_and_scale
        self.batches, self.validation = batches, validation
        self.augment_generator = torch.Generator().manual_seed(config.seed + 1)
        self.last_accuracies: dict[str, np.ndarray] | None = None  # of the latest validation point
        self.best_accuracies: dict[str, np.ndarray] | None = None  # of the step saved as best
        self.best_step = -1

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + [self.classifier, self.log_scale]

    def loss(self, step: int) -> tuple[str, torch.Tensor]:
        objective = objective_at(self.config, step)
        if objective == "supervised":
            rows, classes = self.batches.supervised()
        else:
            episode = self.batches.episode()
            rows = np.concatenate([episode.support[0], episode.query[0]])
        partners = self.batches.partners(rows, self.augment_generator) if self.config.mix > 0 else None
        features = self.towers.for_loss(rows, self.augment_generator, partners)
        if objective == "supervised":
            return "loss_supervised", cosine_classifier_loss(features, classes, self.classifier, self.log_scale.exp())
        n_support = episode.support.shape[1]
        return "loss_episodic", prototypical_loss(
            features[:n_support], features[n_support:], episode.n_way, self.log_scale.exp()
        )

    def validate(self) -> dict[str, float]:
        self.last_accuracies = self.validation.accuracies(self.towers)
        return self.validation.summary(self.last_accuracies)

    def save(self, folder: Path, step: int, figures: dict, start: dict | None) -> None:
        if folder.name == "best":
            self.best_accuracies, self.best_step = self.last_accuracies, step
        meta = {**self.meta, "start": start, "step": step, "validation": figures}
        save_adaptation(folder, merged_top(self.model), meta)

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "classifier": self.classifier.detach(),
            "log_scale": self.log_scale.detach(),
            "batches": self.batches.state(),
            "augment": self.augment_generator.get_state(),
        }

    def load_state(self, state: dict, folder: Path) -> None:
        self.model.load_state_dict(state["model"])
        self.classifier.data.copy_(state["classifier"])
        self.log_scale.data.copy_(state["log_scale"])
        self.batches.set_state(state["batches"])
        self.augment_generator.set_state(state["augment"])

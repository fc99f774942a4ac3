"""The demo's shared state: the encoder, the saved category sets and, where a catalog is already
embedded, its store and search index (the demo needs neither: teaching and predicting work from uploads)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fsl.apps.classifier import FewShotClassifier
from fsl.apps.index import SearchIndex, open_index
from fsl.apps.predict import CatalogClassifier
from fsl.apps.support import IMAGE_WEIGHT, Category
from fsl.config import UNKNOWN, ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.encoders.base import Encoder
from fsl.encoders.factory import encoder_from_config
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.inference.calibration import Calibration
from fsl.inference.classifier import SupportSetClassifier
from fsl.inference.heads import DEFAULT_HEAD, head_for_features
from fsl.inference.negatives import CatalogNegatives
from fsl.inference.photos import open_image
from fsl.paths import DEMO_SAVED_DIR, Workspace, split_file, store_path
from fsl.store.content import ContentCache
from fsl.store.features import FeatureStore
from fsl.store.manifest import is_complete
from fsl.store.open import open_store

TAUGHT = "taught categories"
EXAMPLE_CATEGORIES = 3
EXAMPLES_PER_CATEGORY = 5
MAX_TEXT_LINES = 100  # per teach request: more would hold the queue for everyone
MAX_TEXT_CHARS = 2000  # per query text
CONCURRENT_REQUESTS = 8  # predictions and searches served side by side (the model is shared read-only)
EMBED_RATE = 90  # products embedded a second, for estimates (offline encoder, 2 cores: docs/benchmarks.md)
MAX_ZIP_BYTES = 200 * 1024 * 1024  # unpacked size of an uploaded category set
MAX_ZIP_FILES = 2000
# A query given as a text only: cosine to each category's mean text example, uncalibrated (no text-only
# calibration exists), at a fixed temperature that spreads cosines in [-1, 1] into readable confidences
TEXT_EXAMPLES_HEAD = ExperimentConfig(
    name="cosine-to-text-examples", method="cosine_prototypes", fusion="concat", fusion_options={"image_weight": 0.0}
)
TEXT_ONLY_TEMPERATURE = 0.05


@dataclass
class DemoBackend:
    """What the page needs: the encoder for new inputs (through the content cache `fsl predict`
    shares), the catalog and its stored features, and the taught categories' classifier."""

    encoder: Encoder
    catalog: Catalog | None  # None: no catalog at hand, or not embedded (see catalog_note)
    store: FeatureStore | None
    example_classes: list[str]
    classifier: CatalogClassifier | None = None  # a trained head over the catalog's classes, if given
    calibration: Calibration | None = None  # the default head's, as `fsl predict --support` finds it
    saved_root: Path = DEMO_SAVED_DIR
    index: SearchIndex | None = None  # search and nearest examples: set by make_backend
    cache: ContentCache | None = None
    catalog_note: str = ""  # why there is no catalog search, in words ("" when there is)
    # the default head's known negatives, as `fsl predict --support` finds them
    negatives: CatalogNegatives | None = None

    def taught_classifier(self, categories: list[Category]) -> FewShotClassifier:
        """The categories' photo examples in the classifier `fsl predict --support` and the Python API
        use: the same head, calibration and features, so the same support gives the same answers."""
        classifier = FewShotClassifier(
            DEFAULT_HEAD, self.encoder.config, calibration=self.calibration, negatives=self.negatives
        )
        for category in categories:
            if category.image_features:
                classifier.add_features(
                    category.name, np.stack(category.image_features), photos=category.thumbnails, parent=category.parent
                )
        return classifier

    def text_classifier(self, categories: list[Category]) -> SupportSetClassifier | None:
        """The categories' text examples under cosine prototypes, for a query given as a text only;
        None when fewer than two categories have text examples."""
        taught = [category for category in categories if category.text_features]
        if len(taught) < 2:
            return None
        support = np.concatenate([np.stack(category.text_features) for category in taught])
        labels = np.repeat(np.arange(len(taught)), [len(category.text_features) for category in taught])
        head = head_for_features(TEXT_EXAMPLES_HEAD, 0, support.shape[1], self.encoder.id)
        return SupportSetClassifier(
            head,
            [c.name for c in taught],
            torch.from_numpy(support),
            torch.from_numpy(labels),
            None,
            TEXT_ONLY_TEMPERATURE,
        )

    def text_only_note(self) -> str:
        return (
            f"_Cosine to the categories' text examples, encoder `{self.encoder.id}`; uncalibrated "
            f"(fixed temperature {TEXT_ONLY_TEMPERATURE}, no “{UNKNOWN}”)._"
        )

    def saved_sets(self) -> list[str]:
        return sorted(p.name for p in self.saved_root.glob("*") if p.is_dir() and not p.name.startswith("."))

    @property
    def sources(self) -> list[str]:
        """What the Predict tab can classify among."""
        extra = [f"{self.classifier.name}: {len(self.classifier.classes)} catalog classes"] if self.classifier else []
        return [TAUGHT, *extra]

    def embed(self, image_path: str | None, text: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A query's features; a bad photo or an overlong text is an FslError with the reason."""
        if text and len(text) > MAX_TEXT_CHARS:
            raise FslError(f"the text has {len(text)} characters; up to {MAX_TEXT_CHARS} are read")
        if image_path:
            open_image(image_path)  # a clear message for a missing, oversized or unreadable file
        image = self.cache.images([image_path])[0] if image_path else None
        text = self.cache.texts([text.strip()])[0] if text and text.strip() else None
        return image, text

    def search_rows(self, image: np.ndarray | None, text: np.ndarray | None, k: int) -> list[int]:
        """Catalog rows of the k products closest to the query (the store's search index; none without one)."""
        return self.index.nearest(image, text, k) if self.index is not None else []

    def gallery(self, rows: list[int]) -> list[tuple[str, str]]:
        products = self.catalog.products
        return [
            (products.at[i, "image_path"], f"{products.at[i, 'articleType']}: {products.at[i, 'productDisplayName']}")
            for i in rows
        ]

    def nearest(self, image: np.ndarray | None, text: np.ndarray | None, k: int) -> list[tuple[str, str]]:
        """The k catalog products closest to the query, as (photo, caption) for a gallery."""
        return self.gallery(self.search_rows(image, text, k)) if self.index is not None else []

    def product_example(self, row: int) -> tuple[np.ndarray, np.ndarray, str, str]:
        """A catalog product as a teaching example: stored image and text features, photo, text."""
        return (
            np.asarray(self.store.image[row]),
            np.asarray(self.store.text("plain")[row]),
            str(self.catalog.products.at[row, "image_path"]),
            self.product_texts[row],
        )

    @cached_property
    def product_texts(self) -> list[str]:
        """Each product's text as the store's plain text features were embedded from it."""
        return self.catalog.texts()

    def example_categories(self) -> list[Category]:
        """A few catalog classes with five examples each (photo and text), so one click is enough."""
        products = self.catalog.products
        categories = []
        for name in self.example_classes:
            category = Category(name)
            for row in products.index[products["articleType"] == name][:EXAMPLES_PER_CATEGORY]:
                add_product(category, self.product_example(row))
            categories.append(category)
        return categories


def add_product(category: Category, example: tuple[np.ndarray, np.ndarray, str, str]) -> None:
    image, text_feature, photo, text = example
    category.image_features.append(image)
    category.text_features.append(text_feature)
    category.thumbnails.append(photo)
    category.texts.append(text)


def make_backend(
    catalog: Catalog | None,
    encoder_config,
    workspace: Workspace = Workspace(),
    classifier: CatalogClassifier | None = None,
    calibration_dir: str | os.PathLike | None = None,
    saved_root: str | os.PathLike = DEMO_SAVED_DIR,
    embed: bool = True,
    catalog_note: str = "",
    catalog_negatives: bool = True,
) -> DemoBackend:
    """The encoder, calibration and known negatives (unless not `catalog_negatives`) of the same config
    as the CLI, and the catalog's store, search index and example classes (from the novel split) when
    there is a catalog: embedded first when `embed`, otherwise only used when already embedded (`fsl
    demo` never embeds a catalog to start)."""
    encoder = encoder_from_config(encoder_config)
    embedded = catalog is not None and is_complete(store_path(workspace.features, encoder.id, catalog.fingerprint))
    if catalog is not None and not embed and not embedded:
        minutes = max(1, round(len(catalog) / EMBED_RATE / 60))
        catalog_note = (
            f"the catalog of {len(catalog)} products is not embedded with this encoder (`fsl embed`, about "
            f"{minutes} min here), so catalog search and examples are off"
        )
        catalog = None
    store = open_store(catalog, encoder_config, workspace.features) if catalog is not None else None
    examples = example_classes(catalog, workspace) if catalog is not None else []
    encoder.load()  # weights and image runtime now, not in the first visitor's request
    default = FewShotClassifier(
        DEFAULT_HEAD, encoder_config, calibration_dir=calibration_dir, negatives="auto" if catalog_negatives else None
    )
    return DemoBackend(
        encoder,
        catalog,
        store,
        examples,
        classifier,
        default.calibration,
        Path(saved_root),
        open_index(store, IMAGE_WEIGHT) if store is not None else None,
        ContentCache(encoder),
        catalog_note if catalog is None else "",
        default.negatives,
    )


def example_classes(catalog: Catalog, workspace: Workspace) -> list[str]:
    """The classes "Load example categories" teaches: the largest novel classes of split 0 (or the
    largest ones)."""
    counts = catalog.labels("articleType").value_counts()
    if split_file(catalog, "articleType", 0, workspace.episodes_of(0)).is_file():
        split = ClassSplit.load(catalog, "articleType", 0, workspace.episodes_of(0)).table
        novel = split[split["split"] == "novel"].sort_values("count", ascending=False)["class"].tolist()
    else:
        novel = counts.index.tolist()
    return [c for c in novel if counts.get(c, 0) >= 2 * EXAMPLES_PER_CATEGORY][:EXAMPLE_CATEGORIES]

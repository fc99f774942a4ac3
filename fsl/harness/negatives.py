"""`fsl negatives`: a catalog's classes as known negatives for one encoder (fsl/inference/negatives.py).

Each class with at least `min_count` products (the classes a split is made of) becomes the mean of
its products' image and text features in the catalog's store, so answering a user's photos needs
one vector per class, not the catalog. The offline encoder's, made from the Fashion Product Images
catalog, ships with the package (fsl/negatives/)."""

from __future__ import annotations

import numpy as np
import torch

from fsl.config import EncoderConfig
from fsl.data.catalog import Catalog
from fsl.episodes.standard import MIN_COUNT
from fsl.errors import FslError
from fsl.inference.negatives import CatalogNegatives
from fsl.paths import Workspace
from fsl.store.open import open_store
from fsl.store.rows import store_rows


def labels_by_row(catalog: Catalog, store, column: str) -> np.ndarray:
    """[P] the `column` class of each of the store's rows."""
    return catalog.labels(column).to_numpy()[store_rows(catalog.products["id"].to_numpy(), store.ids)]


def class_means(features, labels: np.ndarray, classes: list[str]) -> torch.Tensor:
    """[B, D] the mean of each class's rows of `features` (a store's, memory-mapped or not)."""
    return torch.from_numpy(
        np.stack([np.asarray(features[np.flatnonzero(labels == name)], dtype=np.float32).mean(0) for name in classes])
    )


def catalog_negatives(
    encoder: EncoderConfig,
    catalog: Catalog,
    workspace: Workspace,
    column: str = "articleType",
    min_count: int = MIN_COUNT,
) -> CatalogNegatives:
    """The mean image and text features of each `column` class with >= `min_count` products, from the
    catalog's store by `encoder` (embedded first if it is not yet)."""
    store = open_store(catalog, encoder, workspace.features)
    labels = labels_by_row(catalog, store, column)
    names, counts = np.unique(labels, return_counts=True)
    kept = [str(name) for name, count in zip(names, counts) if count >= min_count]
    if not kept:
        raise FslError(f"no {column} class of the catalog has {min_count} products; lower --min-count", "min-count")
    return CatalogNegatives(
        tuple(kept),
        class_means(store.image, labels, kept),
        class_means(store.text(), labels, kept),
        torch.tensor([int(count) for count in counts[counts >= min_count]]),
        store.encoder_id,
        catalog.fingerprint,
        column,
    )

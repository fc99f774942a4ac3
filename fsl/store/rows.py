"""What the harness gathers episodes from: a store's image and text rows side by side, read on demand."""

from __future__ import annotations

import numpy as np

from fsl.errors import FslError
from fsl.store.features import FeatureStore


class StoreFeatures:
    """[P, image_dim + text_dim] rows, gathered on demand from the memory-mapped store, so the
    harness's memory does not grow with the catalog; `np.asarray` gives the whole matrix."""

    def __init__(self, image: np.ndarray, text: np.ndarray):
        self.image, self.text = image, text
        self.shape = (image.shape[0], image.shape[1] + text.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return np.concatenate([self.image[rows], self.text[rows]], axis=-1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate([self.image, self.text], axis=1)
        return whole if dtype is None else whole.astype(dtype)


def store_features(store: FeatureStore, text_variant: str = "plain") -> StoreFeatures:
    """What the harness gathers episodes from: image then text features of every product."""
    return StoreFeatures(store.image, store.text(text_variant))


def store_rows(store_ids: np.ndarray, product_ids: np.ndarray) -> np.ndarray:
    """Product ids -> row numbers of a store whose ids are sorted (catalog order)."""
    if len(store_ids) > 1 and not np.all(np.diff(store_ids) > 0):
        raise FslError(
            "the feature store's ids are not in increasing order: the store is damaged; run `fsl embed` to rebuild it"
        )
    rows = np.searchsorted(store_ids, product_ids)
    rows = np.clip(rows, 0, len(store_ids) - 1)
    if not np.array_equal(store_ids[rows], product_ids):
        missing = np.setdiff1d(product_ids, store_ids)[:5]
        raise FslError(f"episodes name products the feature store lacks (e.g. ids {missing.tolist()})")
    return rows

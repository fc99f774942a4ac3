"""What the harness gathers episodes from: a store's image and text rows side by side, read on demand."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fsl.errors import FslError
from fsl.files import ARRAY_READ_ERRORS, atomic_path
from fsl.store.features import FeatureStore
from fsl.store.manifest import non_finite_rows

logger = logging.getLogger(__name__)


def check_finite(values: np.ndarray, ids: np.ndarray, source: str) -> np.ndarray:
    """`values` [n, D] as read from a store, with the product ids of its rows: a NaN or infinite
    value (a damaged file the sampled checksum missed) is refused, naming a product and the store,
    never classified. One pass over rows already in cache."""
    finite = np.isfinite(values).all(axis=-1)
    if not finite.all():
        bad = np.asarray(ids)[~finite]
        raise FslError(
            f"{source}: {len(bad)} product(s) have NaN or infinite features (e.g. id {bad[0]}): the store is "
            "damaged. Run `fsl embed --verify` with the same options to check every byte and rebuild it"
        )
    return values


class StoreFeatures:
    """[P, image_dim + text_dim] rows, gathered on demand from the memory-mapped store, so the
    harness's memory does not grow with the catalog; `np.asarray` gives the whole matrix. Every
    gathered row is checked finite (`check_finite`) against the `ids` of the store's rows."""

    def __init__(self, image: np.ndarray, text: np.ndarray, ids: np.ndarray, source: str = "feature store"):
        self.image, self.text, self.ids, self.source = image, text, ids, source
        self.shape = (image.shape[0], image.shape[1] + text.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return check_finite(np.concatenate([self.image[rows], self.text[rows]], axis=-1), self.ids[rows], self.source)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = check_finite(np.concatenate([self.image, self.text], axis=1), self.ids, self.source)
        return whole if dtype is None else whole.astype(dtype)


def store_features(store: FeatureStore, text_variant: str = "plain") -> StoreFeatures:
    """What the harness gathers episodes from: image then text features of every product."""
    return StoreFeatures(store.image, store.text(text_variant), store.ids, f"feature store {store.path}")


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


def cached_by_id(
    cache: Path, key: str, product_ids: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids, their rows) for at least `product_ids`, from an .npz of `ids` and `key` rows; the
    products it lacks are computed once (`compute(missing ids)`, rows in that order), merged in and the
    file rewritten atomically. A damaged file (unreadable, ids not sorted and unique, rows not matching
    them or not finite, rows of another shape than `compute` makes) is said and computed again whole.
    Behind the views of fsl/episodes/shift.py and their cached activations."""
    ids, values = _read_cached(cache, key)
    missing = np.setdiff1d(np.unique(product_ids), ids)
    if len(missing):
        new = np.asarray(compute(missing))
        if values is not None and values.shape[1:] != new.shape[1:]:
            logger.warning(f"{cache} holds rows of another shape ({values.shape[1:]}); computing it again")
            cache.unlink(missing_ok=True)
            return cached_by_id(cache, key, product_ids, compute)
        ids = np.concatenate([ids, missing])
        values = new if values is None else np.concatenate([values, new])
        order = np.argsort(ids)
        ids, values = ids[order], values[order]
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, **{key: values})
    return ids, values


def _read_cached(cache: Path, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids, rows) of a cache file, or (no ids, None) when there is none or it is damaged (said)."""
    empty = np.empty(0, dtype=np.int64), None
    if not cache.is_file():
        return empty
    try:
        with np.load(cache, allow_pickle=False) as data:
            ids, values = np.asarray(data["ids"]), np.asarray(data[key])
        sound = (
            ids.ndim == 1
            and ids.dtype.kind == "i"
            and np.all(np.diff(ids) > 0)
            and len(values) == len(ids)
            and values.ndim >= 2
            and len(non_finite_rows(values)) == 0
        )
        problem = None if sound else "ids not sorted and unique, or rows missing or not finite"
    except ARRAY_READ_ERRORS as error:
        problem = f"it cannot be read: {type(error).__name__}"
    if problem is None:
        return ids, values
    logger.warning(f"the cache {cache} is damaged ({problem}); computing it again")
    return empty

"""A catalog's store for an encoder config: opened when warm, embedded when cold; the aligned store
computed from the offline store's features and the adapted one from the cached activations, neither
decoding a photo."""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import torch

from fsl.config import EncoderConfig
from fsl.data.catalog import Catalog
from fsl.encoders.adapted import ImageTop, load_adaptation, top_features
from fsl.encoders.aligned import load_alignment
from fsl.encoders.factory import encoder_from_config
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.paths import FEATURES_ROOT, store_path
from fsl.store.activations import cached_activations
from fsl.store.features import FeatureStore, derive_store, embed_catalog, is_complete

# The aligned feature store ---------------------------------------------------------------------


def aligned_store(catalog, alignment: str | os.PathLike, store_root, encoder_id: str, runtime: str = "auto"):
    """The catalog's store in the aligned space, computed from the offline store's features (embedded
    first if needed) without decoding a photo; the manifest names the alignment's split."""

    path = store_path(store_root, encoder_id, catalog.fingerprint)
    if is_complete(path):
        return FeatureStore.open(path, encoder_id, catalog.fingerprint)
    model, meta = load_alignment(alignment)
    _note_other_catalog(alignment, meta, catalog)
    source = open_store(catalog, EncoderConfig("offline", runtime=runtime), store_root)

    def project(key: str, block: np.ndarray, start: int) -> np.ndarray:
        with torch.no_grad():
            features = torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: the memory map is read-only
            return (model.embed_image(features) if key == "image" else model.embed_text(features)).numpy()

    extra = {
        "alignment": {
            "split_seed": meta["split_seed"],
            "label_column": meta["label_column"],
            "catalog_fingerprint": meta["catalog_fingerprint"],
            "towers": meta["towers"],
        }
    }
    return derive_store(source, path, encoder_id, meta["dim"], meta["dim"], project, extra)


def _note_other_catalog(checkpoint, meta: dict, catalog) -> None:
    if meta["catalog_fingerprint"] != catalog.fingerprint:
        print(
            f"fsl: note: {checkpoint} was trained on catalog {meta['catalog_fingerprint']}, not {catalog.fingerprint}",
            file=sys.stderr,
        )


# The adapted feature store ---------------------------------------------------------------------


def adapted_store(catalog, adaptation: str | os.PathLike, store_root, encoder_id: str, runtime: str = "auto"):
    """The catalog's store through an adapted image tower: the adapted top run on the activations cached
    at its cut (computed first if needed), the offline texts as they are; the manifest names the
    adaptation's split, so episodes of another split are refused."""
    path = store_path(store_root, encoder_id, catalog.fingerprint)
    if is_complete(path):
        return FeatureStore.open(path, encoder_id, catalog.fingerprint)
    state, meta = load_adaptation(adaptation)
    _note_other_catalog(adaptation, meta, catalog)
    source = open_store(catalog, EncoderConfig("offline", runtime=runtime), store_root)
    if not np.array_equal(source.ids, catalog.products["id"].to_numpy()):  # the cache's rows are the catalog's
        raise FslError(f"feature store {source.path} rows do not follow the catalog; re-run `fsl embed`")
    encoder = OfflineEncoder()
    top = ImageTop(copy.deepcopy(encoder.image_model), meta["cut"])
    top.load_state_dict(state)
    activations = cached_activations(catalog, encoder, meta["cut"], store_root)

    def image_through_top(key: str, block: np.ndarray, start: int) -> np.ndarray:
        if key == "text":
            return block
        rows = np.arange(start, start + len(block))
        return torch.nn.functional.normalize(top_features(top, activations, rows), dim=-1).numpy()

    extra = {
        "adaptation": {
            key: meta[key]
            for key in ("split_seed", "label_column", "catalog_fingerprint", "towers", "cut", "mode", "objective")
        }
    }
    return derive_store(source, path, encoder_id, source.manifest["image_dim"], source.manifest["text_dim"],
                        image_through_top, extra)  # fmt: skip


def open_store(catalog: Catalog, config: EncoderConfig, store_root: str | os.PathLike = FEATURES_ROOT) -> FeatureStore:
    """The catalog's features by this encoder: loaded when warm, embedded (resumably) when not; an
    aligned store is computed from the offline store's features, an adapted one from the cached activations."""
    if config.name == "aligned":
        return aligned_store(catalog, config.pretrained, store_root, encoder_from_config(config).id, config.runtime)
    if config.name == "adapted":
        return adapted_store(catalog, config.pretrained, store_root, encoder_from_config(config).id, config.runtime)
    return embed_catalog(catalog, encoder_from_config(config), store_root)

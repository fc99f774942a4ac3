"""A catalog's store for an encoder config: opened when warm, embedded when cold, and for the aligned
encoder computed from the offline store's features without decoding a photo."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from fsl.config import EncoderConfig
from fsl.data.catalog import Catalog
from fsl.encoders.aligned import load_alignment
from fsl.encoders.factory import encoder_from_config
from fsl.paths import FEATURES_ROOT, store_path
from fsl.store.features import FeatureStore, derive_store, embed_catalog, is_complete

# The aligned feature store ---------------------------------------------------------------------


def aligned_store(catalog, alignment: str | os.PathLike, store_root, encoder_id: str, runtime: str = "auto"):
    """The catalog's store in the aligned space, computed from the offline store's features (embedded
    first if needed) without decoding a photo; the manifest names the alignment's split."""

    path = store_path(store_root, encoder_id, catalog.fingerprint)
    if is_complete(path):
        return FeatureStore.open(path, encoder_id, catalog.fingerprint)
    model, meta = load_alignment(alignment)
    if meta["catalog_fingerprint"] != catalog.fingerprint:
        print(
            f"fsl: note: {alignment} was trained on catalog {meta['catalog_fingerprint']}, not {catalog.fingerprint}",
            file=sys.stderr,
        )
    source = open_store(catalog, EncoderConfig("offline", runtime=runtime), store_root)

    def project(key: str, block: np.ndarray) -> np.ndarray:
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


def open_store(catalog: Catalog, config: EncoderConfig, store_root: str | os.PathLike = FEATURES_ROOT) -> FeatureStore:
    """The catalog's features by this encoder: loaded when warm, embedded (resumably) when not; an
    aligned store is computed from the offline store's features."""
    if config.name == "aligned":
        return aligned_store(catalog, config.pretrained, store_root, encoder_from_config(config).id, config.runtime)
    return embed_catalog(catalog, encoder_from_config(config), store_root)

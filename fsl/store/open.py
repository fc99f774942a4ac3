"""A catalog's store for an encoder config: opened when warm, embedded when cold; the aligned store
computed from the offline store's features and the adapted one from the cached activations, neither
decoding a photo."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from fsl.config import EncoderConfig
from fsl.data.catalog import Catalog
from fsl.encoders.adapted import adapted_top, load_adaptation, top_features, tops_by_tower
from fsl.encoders.aligned import load_alignment
from fsl.encoders.clip import ClipEncoder
from fsl.encoders.factory import encoder_from_config
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.files import write_json
from fsl.paths import FEATURES_ROOT, store_path
from fsl.store.activations import cached_tower, tower_cut
from fsl.store.derive import derive_store, sound_derived_store
from fsl.store.embed import embed_catalog
from fsl.store.features import FeatureStore, TextVariant
from fsl.store.locks import writer_lock

logger = logging.getLogger(__name__)

# The aligned feature store ---------------------------------------------------------------------


def aligned_store(
    catalog, alignment: str | os.PathLike, store_root, encoder_id: str, runtime: str = "auto", full_check: bool = False
):
    """The catalog's store in the aligned space, computed from the offline store's features (embedded
    first if needed) without decoding a photo; the manifest names the alignment's split. A damaged
    one is derived again (full_check: every byte and value read)."""

    path = store_path(store_root, encoder_id, catalog.fingerprint)
    warm = sound_derived_store(path, encoder_id, catalog.fingerprint, full_check)
    if warm is not None:
        return warm
    model, meta = load_alignment(alignment)
    _note_other_catalog(alignment, meta, catalog)
    source = open_store(catalog, EncoderConfig("offline", runtime=runtime), store_root, full_check)

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
        logger.warning(f"{checkpoint} was trained on catalog {meta['catalog_fingerprint']}, not {catalog.fingerprint}")


# The adapted feature store ---------------------------------------------------------------------


def adapted_store(
    catalog, adaptation: str | os.PathLike, store_root, encoder_id: str, runtime: str = "auto", full_check: bool = False
):
    """The catalog's store through adapted towers: each adapted top run on the activations cached at its
    cut (computed first if needed), the frozen towers' features as they are (the offline texts; a CLIP
    tower that did not learn); the manifest names the splits whose adaptation has these weights, so
    episodes of another split are refused. A damaged store is derived again (full_check: every byte
    and value of it read; the activations' are, always)."""
    path = store_path(store_root, encoder_id, catalog.fingerprint)
    state, meta = load_adaptation(adaptation)
    warm = sound_derived_store(path, encoder_id, catalog.fingerprint, full_check)
    if warm is not None:
        return with_split(warm, meta["split_seed"])
    _note_other_catalog(adaptation, meta, catalog)
    offline = meta["towers"] == OfflineEncoder.id
    if offline:
        frozen = EncoderConfig("offline", runtime=runtime)
    else:
        frozen = EncoderConfig("clip", meta["encoder"]["model"], meta["encoder"]["pretrained"], runtime=runtime)
    source = open_store(catalog, frozen, store_root, full_check)
    if not np.array_equal(source.ids, catalog.products["id"].to_numpy()):  # the cache's rows are the catalog's
        raise FslError(f"feature store {source.path} rows do not follow the catalog; re-run `fsl embed`")
    encoder = OfflineEncoder() if offline else ClipEncoder(meta["encoder"]["model"], meta["encoder"]["pretrained"])
    towers = encoder.image_model if "adapted" not in meta else encoder  # absent: the offline image tower alone
    tops = tops_by_tower(adapted_top(towers, state, meta["cut"], adaptation, meta.get("adapted"), copy_weights=True))
    cuts = {"image": tower_cut(encoder, "image", meta["cut"])} if "image" in tops else {}  # by the store's keys
    if "text" in tops:
        for name, variant in source.manifest["text_variants"].items():
            cuts[f"text-{name}"] = tower_cut(encoder, "text", meta["cut"], TextVariant(**variant))
    activations = {key: cached_tower(catalog, cut, store_root) for key, cut in cuts.items()}  # checked once each

    def through_top(key: str, block: np.ndarray, start: int) -> np.ndarray:
        if key not in activations:
            return block
        rows = np.arange(start, start + len(block))
        tower = "image" if key == "image" else "text"
        return torch.nn.functional.normalize(top_features(tops[tower], activations[key], rows), dim=-1).numpy()

    extra = {
        "adaptation": {
            **{
                key: meta[key]
                for key in ("split_seed", "label_column", "catalog_fingerprint", "towers", "cut", "mode", "objective")
            },
            **({"adapted": meta["adapted"]} if "adapted" in meta else {}),
            "classes": meta.get("classes", "base"),  # an older sidecar's: its base classes
            "split_seeds": [meta["split_seed"]],
        }
    }
    return derive_store(source, path, encoder_id, source.manifest["image_dim"], source.manifest["text_dim"],
                        through_top, extra)  # fmt: skip


def with_split(store: FeatureStore, split_seed: int) -> FeatureStore:
    """An adapted store serving one more split: the adaptations of two splits can hold the very same
    weights (both kept their frozen start), and then share one store (its id is the weights' digest).
    Each may run on its own split's episodes, so the manifest lists every split it stands for."""
    trained = store.manifest["adaptation"]
    seeds = trained.get("split_seeds", [trained["split_seed"]])
    if split_seed in seeds:
        return store
    manifest = {**store.manifest, "adaptation": {**trained, "split_seeds": sorted([*seeds, split_seed])}}
    with writer_lock(store.path):
        write_json(store.path / "manifest.json", manifest)
    return FeatureStore.open(store.path, store.encoder_id, store.catalog_fingerprint)


def open_store(
    catalog: Catalog, config: EncoderConfig, store_root: str | os.PathLike = FEATURES_ROOT, full_check: bool = False
) -> FeatureStore:
    """The catalog's features by this encoder: loaded when warm, embedded (resumably) when not; an
    aligned store is computed from the offline store's features, an adapted one from the cached
    activations. A damaged store is rebuilt, saying so; full_check reads every byte (`--verify`)."""
    encoder_id = encoder_from_config(config).id
    if config.name == "aligned":
        return aligned_store(catalog, config.pretrained, store_root, encoder_id, config.runtime, full_check)
    if config.name == "adapted":
        return adapted_store(catalog, config.pretrained, store_root, encoder_id, config.runtime, full_check)
    return embed_catalog(catalog, encoder_from_config(config), store_root, full_check=full_check)

"""Shared fixtures: small slices of the real data, a tiny random-weight CLIP, the offline pair."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on CI: fail fast, never retry
REAL_DATA = Path(
    os.environ.get("FSL_TEST_DATA", Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images")
)


def real_styles() -> pd.DataFrame:
    if not (REAL_DATA / "styles.csv").is_file():
        pytest.skip(f"real data not found at {REAL_DATA}")
    styles = pd.read_csv(REAL_DATA / "styles.csv", dtype=str, keep_default_na=False)
    has_image = styles["id"].map(lambda i: (REAL_DATA / "images" / f"{i}.jpg").is_file())
    return styles[has_image]


def make_slice(dest: Path, classes: list[str], per_class: int) -> Path:
    """A real dump of `per_class` products of each articleType, copied into a temp folder."""
    styles = real_styles()
    picked = pd.concat([styles[styles["articleType"] == c].sort_values("id").head(per_class) for c in classes])
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for product_id in picked["id"]:
        shutil.copy(REAL_DATA / "images" / f"{product_id}.jpg", dest / "images" / f"{product_id}.jpg")
    picked.to_csv(dest / "styles.csv", index=False)
    return dest


SLICE_CLASSES = ["Tshirts", "Watches", "Casual Shoes", "Handbags"]


@pytest.fixture(scope="session")
def small_dump(tmp_path_factory) -> Path:
    """40 real products: 10 of each of 4 articleTypes."""
    return make_slice(tmp_path_factory.mktemp("dump"), SLICE_CLASSES, 10)


@pytest.fixture(scope="session")
def tiny_clip():
    from fsl.encoders.factory import create_encoder

    return create_encoder("clip", model="FSL-Tiny", pretrained="none")


@pytest.fixture(scope="session")
def offline_encoder():
    from fsl.encoders.factory import create_encoder

    return create_encoder("offline")


@pytest.fixture(scope="session")
def twelve_classes(tmp_path_factory):
    """12 real articleTypes x 20 products, their tiny-CLIP store, a split and small frozen episode sets
    (val-2w5s from the 2 validation classes, novel-5w5s and novel-allway-5s)."""
    from fsl.config import EncoderConfig
    from fsl.data.prepared import load_catalog
    from fsl.episodes.standard import draw_standard_episodes
    from fsl.store.open import open_store

    root = tmp_path_factory.mktemp("twelve")
    counts = real_styles()["articleType"].value_counts()
    catalog = load_catalog(make_slice(root / "dump", list(counts.index[:12]), 20))
    open_store(catalog, EncoderConfig("clip", "FSL-Tiny", "none"), root / "store")
    draw_standard_episodes(
        catalog,
        root / "episodes",
        stratify=None,
        n_episodes=30,
        q_query=5,
        benchmarks={"val-2w5s": ("val", 2, 5), "novel-5w5s": ("novel", 5, 5), "novel-allway-5s": ("novel", None, 5)},
    )
    return root, catalog

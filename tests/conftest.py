"""Shared fixtures: small slices of the real data (else of the synthetic sample), a tiny random-weight CLIP,
the offline pair; the count of real-data tests at the end of every run."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on CI: fail fast, never retry
# Each test's caches in the folder it runs from, as the tests were written (and never in the user's own
# cache): a test that moves to an empty folder starts cold. The default (the user cache) has its own test.
os.environ["FSL_CACHE"] = ".fsl"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images"
SYNTHETIC = "synthetic"  # FSL_TEST_DATA=synthetic: run on the drawn sample even where real data is present
NEEDS_REAL_DATA = (
    f"needs the real Fashion Product Images data (set FSL_DATA or FSL_TEST_DATA to a dump, or put it at {SHARED_DATA})"
)


def find_real_data() -> Path | None:
    """The real dump the tests read: $FSL_TEST_DATA, else $FSL_DATA (as the README says), else the
    shared copy beside the checkout; None where there is none (or FSL_TEST_DATA=synthetic)."""
    if os.environ.get("FSL_TEST_DATA") == SYNTHETIC:
        return None
    for candidate in (os.environ.get("FSL_TEST_DATA"), os.environ.get("FSL_DATA"), SHARED_DATA):
        if candidate and (Path(candidate) / "styles.csv").is_file():
            return Path(candidate)
    return None


REAL_DATA = find_real_data()


def data_source() -> Path:
    """Where slices come from: the real dump, else the synthetic sample (drawn shapes, 120 products of
    each of 16 classes), drawn once per machine into the cache; tests that need real photos are
    marked `real_data` and skipped without them."""
    if REAL_DATA is not None:
        return REAL_DATA
    from fsl.data.sample import make_sample_catalog

    return make_sample_catalog(Path(tempfile.gettempdir()) / "fsl-test-sample-120", per_class=120)


def real_styles() -> pd.DataFrame:
    """The source's rows that have a photo."""
    source = data_source()
    styles = pd.read_csv(source / "styles.csv", dtype=str, keep_default_na=False)
    has_image = styles["id"].map(lambda i: (source / "images" / f"{i}.jpg").is_file())
    return styles[has_image]


def pytest_configure(config):
    config.addinivalue_line("markers", f"real_data: {NEEDS_REAL_DATA}; without it the test is skipped (in CI: fails)")


def pytest_collection_modifyitems(config, items):
    if REAL_DATA is None:
        for item in items:
            if "real_data" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=NEEDS_REAL_DATA))


_outcomes: dict[str, list[str]] = {"ran": [], "skipped": []}


def pytest_runtest_logreport(report):
    if "real_data" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.skipped):
        _outcomes["skipped" if report.skipped else "ran"].append(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ran, skipped = _outcomes["ran"], _outcomes["skipped"]
    where = f"real data at {REAL_DATA}" if REAL_DATA else "no real data: other tests ran on the synthetic sample"
    terminalreporter.write_line(f"real-data tests: {len(ran)} ran, {len(skipped)} skipped ({where})")
    if skipped and os.environ.get("CI"):
        terminalreporter.write_line(f"CI must run every real-data test; skipped: {', '.join(skipped[:5])}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _outcomes["skipped"] and os.environ.get("CI") and session.exitstatus == 0:
        session.exitstatus = 1  # a green CI run must have tested on the real data


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pick_classes(preferred: list[str], n: int) -> list[str]:
    """`n` articleTypes: the `preferred` ones the source has, topped up with its largest others."""
    counts = real_styles()["articleType"].value_counts()
    chosen = [c for c in preferred if c in counts.index]
    return (chosen + [c for c in counts.index if c not in chosen])[:n]


def make_slice(dest: Path, classes: list[str], per_class: int) -> Path:
    """A real dump of `per_class` products of each articleType, copied into a temp folder."""
    styles = real_styles()
    picked = pd.concat([styles[styles["articleType"] == c].sort_values("id").head(per_class) for c in classes])
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for product_id in picked["id"]:
        shutil.copy(data_source() / "images" / f"{product_id}.jpg", dest / "images" / f"{product_id}.jpg")
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


TINY_PROBE = """name: linear-probe-image
method: linear_probe
method_options: {init: prototypes, C: 10}
fusion: image
encoder: {name: clip, model: FSL-Tiny, pretrained: none}
"""


@pytest.fixture(scope="session")
def own_folders(small_dump, tmp_path_factory):
    """support/ (3 categories x 4 photos) and query/ (3 of each, and 3 of a fourth category)."""
    from fsl.data.prepared import load_catalog

    root = tmp_path_factory.mktemp("own")
    catalog = load_catalog(small_dump)
    classes = sorted(set(catalog.labels()))
    for index, name in enumerate(classes):
        photos = [p for p, label in zip(catalog.image_paths, catalog.labels()) if label == name]
        if index < 3:
            (root / "support" / name).mkdir(parents=True)
            for photo in photos[:4]:
                shutil.copy(photo, root / "support" / name / photo.name)
        (root / "query").mkdir(exist_ok=True)
        for photo in photos[4:7]:
            shutil.copy(photo, root / "query" / photo.name)
    (root / "tiny.yaml").write_text(TINY_PROBE)
    return root

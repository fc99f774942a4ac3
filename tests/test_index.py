"""The search index (FAISS): the demo's weighted similarity exactly, an approximate index whose
recall is measured, and an index saved once per store and rebuilt when the store changes."""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def store(twelve_classes):
    from fsl.config import EncoderConfig
    from fsl.store.open import open_store

    root, catalog = twelve_classes
    return open_store(catalog, EncoderConfig("clip", "FSL-Tiny", "none"), root / "store")


def brute_force(store, image, text, weight, shared=True):
    """The demo's similarity: w·cos(image) + (1-w)·cos(text) on the parts given; in a shared space
    (this tiny CLIP's) a text alone is compared with the photos too."""
    if image is None and shared:
        image = text
    similarity = np.zeros(len(store.ids))
    if image is not None:
        similarity += (weight if text is not None else 1.0) * (np.asarray(store.image) @ image)
    if text is not None:
        similarity += (1 - weight if image is not None else 1.0) * (np.asarray(store.text("plain")) @ text)
    return similarity


def test_the_exact_index_ranks_photo_text_and_both_queries_as_the_weighted_similarity(store, tmp_path):
    from fsl.apps.index import open_index

    index = open_index(store, 0.7, tmp_path)
    assert index.kind == "exact" and index.recall_at_10 == 1.0
    rng = np.random.default_rng(0)
    for row in rng.choice(len(store.ids), 5, replace=False):
        image = np.asarray(store.image[row]) + rng.normal(0, 0.05, store.image.shape[1]).astype(np.float32)
        text = np.asarray(store.text("plain")[(row + 7) % len(store.ids)])
        for query in ((image, None), (None, text), (image, text)):
            similarity = brute_force(store, *query, 0.7)
            found = index.nearest(*query, 8)
            # the same ranking (up to ties within float rounding): the rows found hold the 8 best values, in order
            np.testing.assert_allclose(similarity[found], np.sort(similarity)[::-1][:8], atol=1e-5)
            assert len(set(found)) == 8


def test_above_the_exact_limit_an_ivf_index_reaches_the_recall_it_reports(store, tmp_path):
    from fsl.apps.index import build_index, exact_neighbours, recall_at_k, sample_queries

    index = build_index(store, 0.7, exact_limit=50)  # 240 products: approximate
    assert index.kind == "ivf-fp16" and index.recall_at_10 >= 0.95
    queries = sample_queries(store, 0.7, n=60, seed=5)  # queries the tuning did not see
    found = index.search(queries, 10)[1]
    assert recall_at_k(found, exact_neighbours(store, queries, 0.7)) >= 0.9
    query = index.query(np.asarray(store.image[3]), None)
    assert query[: store.image.shape[1]] @ query[: store.image.shape[1]] == pytest.approx(0.7, rel=1e-5)
    assert not query[store.image.shape[1] :].any() and math.isclose(np.linalg.norm(query), math.sqrt(0.7), rel_tol=1e-5)


def test_a_saved_index_is_reused_and_rebuilt_when_its_store_changed(store, tmp_path, monkeypatch):
    import fsl.apps.index
    from fsl.apps.index import index_path, open_index
    from fsl.files import read_json, write_json

    first = open_index(store, 0.7, tmp_path)
    assert index_path(store, 0.7, tmp_path).is_file()
    built = []
    real_build = fsl.apps.index.build_index
    monkeypatch.setattr(fsl.apps.index, "build_index", lambda *a, **k: built.append(1) or real_build(*a, **k))
    again = open_index(store, 0.7, tmp_path)
    assert built == [] and again.nearest(np.asarray(store.image[0]), None, 5) == first.nearest(
        np.asarray(store.image[0]), None, 5
    )
    sidecar = index_path(store, 0.7, tmp_path).with_suffix(".json")
    meta = read_json(sidecar)
    write_json(sidecar, {**meta, "source": {"image": "another store"}})
    open_index(store, 0.7, tmp_path)
    assert built == [1]  # rebuilt, not trusted
    index_path(store, 0.7, tmp_path).write_bytes(b"damaged")
    open_index(store, 0.7, tmp_path)
    assert built == [1, 1]


def test_in_a_shared_space_a_text_query_searches_photos_too(store, tmp_path):
    from fsl.apps.index import open_index

    index = open_index(store, 0.7, tmp_path)
    assert index.shared_space  # a clip store (aligned ones too)
    text = np.asarray(store.text("plain")[4])
    np.testing.assert_allclose(index.query(None, text)[: store.image.shape[1]], np.sqrt(0.7) * text, rtol=1e-6)
    index.shared_space = False  # as for the offline pair: two spaces, a text meets texts only
    assert not index.query(None, text)[: store.image.shape[1]].any()

"""A vector index over a feature store, for search and nearest examples (FAISS), built once per store.

One index serves photo, text and photo + text queries: it holds [√w·image | √(1-w)·text] per
product, so the inner product with [√w·q_image | √(1-w)·q_text] is w·cos_image + (1-w)·cos_text,
and a query with one part (the other zero) ranks by that part alone — the demo's similarity, exactly.

Up to EXACT_LIMIT products the index is exact (flat inner product, float32). Above, an inverted file
with float16 codes (IVF, 4·√N lists): each query scans `nprobe` lists, chosen at build time as the
smallest that reaches recall@10 >= TARGET_RECALL against exact search on sample queries; the measured
recall is saved with the index and reported, never assumed. (`benchmarks/scale.py` measured where
the flat index stops meeting 20 ms per query on 2 cores.)"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsl.encoders.factory import shared_space
from fsl.errors import FslError
from fsl.files import NUMBER, atomic_path, check_record, read_json, write_json
from fsl.store.features import FeatureStore
from fsl.store.rows import check_finite

EXACT_LIMIT = 50_000  # products searched exactly; above, IVF (benchmarks/scale.py measures where that pays)
TARGET_RECALL = 0.95
SAMPLE_QUERIES = 200
ADD_BATCH = 65_536


def fused_rows(store: FeatureStore, rows: slice | np.ndarray, image_weight: float) -> np.ndarray:
    """[n, Di + Dt] rows (a slice or sorted row numbers) as the index holds them."""
    fused = np.concatenate(
        [
            math.sqrt(image_weight) * np.asarray(store.image[rows], dtype=np.float32),
            math.sqrt(1 - image_weight) * np.asarray(store.text("plain")[rows], dtype=np.float32),
        ],
        axis=1,
    )
    return check_finite(fused, store.ids[rows], f"feature store {store.path}")


@dataclass
class SearchIndex:
    """Nearest products of a store by weighted image and text similarity."""

    index: object  # a faiss index
    image_dim: int
    text_dim: int
    image_weight: float
    kind: str  # "exact" or "ivf-fp16"
    recall_at_10: float  # measured against exact search (1.0 for the exact index)
    shared_space: bool = False  # image and text in one space (clip, aligned): a text also searches photos

    def query(self, image: np.ndarray | None, text: np.ndarray | None) -> np.ndarray:
        """[Di + Dt]: the weighted parts a query has, zeros for the part it has not; in a shared space a
        text-only query fills the photo part too, so it finds products by their photos."""
        if image is None and text is None:
            raise FslError("a search needs a photo, a text or both")
        if image is None and self.shared_space:
            image = text
        parts = [
            np.zeros(self.image_dim, np.float32) if image is None else math.sqrt(self.image_weight) * image,
            np.zeros(self.text_dim, np.float32) if text is None else math.sqrt(1 - self.image_weight) * text,
        ]
        return np.concatenate(parts).astype(np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """[Q, Di + Dt] -> (similarities [Q, k], store rows [Q, k]), best first."""
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows

    def nearest(self, image: np.ndarray | None, text: np.ndarray | None, k: int) -> list[int]:
        """Store rows of the k products closest to one query."""
        _, rows = self.search(self.query(image, text)[None], k)
        return [int(r) for r in rows[0] if r >= 0]


def _shared(store: FeatureStore) -> bool:

    return shared_space(store.encoder_id)


def build_index(store: FeatureStore, image_weight: float, exact_limit: int = EXACT_LIMIT, seed: int = 0) -> SearchIndex:
    """Exact up to `exact_limit` products; above, IVF with float16 codes and a measured nprobe."""
    import faiss

    rows, dim = len(store.ids), store.manifest["image_dim"] + store.manifest["text_dim"]
    if rows <= exact_limit:
        index = faiss.IndexFlatIP(dim)
        kind = "exact"
    else:
        lists = int(4 * math.sqrt(rows))
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = 10  # k-means iterations (faiss: 25); nprobe is tuned on recall afterwards anyway
        sample = np.sort(np.random.default_rng(seed).choice(rows, min(rows, 40 * lists), replace=False))
        index.train(fused_rows(store, sample, image_weight))
        kind = "ivf-fp16"
    for start in range(0, rows, ADD_BATCH):
        index.add(fused_rows(store, slice(start, start + ADD_BATCH), image_weight))
    built = SearchIndex(
        index, store.manifest["image_dim"], store.manifest["text_dim"], image_weight, kind, 1.0, _shared(store)
    )
    if kind != "exact":
        built.recall_at_10 = tune_nprobe(built, store, seed)
    return built


def sample_queries(store: FeatureStore, image_weight: float, n: int = SAMPLE_QUERIES, seed: int = 1) -> np.ndarray:
    """Queries like a user's: stored products with their features perturbed (not the stored vectors
    themselves, which would find themselves first)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(store.ids), min(n, len(store.ids)), replace=False))
    queries = fused_rows(store, rows, image_weight)
    queries += rng.normal(0, 0.3 / math.sqrt(queries.shape[1]), queries.shape).astype(np.float32)
    return queries


def exact_neighbours(store: FeatureStore, queries: np.ndarray, image_weight: float, k: int = 10) -> np.ndarray:
    """[Q, k] store rows by brute force, in blocks (what recall is measured against)."""
    import faiss

    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(store.ids), ADD_BATCH):
        block = fused_rows(store, slice(start, start + ADD_BATCH), image_weight)
        flat = faiss.IndexFlatIP(block.shape[1])
        flat.add(block)
        scores, rows = flat.search(queries, k)
        scores = np.concatenate([best_scores, scores], 1)
        rows = np.concatenate([best_rows, rows + start], 1)
        order = np.argsort(-scores, 1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return best_rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k nearest that were found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def tune_nprobe(built: SearchIndex, store: FeatureStore, seed: int = 0) -> float:
    """The smallest nprobe (doubling from 8) whose recall@10 on sample queries reaches TARGET_RECALL."""
    queries = sample_queries(store, built.image_weight, seed=seed + 1)
    truth = exact_neighbours(store, queries, built.image_weight)
    nprobe = 8
    while True:
        built.index.nprobe = nprobe
        recall = recall_at_k(built.search(queries, 10)[1], truth)
        if recall >= TARGET_RECALL or nprobe >= built.index.nlist:
            return recall
        nprobe *= 2


def index_path(store: FeatureStore, image_weight: float, root: str | os.PathLike | None = None) -> Path:
    """Beside the stores: <store root>/search-index/<store>-w<weight>.faiss (or under `root`)."""
    return Path(root or store.path.parent / "search-index") / f"{store.path.name}-w{image_weight:g}.faiss"


def open_index(
    store: FeatureStore, image_weight: float, root: str | os.PathLike | None = None, exact_limit: int = EXACT_LIMIT
) -> SearchIndex:
    """The store's index, saved at its first use and read after. A saved index names the checksums of
    the store it was built from; one built from another version of the store is rebuilt."""
    import faiss

    path = index_path(store, image_weight, root)
    sidecar = path.with_suffix(".json")
    source = {key: record["sha256"] for key, record in store.manifest.get("arrays", {}).items()}
    if path.is_file() and sidecar.is_file():
        meta = read_json(sidecar, "search index sidecar")
        fields = {"source": (dict,), "image_weight": NUMBER, "kind": (str,), "nprobe": (int,), "recall_at_10": NUMBER}
        try:  # a damaged sidecar only costs a rebuild
            check_record(meta, fields, sidecar, "search index sidecar", "")
        except FslError:
            meta = {}
        if meta.get("source") == source and meta.get("image_weight") == image_weight:
            try:
                index = faiss.read_index(str(path))
            except RuntimeError:
                index = None  # unreadable: rebuilt below
            if index is not None and index.ntotal == len(store.ids):
                if meta["kind"] != "exact":
                    index.nprobe = meta["nprobe"]
                return SearchIndex(
                    index,
                    store.manifest["image_dim"],
                    store.manifest["text_dim"],
                    image_weight,
                    meta["kind"],
                    meta["recall_at_10"],
                    _shared(store),
                )
    built = build_index(store, image_weight, exact_limit)
    with atomic_path(path) as tmp:
        faiss.write_index(built.index, str(tmp))
    write_json(
        sidecar,
        {
            "source": source,
            "image_weight": image_weight,
            "kind": built.kind,
            "nprobe": getattr(built.index, "nprobe", 0),
            "recall_at_10": built.recall_at_10,
            "products": len(store.ids),
        },
    )
    return built

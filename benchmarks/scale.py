"""How each cost grows with the catalog: synthetic catalogs of 10k, 100k and 1M products.

    python benchmarks/scale.py [--sizes 10000 100000 1000000] [--work /tmp/fsl-scale]

Prints the table and writes its rows to results/summary/scale.json (docs/scale.md's block is made
from that file by `python benchmarks/update_readme.py --summaries-only --only scale`).

Per size, in a process of its own (so peak memory is that size's): a synthetic dump (styles.csv and
one photo per product, hard links to one real photo) with its prepared catalog, and a feature store
whose rows are the real store's features resampled with noise (random clustered features where no
real store exists). Then, timed as users meet them: opening the prepared catalog (`load_catalog`,
what every command does first: a stat per photo, one listing), opening the warm store
(`FeatureStore.open`), 600 5-way 5-shot episodes through the harness (ProtoNet, image + text),
building the search index (`fsl.apps.index.open_index`), one query at a time through it (p50 / p95)
with recall@10 against exact search, exact brute force per query, and peak memory.
Targets: a 1M prepared catalog opens in < 3 s; search p50 < 20 ms at 1M with recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = Path(os.environ.get("FSL_DATA", ROOT.parent / "shared/data/fashion-product-images"))
CLASSES = 60
SUMMARY = ROOT / "results" / "summary" / "scale.json"
OPEN_TARGET_S, SEARCH_TARGET_MS, RECALL_TARGET = 3.0, 20.0, 0.95
DEFAULT_SIZES = [10_000, 100_000, 1_000_000]


def make_dump(root: Path, size: int, seed: int = 0):
    """styles.csv + images/ (hard links to one photo) + the prepared catalog; returns the Catalog."""
    from fsl.data.catalog import Catalog
    from fsl.data.prepared import save_prepared

    rng = np.random.default_rng(seed)
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    ids = np.arange(1, size + 1)
    labels = np.array([f"Class {i:02d}" for i in range(CLASSES)])[rng.integers(0, CLASSES, size)]
    products = pd.DataFrame(
        {
            "id": ids,
            "gender": "Unisex",
            "masterCategory": "Apparel",
            "subCategory": "Topwear",
            "articleType": labels,
            "baseColour": "Blue",
            "season": "Summer",
            "year": "2012",
            "usage": "Casual",
            "productDisplayName": [f"Product {i} {c}" for i, c in zip(ids, labels)],
        }
    )
    products.to_csv(root / "styles.csv", index=False)
    photo = next((REAL / "images").glob("*.jpg"), None) if (REAL / "images").is_dir() else None
    if photo is None:
        from PIL import Image

        photo = root / "photo.jpg"
        Image.new("RGB", (60, 80), "navy").save(photo)
    stats, digests = [], []
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    for n, product_id in enumerate(ids):
        if n % 60_000 == 0:  # a file system allows about 65,000 links to one file
            source = root / f"source-{n}.jpg"
            shutil.copy(photo, source)
        target = root / "images" / f"{product_id}.jpg"
        os.link(source, target)
        info = os.stat(target)
        stats.append((info.st_size, info.st_mtime_ns))
        digests.append(digest)
    table = products.assign(image_path=[str(root / "images" / f"{i}.jpg") for i in ids])
    table = table[
        [
            "id",
            "image_path",
            "gender",
            "masterCategory",
            "subCategory",
            "articleType",
            "baseColour",
            "season",
            "usage",
            "year",
            "productDisplayName",
        ]
    ]
    from fsl.data.catalog import LABEL_COLUMNS, NAME_COLUMN, REPORT_COLUMNS

    table = table[["id", "image_path", *LABEL_COLUMNS, "year", NAME_COLUMN]]
    catalog = Catalog(
        root,
        table,
        pd.DataFrame(columns=REPORT_COLUMNS),
        size,
        known_fingerprint=hashlib.sha256(f"synthetic-{size}-{seed}".encode()).hexdigest()[:16],
    )
    save_prepared(catalog, stats, digests)
    return catalog


def real_features(stores: Path):
    """(image [P, Di], text [P, Dt]) of a real offline-encoder store under `stores`, or None."""
    from fsl.store.features import FeatureStore

    for manifest in sorted(stores.glob("offline_*/manifest.json")):
        try:
            store = FeatureStore.open(manifest.parent)
        except Exception:  # noqa: BLE001 - any unusable store: fall back to synthetic features
            continue
        return np.asarray(store.image), np.asarray(store.text("plain"))
    return None


def make_store(catalog, store_root: Path, real_stores: Path, seed: int = 0):
    """A complete store for the synthetic catalog: real rows resampled with noise, unit norm per part."""
    from fsl.files import write_json
    from fsl.paths import store_path
    from fsl.store.manifest import DTYPE, STORE_VERSION, array_record

    rng = np.random.default_rng(seed)
    real = real_features(real_stores)
    if real is None:
        print("no real feature store found: random clustered features", file=sys.stderr)
        centres = rng.normal(size=(CLASSES * 20, 1280 + 384)).astype(np.float32)
        real = (centres[:, :1280], centres[:, 1280:])
    image_dim, text_dim = real[0].shape[1], real[1].shape[1]
    size = len(catalog)
    path = store_path(store_root, "offline:synthetic", catalog.fingerprint)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "ids.npy", catalog.products["id"].to_numpy(np.int64))
    for key, dim, part in (("image", image_dim, 0), ("text-plain", text_dim, 1)):
        with open(path / f"{key}.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (size, dim)}
            )
            chunk_rng = np.random.default_rng(seed)  # the same source rows for both parts
            for start in range(0, size, 65_536):
                n = min(65_536, size - start)
                rows = chunk_rng.integers(0, len(real[0]), n)
                block = real[part][rows] + rng.normal(0, 0.3 / math.sqrt(dim), (n, dim)).astype(np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
                f.write(block.astype(DTYPE).tobytes())
    manifest = {
        "version": STORE_VERSION,
        "encoder_id": "offline:synthetic",
        "catalog_fingerprint": catalog.fingerprint,
        "catalog_root": str(catalog.root),
        "products": size,
        "chunk_size": size,
        "chunks": 1,
        "image_dim": image_dim,
        "text_dim": text_dim,
        "dtype": DTYPE.str,
        "text_variants": {"plain": {"template": "{productDisplayName}", "mask_column": None}},
        "complete": True,
    }
    manifest["arrays"] = {key: array_record(path / f"{key}.npy") for key in ("ids", "image", "text-plain")}
    write_json(path / "manifest.json", manifest)
    return path


def measure(size: int, work: Path, real_stores: Path) -> dict:
    """Everything for one size; run in its own process."""
    from fsl.apps.index import exact_neighbours, open_index, recall_at_k, sample_queries
    from fsl.data.prepared import load_catalog
    from fsl.episodes.frozen import EpisodeSet
    from fsl.episodes.sampler import EpisodeSampler
    from fsl.harness.evaluate import run_episodes
    from fsl.methods import create_head
    from fsl.methods.fusion import create_fusion
    from fsl.store.features import FeatureStore
    from fsl.store.rows import store_features

    root = work / str(size)
    catalog = make_dump(root / "dump", size)
    store_dir = make_store(catalog, root / "features", real_stores)
    out = {"products": size}

    started = time.perf_counter()
    catalog = load_catalog(root / "dump")
    out["open_catalog_s"] = time.perf_counter() - started
    started = time.perf_counter()
    store = FeatureStore.open(store_dir)
    out["open_store_s"] = time.perf_counter() - started

    sampler = EpisodeSampler(
        catalog.products["id"].to_numpy(), catalog.labels(), sorted(set(catalog.labels())), 5, 5, 15, seed=0
    )
    episode_set = EpisodeSet("scale-5w5s", sampler.sample(600), {})
    head = create_head(
        "protonet", create_fusion("concat", store.manifest["image_dim"], store.manifest["text_dim"], image_weight=0.7)
    )
    started = time.perf_counter()
    run_episodes(head, store_features(store), store.ids, episode_set, progress=False)
    out["eval_600_s"] = time.perf_counter() - started

    started = time.perf_counter()
    index = open_index(store, 0.7, root / "index")
    out["index_build_s"] = time.perf_counter() - started
    out["index_kind"], out["index_recall_tuning"] = index.kind, index.recall_at_10
    queries = sample_queries(store, 0.7, n=200, seed=7)  # other queries than the ones nprobe was tuned on
    timings = []
    found = []
    for query in queries:
        begin = time.perf_counter()
        found.append(index.search(query[None], 10)[1][0])
        timings.append(time.perf_counter() - begin)
    out["search_p50_ms"], out["search_p95_ms"] = (1000 * float(np.percentile(timings, q)) for q in (50, 95))
    truth = exact_neighbours(store, queries, 0.7)
    out["recall_at_10"] = recall_at_k(np.array(found), truth)
    exact_times = []
    for query in queries[:5]:
        begin = time.perf_counter()
        exact_neighbours(store, query[None], 0.7)
        exact_times.append(time.perf_counter() - begin)
    out["exact_p50_ms"] = 1000 * float(np.median(exact_times))
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    shutil.rmtree(root, ignore_errors=True)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| products | open prepared catalog | open warm store | eval 600 eps (5w5s) | index | build | "
        "search p50 / p95 | recall@10 | brute force p50 | peak memory |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        big = r["products"] >= 1_000_000
        open_mark = " MISSED" if big and r["open_catalog_s"] >= OPEN_TARGET_S else ""
        search_mark = " MISSED" if big and (r["search_p50_ms"] >= SEARCH_TARGET_MS) else ""
        recall_mark = " MISSED" if big and r["recall_at_10"] < RECALL_TARGET else ""
        lines.append(
            f"| {r['products']:,} | {r['open_catalog_s']:.2f} s{open_mark} | {r['open_store_s']:.2f} s | "
            f"{r['eval_600_s']:.2f} s | {r['index_kind']} | {r['index_build_s']:.1f} s | "
            f"{r['search_p50_ms']:.1f} / {r['search_p95_ms']:.1f} ms{search_mark} | "
            f"{r['recall_at_10']:.3f}{recall_mark} | {r['exact_p50_ms']:.0f} ms | {r['peak_rss_gib']:.1f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=DEFAULT_SIZES)
    parser.add_argument("--work", default="/tmp/fsl-scale", help="scratch folder (removed per size when done)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args()
    real_stores = Path(
        os.environ.get("FSL_SCALE_REAL_STORES") or Path(os.environ.get("FSL_CACHE", ROOT / ".fsl")) / "features"
    )
    os.environ["FSL_SCALE_REAL_STORES"] = str(real_stores)
    os.environ["FSL_CACHE"] = str(Path(args.work) / "cache")  # the synthetic prepared catalogs go there
    if args.one:
        print(json.dumps(measure(args.one, Path(args.work), real_stores)))
        return
    rows = []
    for size in args.sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--work", args.work], capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"size {size} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{size:,} products done", file=sys.stderr)
    print(table(rows))
    if args.sizes == DEFAULT_SIZES:  # the docs' table is of the three sizes
        from fsl.files import write_json

        write_json(SUMMARY, {"measured": time.strftime("%Y-%m-%d"), "rows": rows})
        print(f"written to {SUMMARY}", file=sys.stderr)


if __name__ == "__main__":
    main()

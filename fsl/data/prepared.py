"""The prepared catalog: a dump read once into Parquet beside its photos' sizes and times, so later
commands open a catalog in O(rows) instead of hashing every photo; `load_catalog` is the one way in."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fsl.data.catalog import REPORT_COLUMNS, Catalog, fingerprint_of, image_problem, read_dump, resolve_data_dir
from fsl.errors import FslError
from fsl.files import atomic_path
from fsl.paths import prepared_path

logger = logging.getLogger(__name__)


def load_catalog(data_dir: str | os.PathLike | None = None, refresh: bool = False) -> Catalog:
    """The dump's catalog: from its prepared catalog when that is current (a stat per photo, no
    decoding), else read, repaired and checked in full, then prepared for next time. `refresh`
    (`fsl prepare`) always reads in full."""

    root = resolve_data_dir(data_dir)
    catalog = None if refresh else open_prepared(root)
    if catalog is None:
        catalog = read_dump(root)
        fingerprint, stats, digests = hash_photos(catalog)
        catalog = dataclasses.replace(catalog, known_fingerprint=fingerprint)
        save_prepared(catalog, stats, digests)
    return catalog


VERSION = 1
PHOTO_COLUMNS = ["photo_size", "photo_mtime_ns", "photo_sha256"]


PARALLEL_FROM = 100_000  # photos; below, one process is as fast as several (fork and result transfer cost)
_PATHS: list[str] = []  # the list being stat'ed, inherited by forked workers (nothing is pickled to them)


def _stat_slice(bounds: tuple[int, int]) -> np.ndarray:
    return np.asarray([_stat(p) or (-1, -1) for p in _PATHS[bounds[0] : bounds[1]]], dtype=np.int64).reshape(-1, 2)


def stat_all(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(size, mtime_ns) of every path as two int64 arrays, -1 where a file is missing. A stat is
    kernel time, so a large catalog is split over forked processes, one per core (threads contend
    for the GIL and were slower than one loop)."""
    global _PATHS
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PARALLEL_FROM or workers < 2 or not hasattr(os, "fork"):
        _PATHS = paths
        both = _stat_slice((0, len(paths)))
    else:
        import multiprocessing

        _PATHS = paths
        bounds = np.linspace(0, len(paths), workers + 1).astype(int)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            both = np.concatenate(pool.map(_stat_slice, list(zip(bounds[:-1], bounds[1:]))))
    _PATHS = []
    return both[:, 0], both[:, 1]


def _stat(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def hash_photos(catalog: Catalog) -> tuple[str, list, list[str]]:
    """The catalog's fingerprint and each photo's (size, mtime) and sha256, in one pass over the bytes."""
    stats, digests = [], []

    def photos():
        for path in catalog.image_paths:
            stats.append(_stat(path))
            data = path.read_bytes()
            digests.append(hashlib.sha256(data).hexdigest())
            yield data

    return fingerprint_of(catalog.products, photos()), stats, digests


def save_prepared(catalog: Catalog, stats: list, digests: list[str]) -> Path | None:
    """Write the prepared catalog. A cache that cannot be written only costs speed: a note, no error."""
    frame = catalog.products.copy()
    frame["image_path"] = [os.path.relpath(p, catalog.root) for p in frame["image_path"]]
    frame["photo_size"] = [s[0] for s in stats]
    frame["photo_mtime_ns"] = [s[1] for s in stats]
    frame["photo_sha256"] = digests
    styles = _stat(catalog.root / "styles.csv")
    meta = {
        "version": VERSION,
        "root": str(catalog.root.resolve()),
        "styles": list(styles),
        "styles_sha256": _sha256(catalog.root / "styles.csv"),
        "fingerprint": catalog.fingerprint,
        "data_rows": catalog.data_rows,
        "report": json.loads(catalog.report.to_json(orient="records")),
    }
    path = prepared_path(catalog.root)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"fsl": json.dumps(meta).encode()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except FslError as error:
        logger.warning(f"the prepared catalog was not saved ({error}); the next command reads the dump again")
        return None
    return path


def open_prepared(root: Path) -> Catalog | None:
    """The catalog from its prepared file, or None when there is none (or it is of another version)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = prepared_path(root)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"fsl"])
    except (OSError, KeyError, ValueError, pa.ArrowException) as error:
        logger.warning(f"the prepared catalog {path} cannot be read ({error}); reading the dump again")
        return None
    if meta.get("version") != VERSION or meta.get("root") != str(Path(root).resolve()):
        return None
    restamped = _stat(root / "styles.csv") != tuple(meta["styles"])
    if restamped and meta.get("styles_sha256") != _sha256(root / "styles.csv"):  # a new mtime alone is no change
        raise _changed(root, "styles.csv")
    frame = table.to_pandas()
    frame["image_path"] = (str(root) + os.sep) + frame["image_path"].astype(str)  # vectorised, not a join per row
    report = pd.DataFrame(meta["report"], columns=REPORT_COLUMNS)
    missing = report.loc[report["issue"] == "image missing", "id"]
    if len(missing):
        present = set(os.listdir(root / "images")) if (root / "images").is_dir() else set()  # one listing
        appeared = [i for i in missing if f"{i}.jpg" in present and (root / "images" / f"{i}.jpg").is_file()]
        if appeared:
            raise _changed(root, f"{len(appeared)} photo(s) appeared, e.g. images/{appeared[0]}.jpg")
    sizes, mtimes = stat_all(frame["image_path"].tolist())
    moved = np.flatnonzero((sizes != frame["photo_size"].to_numpy()) | (mtimes != frame["photo_mtime_ns"].to_numpy()))
    now = None
    if len(moved):
        now = [None if size < 0 else (int(size), int(mtime)) for size, mtime in zip(sizes, mtimes)]
        changed = [
            i
            for i in moved
            if now[i] is None
            or image_problem(Path(frame.at[i, "image_path"]))
            or hashlib.sha256(Path(frame.at[i, "image_path"]).read_bytes()).hexdigest() != frame.at[i, "photo_sha256"]
        ]
        if changed:
            raise _changed(
                root, f"{len(changed)} photo(s) differ, e.g. {Path(frame.at[changed[0], 'image_path']).name}"
            )
        logger.info(f"re-checked {len(moved)} photo(s) whose size or mtime changed: their content is unchanged")
    products = frame.drop(columns=PHOTO_COLUMNS)
    catalog = Catalog(root, products, report, meta["data_rows"], known_fingerprint=meta["fingerprint"])
    if len(moved) or restamped:  # same content under new times (a copy, a checkout): remember the new times
        save_prepared(catalog, now or list(zip(sizes.tolist(), mtimes.tolist())), frame["photo_sha256"].tolist())
    return catalog


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _changed(root: Path, what: str) -> FslError:
    return FslError(
        f"the dump at {root} changed since it was prepared ({what}): its fingerprint, and with it "
        f"the feature store and the episode sets, would change. Run `fsl prepare --data {root}` "
        "to accept the change"
    )

"""A feature store on disk: its manifest's schema (read through typed records), each array's size,
dtype and checksums, the cheap and the full check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fsl.errors import FslError
from fsl.files import (
    check_record,
    read_json,
)

STORE_VERSION = 2  # 2: checksums, dtype and row count in the manifest


DTYPE = np.dtype("<f4")


SAMPLE_BLOCKS, BLOCK_BYTES = 32, 1 << 16  # the cheap check on open reads 32 blocks of 64 KiB per array


MANIFEST_KEYS = {
    "version",
    "encoder_id",
    "catalog_fingerprint",
    "products",
    "chunk_size",
    "chunks",
    "image_dim",
    "text_dim",
    "text_variants",
    "complete",
}


def read_manifest(path: Path) -> dict | None:
    """The store's manifest, read through its schema (MANIFEST_TYPES, RECORD_TYPES per array), or None."""
    file = path / "manifest.json"
    if not file.is_file():
        return None
    manifest = read_json(file, "feature store manifest")
    fix = "run `fsl embed` with the same options to rebuild the store"
    if not isinstance(manifest, dict) or not MANIFEST_KEYS <= set(manifest):
        raise FslError(
            f"{file}: the feature store manifest is damaged (it lacks "
            f"{sorted(MANIFEST_KEYS - set(manifest if isinstance(manifest, dict) else {}))}); {fix}"
        )
    check_record(
        manifest, {k: v for k, v in MANIFEST_TYPES.items() if k in manifest}, file, "feature store manifest", fix
    )
    for name, record in manifest.get("arrays", {}).items():
        check_record(record, RECORD_TYPES, file, f"feature store manifest (array {name!r})", fix)
    return manifest


NONE = type(None)


MANIFEST_TYPES = {"version": (int,), "encoder_id": (str,), "catalog_fingerprint": (str,), "products": (int,),
                  "chunk_size": (int, NONE),  # None: marked for rebuilding
                  "chunks": (int, NONE), "image_dim": (int, NONE), "text_dim": (int, NONE), "dtype": (str,),
                  "complete": (bool,), "arrays": (dict,), "text_variants": (dict,)}  # fmt: skip


RECORD_TYPES = {"bytes": (int,), "sha256": (str,), "sample_sha256": (str,)}


def npy_header(file: Path) -> tuple[tuple, np.dtype] | None:
    """(shape, dtype) from a .npy file's header without loading it, or None if it has none."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
        return shape, dtype
    except (ValueError, OSError, SyntaxError):
        return None


def array_keys(manifest: dict) -> list[str]:
    return ["ids", "image"] + [f"text-{name}" for name in manifest["text_variants"]]


def sample_digest(file: Path) -> str:
    """sha256 of a few spread-out blocks (header and tail included): cheap enough for every open."""
    size = file.stat().st_size
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        if size <= SAMPLE_BLOCKS * BLOCK_BYTES:
            digest.update(f.read())
        else:
            for offset in np.linspace(0, size - BLOCK_BYTES, SAMPLE_BLOCKS).astype(np.int64):
                f.seek(int(offset))
                digest.update(f.read(BLOCK_BYTES))
    return digest.hexdigest()


def array_record(file: Path) -> dict:
    with open(file, "rb") as f:
        full = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": file.stat().st_size, "sha256": full, "sample_sha256": sample_digest(file)}


def store_problem(path: Path, manifest: dict, full_check: bool = False) -> str | None:
    """What is wrong with a complete store on disk, or None: versions, files, sizes, checksums, id order."""
    if manifest.get("version") != STORE_VERSION:
        return f"it was written by store version {manifest.get('version')}, this fsl writes {STORE_VERSION}"
    records = manifest.get("arrays", {})
    for key in array_keys(manifest):
        file, record = path / f"{key}.npy", records.get(key)
        if record is None:
            return f"the manifest has no checksum for {file.name}"
        if not file.is_file():
            return f"{file.name} is missing"
        if file.stat().st_size != record["bytes"]:
            return (
                f"{file.name} has {file.stat().st_size} bytes, the manifest says {record['bytes']} "
                "(truncated or replaced)"
            )
        if full_check:
            with open(file, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != record["sha256"]:
                    return f"{file.name} does not match its sha256 checksum"
        elif sample_digest(file) != record["sample_sha256"]:
            return f"{file.name} does not match its checksum"
    for key in array_keys(manifest):
        header = npy_header(path / f"{key}.npy")
        wanted = np.dtype("<i8") if key == "ids" else DTYPE
        if header is None or header[1] != wanted:
            return f"{key}.npy is not an array of {wanted} (its header says {header and header[1]})"
    ids = np.load(path / "ids.npy", mmap_mode="r")
    if ids.shape != (manifest["products"],) or not np.all(np.diff(ids) > 0):
        return f"ids.npy must hold {manifest['products']} product ids in increasing order"
    if full_check:  # a value written non-finite has a matching checksum: only reading it tells
        for key in array_keys(manifest)[1:]:
            rows = non_finite_rows(np.load(path / f"{key}.npy", mmap_mode="r"))
            if len(rows):
                return f"{key}.npy has NaN or infinite values in {len(rows)} row(s) (e.g. product {ids[rows[0]]})"
    return None


def non_finite_rows(values: np.ndarray, block: int = 65_536) -> np.ndarray:
    """The rows of a (memory-mapped) array holding a NaN or infinite value, read block by block."""
    flat = values.reshape(len(values), -1)
    bad = [start + np.flatnonzero(~np.isfinite(flat[start : start + block]).all(axis=1))
           for start in range(0, len(flat), block)]  # fmt: skip
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


def is_complete(path: Path) -> bool:
    """Whether a store at `path` says it is complete (not yet checked: `FeatureStore.open` does that)."""
    try:
        return bool((read_manifest(Path(path)) or {}).get("complete"))
    except FslError:
        return False


def complete_store(path: Path, full_check: bool) -> tuple[dict | None, str | None]:
    """(the manifest of the complete store at `path`, or None when there is none yet; what is wrong with
    it, or None): the one check behind a warm store read without the lock and a derived one."""
    try:
        manifest = read_manifest(path)
    except FslError as error:
        return None, str(error)
    if not manifest or not manifest.get("complete"):
        return None, None
    return manifest, store_problem(path, manifest, full_check)

"""Writing a feature store: every product embedded once, chunk by chunk with atomic writes (an
interrupted embed resumes; under torchrun each rank writes its own chunks, rank 0 joins them), a warm
store checked and reused (a first-version one given its checksums), a damaged one rebuilt with a
message, text variants added to a store that lacks them."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fsl.data.catalog import Catalog
from fsl.encoders.base import Encoder
from fsl.errors import FslError
from fsl.files import (
    ARRAY_READ_ERRORS,
    atomic_path,
    disk_error,
    remove_stale_temp_files,
    write_json,
    write_npy,
)
from fsl.paths import FEATURES_ROOT, store_path
from fsl.store.features import DEFAULT_TEXT_VARIANTS, FeatureStore, TextVariant, open_checked
from fsl.store.locks import file_lock, writer_lock
from fsl.store.manifest import (
    DTYPE,
    STORE_VERSION,
    array_keys,
    array_record,
    complete_store,
    read_manifest,
    store_problem,
)

logger = logging.getLogger(__name__)

TEXT_STEP = 128  # products whose texts are encoded in one call (2 variants: one 256-text batch)


def check_embed_options(chunk_size: int, batch_size: int, num_workers: int | None, rank: int, world_size: int) -> None:
    """Every option checked before any work, so a bad one can never leave a wrong store behind."""
    for name, value, low in (
        ("chunk size", chunk_size, 1),
        ("batch size", batch_size, 1),
        ("world size", world_size, 1),
        ("rank", rank, 0),
    ):
        if type(value) is not int or value < low:
            raise FslError(f"{name} must be a whole number >= {low}, got {value!r}")
    if num_workers is not None and (type(num_workers) is not int or num_workers < 0):
        raise FslError(f"workers must be a whole number >= 0, got {num_workers!r}")
    if rank >= world_size:
        raise FslError(f"rank {rank} is not below the world size {world_size}")


def embed_catalog(
    catalog: Catalog,
    encoder: Encoder,
    root: str | os.PathLike = FEATURES_ROOT,
    text_variants=DEFAULT_TEXT_VARIANTS,
    chunk_size: int = 512,
    batch_size: int = 32,
    num_workers: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    full_check: bool = False,
    join: bool = True,
) -> FeatureStore | None:
    """Embed every product once (images and each text variant); resumable, cached by content.

    A warm store is checked (full_check: every byte) and reused; a damaged one is rebuilt, with a
    message. Returns the store, or None when this rank is done but other ranks' chunks are missing
    (or `join` is False: under torchrun rank 0 joins after a barrier).
    """
    check_embed_options(chunk_size, batch_size, num_workers, rank, world_size)
    path = store_path(root, encoder.id, catalog.fingerprint)
    variants = {v.name: v for v in text_variants}
    ready = ready_store(path, catalog, encoder, variants, full_check)
    if ready is not None:  # nothing to write: no lock, so readers never wait on (or stop) one another
        return ready
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise disk_error(error, path) from None
    with writer_lock(path, rank, world_size):
        store = warm_store(path, catalog, encoder, variants, progress, full_check)
        if store is not None:
            return store
        n_chunks = -(-len(catalog) // chunk_size)
        chunk_dir = path / "chunks"
        chunk_file = lambda i: chunk_dir / f"chunk-{i:05d}.npz"  # noqa: E731
        with file_lock(path / "join.lock"):
            manifest = start_manifest(path, catalog, encoder, variants, chunk_size, n_chunks)
            if world_size == 1:  # nobody else writes here: leftovers of a killed run can go
                remove_stale_temp_files(chunk_dir)
                remove_stale_temp_files(path)
        mine = [i for i in range(n_chunks) if i % world_size == rank and not chunk_file(i).exists()]
        if mine:
            embed_chunks(catalog, encoder, variants, mine, chunk_size, chunk_file, batch_size, num_workers, progress)
        if not join:
            return None
        with file_lock(path / "join.lock"):
            if not (read_manifest(path) or {}).get("complete"):
                if not all(chunk_file(i).exists() for i in range(n_chunks)):
                    return None
                join_chunks(path, manifest, n_chunks, chunk_size, chunk_file)
    return FeatureStore.open(path, encoder.id, catalog.fingerprint)


def ready_store(path: Path, catalog: Catalog, encoder: Encoder, variants: dict, full_check: bool):
    """The store at `path` when it is complete, sound and has every text variant, read without the
    writer lock; None when anything must be written (then embed_catalog takes the lock and looks again)."""
    manifest, problem = complete_store(path, full_check)
    if manifest is None or problem or any(name not in manifest["text_variants"] for name in variants):
        return None
    if not np.array_equal(np.load(path / "ids.npy"), np.asarray(catalog.ids)):
        return None
    return open_checked(path, encoder.id, catalog.fingerprint, full_check)


def warm_store(
    path: Path, catalog: Catalog, encoder: Encoder, variants: dict, progress: bool, full_check: bool
) -> FeatureStore | None:
    """The complete store at `path` with every text variant, or None when it must be (re)built."""
    try:
        manifest = read_manifest(path)
    except FslError as error:
        logger.warning(f"{error}; rebuilding it")
        (path / "manifest.json").unlink()
        return None
    if not manifest or not manifest.get("complete"):
        return None
    if manifest.get("version") == 1:
        manifest = upgrade_v1(path, manifest, catalog)
        if manifest is None:
            return None
    problem = store_problem(path, manifest, full_check)
    if problem is None and not np.array_equal(np.load(path / "ids.npy"), np.asarray(catalog.ids)):
        problem = "its ids are not the catalog's"
    if problem:
        logger.warning(f"feature store {path} is damaged ({problem}); rebuilding it")
        write_json(path / "manifest.json", {**manifest, "complete": False, "chunk_size": None})
        return None
    if full_check:
        logger.info(f"verified every byte of {path} against its sha256 checksums")
    missing = [v for name, v in variants.items() if name not in manifest["text_variants"]]
    if missing:
        add_text_variants(path, manifest, catalog, encoder, missing, progress)
    return FeatureStore.open(path, encoder.id, catalog.fingerprint)


def start_manifest(
    path: Path, catalog: Catalog, encoder: Encoder, variants: dict, chunk_size: int, n_chunks: int
) -> dict:
    """The incomplete manifest this run writes chunks for; a different earlier run's chunks are dropped."""
    wanted = {
        "version": STORE_VERSION,
        "encoder_id": encoder.id,
        "catalog_fingerprint": catalog.fingerprint,
        "catalog_root": str(catalog.root),
        "products": len(catalog),
        "chunk_size": chunk_size,
        "chunks": n_chunks,
        "image_dim": encoder.image_dim,
        "text_dim": encoder.text_dim,
        "dtype": DTYPE.str,
        "text_variants": {n: {"template": v.template, "mask_column": v.mask_column} for n, v in variants.items()},
        "complete": False,
    }
    manifest = read_manifest(path)
    if manifest != wanted:
        shutil.rmtree(path / "chunks", ignore_errors=True)
        write_npy(path / "ids.npy", np.asarray(catalog.ids, dtype=np.int64))
        write_json(path / "manifest.json", wanted)
    return wanted


def embed_chunks(catalog, encoder, variants, chunks, chunk_size, chunk_file, batch_size, num_workers, progress):
    """Images stream through one DataLoader over all pending chunks; each full chunk is saved."""
    paths = catalog.image_paths
    texts = {name: catalog.texts(v.template, v.mask_column) for name, v in variants.items()}
    spans = [(i * chunk_size, min((i + 1) * chunk_size, len(catalog))) for i in chunks]
    pending_paths = [p for start, stop in spans for p in paths[start:stop]]
    # A product counts half when its photo is encoded and half when its texts are, so the bar moves
    # steadily through both instead of stalling at each chunk's texts.
    bar = tqdm(
        total=len(pending_paths),
        desc="embedding",
        unit="product",
        disable=None if progress else True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
    buffered: list[np.ndarray] = []
    n_buffered = 0
    queue = list(zip(chunks, spans))
    for pixels in encoder.image_batches(pending_paths, batch_size, num_workers):
        buffered.append(encoder.embed_pixels(pixels))
        n_buffered += len(pixels)
        bar.update(len(pixels) / 2)
        while queue and n_buffered >= queue[0][1][1] - queue[0][1][0]:
            index, (start, stop) = queue.pop(0)
            stacked = np.concatenate(buffered)
            image, rest = stacked[: stop - start], stacked[stop - start :]
            buffered, n_buffered = [rest], len(rest)
            arrays = {"image": image, **encode_chunk_texts(encoder, texts, start, stop, bar)}
            with atomic_path(chunk_file(index)) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
    bar.close()


def encode_chunk_texts(encoder, texts: dict[str, list[str]], start: int, stop: int, bar, step: int = TEXT_STEP):
    """{"text-NAME": [stop - start, text_dim]} for every text variant of the products start..stop, in
    slices of `step` products: each slice's variants in one call, so a text two variants share
    (nothing masked) is encoded once."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in texts}
    for low in range(start, stop, step):
        high = min(low + step, stop)
        encoded = encoder.encode_texts([t for name in texts for t in texts[name][low:high]], progress=False)
        for i, name in enumerate(texts):
            parts[name].append(encoded[i * (high - low) : (i + 1) * (high - low)])
        bar.update((high - low) / 2)
    return {f"text-{name}": np.concatenate(blocks) for name, blocks in parts.items()}


def check_chunks(path: Path, manifest: dict, n_chunks: int, chunk_size: int, chunk_file) -> None:
    """Every chunk has its rows, its arrays and finite values; a bad one is removed, to be redone."""
    for i in range(n_chunks):
        rows = min(chunk_size, manifest["products"] - i * chunk_size)
        try:
            with np.load(chunk_file(i)) as chunk:
                for key in array_keys(manifest)[1:]:
                    dim = manifest["image_dim"] if key == "image" else manifest["text_dim"]
                    if key not in chunk.files:
                        raise ValueError(f"it has no {key} array")
                    block = chunk[key]
                    if block.shape != (rows, dim):
                        raise ValueError(f"{key} has shape {block.shape}, expected {(rows, dim)}")
                    if not np.isfinite(block).all():
                        raise ValueError(f"{key} holds NaN or infinite values")
        except ARRAY_READ_ERRORS as error:
            chunk_file(i).unlink(missing_ok=True)
            raise FslError(
                f"chunk {i} of {path} is damaged ({error}); it was removed: run `fsl embed` again to redo it"
            ) from None


def join_chunks(path: Path, manifest: dict, n_chunks: int, chunk_size: int, chunk_file) -> None:
    """Stream the checked chunks into one memory-mappable .npy per feature kind, then mark complete.

    Plain writes, not a memory map: a full disk is then an error to report, not a SIGBUS."""
    check_chunks(path, manifest, n_chunks, chunk_size, chunk_file)
    rows = manifest["products"]
    keys = array_keys(manifest)[1:]
    needed = sum(
        rows * (manifest["image_dim"] if k == "image" else manifest["text_dim"]) * DTYPE.itemsize for k in keys
    )
    free = shutil.disk_usage(path).free
    if free < needed + (16 << 20):
        raise FslError(
            f"joining {path} needs {needed / 2**20:.0f} MiB but the disk has {free / 2**20:.0f} MiB "
            "free; free some space and run `fsl embed` again (finished chunks are kept)"
        )
    remove_stale_temp_files(path)
    for key in keys:
        dim = manifest["image_dim"] if key == "image" else manifest["text_dim"]
        with atomic_path(path / f"{key}.npy") as tmp, open(tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (rows, dim)}
            np.lib.format.write_array_header_1_0(f, header)
            for i in range(n_chunks):
                with np.load(chunk_file(i)) as chunk:
                    f.write(np.ascontiguousarray(chunk[key], dtype=DTYPE).tobytes())
            f.flush()
            os.fsync(f.fileno())
    arrays = {key: array_record(path / f"{key}.npy") for key in array_keys(manifest)}
    write_json(path / "manifest.json", {**manifest, "complete": True, "arrays": arrays})
    shutil.rmtree(path / "chunks", ignore_errors=True)


def add_text_variants(
    path: Path, manifest: dict, catalog: Catalog, encoder: Encoder, variants: list[TextVariant], progress: bool
) -> None:
    for variant in variants:
        features = encoder.encode_texts(catalog.texts(variant.template, variant.mask_column), progress=progress)
        write_npy(path / f"text-{variant.name}.npy", features.astype(DTYPE))
        manifest["text_variants"][variant.name] = {"template": variant.template, "mask_column": variant.mask_column}
        manifest["arrays"][f"text-{variant.name}"] = array_record(path / f"text-{variant.name}.npy")
    write_json(path / "manifest.json", manifest)


def upgrade_v1(path: Path, manifest: dict, catalog: Catalog) -> dict | None:
    """A store of fsl's first version had no checksums: check its shapes and ids, then add them."""
    try:
        ids = np.load(path / "ids.npy")
        shapes = {key: np.load(path / f"{key}.npy", mmap_mode="r").shape for key in array_keys(manifest)[1:]}
    except (OSError, ValueError) as error:
        logger.warning(f"feature store {path} (version 1) cannot be read ({error}); rebuilding it")
        return None
    dims = {key: manifest["image_dim"] if key == "image" else manifest["text_dim"] for key in shapes}
    if not np.array_equal(ids, np.asarray(catalog.ids)) or any(s != (len(ids), dims[k]) for k, s in shapes.items()):
        logger.warning(f"feature store {path} (version 1) does not fit the catalog; rebuilding it")
        return None
    arrays = {key: array_record(path / f"{key}.npy") for key in array_keys(manifest)}
    manifest = {**manifest, "version": STORE_VERSION, "dtype": DTYPE.str, "arrays": arrays}
    write_json(path / "manifest.json", manifest)
    logger.warning(f"feature store {path} upgraded to version {STORE_VERSION} (checksums added)")
    return manifest

"""The feature store: every product's image and text embeddings, computed once, on disk.

Written chunk by chunk with atomic writes (an interrupted embed resumes), keyed by encoder id and
catalog fingerprint, checked by checksums, read memory-mapped so memory does not grow with the catalog."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fsl.data.catalog import DEFAULT_TEXT_TEMPLATE, Catalog
from fsl.encoders.base import Encoder
from fsl.errors import FslError
from fsl.files import (
    ARRAY_READ_ERRORS,
    atomic_path,
    check_record,
    disk_error,
    read_json,
    remove_stale_temp_files,
    write_json,
    write_npy,
)
from fsl.paths import FEATURES_ROOT, store_path

STORE_VERSION = 2  # 2: checksums, dtype and row count in the manifest
DTYPE = np.dtype("<f4")
TEXT_STEP = 128  # products whose texts are encoded in one call (2 variants: one 256-text batch)
SAMPLE_BLOCKS, BLOCK_BYTES = 32, 1 << 16  # the cheap check on open reads 32 blocks of 64 KiB per array


@dataclass(frozen=True)
class TextVariant:
    """How product text is made before it is embedded: a template, maybe label words masked."""

    template: str = DEFAULT_TEXT_TEMPLATE
    mask_column: str | None = None

    @property
    def name(self) -> str:
        base = f"masked-{self.mask_column}" if self.mask_column else "plain"
        if self.template != DEFAULT_TEXT_TEMPLATE:
            base += "-" + re.sub(r"\W+", "", self.template)[:24]
        return base


DEFAULT_TEXT_VARIANTS = (TextVariant(), TextVariant(mask_column="articleType"))


@dataclass
class FeatureStore:
    """Unit-norm features of every product of one catalog by one encoder (memory-mapped)."""

    path: Path
    manifest: dict
    ids: np.ndarray  # [P] product ids, the row order of every array
    image: np.ndarray  # [P, image_dim]
    texts: dict[str, np.ndarray] = field(default_factory=dict)  # variant name -> [P, text_dim]

    @property
    def encoder_id(self) -> str:
        return self.manifest["encoder_id"]

    @property
    def catalog_fingerprint(self) -> str:
        return self.manifest["catalog_fingerprint"]

    def text(self, variant: str = "plain") -> np.ndarray:
        if variant not in self.texts:
            raise FslError(
                f"{self.path} has no text features {variant!r}; it has {sorted(self.texts)}. "
                "Run `fsl embed` with that text variant."
            )
        return self.texts[variant]

    def short_texts(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """[T, text_dim] embeddings of short texts (class-name prompts), cached beside the store so that
        warm commands need no encoder; `encode` runs only for texts not seen before."""
        cache_file = self.path / "short-texts.npz"
        try:
            with np.load(cache_file) as cached_arrays:
                cached = dict(cached_arrays)
        except ARRAY_READ_ERRORS:
            cached = {}  # no cache yet, or a damaged one: it is only a cache
        keys = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in cached))
        if missing:
            for text, vector in zip(missing, encode(missing)):
                cached[hashlib.sha256(text.encode()).hexdigest()[:32]] = np.asarray(vector, dtype=DTYPE)
            with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
                np.savez(f, **cached)
        return np.stack([cached[k] for k in keys])

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        encoder_id: str | None = None,
        catalog_fingerprint: str | None = None,
        full_check: bool = False,
    ) -> FeatureStore:
        """Load a complete store; refuse one made by another encoder or catalog, or a damaged one.

        The check reads sizes and a sample of each array's bytes (full_check: every byte)."""
        path = Path(path)
        manifest = _read_manifest(path)
        if manifest is None or not manifest.get("complete"):
            raise FslError(f"{path} holds no complete feature store; run `fsl embed` first")
        for what, wanted, found in (
            ("encoder", encoder_id, manifest["encoder_id"]),
            ("catalog", catalog_fingerprint, manifest["catalog_fingerprint"]),
        ):
            if wanted is not None and wanted != found:
                raise FslError(
                    f"feature store {path} was made for {what} {found!r}, not {wanted!r}; "
                    f"embed this {what} with `fsl embed` or point to its own store"
                )
        problem = store_problem(path, manifest, full_check)
        if problem:
            raise FslError(
                f"feature store {path} is damaged: {problem}. Run `fsl embed` with the same options to repair it"
            )
        texts = {name: np.load(path / f"text-{name}.npy", mmap_mode="r") for name in manifest["text_variants"]}
        return cls(path, manifest, np.load(path / "ids.npy"), np.load(path / "image.npy", mmap_mode="r"), texts)


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


def _read_manifest(path: Path) -> dict | None:
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


def _array_keys(manifest: dict) -> list[str]:
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
    for key in _array_keys(manifest):
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
    for key in _array_keys(manifest):
        header = npy_header(path / f"{key}.npy")
        wanted = np.dtype("<i8") if key == "ids" else DTYPE
        if header is None or header[1] != wanted:
            return f"{key}.npy is not an array of {wanted} (its header says {header and header[1]})"
    ids = np.load(path / "ids.npy", mmap_mode="r")
    if ids.shape != (manifest["products"],) or not np.all(np.diff(ids) > 0):
        return f"ids.npy must hold {manifest['products']} product ids in increasing order"
    if full_check:  # a value written non-finite has a matching checksum: only reading it tells
        for key in _array_keys(manifest)[1:]:
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


def _holder_of(handle, patience_s: float = 1.0) -> str:
    """Who holds a lock, as its holder wrote it: the holder writes its name just after taking the
    lock, so a reader that comes in between waits a moment rather than naming nobody."""
    deadline = time.monotonic() + patience_s
    while True:
        handle.seek(0)
        who = handle.read().strip()
        if who or time.monotonic() > deadline:
            return who or "another process"
        time.sleep(0.02)


@contextmanager
def file_lock(file: Path, shared: bool = False, wait: bool = True, holder: str = "", what: str = "") -> Iterator[None]:
    """An flock on `file`; the OS drops it when the process dies, even by kill -9. Refused at once
    (wait=False) it is a message naming `what` is locked (default: the store the file is in) and who holds it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a+") as handle:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            who = _holder_of(handle)
            raise FslError(
                f"{what or f'feature store {file.parent}'} is being written by {who}; wait for it to finish "
                "(or stop it), then run the command again"
            ) from None
        if holder:
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def holder_name(who: str) -> str:
    """What a lock's holder writes into it: the command, its pid and host, and since when."""
    return f"{who} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"


def writer_lock(path: Path, rank: int = 0, world_size: int = 1):
    """One writer per store: a second `fsl embed` fails at once, naming the first. The ranks of
    one torchrun job share it (each writes its own chunks)."""
    who = "fsl embed" + (f" rank {rank} of {world_size}" if world_size > 1 else "")
    return file_lock(path / "writer.lock", shared=world_size > 1, wait=False, holder=holder_name(who))


def is_complete(path: Path) -> bool:
    """Whether a store at `path` says it is complete (not yet checked: `FeatureStore.open` does that)."""
    try:
        return bool((_read_manifest(Path(path)) or {}).get("complete"))
    except FslError:
        return False


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


def _say(message: str) -> None:
    print(f"fsl: {message}", file=sys.stderr)


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
    ready = _ready_store(path, catalog, encoder, variants, full_check)
    if ready is not None:  # nothing to write: no lock, so readers never wait on (or stop) one another
        return ready
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise disk_error(error, path) from None
    with writer_lock(path, rank, world_size):
        store = _warm_store(path, catalog, encoder, variants, progress, full_check)
        if store is not None:
            return store
        n_chunks = -(-len(catalog) // chunk_size)
        chunk_dir = path / "chunks"
        chunk_file = lambda i: chunk_dir / f"chunk-{i:05d}.npz"  # noqa: E731
        with file_lock(path / "join.lock"):
            manifest = _start_manifest(path, catalog, encoder, variants, chunk_size, n_chunks)
            if world_size == 1:  # nobody else writes here: leftovers of a killed run can go
                remove_stale_temp_files(chunk_dir)
                remove_stale_temp_files(path)
        mine = [i for i in range(n_chunks) if i % world_size == rank and not chunk_file(i).exists()]
        if mine:
            _embed_chunks(catalog, encoder, variants, mine, chunk_size, chunk_file, batch_size, num_workers, progress)
        if not join:
            return None
        with file_lock(path / "join.lock"):
            if not (_read_manifest(path) or {}).get("complete"):
                if not all(chunk_file(i).exists() for i in range(n_chunks)):
                    return None
                _join_chunks(path, manifest, n_chunks, chunk_size, chunk_file)
    return FeatureStore.open(path, encoder.id, catalog.fingerprint)


def _complete_store(path: Path, full_check: bool) -> tuple[dict | None, str | None]:
    """(the manifest of the complete store at `path`, or None when there is none yet; what is wrong with
    it, or None): the one check behind a warm store read without the lock and a derived one."""
    try:
        manifest = _read_manifest(path)
    except FslError as error:
        return None, str(error)
    if not manifest or not manifest.get("complete"):
        return None, None
    return manifest, store_problem(path, manifest, full_check)


def _open_checked(path: Path, encoder_id: str, catalog_fingerprint: str, full_check: bool) -> FeatureStore:
    if full_check:
        _say(f"verified every byte and value of {path}")
    return FeatureStore.open(path, encoder_id, catalog_fingerprint)


def _ready_store(path: Path, catalog: Catalog, encoder: Encoder, variants: dict, full_check: bool):
    """The store at `path` when it is complete, sound and has every text variant, read without the
    writer lock; None when anything must be written (then embed_catalog takes the lock and looks again)."""
    manifest, problem = _complete_store(path, full_check)
    if manifest is None or problem or any(name not in manifest["text_variants"] for name in variants):
        return None
    if not np.array_equal(np.load(path / "ids.npy"), np.asarray(catalog.ids)):
        return None
    return _open_checked(path, encoder.id, catalog.fingerprint, full_check)


def _warm_store(
    path: Path, catalog: Catalog, encoder: Encoder, variants: dict, progress: bool, full_check: bool
) -> FeatureStore | None:
    """The complete store at `path` with every text variant, or None when it must be (re)built."""
    try:
        manifest = _read_manifest(path)
    except FslError as error:
        _say(f"{error}; rebuilding it")
        (path / "manifest.json").unlink()
        return None
    if not manifest or not manifest.get("complete"):
        return None
    if manifest.get("version") == 1:
        manifest = _upgrade_v1(path, manifest, catalog)
        if manifest is None:
            return None
    problem = store_problem(path, manifest, full_check)
    if problem is None and not np.array_equal(np.load(path / "ids.npy"), np.asarray(catalog.ids)):
        problem = "its ids are not the catalog's"
    if problem:
        _say(f"feature store {path} is damaged ({problem}); rebuilding it")
        write_json(path / "manifest.json", {**manifest, "complete": False, "chunk_size": None})
        return None
    if full_check:
        _say(f"verified every byte of {path} against its sha256 checksums")
    missing = [v for name, v in variants.items() if name not in manifest["text_variants"]]
    if missing:
        _add_text_variants(path, manifest, catalog, encoder, missing, progress)
    return FeatureStore.open(path, encoder.id, catalog.fingerprint)


def _upgrade_v1(path: Path, manifest: dict, catalog: Catalog) -> dict | None:
    """A store of fsl's first version had no checksums: check its shapes and ids, then add them."""
    try:
        ids = np.load(path / "ids.npy")
        shapes = {key: np.load(path / f"{key}.npy", mmap_mode="r").shape for key in _array_keys(manifest)[1:]}
    except (OSError, ValueError) as error:
        _say(f"feature store {path} (version 1) cannot be read ({error}); rebuilding it")
        return None
    dims = {key: manifest["image_dim"] if key == "image" else manifest["text_dim"] for key in shapes}
    if not np.array_equal(ids, np.asarray(catalog.ids)) or any(s != (len(ids), dims[k]) for k, s in shapes.items()):
        _say(f"feature store {path} (version 1) does not fit the catalog; rebuilding it")
        return None
    arrays = {key: array_record(path / f"{key}.npy") for key in _array_keys(manifest)}
    manifest = {**manifest, "version": STORE_VERSION, "dtype": DTYPE.str, "arrays": arrays}
    write_json(path / "manifest.json", manifest)
    _say(f"feature store {path} upgraded to version {STORE_VERSION} (checksums added)")
    return manifest


def _start_manifest(
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
    manifest = _read_manifest(path)
    if manifest != wanted:
        shutil.rmtree(path / "chunks", ignore_errors=True)
        write_npy(path / "ids.npy", np.asarray(catalog.ids, dtype=np.int64))
        write_json(path / "manifest.json", wanted)
    return wanted


def _embed_chunks(catalog, encoder, variants, chunks, chunk_size, chunk_file, batch_size, num_workers, progress):
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
            arrays = {"image": image, **_encode_chunk_texts(encoder, texts, start, stop, bar)}
            with atomic_path(chunk_file(index)) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
    bar.close()


def _encode_chunk_texts(encoder, texts: dict[str, list[str]], start: int, stop: int, bar, step: int = TEXT_STEP):
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


def _check_chunks(path: Path, manifest: dict, n_chunks: int, chunk_size: int, chunk_file) -> None:
    """Every chunk has its rows, its arrays and finite values; a bad one is removed, to be redone."""
    for i in range(n_chunks):
        rows = min(chunk_size, manifest["products"] - i * chunk_size)
        try:
            with np.load(chunk_file(i)) as chunk:
                for key in _array_keys(manifest)[1:]:
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


def _join_chunks(path: Path, manifest: dict, n_chunks: int, chunk_size: int, chunk_file) -> None:
    """Stream the checked chunks into one memory-mappable .npy per feature kind, then mark complete.

    Plain writes, not a memory map: a full disk is then an error to report, not a SIGBUS."""
    _check_chunks(path, manifest, n_chunks, chunk_size, chunk_file)
    rows = manifest["products"]
    keys = _array_keys(manifest)[1:]
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
    arrays = {key: array_record(path / f"{key}.npy") for key in _array_keys(manifest)}
    write_json(path / "manifest.json", {**manifest, "complete": True, "arrays": arrays})
    shutil.rmtree(path / "chunks", ignore_errors=True)


def _add_text_variants(
    path: Path, manifest: dict, catalog: Catalog, encoder: Encoder, variants: list[TextVariant], progress: bool
) -> None:
    for variant in variants:
        features = encoder.encode_texts(catalog.texts(variant.template, variant.mask_column), progress=progress)
        write_npy(path / f"text-{variant.name}.npy", features.astype(DTYPE))
        manifest["text_variants"][variant.name] = {"template": variant.template, "mask_column": variant.mask_column}
        manifest["arrays"][f"text-{variant.name}"] = array_record(path / f"text-{variant.name}.npy")
    write_json(path / "manifest.json", manifest)


def sound_derived_store(path: Path, encoder_id: str, catalog_fingerprint: str, full_check: bool = False):
    """The complete derived store at `path` (aligned, adapted), or None when it must be derived: none
    yet, or damaged (said, and marked for deriving again). full_check reads every byte and value."""
    manifest, problem = _complete_store(path, full_check)
    if problem is None:
        return None if manifest is None else _open_checked(path, encoder_id, catalog_fingerprint, full_check)
    _say(f"feature store {path} is damaged ({problem}); deriving it again")
    with writer_lock(path):
        (path / "manifest.json").unlink(missing_ok=True)
    return None


def derive_store(
    source: FeatureStore,
    path: Path,
    encoder_id: str,
    image_dim: int,
    text_dim: int,
    transform: Callable[[str, np.ndarray, int], np.ndarray],
    extra: dict | None = None,
    block: int = 65_536,
) -> FeatureStore:
    """A store whose features are a function of another store's (projected into an aligned space, or
    the image rows recomputed by an adapted top): same ids and text variants, each array transformed
    block by block (`transform(kind, rows, first row)`) and written
    atomically, the manifest (with checksums) written last, under the store's writer lock."""
    path.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        manifest = {key: value for key, value in source.manifest.items() if key not in ("arrays", "complete")}
        manifest.update(
            {
                "encoder_id": encoder_id,
                "image_dim": image_dim,
                "text_dim": text_dim,
                "complete": False,
                "derived_from": source.encoder_id,
                **(extra or {}),
            }
        )
        write_npy(path / "ids.npy", np.asarray(source.ids, dtype=np.int64))
        arrays = {"image": (source.image, image_dim)}
        arrays.update({f"text-{name}": (values, text_dim) for name, values in source.texts.items()})
        for key, (values, dim) in arrays.items():
            with atomic_path(path / f"{key}.npy") as tmp, open(tmp, "wb") as f:
                header = {
                    "descr": np.lib.format.dtype_to_descr(DTYPE),
                    "fortran_order": False,
                    "shape": (len(source.ids), dim),
                }
                np.lib.format.write_array_header_1_0(f, header)
                for start in range(0, len(source.ids), block):
                    out = np.ascontiguousarray(
                        transform("image" if key == "image" else "text", values[start : start + block], start), DTYPE
                    )
                    bad = non_finite_rows(out)
                    if len(bad):
                        raise FslError(
                            f"deriving {path} from {source.path} gave NaN or infinite {key} features (e.g. product "
                            f"{source.ids[start + bad[0]]}); nothing was marked complete. Check the source with "
                            "`fsl embed --verify` (offline encoder), then run the command again"
                        )
                    f.write(out.tobytes())
        manifest["arrays"] = {key: array_record(path / f"{key}.npy") for key in _array_keys(manifest)}
        write_json(path / "manifest.json", {**manifest, "complete": True})
    return FeatureStore.open(path, encoder_id, source.catalog_fingerprint)

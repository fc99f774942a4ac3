"""Features of files that are not in a catalog (a user's support and query photos, their texts),
cached by content: the key is the SHA-256 of the file's bytes (or of the text) and the encoder's id,
so a re-run embeds nothing, a changed file is embedded again, and a renamed or copied file is not.
A damaged entry is embedded again, never trusted.

A hit never builds the encoder: `fsl predict` on a warm cache loads no weights."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fsl.errors import FslError
from fsl.files import ARRAY_READ_ERRORS, atomic_path, write_json
from fsl.paths import content_cache_dir

logger = logging.getLogger(__name__)

SMALL_BATCH = 64  # below this many photos, decoding in worker processes costs more than it saves


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(f"text:{text}".encode()).hexdigest()


UNIT_NORM_TOLERANCE = 1e-3  # an entry's length may differ from 1 by float32 rounding, never more
ENTRY_KEY = "vector"  # the one array of an entry's .npz
DIMS_FILE = "dims.json"  # the vector length of each kind, recorded by the first entries written


class ContentCache:
    """One encoder's features of files and texts, one small .npz per content digest (written
    atomically, so two processes sharing the cache never read half a file). Every entry is checked
    when read: its zip CRC-32 (a flipped byte), then one float32 unit vector of the encoder's length,
    finite. A bad entry (what a crash, a full disk or a hand edit leaves) is embedded again, with a
    note, never used."""

    def __init__(self, encoder, root: str | os.PathLike | None = None):
        self.encoder = encoder  # an Encoder or LazyEncoder: built only on a miss
        self.folder = content_cache_dir(encoder.id, root)
        self.hits = self.misses = self.repaired = 0

    def entry(self, digest: str) -> Path:
        return self.folder / f"{digest}.npz"

    def _dims(self) -> dict[str, int]:
        """{"image": n, "text": m} as recorded by this cache's first writes ({} before any)."""
        path = self.folder / DIMS_FILE
        try:
            dims = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            return {}
        ok = isinstance(dims, dict) and all(k in ("image", "text") and type(v) is int for k, v in dims.items())
        return dims if ok else {}

    def _record_dim(self, kind: str, dim: int) -> None:
        dims = self._dims()
        if dims.get(kind) != dim:
            write_json(self.folder / DIMS_FILE, {**dims, kind: dim})

    def _read(self, digest: str, kind: str, dim: int | None) -> np.ndarray | None:
        """The entry of `digest`, or None when there is none or it is bad (then said, to be redone);
        `dim` is known whenever an entry exists (_cached)."""
        path = self.entry(digest)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                vector = entry[ENTRY_KEY]  # read whole, so the zip's CRC-32 is checked
            problem = entry_problem(vector, dim)
        except ARRAY_READ_ERRORS as error:
            problem = f"it cannot be read ({type(error).__name__})"
        if problem is None:
            return vector
        logger.warning(f"the cached {kind} features {path} are bad ({problem}); embedding again")
        self.repaired += 1
        return None

    def _cached(self, digests: list[str], kind: str) -> tuple[list[np.ndarray | None], list[int]]:
        dim = self._dims().get(kind)
        if dim is None and any(self.entry(d).is_file() for d in digests):
            dim = int(getattr(self.encoder, f"{kind}_dim"))  # entries older than dims.json: ask the encoder once
            self._record_dim(kind, dim)
        found = [self._read(d, kind, dim) for d in digests]
        missing = [i for i, row in enumerate(found) if row is None]
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        return found, missing

    def _store(self, kind: str, digests: list[str], found: list, missing: list[int], fresh: np.ndarray) -> np.ndarray:
        """The rows of every digest, the `fresh` ones (of the `missing` digests) written to the cache."""
        for i, row in zip(missing, fresh):
            found[i] = row
            with atomic_path(self.entry(digests[i])) as tmp, open(tmp, "wb") as f:
                np.savez(f, **{ENTRY_KEY: row})
        if len(fresh):
            self._record_dim(kind, int(fresh.shape[1]))
        return np.stack(found).astype(np.float32)

    def images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """[n, image_dim] unit vectors of photo files (each already checked readable by the caller)."""
        if not paths:
            raise FslError("no photos to embed")
        digests = [file_digest(p) for p in paths]
        found, missing = self._cached(digests, "image")
        fresh = np.empty((0, 0), dtype=np.float32)
        if missing:
            workers = 0 if len(missing) < SMALL_BATCH else None
            fresh = self.encoder.encode_images([paths[i] for i in missing], num_workers=workers, progress=False)
        return self._store("image", digests, found, missing, fresh)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """[n, text_dim] unit vectors of texts."""
        digests = [text_digest(t) for t in texts]
        found, missing = self._cached(digests, "text")
        fresh = np.empty((0, 0), dtype=np.float32)
        if missing:
            fresh = self.encoder.encode_texts([texts[i] for i in missing], progress=False)
        return self._store("text", digests, found, missing, fresh)


def entry_problem(vector: np.ndarray, dim: int) -> str | None:
    """What is wrong with a cached feature vector, or None: it must be one float32 unit vector of
    `dim` finite values."""
    if vector.dtype != np.float32 or vector.ndim != 1 or len(vector) == 0:
        return f"{vector.dtype} of shape {vector.shape}, expected a float32 vector"
    if len(vector) != dim:
        return f"{len(vector)} values, expected {dim}"
    if not np.isfinite(vector).all():
        return "NaN or infinite values"
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if abs(norm - 1) > UNIT_NORM_TOLERANCE:
        return f"length {norm:.4g}, expected a unit vector"
    return None

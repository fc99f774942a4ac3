"""Features of files that are not in a catalog (a user's support and query photos, their texts),
cached by content: the key is the SHA-256 of the file's bytes (or of the text) and the encoder's id,
so a re-run embeds nothing, a changed file is embedded again, and a renamed or copied file is not.

A hit never builds the encoder: `fsl predict` on a warm cache loads no weights."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fsl.errors import FslError
from fsl.files import write_npy
from fsl.paths import content_cache_dir

SMALL_BATCH = 64  # below this many photos, decoding in worker processes costs more than it saves


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(f"text:{text}".encode()).hexdigest()


class ContentCache:
    """One encoder's features of files and texts, one small .npy per content digest (written
    atomically, so two processes sharing the cache never read half a file)."""

    def __init__(self, encoder, root: str | os.PathLike | None = None):
        self.encoder = encoder  # an Encoder or LazyEncoder: built only on a miss
        self.folder = content_cache_dir(encoder.id, root)
        self.hits = self.misses = 0

    def _read(self, digest: str) -> np.ndarray | None:
        path = self.folder / f"{digest}.npy"
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # a damaged entry is embedded again, not trusted
            return None

    def _lookup(self, digests: list[str]) -> tuple[list[np.ndarray | None], list[int]]:
        found = [self._read(d) for d in digests]
        missing = [i for i, row in enumerate(found) if row is None]
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        return found, missing

    def images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """[n, image_dim] unit vectors of photo files (each already checked readable by the caller)."""
        if not paths:
            raise FslError("no photos to embed")
        digests = [file_digest(p) for p in paths]
        found, missing = self._lookup(digests)
        if missing:
            workers = 0 if len(missing) < SMALL_BATCH else None
            fresh = self.encoder.encode_images([paths[i] for i in missing], num_workers=workers, progress=False)
            for i, row in zip(missing, fresh):
                found[i] = row
                write_npy(self.folder / f"{digests[i]}.npy", row)
        return np.stack(found).astype(np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """[n, text_dim] unit vectors of texts."""
        digests = [text_digest(t) for t in texts]
        found, missing = self._lookup(digests)
        if missing:
            fresh = self.encoder.encode_texts([texts[i] for i in missing], progress=False)
            for i, row in zip(missing, fresh):
                found[i] = row
                write_npy(self.folder / f"{digests[i]}.npy", row)
        return np.stack(found).astype(np.float32)

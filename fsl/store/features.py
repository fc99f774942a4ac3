"""The feature store: every product's image and text embeddings, computed once, on disk, read
memory-mapped so memory does not grow with the catalog, and refused when made by another encoder or
catalog or damaged. Writing it is fsl/store/embed.py's job; its on-disk schema and checks are
fsl/store/manifest.py's; a store computed from another's is fsl/store/derive.py's."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsl.data.catalog import DEFAULT_TEXT_TEMPLATE
from fsl.errors import FslError
from fsl.files import (
    ARRAY_READ_ERRORS,
    atomic_path,
)
from fsl.store.manifest import DTYPE, read_manifest, store_problem

logger = logging.getLogger(__name__)


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
        manifest = read_manifest(path)
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


def open_checked(path: Path, encoder_id: str, catalog_fingerprint: str, full_check: bool) -> FeatureStore:
    if full_check:
        logger.info(f"verified every byte and value of {path}")
    return FeatureStore.open(path, encoder_id, catalog_fingerprint)

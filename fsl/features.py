"""FeatureStore: embed a catalog once, keep the vectors on disk, load them memory-mapped.

A store lives under `<root>/<encoder>-<catalog fingerprint>/` and is written in chunks: each
chunk file is written atomically, so an interrupted `fsl embed` resumes from the last finished
chunk, and chunk i can be done by rank i mod world size. When every chunk is there the chunks
are joined into one `.npy` per feature kind and the manifest is marked complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from fsl import FslError
from fsl.catalog import DEFAULT_TEXT_TEMPLATE, Catalog
from fsl.encoder import Encoder
from fsl.io import CACHE_DIR, atomic_path, write_json, write_npy

STORE_VERSION = 1
DEFAULT_ROOT = CACHE_DIR / "features"


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
            raise FslError(f"{self.path} has no text features {variant!r}; it has {sorted(self.texts)}. "
                           "Run `fsl embed` with that text variant.")
        return self.texts[variant]

    @classmethod
    def open(cls, path: str | os.PathLike, encoder_id: str | None = None,
             catalog_fingerprint: str | None = None) -> "FeatureStore":
        """Load a complete store; refuse one made by another encoder or from another catalog."""
        path = Path(path)
        manifest = _read_manifest(path)
        if manifest is None or not manifest.get("complete"):
            raise FslError(f"{path} holds no complete feature store; run `fsl embed` first")
        for what, wanted, found in (("encoder", encoder_id, manifest["encoder_id"]),
                                    ("catalog", catalog_fingerprint, manifest["catalog_fingerprint"])):
            if wanted is not None and wanted != found:
                raise FslError(f"feature store {path} was made for {what} {found!r}, not {wanted!r}; "
                               f"embed this {what} with `fsl embed` or point to its own store")
        texts = {name: np.load(path / f"text-{name}.npy", mmap_mode="r") for name in manifest["text_variants"]}
        return cls(path, manifest, np.load(path / "ids.npy"), np.load(path / "image.npy", mmap_mode="r"), texts)


def _read_manifest(path: Path) -> dict | None:
    file = path / "manifest.json"
    return json.loads(file.read_text()) if file.is_file() else None


def store_path(root: str | os.PathLike, encoder_id: str, catalog_fingerprint: str) -> Path:
    """The store's key: encoder id and catalog content, so a changed catalog gets a new store."""
    return Path(root) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', encoder_id)}-{catalog_fingerprint}"


def embed_catalog(catalog: Catalog, encoder: Encoder, root: str | os.PathLike = DEFAULT_ROOT,
                  text_variants=DEFAULT_TEXT_VARIANTS, chunk_size: int = 512, batch_size: int = 32,
                  num_workers: int | None = None, rank: int = 0, world_size: int = 1,
                  progress: bool = True) -> FeatureStore | None:
    """Embed every product once (images and each text variant); resumable, cached by content.

    Returns the store, or None when this rank is done but other ranks' chunks are missing.
    """
    path = store_path(root, encoder.id, catalog.fingerprint)
    variants = {v.name: v for v in text_variants}
    manifest = _read_manifest(path)
    if manifest and manifest.get("complete"):
        missing = [v for name, v in variants.items() if name not in manifest["text_variants"]]
        if missing:
            _add_text_variants(path, manifest, catalog, encoder, missing, progress)
        return FeatureStore.open(path, encoder.id, catalog.fingerprint)

    n_chunks = -(-len(catalog) // chunk_size)
    if manifest is None or manifest["chunk_size"] != chunk_size or set(manifest["text_variants"]) != set(variants):
        manifest = {
            "version": STORE_VERSION, "encoder_id": encoder.id, "catalog_fingerprint": catalog.fingerprint,
            "catalog_root": str(catalog.root), "products": len(catalog), "chunk_size": chunk_size,
            "chunks": n_chunks, "image_dim": encoder.image_dim, "text_dim": encoder.text_dim,
            "text_variants": {n: {"template": v.template, "mask_column": v.mask_column} for n, v in variants.items()},
            "complete": False,
        }
        shutil.rmtree(path / "chunks", ignore_errors=True)
        write_json(path / "manifest.json", manifest)
        write_npy(path / "ids.npy", np.asarray(catalog.ids, dtype=np.int64))

    chunk_dir = path / "chunks"
    chunk_file = lambda i: chunk_dir / f"chunk-{i:05d}.npz"  # noqa: E731
    mine = [i for i in range(n_chunks) if i % world_size == rank and not chunk_file(i).exists()]
    if mine:
        _embed_chunks(catalog, encoder, variants, mine, chunk_size, chunk_file, batch_size, num_workers, progress)
    if not all(chunk_file(i).exists() for i in range(n_chunks)):
        return None
    _join_chunks(path, manifest, n_chunks, chunk_file)
    return FeatureStore.open(path, encoder.id, catalog.fingerprint)


def _embed_chunks(catalog, encoder, variants, chunks, chunk_size, chunk_file, batch_size, num_workers, progress):
    """Images stream through one DataLoader over all pending chunks; each full chunk is saved."""
    paths = catalog.image_paths
    texts = {name: catalog.texts(v.template, v.mask_column) for name, v in variants.items()}
    spans = [(i * chunk_size, min((i + 1) * chunk_size, len(catalog))) for i in chunks]
    pending_paths = [p for start, stop in spans for p in paths[start:stop]]
    bar = tqdm(total=len(pending_paths), desc="embedding", unit="product", disable=not progress)
    buffered: list[np.ndarray] = []
    n_buffered = 0
    queue = list(zip(chunks, spans))
    for pixels in encoder.image_batches(pending_paths, batch_size, num_workers):
        buffered.append(encoder.embed_pixels(pixels))
        n_buffered += len(pixels)
        bar.update(len(pixels))
        while queue and n_buffered >= queue[0][1][1] - queue[0][1][0]:
            index, (start, stop) = queue.pop(0)
            stacked = np.concatenate(buffered)
            image, rest = stacked[: stop - start], stacked[stop - start:]
            buffered, n_buffered = [rest], len(rest)
            arrays = {"image": image}
            for name in variants:
                arrays[f"text-{name}"] = encoder.encode_texts(texts[name][start:stop], progress=False)
            chunk_file(index).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(chunk_file(index)) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
    bar.close()


def _join_chunks(path: Path, manifest: dict, n_chunks: int, chunk_file) -> None:
    """Stream the chunks into one memory-mappable .npy per feature kind, then mark complete."""
    keys = ["image"] + [f"text-{name}" for name in manifest["text_variants"]]
    for key in keys:
        dim = manifest["image_dim"] if key == "image" else manifest["text_dim"]
        with atomic_path(path / f"{key}.npy") as tmp:
            out = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(manifest["products"], dim))
            row = 0
            for i in range(n_chunks):
                with np.load(chunk_file(i)) as chunk:
                    block = chunk[key]
                out[row:row + len(block)] = block
                row += len(block)
            out.flush()
            del out
    write_json(path / "manifest.json", {**manifest, "complete": True})
    shutil.rmtree(path / "chunks", ignore_errors=True)


def _add_text_variants(path: Path, manifest: dict, catalog: Catalog, encoder: Encoder,
                       variants: list[TextVariant], progress: bool) -> None:
    for variant in variants:
        features = encoder.encode_texts(catalog.texts(variant.template, variant.mask_column), progress=progress)
        write_npy(path / f"text-{variant.name}.npy", features)
        manifest["text_variants"][variant.name] = {"template": variant.template, "mask_column": variant.mask_column}
    write_json(path / "manifest.json", manifest)

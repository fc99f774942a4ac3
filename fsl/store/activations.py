"""Cached activations: the frozen bottom of the offline image tower run once per product, its output at
the cut kept beside the offline feature store (float16, [products, C, 7, 7]), so adapting the top
never decodes a photo or runs the bottom again. Written in place into a partial file with a progress
record after every chunk (a killed run resumes), renamed into place when complete."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from fsl.data.catalog import Catalog
from fsl.encoders.adapted import check_cut, image_bottom, top_features
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.files import read_json, write_json
from fsl.paths import FEATURES_ROOT, store_path
from fsl.store.features import writer_lock
from fsl.store.rows import cached_by_id

DTYPE = np.float16
CHUNK = 256  # products between progress records


def activations_path(catalog: Catalog, cut: int, store_root: str | os.PathLike = FEATURES_ROOT) -> Path:
    """Beside the offline store of this catalog: activations-cut<cut>.npy, one row per store product."""
    return store_path(store_root, OfflineEncoder.id, catalog.fingerprint) / f"activations-cut{check_cut(cut)}.npy"


@torch.inference_mode()
def bottom_activations(encoder: OfflineEncoder, pixels: torch.Tensor, cut: int) -> np.ndarray:
    return image_bottom(encoder.image_model, pixels.to(encoder.device), cut).cpu().numpy().astype(DTYPE)


def cached_activations(
    catalog: Catalog,
    encoder: OfflineEncoder,
    cut: int,
    store_root: str | os.PathLike = FEATURES_ROOT,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The catalog's activations at the cut, memory-mapped, rows in catalog (= store) order; computed
    (resumably) the first time."""
    final = activations_path(catalog, cut, store_root)
    if final.is_file():
        return np.load(final, mmap_mode="r")
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".partial.npy")
    record_file = final.with_suffix(".progress.json")
    with writer_lock(final.parent):
        if final.is_file():  # another process finished it while we waited
            return np.load(final, mmap_mode="r")
        probe = next(iter(encoder.image_batches(catalog.image_paths[:1], 1, 0)))
        shape = (len(catalog), *bottom_activations(encoder, probe, cut).shape[1:])
        record = read_json(record_file, "activations progress") if record_file.is_file() and partial.is_file() else {}
        done = record.get("rows_done", 0) if record.get("shape") == list(shape) else 0
        if done:
            print(f"fsl: resuming the cached activations at product {done} of {shape[0]}", file=sys.stderr)
            out = np.lib.format.open_memmap(partial, mode="r+")
        else:
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=DTYPE, shape=shape)
        paths = catalog.image_paths
        bar = tqdm(total=shape[0], initial=done, desc=f"activations at cut {cut}", unit="photo", disable=not progress)
        for start in range(done, shape[0], CHUNK):
            stop = min(start + CHUNK, shape[0])
            row = start
            for pixels in encoder.image_batches(paths[start:stop], batch_size, num_workers):
                out[row : row + len(pixels)] = bottom_activations(encoder, pixels, cut)
                row += len(pixels)
                bar.update(len(pixels))
            out.flush()
            write_json(record_file, {"rows_done": stop, "shape": list(shape), "cut": cut})
        bar.close()
        del out
        os.replace(partial, final)
        record_file.unlink(missing_ok=True)
    if not final.is_file():
        raise FslError(f"the cached activations at {final} were not written")
    return np.load(final, mmap_mode="r")


def view_activations(
    catalog: Catalog,
    encoder: OfflineEncoder,
    cut: int,
    view: str,
    render: Callable[[Image.Image], Image.Image],
    product_ids: np.ndarray,
    store_root: str | os.PathLike = FEATURES_ROOT,
    progress: bool = True,
) -> np.ndarray:
    """The activations at the cut of a view of some products' photos (e.g. `rerendered-v1`: the
    re-rendered queries of fsl/episodes/shift.py), rows in `product_ids` order; each photo's view is run
    through the bottom once and kept beside the offline store, so every adapted tower of that cut
    reuses it."""
    cache = activations_path(catalog, cut, store_root).with_name(f"{view}-activations-cut{cut}.npz")

    def through_bottom(missing: np.ndarray) -> np.ndarray:
        paths = catalog.products.set_index("id").loc[missing, "image_path"]
        if paths.isna().any():
            raise FslError(f"products {paths.index[paths.isna()][:5].tolist()} have no photo to render as {view}")
        print(
            f"fsl: the {view} view of {len(missing)} photo(s) through the frozen bottom, once ({cache})",
            file=sys.stderr,
        )
        batches = encoder.image_batches([str(p) for p in paths], 32, None, render)
        return np.concatenate(
            [bottom_activations(encoder, pixels, cut) for pixels in tqdm(batches, desc=view, disable=not progress)]
        )

    ids, maps = cached_by_id(cache, "activations", product_ids, through_bottom)
    return maps[np.searchsorted(ids, product_ids)]


def adapted_view_features(
    store, catalog: Catalog, encoder, product_ids: np.ndarray, view: str, render: Callable, progress: bool = True
) -> np.ndarray:
    """A view's image features through an adapted tower (`encoder`: an AdaptedEncoder, or the lazy one
    that builds it): the view's cached activations, then the adapted top; unit vectors."""
    adapted = encoder.load(images=False) if hasattr(encoder, "load") else encoder
    cut = adapted.adaptation["cut"]
    maps = view_activations(catalog, adapted.base, cut, view, render, product_ids, Path(store.path).parent, progress)
    return F.normalize(top_features(adapted.top, maps, np.arange(len(maps))), dim=-1).numpy()

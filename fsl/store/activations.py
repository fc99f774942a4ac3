"""Cached activations: the frozen bottom of a tower cut in two run once per product, its output at the
cut kept beside the tower's feature store (float16: the offline image tower's [products, C, 7, 7] maps,
a CLIP tower's [products, tokens, width]), so adapting the top never decodes a photo or runs the bottom
again. Written in place into a partial file with a progress record after every chunk (a killed run
resumes), renamed into place when complete with a sha256 record; checked whole whenever opened, and
computed again, saying so, when damaged."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from fsl.data.catalog import Catalog
from fsl.encoders.adapted import check_cut, check_text_cut, image_bottom, text_bottom, top_features, tops_by_tower
from fsl.encoders.base import Encoder
from fsl.encoders.clip import ClipEncoder
from fsl.encoders.clip_cut import check_clip_cut, clip_image_bottom, clip_text_bottom, text_end_positions
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.files import check_record, read_json, write_json
from fsl.paths import FEATURES_ROOT, store_path
from fsl.store.features import TextVariant
from fsl.store.locks import file_lock, holder_name
from fsl.store.manifest import RECORD_TYPES, array_record, non_finite_rows, npy_header
from fsl.store.rows import cached_by_id

logger = logging.getLogger(__name__)

DTYPE = np.float16
CHUNK = 256  # products between progress records


# The towers a cache can hold the bottom of --------------------------------------------------------


class TowerCut:
    """What every cut tower shares: the encoder beside whose store its cache sits, and (a text tower)
    its variant's product texts, made once since every chunk reads its slice."""

    encoder: Encoder
    text_variant: TextVariant | None = None
    _texts: list[str] | None = None

    @property
    def encoder_id(self) -> str:
        return self.encoder.id

    def texts(self, catalog: Catalog) -> list[str]:
        if self._texts is None:
            self._texts = catalog.texts(self.text_variant.template, self.text_variant.mask_column)
        return self._texts


def offline_activations_file(cut: int) -> str:
    return f"activations-cut{check_cut(cut)}.npy"


@dataclass
class OfflineImageCut(TowerCut):
    """The offline image tower at `cut` MBConv blocks from its end: photos in, [C, 7, 7] maps out."""

    encoder: OfflineEncoder
    cut: int
    what = "photo"

    @property
    def file_name(self) -> str:
        return offline_activations_file(self.cut)

    def shape(self, catalog: Catalog) -> tuple[int, ...]:
        """One product's activations at the cut: the bottom run on a blank photo."""
        return activation_shape(self.encoder, self.cut)

    def inputs(self, catalog: Catalog, start: int, stop: int, batch_size: int, num_workers: int | None) -> Iterator:
        return iter(self.encoder.image_batches(catalog.image_paths[start:stop], batch_size, num_workers))

    def bottom(self, pixels: torch.Tensor) -> np.ndarray:
        return bottom_activations(self.encoder, pixels, self.cut)


@dataclass
class OfflineTextCut(TowerCut):
    """The offline text tower (MiniLM) at `cut` layers from its end: a text variant's product texts in,
    [tokens, 384] out (cut off after the catalog's longest text, zeros at padding)."""

    encoder: OfflineEncoder
    cut: int
    text_variant: TextVariant
    what = "text"

    def __post_init__(self):
        check_text_cut(self.cut)
        self._length: int | None = None

    @property
    def file_name(self) -> str:
        return f"text-tokens-cut{self.cut}-{self.text_variant.name}.npy"

    def shape(self, catalog: Catalog) -> tuple[int, ...]:
        if self._length is None:
            tokenizer, limit = self.encoder.text_model.tokenizer, self.encoder.text_model.max_seq_length
            ids = tokenizer(self.texts(catalog), truncation=True, max_length=limit)["input_ids"]
            self._length = max(map(len, ids), default=1)
        return (self._length, self.encoder.text_dim)

    def inputs(self, catalog: Catalog, start: int, stop: int, batch_size: int, num_workers: int | None) -> Iterator:
        tokenizer = self.encoder.text_model.tokenizer
        texts = self.texts(catalog)[start:stop]
        for i in range(0, len(texts), batch_size):
            yield tokenizer(texts[i : i + batch_size], padding="max_length", truncation=True,
                            max_length=self._length, return_tensors="pt")["input_ids"]  # fmt: skip

    @torch.inference_mode()
    def bottom(self, token_ids: torch.Tensor) -> np.ndarray:
        mask = (token_ids != self.encoder.text_model.tokenizer.pad_token_id).long()
        model, device = self.encoder.text_model, self.encoder.device
        return text_bottom(model, token_ids.to(device), mask.to(device), self.cut).cpu().numpy().astype(DTYPE)


def tower_cut(encoder: Encoder, tower: str, cut: int, text_variant: TextVariant | None = None):
    """What the cache needs of one of `encoder`'s towers cut at `cut` (a text tower: of one text variant)."""
    if isinstance(encoder, OfflineEncoder):
        return OfflineImageCut(encoder, cut) if tower == "image" else OfflineTextCut(encoder, cut, text_variant)
    return ClipCut(encoder, tower, cut, text_variant if tower == "text" else None)


@dataclass
class ClipCut(TowerCut):
    """A CLIP tower at `cut` transformer blocks from its end: photos in, or a text variant's product
    texts, and [tokens, width] out (texts: cut off after the catalog's longest, zeros after each end)."""

    encoder: ClipEncoder
    tower: str
    cut: int
    text_variant: TextVariant | None = None

    def __post_init__(self):
        check_clip_cut(self.encoder.model, self.tower, self.cut)
        if (self.tower == "text") != (self.text_variant is not None):
            raise FslError("a CLIP text tower's cache is of one text variant; an image tower's of none")
        self.what = "photo" if self.tower == "image" else "text"
        self._length: int | None = None

    @property
    def file_name(self) -> str:
        variant = "" if self.text_variant is None else f"-{self.text_variant.name}"
        return f"{self.tower}-tokens-cut{self.cut}{variant}.npy"

    def token_ids(self, catalog: Catalog, start: int, stop: int) -> torch.Tensor:
        return self.encoder.tokenizer(self.texts(catalog)[start:stop])

    def text_length(self, catalog: Catalog) -> int:
        """The tokens kept per text: up to the catalog's longest text's end-of-text token."""
        if self._length is None:
            model, step = self.encoder.model, 4096
            ends = [int(text_end_positions(model, self.token_ids(catalog, s, s + step)).max())
                    for s in range(0, len(catalog), step)]  # fmt: skip
            self._length = max(ends, default=0) + 1
        return self._length

    def shape(self, catalog: Catalog) -> tuple[int, ...]:
        model = self.encoder.model
        if self.tower == "text":
            return (self.text_length(catalog), model.transformer.width)
        pixels = self.encoder.image_transform(Image.new("RGB", (224, 224), "white")).unsqueeze(0)
        return tuple(self.bottom(pixels).shape[1:])

    def inputs(self, catalog: Catalog, start: int, stop: int, batch_size: int, num_workers: int | None) -> Iterator:
        if self.tower == "image":
            return iter(self.encoder.image_batches(catalog.image_paths[start:stop], batch_size, num_workers))
        ids = self.token_ids(catalog, start, stop)
        return iter(ids[i : i + batch_size] for i in range(0, len(ids), batch_size))

    @torch.inference_mode()
    def bottom(self, batch: torch.Tensor) -> np.ndarray:
        model, device = self.encoder.model, self.encoder.device
        if self.tower == "image":
            return clip_image_bottom(model, batch.to(device), self.cut).cpu().numpy().astype(DTYPE)
        return clip_text_bottom(model, batch.to(device), self.cut, self._length).cpu().numpy().astype(DTYPE)


def activations_path(catalog: Catalog, cut: int, store_root: str | os.PathLike = FEATURES_ROOT) -> Path:
    """Beside the offline store of this catalog: activations-cut<cut>.npy, one row per store product."""
    return store_path(store_root, OfflineEncoder.id, catalog.fingerprint) / offline_activations_file(cut)


def cut_path(catalog: Catalog, tower: TowerCut, store_root: str | os.PathLike = FEATURES_ROOT) -> Path:
    """Beside the store of the tower's encoder for this catalog: its file, one row per store product."""
    return store_path(store_root, tower.encoder_id, catalog.fingerprint) / tower.file_name


@torch.inference_mode()
def bottom_activations(encoder: OfflineEncoder, pixels: torch.Tensor, cut: int) -> np.ndarray:
    return image_bottom(encoder.image_model, pixels.to(encoder.device), cut).cpu().numpy().astype(DTYPE)


def activations_lock(path: Path):
    """One writer per activations file, apart from the store's own lock: reading the store (`fsl eval`,
    `fsl sweep`, the demo) never waits on the caching, which takes minutes."""
    return file_lock(path.with_suffix(".lock"), wait=False, holder=holder_name("fsl adapt (caching activations)"),
                     what=f"the cached activations {path}")  # fmt: skip


def activation_shape(encoder: OfflineEncoder, cut: int) -> tuple[int, ...]:
    """One product's activations at the cut ([C, 7, 7]): the bottom run on a blank photo."""
    pixels = encoder.image_transform(Image.new("RGB", (224, 224), "white")).unsqueeze(0)
    return bottom_activations(encoder, pixels, cut).shape[1:]


def activations_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a cached activations file, or None: its header (float16, `shape`: one row per
    catalog product, the channels at the cut), its size and sha256 against its record, and its values
    (finite: NaN here would make NaN features). Every byte is read each time (about 0.3 s for the
    180 MB of the whole catalog, beside jobs of minutes), so no damage goes unseen."""
    header = npy_header(path)
    if header is None or header[1] != DTYPE or tuple(header[0]) != shape:
        return f"its header says {header and header[0]} of {header and header[1]}, expected {shape} of float16"
    record_file = path.with_suffix(".json")
    try:
        record = read_json(record_file, "activations record") if record_file.is_file() else None
        if record is not None:
            check_record(record, RECORD_TYPES, record_file, "activations record", "")
    except FslError:
        return f"its record {record_file.name} is damaged"
    if record is not None:
        if path.stat().st_size != record["bytes"]:
            return f"it has {path.stat().st_size} bytes, its record says {record['bytes']} (truncated or replaced)"
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != record["sha256"]:
                return "it does not match its sha256 checksum"
    try:
        bad = non_finite_rows(np.load(path, mmap_mode="r"))
    except (OSError, ValueError) as error:
        return f"it cannot be read ({error})"
    if len(bad):
        return f"{len(bad)} product(s) have NaN or infinite activations (e.g. row {bad[0]})"
    if record is None:  # written before records were: checked whole just now, so recorded now
        write_json(record_file, array_record(path))
    return None


def cached_activations(
    catalog: Catalog,
    encoder: OfflineEncoder,
    cut: int,
    store_root: str | os.PathLike = FEATURES_ROOT,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The catalog's offline image activations at the cut (cached_tower)."""
    return cached_tower(catalog, OfflineImageCut(encoder, cut), store_root, batch_size, num_workers, progress)


def cached_tower(
    catalog: Catalog,
    tower: TowerCut,
    store_root: str | os.PathLike = FEATURES_ROOT,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The catalog's activations at a tower's cut, memory-mapped, rows in catalog (= store) order;
    computed (resumably) the first time, checked every time (activations_problem) and computed again,
    with a note, when damaged."""
    final = cut_path(catalog, tower, store_root)
    shape = (len(catalog), *tower.shape(catalog))
    sound = _sound(final, shape)
    if sound is not None:
        return sound
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".partial.npy")
    record_file = final.with_suffix(".progress.json")
    with activations_lock(final):
        if final.is_file():  # another process finished it while we waited
            return np.load(final, mmap_mode="r")
        record = read_json(record_file, "activations progress") if record_file.is_file() and partial.is_file() else {}
        done = record.get("rows_done", 0) if record.get("shape") == list(shape) else 0
        if done:
            logger.info(f"resuming the cached activations at product {done} of {shape[0]}")
            out = np.lib.format.open_memmap(partial, mode="r+")
        else:
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=DTYPE, shape=shape)
        logger.info(
            f"caching the activations at cut {tower.cut} of {shape[0] - done} {tower.what}(s), once ({final}); "
            "the store stays readable meanwhile (fsl eval, sweep, demo). The expected time follows the first chunk"
        )
        bar = tqdm(total=shape[0], initial=done, desc=f"activations at cut {tower.cut}", unit=tower.what,
                   disable=None if progress else True)  # fmt: skip
        started = time.perf_counter()
        for start in range(done, shape[0], CHUNK):
            stop = min(start + CHUNK, shape[0])
            row = start
            for batch in tower.inputs(catalog, start, stop, batch_size, num_workers):
                out[row : row + len(batch)] = tower.bottom(batch)
                row += len(batch)
                bar.update(len(batch))
            out.flush()
            write_json(record_file, {"rows_done": stop, "shape": list(shape), "cut": tower.cut})
            if start == done and stop < shape[0]:
                rate = (stop - done) / (time.perf_counter() - started)
                logger.info(
                    f"{rate:.1f} {tower.what}s/s: about {(shape[0] - stop) / rate / 60:.0f} min more for the "
                    f"other {shape[0] - stop} (resumable: a stopped run goes on from its last chunk)"
                )
        bar.close()
        del out
        write_json(final.with_suffix(".json"), array_record(partial))
        os.replace(partial, final)
        record_file.unlink(missing_ok=True)
    return np.load(final, mmap_mode="r")  # recorded from these very bytes: no second reading


def _sound(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The activations at `path`, memory-mapped, or None when there are none or they are damaged
    (then said, and removed so that they are computed again)."""
    if not path.is_file():
        return None
    problem = activations_problem(path, shape)
    if problem is None:
        return np.load(path, mmap_mode="r")
    logger.warning(f"the cached activations {path} are damaged ({problem}); computing them again")
    with activations_lock(path):
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
    return None


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
        logger.info(f"the {view} view of {len(missing)} photo(s) through the frozen bottom, once ({cache})")
        batches = encoder.image_batches([str(p) for p in paths], 32, None, render)
        return np.concatenate(
            [
                bottom_activations(encoder, pixels, cut)
                for pixels in tqdm(batches, desc=view, disable=None if progress else True)
            ]
        )

    ids, maps = cached_by_id(cache, "activations", product_ids, through_bottom)
    return maps[np.searchsorted(ids, product_ids)]


def adapted_view_features(
    store, catalog: Catalog, encoder, product_ids: np.ndarray, view: str, render: Callable, progress: bool = True
) -> np.ndarray:
    """A view's image features through an adapted offline image tower (`encoder`: an AdaptedEncoder, or
    the lazy one that builds it): the view's cached activations, then the adapted top; unit vectors."""
    adapted = encoder.load(images=False) if hasattr(encoder, "load") else encoder
    cut = adapted.adaptation["cut"]
    maps = view_activations(catalog, adapted.base, cut, view, render, product_ids, Path(store.path).parent, progress)
    return F.normalize(top_features(tops_by_tower(adapted.top)["image"], maps, np.arange(len(maps))), dim=-1).numpy()


def adapts_offline_image_tower(store) -> bool:
    """Whether a store's image features come from an adapted offline image tower (whose views are best
    computed from cached activations); a CLIP tower's, or a frozen image tower's, are embedded."""
    adaptation = store.manifest.get("adaptation")
    return (
        bool(adaptation)
        and adaptation["towers"] == OfflineEncoder.id
        and "image" in adaptation.get("adapted", ["image"])
    )

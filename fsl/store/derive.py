"""A store whose features are a function of another store's (projected into an aligned space, or
image rows recomputed by an adapted top), derived block by block under the writer lock, checked
like any other."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fsl.errors import FslError
from fsl.files import (
    atomic_path,
    write_json,
    write_npy,
)
from fsl.store.features import FeatureStore, open_checked
from fsl.store.locks import writer_lock
from fsl.store.manifest import DTYPE, array_keys, array_record, complete_store, non_finite_rows

logger = logging.getLogger(__name__)


def sound_derived_store(path: Path, encoder_id: str, catalog_fingerprint: str, full_check: bool = False):
    """The complete derived store at `path` (aligned, adapted), or None when it must be derived: none
    yet, or damaged (said, and marked for deriving again). full_check reads every byte and value."""
    manifest, problem = complete_store(path, full_check)
    if problem is None:
        return None if manifest is None else open_checked(path, encoder_id, catalog_fingerprint, full_check)
    logger.warning(f"feature store {path} is damaged ({problem}); deriving it again")
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
    rows recomputed by an adapted top): same ids and text variants, each array transformed block by
    block (`transform(key, rows, first row)`, key "image" or "text-VARIANT") and written
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
                    out = np.ascontiguousarray(transform(key, values[start : start + block], start), DTYPE)
                    bad = non_finite_rows(out)
                    if len(bad):
                        raise FslError(
                            f"deriving {path} from {source.path} gave NaN or infinite {key} features (e.g. product "
                            f"{source.ids[start + bad[0]]}); nothing was marked complete. Check the source with "
                            "`fsl embed --verify` (offline encoder), then run the command again"
                        )
                    f.write(out.tobytes())
        manifest["arrays"] = {key: array_record(path / f"{key}.npy") for key in array_keys(manifest)}
        write_json(path / "manifest.json", {**manifest, "complete": True})
    return FeatureStore.open(path, encoder_id, source.catalog_fingerprint)

"""Shifted query sets with paired controls: the same support, queries that differ in one way.

Each shifted set has a control on the same episodes, so the paired difference isolates the shift."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fsl.data.catalog import Catalog
from fsl.episodes.frozen import SAMPLER_VERSION, EpisodeSet
from fsl.episodes.near_duplicates import NearDuplicates
from fsl.episodes.sampler import Episodes
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.files import atomic_path

RERENDERED = "+rerendered"
RENDER_VERSION = "v1"
YEAR_BOUNDARY = 2012  # 6,723 of the 9,583 photographed products here are from 2011, 2,859 from 2012-2018
TEMPORAL = {"novel-5w5s-temporal": 5}  # name: shots; 5-way, 10 queries per class
TEMPORAL_QUERIES = 10
# what `fsl eval --shifted` adds to a config, in pairs (shifted, standard)
SHIFTED_PAIRS = {
    "novel-5w5s+rerendered": "novel-5w5s",
    "novel-15w5s+rerendered": "novel-15w5s",
    "novel-5w5s-temporal": "novel-5w5s-temporal-control",
}


def rerender(image: Image.Image) -> Image.Image:
    """The same product photographed elsewhere: centred on a 3:4 grey backdrop, halved, JPEG quality 40."""
    width, height = image.size
    canvas_height = max(height, round(width * 4 / 3))
    canvas_width = max(width, round(canvas_height * 3 / 4))
    canvas = Image.new("RGB", (canvas_width, canvas_height), (128, 128, 128))
    canvas.paste(image.convert("RGB"), ((canvas_width - width) // 2, (canvas_height - height) // 2))
    small = canvas.resize((canvas_width // 2, canvas_height // 2), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=40)
    buffer.seek(0)
    with Image.open(buffer) as compressed:
        return compressed.convert("RGB")


def draw_temporal_sets(
    catalog: Catalog, split: ClassSplit, seed: int, n_episodes: int = 600, near_duplicates: NearDuplicates | None = None
) -> dict[str, EpisodeSet]:
    """Each temporal set and its control, or nothing (with a note) when the catalog has too few dated
    products. Queries (shifted and control) are never near-duplicates of their episode's support."""
    if "year" not in catalog.products:
        return {}
    year = catalog.products["year"].to_numpy(dtype=np.float64)
    labels = catalog.labels(split.column).to_numpy()
    ids = catalog.products["id"].to_numpy()
    group_of = dict(zip(ids, ids if near_duplicates is None else near_duplicates.group_index(ids)))
    early = {c: ids[(labels == c) & (year < YEAR_BOUNDARY)] for c in split.classes("novel")}
    late = {c: ids[(labels == c) & (year >= YEAR_BOUNDARY)] for c in split.classes("novel")}
    sets, q = {}, TEMPORAL_QUERIES
    for offset, (name, k_shot) in enumerate(TEMPORAL.items()):
        classes = [c for c in split.classes("novel") if len(early[c]) >= k_shot + q and len(late[c]) >= q]
        if len(classes) < 5:
            print(
                f"skipping {name}: only {len(classes)} novel class(es) have {k_shot + q} products before "
                f"{YEAR_BOUNDARY} and {q} after"
            )
            continue
        rng = np.random.default_rng(seed + offset)
        picked = np.stack([rng.choice(len(classes), 5, replace=False) for _ in range(n_episodes)])
        support, control, shifted = (np.empty((n_episodes, 5 * n), dtype=np.int64) for n in (k_shot, q, q))
        for e, row in enumerate(picked):
            drawn = [(rng.permutation(early[classes[c]]), rng.permutation(late[classes[c]])) for c in row]
            taken = {group_of[i] for before, _ in drawn for i in before[:k_shot]}
            for slot, (before, after) in enumerate(drawn):
                free_before = [i for i in before[k_shot:] if group_of[i] not in taken][:q]
                free_after = [i for i in after if group_of[i] not in taken][:q]
                if min(len(free_before), len(free_after)) < q:
                    raise FslError(
                        f"{name}: too few products of {classes[row[slot]]} remain for {q} queries after "
                        "leaving out the near-duplicates of the support"
                    )
                support[e, slot * k_shot : (slot + 1) * k_shot] = before[:k_shot]
                control[e, slot * q : (slot + 1) * q] = free_before
                shifted[e, slot * q : (slot + 1) * q] = free_after
        meta = {
            "catalog_fingerprint": catalog.fingerprint,
            "label_column": split.column,
            "split": "novel",
            "split_seed": split.seed,
            "classes": classes,
            "seed": seed + offset,
            "sampler_version": SAMPLER_VERSION,
            "n_way": 5,
            "k_shot": k_shot,
            "q_query": q,
            "episodes": n_episodes,
            "near_duplicates": None if near_duplicates is None else near_duplicates.describe(),
            "shift": f"support year < {YEAR_BOUNDARY}; queries year >= {YEAR_BOUNDARY}, control queries before",
        }
        column = split.column
        sets[f"{column}-{name}"] = EpisodeSet(
            f"{column}-{name}", Episodes(support, shifted, picked, 5, k_shot, q), meta
        )
        sets[f"{column}-{name}-control"] = EpisodeSet(
            f"{column}-{name}-control",
            Episodes(support, control, picked, 5, k_shot, q),
            {**meta, "shift": f"control: every product year < {YEAR_BOUNDARY}"},
        )
    return sets


class ReplacedImages:
    """Store features whose image part, for some rows, comes from elsewhere (re-rendered photos)."""

    def __init__(self, features, rows: np.ndarray, image: np.ndarray, image_dim: int):
        order = np.argsort(rows)
        self.features, self.rows, self.image, self.image_dim = features, rows[order], image[order], image_dim

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        out = np.array(self.features[rows], dtype=np.float32)
        where = np.clip(np.searchsorted(self.rows, rows), 0, len(self.rows) - 1)
        hit = self.rows[where] == rows
        if not hit.all():
            raise FslError(
                "a re-rendered query lacks its re-rendered photo features: the cache beside the store "
                "is incomplete; delete rerendered-*.npz there to rebuild it"
            )
        out[:, : self.image_dim] = self.image[where]
        return out


def rerendered_image_features(
    store, catalog: Catalog, encoder, product_ids: np.ndarray, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, [n, image_dim] features) of re-rendered photos, embedded once and cached beside the store."""
    cache = Path(store.path) / f"rerendered-{RENDER_VERSION}.npz"
    ids, image = np.empty(0, dtype=np.int64), np.empty((0, store.manifest["image_dim"]), dtype=np.float32)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            ids, image = data["ids"], data["image"]
    missing = np.setdiff1d(np.unique(product_ids), ids)
    if len(missing):
        rows = catalog.products.set_index("id").loc[missing, "image_path"]
        if rows.isna().any():
            raise FslError(f"products {rows.index[rows.isna()][:5].tolist()} have no photo to re-render")
        print(
            f"fsl: re-rendering and embedding {len(missing)} query photo(s) once (cached in {cache})", file=sys.stderr
        )
        new = encoder.encode_images([str(path) for path in rows], progress=progress, render=rerender)
        ids, image = np.concatenate([ids, missing]), np.concatenate([image, new])
        order = np.argsort(ids)
        ids, image = ids[order], image[order]
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, image=image)
    return ids, image

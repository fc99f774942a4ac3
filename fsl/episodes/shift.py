"""Shifted query sets with paired controls: the same support, queries that differ in one way.

Each shifted set has a control on the same episodes, so the paired difference isolates the shift."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from fsl.data.catalog import Catalog
from fsl.episodes.frozen import EpisodeSet, episode_meta
from fsl.episodes.near_duplicates import NearDuplicates
from fsl.episodes.sampler import Episodes
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.store.activations import adapted_view_features, adapts_offline_image_tower
from fsl.store.rows import cached_by_id

logger = logging.getLogger(__name__)

RERENDERED = "+rerendered"
RENDER_VERSION = "v1"
YEAR_BOUNDARY = 2012  # 6,723 of the 9,583 photographed products here are from 2011, 2,859 from 2012-2018
TEMPORAL = {"novel-5w5s-temporal": 5}  # name: shots; 5-way, 10 queries per class
TEMPORAL_QUERIES = 10


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


def brand_of(names: pd.Series) -> pd.Series:
    """A product's brand: the first word of its display name, lower-cased ("Puma Men Grey T-shirt": puma)."""
    return names.fillna("").str.split().str[0].fillna("").str.lower()


def main_and_rest(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(products of the class's most common value, products of its other non-empty values)."""
    present = values[values.fillna("") != ""]
    if present.empty:
        return np.zeros(len(values), bool), np.zeros(len(values), bool)
    main = present.value_counts().sort_index().sort_values(ascending=False, kind="stable").index[0]
    return (values == main).to_numpy(), (values.fillna("").ne("") & (values != main)).to_numpy()


def gender_sides(products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return products["gender"].isin(ADULT).to_numpy(), products["gender"].isin(CHILD_OR_UNISEX).to_numpy()


def brand_sides(products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The class's most frequent brands, until they hold half its products, against all its other brands."""
    brands = brand_of(products["productDisplayName"])
    counts = brands[brands != ""].value_counts().sort_index().sort_values(ascending=False, kind="stable")
    before = counts.cumsum().shift(fill_value=0)
    main = set(counts.index[before < counts.sum() / 2])
    return brands.isin(main).to_numpy(), (brands.ne("") & ~brands.isin(main)).to_numpy()


def year_sides(products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    year = products["year"].to_numpy(dtype=np.float64)
    return year < YEAR_BOUNDARY, year >= YEAR_BOUNDARY


ADULT, CHILD_OR_UNISEX = ("Men", "Women"), ("Boys", "Girls", "Unisex")
# Sub-population shifts: support and control queries from one side of each class, shifted queries from
# the other. (kind, the column it needs, sides, what the support side / query side are, in words)
SUBPOPULATIONS = {
    "gender": ("gender", gender_sides, f"gender {'/'.join(ADULT)}", f"gender {'/'.join(CHILD_OR_UNISEX)}"),
    "brand": ("productDisplayName", brand_sides, "the class's main brands (half its products)", "its other brands"),
    "usage": ("usage", lambda p: main_and_rest(p["usage"]), "the class's most common usage", "its other usages"),
    "season": ("season", lambda p: main_and_rest(p["season"]), "the class's most common season", "its other seasons"),
}
SUBPOPULATION_SHOTS, SUBPOPULATION_WAYS, MIN_SUBPOPULATION_WAYS = 5, 5, 2


def subpopulation_set_name(split_name: str, kind: str) -> str:
    """`novel-gender-5s`: as many ways (up to 5) as the split has classes with enough of both sides."""
    return f"{split_name}-{kind}-{SUBPOPULATION_SHOTS}s"


# what `fsl eval --shifted` adds to a config, in pairs (shifted, its paired control or standard set)
SHIFTED_PAIRS = {
    "novel-5w5s+rerendered": "novel-5w5s",
    "novel-15w5s+rerendered": "novel-15w5s",
    "novel-5w5s-temporal": "novel-5w5s-temporal-control",
    **{
        subpopulation_set_name("novel", kind): f"{subpopulation_set_name('novel', kind)}-control"
        for kind in SUBPOPULATIONS
    },
}


def draw_paired_sets(
    name: str,
    catalog: Catalog,
    split: ClassSplit,
    split_name: str,
    sides,
    n_way: int,
    min_ways: int,
    k_shot: int,
    q: int,
    seed: int,
    n_episodes: int,
    near_duplicates: NearDuplicates | None,
    shift: tuple[str, str],
    described: tuple[str, str] | None = None,
) -> dict[str, EpisodeSet]:
    """A shifted set and its control: support and control queries from each class's support side,
    shifted queries from its query side, over the classes of `split_name` with k_shot + q products on
    the one side and q on the other (`n_way` of them per episode, fewer if fewer qualify, none below
    `min_ways`). Queries are never near-duplicates of their episode's support. `shift` names the two
    sides in words; `described`, if given, is the sets' own description (shifted, control)."""
    labels = catalog.labels(split.column).to_numpy()
    ids = catalog.products["id"].to_numpy()
    group_of = dict(zip(ids, ids if near_duplicates is None else near_duplicates.group_index(ids)))
    first, second = {}, {}
    for c in split.classes(split_name):
        members = labels == c
        support_side, query_side = sides(catalog.products[members])
        first[c], second[c] = ids[members][support_side], ids[members][query_side]
    classes = [c for c in split.classes(split_name) if len(first[c]) >= k_shot + q and len(second[c]) >= q]
    n_way = min(n_way, len(classes))
    if n_way < min_ways:
        logger.warning(
            f"skipping {name}: only {len(classes)} {split_name} class(es) have {k_shot + q} products of "
            f"{shift[0]} and {q} of {shift[1]}"
        )
        return {}
    rng = np.random.default_rng(seed)
    picked = np.stack([rng.choice(len(classes), n_way, replace=False) for _ in range(n_episodes)])
    support, control, shifted = (np.empty((n_episodes, n_way * n), dtype=np.int64) for n in (k_shot, q, q))
    for e, row in enumerate(picked):
        drawn = [(rng.permutation(first[classes[c]]), rng.permutation(second[classes[c]])) for c in row]
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
    meta = episode_meta(
        catalog.fingerprint, split, split_name, classes, seed, n_way, k_shot, q, n_episodes, near_duplicates
    )
    column = split.column
    shifted_text, control_text = described or (
        f"support {shift[0]}; queries {shift[1]}, control queries {shift[0]}",
        f"control: every product {shift[0]}",
    )
    return {
        f"{column}-{name}": EpisodeSet(
            f"{column}-{name}", Episodes(support, shifted, picked, n_way, k_shot, q), {**meta, "shift": shifted_text}
        ),
        f"{column}-{name}-control": EpisodeSet(
            f"{column}-{name}-control",
            Episodes(support, control, picked, n_way, k_shot, q),
            {**meta, "shift": control_text},
        ),
    }


def draw_temporal_sets(
    catalog: Catalog, split: ClassSplit, seed: int, n_episodes: int = 600, near_duplicates: NearDuplicates | None = None
) -> dict[str, EpisodeSet]:
    """Each temporal set and its control, or nothing (with a note) when the catalog has too few dated
    products: support products from before YEAR_BOUNDARY, shifted queries from it on."""
    if "year" not in catalog.products:
        return {}
    sets = {}
    for offset, (name, k_shot) in enumerate(TEMPORAL.items()):
        sets |= draw_paired_sets(
            name, catalog, split, "novel", year_sides, 5, 5, k_shot, TEMPORAL_QUERIES, seed + offset, n_episodes,
            near_duplicates, (f"year < {YEAR_BOUNDARY}", f"year >= {YEAR_BOUNDARY}"),
            (f"support year < {YEAR_BOUNDARY}; queries year >= {YEAR_BOUNDARY}, control queries before",
             f"control: every product year < {YEAR_BOUNDARY}"),
        )  # fmt: skip
    return sets


def draw_subpopulation_sets(
    catalog: Catalog,
    split: ClassSplit,
    seed: int,
    n_episodes: int = 600,
    near_duplicates: NearDuplicates | None = None,
    split_names: tuple[str, ...] = ("novel", "val", "select"),
) -> dict[str, EpisodeSet]:
    """Every sub-population shift (SUBPOPULATIONS) of the novel classes, and of the classes levers are
    chosen on: the validation classes (for a head that learned from base classes) and the selection
    pool of base ∪ validation classes (for one that did not: more classes, so more qualify for each
    kind), with paired controls; a kind the catalog lacks the column for, or with too few classes that
    have both sides, is skipped with a note."""
    sets = {}
    for offset, (kind, (column, sides, support_side, query_side)) in enumerate(SUBPOPULATIONS.items()):
        if column not in catalog.products:
            continue
        for index, split_name in enumerate(split_names):
            sets |= draw_paired_sets(
                subpopulation_set_name(split_name, kind), catalog, split, split_name, sides, SUBPOPULATION_WAYS,
                MIN_SUBPOPULATION_WAYS, SUBPOPULATION_SHOTS, TEMPORAL_QUERIES, seed + 10 * offset + index,
                n_episodes, near_duplicates, (support_side, query_side),
            )  # fmt: skip
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


# Other views of a product photo, embedded once and cached beside the store: the re-rendered queries
# of the shifted sets, and the mirrored photo test-time augmentation averages in (config test_time_views)
VIEWS = {"rerendered": (rerender, RENDER_VERSION), "flip": (ImageOps.mirror, "v1")}


def view_image_features(
    store, catalog: Catalog, encoder, product_ids: np.ndarray, view: str = "rerendered", progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, [n, image_dim] features) of a view (VIEWS) of the products' photos, embedded once and
    cached beside the store."""
    render, version = VIEWS[view]
    cache = Path(store.path) / f"{view}-{version}.npz"

    def embed(missing: np.ndarray) -> np.ndarray:
        rows = catalog.products.set_index("id").loc[missing, "image_path"]
        if rows.isna().any():
            raise FslError(f"products {rows.index[rows.isna()][:5].tolist()} have no photo to render as {view}")
        logger.info(f"embedding the {view} view of {len(missing)} photo(s) once (cached in {cache})")
        if adapts_offline_image_tower(store):  # the view's activations at the cut, then the adapted top
            return adapted_view_features(store, catalog, encoder, missing, f"{view}-{version}", render, progress)
        return encoder.encode_images([str(path) for path in rows], progress=progress, render=render)

    return cached_by_id(cache, "image", product_ids, embed)

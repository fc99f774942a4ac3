"""Support sets on disk and the demo's taught categories.

A support folder (`fsl predict --support`, the Python API, the demo's saved sets) holds one
sub-folder of example photos per category, and optionally `texts.csv` (file,text; a `file` cell
`Category/` is a text example without a photo). Photos are answered by fsl/apps/classifier.py; a
query given as a text only is scored here, by cosine to the categories' text examples (uncalibrated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fsl.config import UNKNOWN
from fsl.encoders.base import Encoder, as_rgb
from fsl.errors import FslError, shown
from fsl.files import IMAGE_SUFFIXES, atomic_folder, write_csv
from fsl.store.content import ContentCache

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MIN_SIDE = 16  # pixels: anything smaller (an icon, a tracking pixel) shows no product
MAX_ASPECT = 10  # a longer side over 10 times the shorter: a banner or a scan line, not a product photo
IMAGE_WEIGHT = 0.7  # as the fused experiments (set by hand; the validation sweep in docs/results.md prefers 0.9)
TEMPERATURE = 0.05  # text-only queries: uncalibrated


def usable_photo(image: Image.Image, name: str) -> Image.Image:
    """`image` as RGB, the way it looks (fsl/encoders/base.as_rgb), or an FslError saying why it cannot
    be a product photo: no pixels, too large, too small, a thin strip, or one flat colour. Such
    "photos" would still be embedded and, as support examples, move every answer."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise FslError(
            f"{name} is {width}×{height} pixels; up to {MAX_IMAGE_PIXELS // 1_000_000} megapixels are accepted"
        )
    if min(width, height) < MIN_SIDE:
        raise FslError(f"{name} is {width}×{height} pixels; a photo needs at least {MIN_SIDE} on each side")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise FslError(
            f"{name} is {width}×{height} pixels, a strip rather than a product photo (sides over {MAX_ASPECT}:1)"
        )
    try:
        rgb = as_rgb(image)
        flat = all(low == high for low, high in rgb.getextrema())
    except (OSError, ValueError) as error:
        raise FslError(f"{name} has the pixel mode {image.mode!r}, which cannot be read as a photo ({error})") from None
    if flat:
        raise FslError(f"{name} is blank: every pixel has the same colour")
    return rgb.copy() if rgb is image else rgb


def open_image(path: str | os.PathLike) -> Image.Image:
    """A product photo as RGB (usable_photo), or an FslError that says what is wrong with the file."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FslError(f"{name} was not found" + (" (a broken link)" if path.is_symlink() else ""))
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise FslError(
            f"{name} is {path.stat().st_size / 2**20:.0f} MB; images up to {MAX_IMAGE_BYTES // 2**20} MB are accepted"
        )
    try:
        with Image.open(path) as image:
            return usable_photo(image, name)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise FslError(f"{name} is not an image this app can read ({type(error).__name__})") from None


def embed_image(encoder: Encoder, image: Image.Image) -> np.ndarray:
    """[image_dim] of a photo already checked by usable_photo (RGB)."""
    return encoder.embed_pixels(encoder.image_transform(image).unsqueeze(0))[0]


def embed_text(encoder: Encoder, text: str) -> np.ndarray:
    return encoder.encode_texts([text], progress=False)[0]


@dataclass
class Category:
    name: str
    image_features: list[np.ndarray] = field(default_factory=list)
    text_features: list[np.ndarray] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)  # the photos' paths: shown, and saved with the category
    texts: list[str] = field(default_factory=list)  # the text examples, as typed (parallel to text_features)

    def copy(self) -> Category:
        """A copy whose example lists can change without changing this one (Gradio keeps the old state)."""
        return Category(
            self.name, list(self.image_features), list(self.text_features), list(self.thumbnails), list(self.texts)
        )

    @property
    def size(self) -> int:
        return len(self.image_features) + len(self.text_features)

    def prototype(self, modality: str) -> np.ndarray | None:
        features = self.image_features if modality == "image" else self.text_features
        if not features:
            return None
        mean = np.mean(features, axis=0)
        return mean / np.linalg.norm(mean)


def scores(
    categories: list[Category], image: np.ndarray | None, text: np.ndarray | None, image_weight: float = IMAGE_WEIGHT
) -> dict[str, float]:
    """Weighted cosine similarity to each category on the modalities query and category share."""
    out = {}
    for category in categories:
        total, weights = 0.0, 0.0
        for modality, query, weight in (("image", image, image_weight), ("text", text, 1 - image_weight)):
            prototype = category.prototype(modality)
            if query is not None and prototype is not None:
                total += weight * float(query @ prototype)
                weights += weight
        if weights:
            out[category.name] = total / weights
    return out


def confidences(
    categories: list[Category],
    image: np.ndarray | None,
    text: np.ndarray | None,
    image_weight: float = IMAGE_WEIGHT,
    temperature: float = TEMPERATURE,
) -> dict[str, float]:
    """Softmax over the categories that can be compared with the query; {} when none can."""
    raw = scores(categories, image, text, image_weight)
    if not raw:
        return {}
    values = torch.softmax(torch.tensor(list(raw.values()), dtype=torch.float64) / temperature, dim=0).tolist()
    return dict(sorted(zip(raw, values), key=lambda item: -item[1]))


# Taught categories on disk ---------------------------------------------------------------------


def read_text_rows(path: str | os.PathLike) -> list[tuple[str, str]]:
    """A CSV with columns file,text as (file, text) rows; a malformed one is an error naming it."""
    if not Path(path).is_file():
        raise FslError(f"--texts {path} is not a file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FslError(
            f"--texts {path} is not a readable CSV ({str(error).strip().splitlines()[-1]}); "
            "expected the columns file,text"
        ) from None
    if not {"file", "text"} <= set(table.columns):
        raise FslError(f"--texts {path} needs the columns file,text (found {list(table.columns)})")
    photos = table[~table["file"].str.endswith("/")]  # "Category/" rows may repeat: each is one more text
    conflicting = photos[photos.duplicated("file", keep=False)].groupby("file")["text"].nunique()
    if (conflicting > 1).any():
        file = conflicting[conflicting > 1].index[0]
        lines = [i + 2 for i in photos.index[photos["file"] == file][:2]]  # + header, 1-based
        raise FslError(f"--texts {path} gives {file!r} two different texts (lines {lines[0]} and {lines[1]}); keep one")
    return list(zip(table["file"], table["text"]))


def read_texts(path: str | os.PathLike | None) -> dict[str, str]:
    """--texts: each photo's product text, by file name."""
    return {} if path is None else dict(read_text_rows(path))


@dataclass
class SupportFolder:
    """A support set on disk: one sub-folder per category holding its example photos, and optionally
    `texts.csv` (columns file,text; file relative to the folder, e.g. Sneakers/a.jpg)."""

    root: Path
    classes: list[str]
    photos: list[Path]
    labels: list[int]
    texts: dict[str, str] = field(default_factory=dict)
    category_texts: dict[str, list[str]] = field(default_factory=dict)  # texts.csv rows "Category/": no photo
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # the same bytes in two categories

    def text_of(self, photo: Path) -> str:
        return self.texts.get(photo.relative_to(self.root).as_posix(), "")

    @property
    def photos_without_text(self) -> int:
        return sum(not self.text_of(photo) for photo in self.photos)

    def restrict(self, classes: list[str]) -> SupportFolder:
        """Only the examples of `classes` (--classes), relabelled 0..len(classes)-1."""
        keep = [self.classes.index(c) for c in classes]
        pairs = [(p, keep.index(label)) for p, label in zip(self.photos, self.labels) if label in keep]
        return dataclasses.replace(
            self, classes=list(classes), photos=[p for p, _ in pairs], labels=[label for _, label in pairs]
        )


def check_category_name(name: object) -> str:
    """A taught category's name: text, not blank, and not the answer kept for "none of these" (a
    category called "unknown" would be counted with the photos of no taught category)."""
    if not isinstance(name, str) or not name.strip():
        raise FslError(f"a category needs a name: text that is not blank (got {shown(name)})")
    if name.strip().lower() == UNKNOWN:
        raise FslError(
            f'"{name}" cannot name a category: "{UNKNOWN}" is the answer for a photo of none of the taught '
            "categories; rename it"
        )
    return name


def category_folder_name(name: str) -> str:
    """A category name that can be a folder name: no separators, no leading dot, not too long."""
    check_category_name(name)
    if not name or name.startswith(".") or len(name) > 100 or any(c in name for c in "/\\\0") or not name.isprintable():
        raise FslError(
            f"the category name {name!r} cannot be a folder name: up to 100 printable characters, "
            "no '/' or '\\', not starting with '.'"
        )
    return name


def read_support_folder(folder: str | os.PathLike, photos_required: bool = True) -> SupportFolder:
    """Read and check a support folder; a bad one is an error naming the folder. (The demo loads
    categories taught from texts only: photos_required=False.)"""
    root = Path(folder)
    if not root.is_dir():
        raise FslError(f"--support {root} is not a folder (expected one sub-folder of example photos per category)")
    categories = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(categories) < 2:
        raise FslError(
            f"--support {root} has {len(categories)} category folder(s); a choice needs at least two "
            f"(one sub-folder of example photos per category)"
        )
    rows = read_text_rows(root / "texts.csv") if (root / "texts.csv").is_file() else []
    support = SupportFolder(root, [], [], [], {f: t for f, t in rows if not f.endswith("/")})
    for file, text in rows:  # a category may have several texts without a photo: every row counts
        if file.endswith("/") and text:
            support.category_texts.setdefault(file.rstrip("/"), []).append(text)
    seen: dict[str, Path] = {}
    for category in categories:
        check_category_name(category.name)
        usable = []
        for inner in sorted(p for p in category.iterdir() if p.is_dir() and not p.name.startswith(".")):
            support.skipped.append(
                (
                    f"{inner.relative_to(root).as_posix()}/",
                    "a folder inside a category: its photos are not read (move them into the category, "
                    "or make it a category of its own)",
                )
            )
        for path in sorted(p for p in category.iterdir() if not p.is_dir() and not p.name.startswith(".")):
            if not path.is_file():
                support.skipped.append((path.relative_to(root).as_posix(), "a broken or looping link, or not a file"))
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                support.skipped.append(
                    (path.relative_to(root).as_posix(), f"not a photo ({path.suffix or 'no suffix'})")
                )
                continue
            try:
                open_image(path)
            except FslError as error:
                support.skipped.append((path.relative_to(root).as_posix(), str(error)))
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen and seen[digest].parent != category:
                support.duplicates.append(
                    (seen[digest].relative_to(root).as_posix(), path.relative_to(root).as_posix())
                )
            seen.setdefault(digest, path)
            usable.append(path)
        if not usable and (photos_required or not support.category_texts.get(category.name)):
            raise FslError(
                f"category folder {category} has no usable photo ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add examples or remove the folder"
            )
        support.classes.append(category.name)
        support.photos += usable
        support.labels += [len(support.classes) - 1] * len(usable)
    return support


def save_categories(categories: list[Category], folder: str | os.PathLike) -> Path:
    """A support folder of the categories: their photos (copied) and texts; replaces `folder` whole,
    after the new one is complete, so a failed save loses nothing."""
    with atomic_folder(folder) as staging:
        rows = []
        for category in categories:
            directory = staging / category_folder_name(category.name)
            directory.mkdir()
            for i, photo in enumerate(category.thumbnails, 1):
                shutil.copyfile(photo, directory / f"{i:03d}{Path(photo).suffix.lower() or '.jpg'}")
            rows += [{"file": f"{directory.name}/", "text": text} for text in category.texts]
        if rows:
            write_csv(pd.DataFrame(rows, columns=["file", "text"]), staging / "texts.csv")
    return Path(folder)


def load_categories(support: SupportFolder, cache: ContentCache) -> list[Category]:
    """Categories from a support folder: each photo embedded (through the content cache), its paired
    text and the category's texts as text examples (the demo keeps photos and texts apart)."""
    categories = []
    for index, name in enumerate(support.classes):
        photos = [p for p, label in zip(support.photos, support.labels) if label == index]
        texts = [support.text_of(p) for p in photos if support.text_of(p)] + support.category_texts.get(name, [])
        categories.append(
            Category(
                name,
                list(cache.images(photos)) if photos else [],
                list(cache.texts(texts)) if texts else [],
                [str(p) for p in photos],
                texts,
            )
        )
    return categories

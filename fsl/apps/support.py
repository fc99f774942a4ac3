"""Support sets on disk and the demo's taught categories.

A support folder (`fsl predict --support`, the Python API, the demo's saved sets) holds one
sub-folder of example photos per category (or per category under a parent folder:
`Shoes/Heels/`), and optionally `texts.csv` (file,text; a `file` cell
`Category/` is a text example without a photo). Photos are answered by fsl/apps/classifier.py, a
query given as a text only by the demo (fsl/apps/demo/backend.py), both through fsl/inference/.
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

from fsl.config import UNKNOWN
from fsl.errors import FslError, shown
from fsl.files import IMAGE_SUFFIXES, atomic_folder, write_csv
from fsl.inference.photos import open_image
from fsl.store.content import ContentCache

IMAGE_WEIGHT = 0.7  # as the fused experiments (set by hand; the validation sweep in docs/results.md prefers 0.9)


@dataclass
class Category:
    name: str
    image_features: list[np.ndarray] = field(default_factory=list)
    text_features: list[np.ndarray] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)  # the photos' paths: shown, and saved with the category
    texts: list[str] = field(default_factory=list)  # the text examples, as typed (parallel to text_features)
    parent: str | None = None  # the parent category it was saved under (a nested support folder's), if any

    def copy(self) -> Category:
        """A copy whose example lists can change without changing this one (Gradio keeps the old state)."""
        return Category(
            self.name,
            list(self.image_features),
            list(self.text_features),
            list(self.thumbnails),
            list(self.texts),
            self.parent,
        )

    @property
    def size(self) -> int:
        return len(self.image_features) + len(self.text_features)


# Taught categories on disk ---------------------------------------------------------------------


def read_text_rows(path: str | os.PathLike) -> list[tuple[str, str]]:
    """A CSV with columns file,text as (file, text) rows; a malformed one is an error naming it."""
    if not Path(path).is_file():
        raise FslError(f"texts {path} is not a file", "texts")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FslError(
            f"texts {path} is not a readable CSV ({str(error).strip().splitlines()[-1]}); "
            "expected the columns file,text",
            "texts",
        ) from None
    if not {"file", "text"} <= set(table.columns):
        raise FslError(f"texts {path} needs the columns file,text (found {list(table.columns)})", "texts")
    photos = table[~table["file"].str.endswith("/")]  # "Category/" rows may repeat: each is one more text
    conflicting = photos[photos.duplicated("file", keep=False)].groupby("file")["text"].nunique()
    if (conflicting > 1).any():
        file = conflicting[conflicting > 1].index[0]
        lines = [i + 2 for i in photos.index[photos["file"] == file][:2]]  # + header, 1-based
        raise FslError(
            f"texts {path} gives {file!r} two different texts (lines {lines[0]} and {lines[1]}); keep one", "texts"
        )
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
    parents: dict[str, str] = field(default_factory=dict)  # category -> the parent folder it is in (nested only)
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
            self,
            classes=list(classes),
            photos=[p for p, _ in pairs],
            labels=[label for _, label in pairs],
            parents={c: p for c, p in self.parents.items() if c in classes},
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
    """Read and check a support folder; a bad one is an error naming the folder. A sub-folder holding
    folders and no photo is a parent category (`support/Footwear/Heels/`): its folders are the
    categories under it, and answers may name it where they cannot name one of them
    (fsl/inference/classifier.py); a folder inside a category that holds photos is skipped, as it was
    before parents. (The demo loads categories taught from texts only: photos_required=False.)"""
    root = Path(folder)
    if not root.is_dir():
        raise FslError(
            f"support {root} is not a folder (expected one sub-folder of example photos per category)", "support"
        )
    rows = read_text_rows(root / "texts.csv") if (root / "texts.csv").is_file() else []
    support = SupportFolder(root, [], [], [], {f: t for f, t in rows if not f.endswith("/")})
    for file, text in rows:  # a category may have several texts without a photo: every row counts
        if file.endswith("/") and text:
            support.category_texts.setdefault(file.rstrip("/"), []).append(text)
    seen: dict[str, Path] = {}
    named: dict[str, Path] = {}  # category name -> its folder: a name answers for one folder only
    for top in sub_folders(root):
        check_category_name(top.name)
        inner = sub_folders(top)
        if not inner or any(p.suffix.lower() in IMAGE_SUFFIXES for p in top.iterdir() if not p.is_dir()):
            read_category(support, top, None, seen, named, photos_required)
            continue
        for path in sorted(p for p in top.iterdir() if not p.is_dir() and not p.name.startswith(".")):
            support.skipped.append(
                (path.relative_to(root).as_posix(), f"not a photo, beside the category folders of {top.name}/")
            )
        for category in inner:
            read_category(support, category, top.name, seen, named, photos_required)
    clash = sorted(set(support.parents.values()) & set(support.classes))
    if clash:
        raise FslError(
            f"support {root}: {clash[0]} names both a parent folder and a category folder "
            f"({named[clash[0]].relative_to(root).as_posix()}/); rename one",
            "support",
        )
    if len(support.classes) < 2:
        raise FslError(
            f"support {root} has {len(support.classes)} category folder(s); a choice needs at least two "
            f"(one sub-folder of example photos per category)",
            "support",
        )
    name_of = {folder.relative_to(root).as_posix(): name for name, folder in named.items()}
    support.category_texts = {  # by category: "Shoes/Heels/" rows are Heels' texts
        name_of.get(folder, folder): texts for folder, texts in support.category_texts.items()
    }
    return support


def sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_category(
    support: SupportFolder,
    category: Path,
    parent: str | None,
    seen: dict[str, Path],
    named: dict[str, Path],
    photos_required: bool,
) -> None:
    """One category folder's usable photos into `support` (under `parent`, if any); what is not usable
    goes to `support.skipped`, the same bytes already in another category to `support.duplicates`."""
    root = support.root
    check_category_name(category.name)
    if category.name in named:
        raise FslError(
            f"support {root}: two category folders are named {category.name} "
            f"({named[category.name].relative_to(root).as_posix()}/ and {category.relative_to(root).as_posix()}/); "
            "an answer names one category: rename one",
            "support",
        )
    named[category.name] = category
    usable = []
    for inner in sub_folders(category):
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
            support.skipped.append((path.relative_to(root).as_posix(), f"not a photo ({path.suffix or 'no suffix'})"))
            continue
        try:
            open_image(path)
        except FslError as error:
            support.skipped.append((path.relative_to(root).as_posix(), str(error)))
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen and seen[digest].parent != category:
            support.duplicates.append((seen[digest].relative_to(root).as_posix(), path.relative_to(root).as_posix()))
        seen.setdefault(digest, path)
        usable.append(path)
    folder = category.relative_to(root).as_posix()
    if not usable and (photos_required or not support.category_texts.get(folder)):
        raise FslError(
            f"category folder {category} has no usable photo ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add examples or remove the folder"
        )
    support.classes.append(category.name)
    if parent is not None:
        support.parents[category.name] = parent
    support.photos += usable
    support.labels += [len(support.classes) - 1] * len(usable)


def save_categories(categories: list[Category], folder: str | os.PathLike) -> Path:
    """A support folder of the categories: their photos (copied; under their parent's folder, if any) and
    texts; replaces `folder` whole, after the new one is complete, so a failed save loses nothing."""
    with atomic_folder(folder) as staging:
        rows = []
        for category in categories:
            directory = staging / category_folder_name(category.name)
            if category.parent is not None:
                directory = staging / category_folder_name(category.parent) / directory.name
            directory.mkdir(parents=True)
            for i, photo in enumerate(category.thumbnails, 1):
                shutil.copyfile(photo, directory / f"{i:03d}{Path(photo).suffix.lower() or '.jpg'}")
            rows += [{"file": f"{directory.relative_to(staging).as_posix()}/", "text": text} for text in category.texts]
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
                support.parents.get(name),
            )
        )
    return categories

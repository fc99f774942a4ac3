"""Read and clean a Fashion Product Images dump (styles.csv + images/<id>.jpg) into a Catalog.

The original Kaggle styles.csv is messy: product names with unquoted commas, ids without a photo,
unreadable photos. Every row repaired or skipped is reported (a summary line and a CSV), never
dropped silently.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
from PIL import Image

from fsl import FslError
from fsl.io import atomic_path

STYLES_COLUMNS = (
    "id", "gender", "masterCategory", "subCategory", "articleType",
    "baseColour", "season", "year", "usage", "productDisplayName",
)
LABEL_COLUMNS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
REQUIRED_COLUMNS = ("gender", "masterCategory", "subCategory", "articleType")
# Columns that describe a product rather than categorise it: their words are no label words.
DESCRIPTIVE_COLUMNS = ("gender", "baseColour", "season", "usage")
NAME_COLUMN = "productDisplayName"
DEFAULT_DATA_DIR = "data/fashion-product-images"
# The display name carries most of the signal; the other fields give text to rows with no name.
DEFAULT_TEXT_TEMPLATE = "{productDisplayName} ({gender}, {baseColour}, {usage})"
MASK_TOKEN = "[MASK]"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The dump folder: the argument, else $FSL_DATA, else data/fashion-product-images."""
    path = Path(data_dir or os.environ.get("FSL_DATA") or DEFAULT_DATA_DIR)
    if not (path / "styles.csv").is_file():
        raise FslError(
            f"No Fashion Product Images dump at {path} (expected {path / 'styles.csv'} and "
            f"{path / 'images'}/<id>.jpg). Pass --data DIR or set FSL_DATA; `fsl download` "
            "fetches the dump when online, or unpack the Kaggle archive "
            "paramaggarwal/fashion-product-images-small there by hand."
        )
    return path


def read_styles(csv_path: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Parse styles.csv, joining the extra fields of unquoted-comma rows back into the name.

    Returns the table (all columns as str, index = row's line number) and one issue dict per
    row repaired or skipped.
    """
    issues: list[dict] = []
    n_fields = len(STYLES_COLUMNS)

    def repair(fields: list[str]) -> list[str]:
        name = ",".join(fields[n_fields - 1:])
        issues.append({"id": fields[0], "issue": "unquoted comma in productDisplayName",
                       "action": "repaired", "detail": name})
        return fields[: n_fields - 1] + [name]

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, engine="python",
                            on_bad_lines=repair, skip_blank_lines=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise FslError(f"{csv_path}: cannot be parsed as CSV ({error})") from error
    missing = [c for c in STYLES_COLUMNS if c not in table.columns]
    if missing:
        raise FslError(f"{csv_path}: header lacks columns {missing}; expected {list(STYLES_COLUMNS)}")
    table = table.fillna("")

    bad_id = ~table["id"].str.strip().str.fullmatch(r"\d+")
    short = (table[list(REQUIRED_COLUMNS)] == "").any(axis=1)
    for row in table[bad_id | short].itertuples():
        reason = "id is not a whole number" if bad_id[row.Index] else "too few fields"
        detail = "" if bad_id[row.Index] else f"needs {', '.join(REQUIRED_COLUMNS)}"
        issues.append({"id": row.id, "issue": reason, "action": "skipped", "detail": detail})
    table = table[~(bad_id | short)].copy()
    table["id"] = table["id"].str.strip().astype("int64")

    duplicated = table["id"].duplicated(keep="first")
    for product_id in table.loc[duplicated, "id"]:
        issues.append({"id": product_id, "issue": "duplicate id", "action": "skipped",
                       "detail": "kept the first row"})
    table = table[~duplicated]
    for product_id in table.loc[table[NAME_COLUMN].str.strip() == "", "id"]:
        issues.append({"id": product_id, "issue": "empty productDisplayName",
                       "action": "kept", "detail": "text comes from the other fields"})
    return table, issues


def image_problem(path: Path) -> str | None:
    """Why a product photo cannot be used, or None. Decodes at 1/8 scale: fast, but reads it all."""
    if not path.is_file():
        return "image missing"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (32, 32))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"image unreadable ({error})"
    return None


@dataclass(frozen=True)
class Catalog:
    """One row per usable product: id, image path, label columns, display name (pandas)."""

    root: Path
    products: pd.DataFrame  # columns: id, image_path, LABEL_COLUMNS, year, productDisplayName
    report: pd.DataFrame  # columns: id, issue, action, detail

    def __len__(self) -> int:
        return len(self.products)

    @property
    def ids(self) -> list[int]:
        return self.products["id"].tolist()

    @property
    def image_paths(self) -> list[Path]:
        return [Path(p) for p in self.products["image_path"]]

    def labels(self, column: str = "articleType") -> pd.Series:
        if column not in LABEL_COLUMNS:
            raise FslError(f"unknown label column {column!r}; choose one of {list(LABEL_COLUMNS)}")
        return self.products[column]

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the cleaned table and every photo's bytes: same content, same key."""
        digest = hashlib.sha256()
        digest.update(self.products.drop(columns="image_path").to_csv(index=False).encode())
        for path in self.image_paths:
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def texts(self, template: str = DEFAULT_TEXT_TEMPLATE, mask_column: str | None = None) -> list[str]:
        """Per-product text from a template over metadata fields, optionally with the label
        words of `mask_column` masked (the display name usually names the label)."""
        try:
            texts = [template.format(**row) for row in self.products.to_dict("records")]
        except KeyError as error:
            raise FslError(f"text template {template!r} names unknown field {error}; "
                           f"fields are {list(self.products.columns)}") from None
        texts = [re.sub(r"\s+", " ", t.replace("()", "")).strip(" ,") for t in texts]
        if mask_column:
            pattern = self.label_mask(mask_column)
            texts = [mask_label_words(t, pattern) for t in texts]
        return texts

    def label_mask(self, column: str) -> re.Pattern:
        """The regex that masks the label words of `column` (for catalog texts and new queries alike)."""
        other_values = {v for c in DESCRIPTIVE_COLUMNS for v in self.products[c].unique()}
        return label_word_pattern(self.labels(column).unique(), other_values)

    def summary(self) -> str:
        counts = self.report.groupby(["issue", "action"]).size() if len(self.report) else {}
        parts = [f"{n} {issue} ({action})" for (issue, action), n in dict(counts).items()]
        return f"{len(self)} products from {self.root}" + (f"; {'; '.join(parts)}" if parts else "")

    def save_report(self, path: str | os.PathLike) -> Path:
        with atomic_path(path) as tmp:
            self.report.to_csv(tmp, index=False)
        return Path(path)


def load_catalog(data_dir: str | os.PathLike | None = None) -> Catalog:
    """Read, repair and check a dump; only products with a readable photo are kept."""
    root = resolve_data_dir(data_dir)
    table, issues = read_styles(root / "styles.csv")
    table["image_path"] = [str(root / "images" / f"{i}.jpg") for i in table["id"]]
    usable = []
    for row in table.itertuples():
        problem = image_problem(Path(row.image_path))
        if problem:
            issues.append({"id": row.id, "issue": problem.split(" (")[0], "action": "skipped",
                           "detail": problem})
        usable.append(problem is None)
    products = table[usable].sort_values("id").reset_index(drop=True)
    products = products[["id", "image_path", *LABEL_COLUMNS, "year", NAME_COLUMN]]
    report = pd.DataFrame(issues, columns=["id", "issue", "action", "detail"])
    if products.empty:
        raise FslError(f"{root}: no product has a readable image under {root / 'images'}")
    return Catalog(root=root, products=products, report=report)


# Label masking ---------------------------------------------------------------------------------

STOPWORDS = {"and", "the", "of", "with", "for", "set", "gift"}
# Words that name a class without sharing its spelling.
SYNONYMS = {"tshirt": ["tee"], "scarve": ["scarf"], "sweatshirt": ["hoodie"], "trouser": ["pant"], "flipflop": ["slipper"]}


def _singular(word: str) -> str:
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _word_regex(stem: str) -> str:
    """Letters may be split by a hyphen or space (T-shirt, T shirt); plural endings optional."""
    return r"[-\s]?".join(re.escape(c) if c != " " else r"\s*" for c in stem) + r"(?:e?s)?"


def label_word_pattern(class_names, other_values=()) -> re.Pattern:
    """One regex for every label word of a column: singular/plural, hyphenated, synonyms.

    A whole class name is always masked ("Casual Shoes"); a single word of it is masked alone
    unless it is a value of a descriptive column ("Casual" is also a usage), which is no label word.
    """
    keep = {_singular(w) for v in other_values for w in re.findall(r"[a-z]+", str(v).lower())}
    stems: set[str] = set()
    for name in class_names:
        words = re.findall(r"[a-z]+", str(name).lower().replace("-", ""))
        content = [_singular(w) for w in words if len(w) > 2 and w not in STOPWORDS]
        stems.update(w for w in content if w not in keep)
        if len(words) > 1:
            stems.add(_singular("".join(words)))  # "Flip Flops" also as "flipflops"
            stems.add(" ".join(words[:-1] + [_singular(words[-1])]))
    for stem in list(stems):
        stems.update(SYNONYMS.get(stem, []))
    stems.discard("")
    if not stems:
        return re.compile(r"(?!x)x")  # matches nothing
    alternatives = sorted(stems, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(_word_regex(s) for s in alternatives) + r")\b", re.IGNORECASE)


def mask_label_words(text: str, pattern: re.Pattern, token: str = MASK_TOKEN) -> str:
    masked = pattern.sub(token, text)
    escaped = re.escape(token)
    return re.sub(rf"{escaped}(?:\s+{escaped})+", token, masked)

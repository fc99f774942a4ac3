"""The Fashion Product Images metadata as a clean Catalog: one row per product with a readable photo.

The raw styles.csv is messy: product names contain unquoted commas, some rows lack fields, some
images are missing. Every repaired or skipped row is reported (line, id, issue), never dropped silently."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
from PIL import Image

from fsl.errors import FslError
from fsl.files import write_csv

STYLES_COLUMNS = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
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


REPORT_COLUMNS = ["line", "id", "issue", "action", "detail"]
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# What each reported issue means, for the summary a person reads.
ISSUE_HELP = {
    "image missing": "the dump has no photo for that id, so the row is left out (the rest is unaffected)",
    "image unreadable": "the photo cannot be decoded",
    "unquoted comma in productDisplayName": "the name's commas were joined back",
    "stray quote": "a quote character was kept as part of the text",
    "id is not a whole number": "",
    "id out of range": "ids must be below 2^63",
    "unparsable line": "the CSV parser could not read the line (e.g. a field over its size limit)",
    "control characters": "invisible control characters (NUL, tabs, ...) were removed from its text and labels",
    "too few fields": "",
    "duplicate id": "an earlier row has the same id",
    "empty productDisplayName": "its text comes from the other fields",
}


def _split_line(line: str, n_fields: int, name_index: int) -> tuple[list[str] | None, str]:
    """One styles.csv line into fields, repairing what can be repaired: (fields or None, issue).

    Each line is parsed on its own, so a stray quote can never swallow the lines after it. Extra
    fields are the unquoted commas of the name (the last column) and are joined back into it."""

    def join_name(fields: list[str]) -> list[str] | None:
        if len(fields) > n_fields and name_index == n_fields - 1:
            return fields[: n_fields - 1] + [",".join(fields[n_fields - 1 :])]
        return None

    fields = next(csv.reader([line]))
    if len(fields) == n_fields:
        return fields, ""
    if join_name(fields):
        return join_name(fields), "unquoted comma in productDisplayName"
    literal = next(csv.reader([line], quoting=csv.QUOTE_NONE))  # quotes as plain characters
    if len(literal) == n_fields:
        return literal, "stray quote"
    if join_name(literal):
        return join_name(literal), "unquoted comma in productDisplayName"
    return None, f"{len(literal)} of {n_fields} fields"


def read_styles(csv_path: Path) -> tuple[pd.DataFrame, list[dict], int]:
    """Parse styles.csv line by line: every data line is kept (perhaps repaired) or reported.

    Returns the table (all columns as str, plus `line`, the line number in the file), one issue
    dict per line repaired, kept with a note, or skipped, and the number of data lines."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise FslError(f"{csv_path}: not UTF-8 text (byte {error.start}); save it as UTF-8 CSV") from None
    lines = text.splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise FslError(f"{csv_path} is empty; expected a header {','.join(STYLES_COLUMNS)} and one row per product")
    header = [h.strip() for h in next(csv.reader([numbered[0][1]]))]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise FslError(f"{csv_path}: the header names column {repeated[0]!r} more than once")
    missing = [c for c in STYLES_COLUMNS if c not in header]
    if missing:
        raise FslError(f"{csv_path}: header lacks columns {missing}; expected {list(STYLES_COLUMNS)}")
    data = numbered[1:]
    if not data:
        raise FslError(f"{csv_path} has a header but no data rows")

    issues: list[dict] = []
    rows: list[list[str]] = []
    for number, line in data:
        first = line.split(",", 1)[0][:40]
        try:
            fields, issue = _split_line(line, len(header), header.index(NAME_COLUMN))
        except csv.Error as error:  # e.g. a field over the csv module's size limit
            issues.append(
                {
                    "line": number,
                    "id": first,
                    "issue": "unparsable line",
                    "action": "skipped",
                    "detail": str(error)[:200],
                }
            )
            continue
        if fields is None:
            issues.append(
                {
                    "line": number,
                    "id": first,
                    "issue": "too few fields",
                    "action": "skipped",
                    "detail": f"{issue}; needs {', '.join(header)}",
                }
            )
            continue
        if issue:
            issues.append(
                {
                    "line": number,
                    "id": fields[0],
                    "issue": issue,
                    "action": "repaired",
                    "detail": fields[header.index(NAME_COLUMN)],
                }
            )
        rows.append([str(number), *fields])
    table = pd.DataFrame(rows, columns=["line", *header], dtype=str)

    texts = [c for c in (*LABEL_COLUMNS, NAME_COLUMN, "year") if c in table.columns]
    dirty = pd.Series(False, index=table.index)
    for column in texts:
        dirty |= table[column].str.contains(CONTROL_CHARACTERS)
    for row in table[dirty].itertuples():  # a NUL after "Kurtas" would make a class of its own
        columns = [c for c in texts if CONTROL_CHARACTERS.search(getattr(row, c))]
        issues.append(
            {
                "line": int(row.line),
                "id": row.id,
                "issue": "control characters",
                "action": "repaired",
                "detail": f"removed from {', '.join(columns)}",
            }
        )
    for column in texts:
        table[column] = table[column].str.replace(CONTROL_CHARACTERS, "", regex=True)

    stripped = table["id"].str.strip()
    not_whole = ~stripped.str.fullmatch(r"\d+")
    too_large = ~not_whole & (stripped.str.len() > 18) & stripped.map(lambda s: s.isdigit() and int(s) >= 2**63)
    bad_id = not_whole | too_large
    short = (table[list(REQUIRED_COLUMNS)].apply(lambda c: c.str.strip()) == "").any(axis=1)
    for row in table[bad_id | short].itertuples():
        reason = (
            "id is not a whole number"
            if not_whole[row.Index]
            else "id out of range"
            if too_large[row.Index]
            else "too few fields"
        )
        detail = f"id {row.id[:40]!r}" if bad_id[row.Index] else f"needs {', '.join(REQUIRED_COLUMNS)}"
        issues.append({"line": int(row.line), "id": row.id, "issue": reason, "action": "skipped", "detail": detail})
    table = table[~(bad_id | short)].copy()
    table["id"] = table["id"].str.strip().astype("int64")
    table["line"] = table["line"].astype("int64")

    duplicated = table["id"].duplicated(keep="first")
    for row in table[duplicated].itertuples():
        issues.append(
            {
                "line": row.line,
                "id": row.id,
                "issue": "duplicate id",
                "action": "skipped",
                "detail": "kept the first row",
            }
        )
    table = table[~duplicated]
    for row in table[table[NAME_COLUMN].str.strip() == ""].itertuples():
        issues.append(
            {
                "line": row.line,
                "id": row.id,
                "issue": "empty productDisplayName",
                "action": "kept",
                "detail": "text comes from the other fields",
            }
        )
    return table, issues, len(data)


def image_problem(path: Path) -> str | None:
    """Why a product photo cannot be used, or None. Decodes at 1/8 scale: fast, but reads it all.
    "image missing" means no file of that name at all; a name that exists but is no photo file (a link
    to nothing, a link loop, a folder) is "image unreadable", with the reason, so that a later command
    never mistakes it for a photo that has since appeared."""
    if path.is_symlink() and not path.exists():
        return "image unreadable (a symbolic link that leads to no file: dangling, or a loop)"
    if path.is_dir():
        return "image unreadable (a folder, not a file)"
    if not path.is_file():
        return "image missing" if not os.path.lexists(path) else "image unreadable (not a regular file)"
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
    report: pd.DataFrame  # columns: line, id, issue, action, detail
    data_rows: int = 0  # non-blank lines under the header: each is a product or a skipped row of the report
    known_fingerprint: str | None = field(default=None, repr=False)  # from a prepared catalog: no re-hashing

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
        return self.known_fingerprint or fingerprint_of(self.products, (p.read_bytes() for p in self.image_paths))

    def texts(self, template: str = DEFAULT_TEXT_TEMPLATE, mask_column: str | None = None) -> list[str]:
        """Per-product text from a template over metadata fields, optionally with the label
        words of `mask_column` masked (the display name usually names the label)."""
        try:
            texts = [template.format(**row) for row in self.products.to_dict("records")]
        except KeyError as error:
            raise FslError(
                f"text template {template!r} names unknown field {error}; fields are {list(self.products.columns)}"
            ) from None
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
        """What was kept, repaired and skipped, in words a person reads once."""
        lines = [f"{len(self)} products from {self.root} ({self.data_rows} data rows in styles.csv)"]
        counts = self.report.groupby(["action", "issue"], sort=False).size() if len(self.report) else {}
        for (action, issue), n in sorted(dict(counts).items()):
            row_s = "row" if n == 1 else "rows"
            explained = f" — {ISSUE_HELP[issue]}" if ISSUE_HELP.get(issue) else ""
            lines.append(f"  {action} {n} {row_s}: {issue}{explained}")
        return "\n".join(lines)

    def save_report(self, path: str | os.PathLike) -> Path:
        return write_csv(self.report, path)


def fingerprint_of(products: pd.DataFrame, photos: Iterable[bytes]) -> str:
    """sha256 of the cleaned table (without paths) and then every photo's bytes, in catalog order."""
    digest = hashlib.sha256()
    digest.update(products.drop(columns="image_path").to_csv(index=False).encode())
    for data in photos:
        digest.update(data)
    return digest.hexdigest()[:16]


def read_dump(root: Path) -> Catalog:
    """Read, repair and check a dump; only products with a readable photo are kept."""
    table, issues, data_rows = read_styles(root / "styles.csv")
    table["image_path"] = [str(root / "images" / f"{i}.jpg") for i in table["id"]]
    usable = []
    for row in table.itertuples():
        problem = image_problem(Path(row.image_path))
        if problem:
            issues.append(
                {
                    "line": row.line,
                    "id": row.id,
                    "issue": problem.split(" (")[0],
                    "action": "skipped",
                    "detail": problem,
                }
            )
        usable.append(problem is None)
    products = table[pd.Series(usable, index=table.index, dtype=bool)].sort_values("id").reset_index(drop=True)
    products = products[["id", "image_path", *LABEL_COLUMNS, "year", NAME_COLUMN]]
    report = pd.DataFrame(issues, columns=REPORT_COLUMNS).sort_values("line", kind="stable", ignore_index=True)
    if products.empty:
        reasons = report.loc[report["action"] == "skipped", "issue"].value_counts()
        raise FslError(
            f"{root}: none of the {data_rows} rows of styles.csv is usable "
            f"({', '.join(f'{n} {issue}' for issue, n in reasons.items())}); "
            f"photos are expected at {root / 'images'}/<id>.jpg"
        )
    return Catalog(root=root, products=products, report=report, data_rows=data_rows)


# Label masking ---------------------------------------------------------------------------------

STOPWORDS = {"and", "the", "of", "with", "for", "set", "gift"}
# Words that name a class without sharing its spelling.
SYNONYMS = {
    "tshirt": ["tee"],
    "scarve": ["scarf"],
    "sweatshirt": ["hoodie"],
    "trouser": ["pant"],
    "flipflop": ["slipper"],
}


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

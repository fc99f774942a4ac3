"""The demo's handlers: teach categories, predict with confidences, search the catalog; plain
functions of the backend and the session's categories, so tests call them without a browser."""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import torch

from fsl.apps.demo.backend import (
    MAX_TEXT_LINES,
    MAX_ZIP_BYTES,
    MAX_ZIP_FILES,
    TAUGHT,
    DemoBackend,
    add_product,
)
from fsl.apps.support import (
    Category,
    category_folder_name,
    load_categories,
    read_support_folder,
    save_categories,
)
from fsl.config import UNKNOWN
from fsl.errors import FslError
from fsl.files import safe_name


def summary(categories: list[Category]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"category": c.name, "photos": len(c.image_features), "texts": len(c.text_features)} for c in categories],
        columns=["category", "photos", "texts"],
    )


def thumbnails(categories: list[Category], limit: int = 60) -> list[tuple[str, str]]:
    return [(path, c.name) for c in categories for path in c.thumbnails][:limit]


def examples_of(categories: list[Category]) -> list[str]:
    """One line per example, for the remove-example menu: "Watches / photo 2: 1234.jpg"."""
    lines = []
    for c in categories:
        lines += [f"{c.name} / photo {i}: {Path(path).name}" for i, path in enumerate(c.thumbnails, 1)]
        lines += [f"{c.name} / text {i}: {text[:40]}" for i, text in enumerate(c.texts, 1)]
    return lines


def as_text(name: str) -> str:
    """A category name as a Markdown message shows it: the characters typed, never HTML or formatting
    (a name like `<img onerror=...>` or `**x**` is displayed, not rendered)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", html.escape(name, quote=False))


def name_problem(name: str) -> str | None:
    """The message for a category name that cannot be a folder name (saving would fail), or None."""
    try:
        category_folder_name(name)
    except FslError as error:
        return f"⚠️ {error}."
    return None


def teach(backend: DemoBackend, categories: list[Category], name: str, files, texts: str):
    """Add a category from photos and/or text lines; returns (categories, message)."""
    name = (name or "").strip()
    lines = [line.strip() for line in (texts or "").splitlines() if line.strip()]
    paths = [f if isinstance(f, str) else f.name for f in (files or [])]
    if not name:
        return categories, "⚠️ Give the category a name first."
    if name_problem(name):
        return categories, name_problem(name)
    if any(c.name.lower() == name.lower() for c in categories):
        return (
            categories,
            f"⚠️ A category named “{as_text(name)}” already exists. Pick another name, or clear and re-teach.",
        )
    if not paths and not lines:
        return categories, f"⚠️ “{as_text(name)}” has no examples: add at least one photo or one line of text."
    if len(lines) > MAX_TEXT_LINES:
        return categories, f"⚠️ Nothing was added: {len(lines)} text lines; up to {MAX_TEXT_LINES} per category."
    category = Category(name)
    try:
        for path in paths:
            category.image_features.append(backend.embed(path, None)[0])
            category.thumbnails.append(path)
    except FslError as error:
        return categories, f"⚠️ Nothing was added: {error}."
    category.text_features = list(backend.cache.texts(lines)) if lines else []
    category.texts = lines
    updated = [*categories, category]
    hint = " Teach at least one more category to start predicting." if len(updated) < 2 else ""
    return updated, f"✅ Learned “{as_text(name)}” from {len(paths)} photo(s) and {len(lines)} text(s).{hint}"


def teach_from_search(backend: DemoBackend, categories: list[Category], rows: list[int], selected, name: str):
    """Add the selected search result (a catalog product: photo and text) to category `name`, new or not."""
    name = (name or "").strip()
    if not rows:
        return categories, "⚠️ Search first, then pick a result."
    if selected is None or not 0 <= int(selected) < len(rows):
        return categories, "⚠️ Click a search result to pick it first."
    if not name:
        return categories, "⚠️ Name the category the product is an example of."
    if name_problem(name):
        return categories, name_problem(name)
    row = rows[int(selected)]
    updated = [c.copy() for c in categories]
    target = next((c for c in updated if c.name.lower() == name.lower()), None)
    if target is None:
        target = Category(name)
        updated.append(target)
    if backend.catalog.products.at[row, "image_path"] in map(str, target.thumbnails):
        return categories, f"⚠️ That product is already an example of “{target.name}”."
    add_product(target, backend.product_example(row))
    product = backend.catalog.products.at[row, "productDisplayName"]
    return updated, f"✅ Added “{product}” to “{target.name}” ({len(target.thumbnails)} photo(s))."


def remove_category(categories: list[Category], name: str | None):
    if not name or all(c.name != name for c in categories):
        return categories, "⚠️ Pick a category to remove."
    return [c for c in categories if c.name != name], f"Removed “{as_text(name)}”."


def remove_example(categories: list[Category], line: str | None):
    """Remove the example a line of `examples_of` names; a category left with none goes too."""
    updated = []
    removed = None
    for c in map(Category.copy, categories):
        for i in range(len(c.thumbnails)):
            if line == f"{c.name} / photo {i + 1}: {Path(c.thumbnails[i]).name}":
                del c.image_features[i], c.thumbnails[i]
                removed = line
                break
        for i in range(len(c.texts)):
            if removed is None and line == f"{c.name} / text {i + 1}: {c.texts[i][:40]}":
                del c.text_features[i], c.texts[i]
                removed = line
                break
        if c.size:
            updated.append(c)
    if removed is None:
        return categories, "⚠️ Pick an example to remove."
    gone = {c.name for c in categories} - {c.name for c in updated}
    return updated, f"Removed {as_text(removed)}." + (
        f" “{as_text(next(iter(gone)))}” had no examples left and was removed." if gone else ""
    )


def save(backend: DemoBackend, categories: list[Category], name: str):
    """Save the taught categories as a support folder under the cache and as a zip to download;
    returns (message, zip path or None)."""
    if not categories:
        return "⚠️ Nothing to save: teach some categories first.", None
    try:
        name = safe_name((name or "").strip(), "the set's name")
        if (backend.saved_root / name).exists():  # saved sets are shared by every visitor of this demo
            return (
                f"⚠️ Not saved: a set named “{name}” exists already (saved sets are shared by everyone "
                "using this demo, so none is replaced). Choose another name.",
                None,
            )
        folder = save_categories(categories, backend.saved_root / name)
        zips = ensure_dir(backend.saved_root / ".zips")
        partial = shutil.make_archive(str(zips / f".{name}.partial"), "zip", folder)
        archive = str(zips / f"{name}.zip")
        os.replace(partial, archive)  # a zip is complete or absent, never half written
    except (FslError, OSError) as error:
        return f"⚠️ Not saved: {error}.", None
    return (
        f"✅ Saved {len(categories)} categories to `{folder}` (a support folder: `fsl predict --support "
        f"{folder}` classifies with them) and as {Path(archive).name}."
    ), archive


def load_folder(backend: DemoBackend, folder: Path, label: str):
    """(categories, message) from a support folder; a bad one is a message and nothing changes."""
    try:
        support = read_support_folder(folder, photos_required=False)
        loaded = load_categories(support, backend.cache)
    except FslError as error:
        return None, f"⚠️ Nothing was loaded from {label}: {error}."
    skipped = (
        f" Skipped {len(support.skipped)} file(s): {support.skipped[0][0]} ({support.skipped[0][1]}) …"
        if support.skipped
        else ""
    )
    return (
        loaded,
        f"✅ Loaded {len(loaded)} categories from {label}: {', '.join(as_text(c.name) for c in loaded)}.{skipped}",
    )


def load_saved(backend: DemoBackend, categories: list[Category], name: str | None):
    if not name or name not in backend.saved_sets():
        return categories, "⚠️ Pick a saved set."
    loaded, message = load_folder(backend, backend.saved_root / name, f"“{name}”")
    return (categories if loaded is None else loaded), message


def load_zip(backend: DemoBackend, categories: list[Category], file):
    """Categories from an uploaded zip of a support folder (unpacked under the cache after checks)."""
    path = file if isinstance(file, (str, type(None))) else file.name
    if not path:
        return categories, "⚠️ Upload a zip of a support folder (one sub-folder of photos per category)."
    target = Path(tempfile.mkdtemp(prefix="upload-", dir=ensure_dir(backend.saved_root / ".uploads")))
    try:
        unpack(Path(path), target)
    except FslError as error:
        shutil.rmtree(target, ignore_errors=True)
        return categories, f"⚠️ Nothing was loaded: {error}."
    inner = [p for p in target.iterdir() if not p.name.startswith(".")]
    root = inner[0] if len(inner) == 1 and inner[0].is_dir() else target  # a zip of the folder, or of its contents
    loaded, message = load_folder(backend, root, Path(path).name)
    if loaded is None:
        shutil.rmtree(target, ignore_errors=True)  # a rejected upload leaves nothing behind
        return categories, message
    return loaded, message  # its photos stay: the taught categories show and save them


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def unpack(archive: Path, target: Path) -> None:
    """Extract a zip after checking every member: no absolute or parent paths, no links, bounded size."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_ZIP_FILES:
                raise FslError(f"{archive.name} holds {len(members)} files; up to {MAX_ZIP_FILES} are accepted")
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise FslError(f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 2**20} MB")
            for member in members:
                parts = Path(member.filename).parts
                if (
                    member.filename.startswith(("/", "\\"))
                    or ".." in parts
                    or (member.external_attr >> 16) & 0o170000 == 0o120000
                ):
                    raise FslError(f"{archive.name}: {member.filename!r} points outside the folder or is a link")
            bundle.extractall(target)
    except (zipfile.BadZipFile, OSError) as error:
        raise FslError(f"{archive.name} is not a readable zip ({error})") from None


def predict(
    backend: DemoBackend,
    categories: list[Category],
    image_path: str | None,
    text: str | None,
    source: str = TAUGHT,
    k: int = 4,
):
    """Returns (answer, confidences, message, nearest catalog examples)."""
    if source != TAUGHT:
        return predict_with_classifier(backend, image_path, text, k)
    if not categories:
        return "", {}, "⚠️ No categories yet: teach some, or load the examples.", []
    if len(categories) < 2:
        return "", {}, f"⚠️ Only “{categories[0].name}” is taught; a choice needs at least two categories.", []
    if not image_path and not (text and text.strip()):
        return "", {}, "⚠️ Give a photo, a product text, or both.", []
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return "", {}, f"⚠️ {error}.", []
    nearest = backend.nearest(image, text_feature, k)
    if image is None:  # a text only: cosine to the text examples, uncalibrated
        text_classifier = backend.text_classifier(categories)
        if text_classifier is None:
            return "", {}, "⚠️ You gave a text, but fewer than two categories were taught with text examples.", []
        result = dict(text_classifier.answer(torch.from_numpy(text_feature[None]))[0].top)
        best = next(iter(result))
        return (
            best,
            result,
            f"Best guess: **{as_text(best)}** ({result[best]:.0%}).\n\n{backend.text_only_note()}",
            nearest,
        )
    classifier = backend.taught_classifier(categories)
    left_out = [c.name for c in categories if not c.image_features]
    if len(classifier.classes) < 2:
        return "", {}, "⚠️ You gave a photo, but fewer than two categories were taught with photos.", []
    answer = classifier.answer_features(image[None])[0]
    result = dict(answer.top)
    who = f"_{as_text(classifier.describe(paths=False))}._" + (
        f" Categories taught by text only are not among the answers: {', '.join(map(as_text, left_out))}."
        if left_out
        else ""
    )
    return answer.label, result, f"{lead_line(answer, classifier)}.\n\n{who}", nearest


def lead_line(answer, classifier) -> str:
    """The first line under a photo's answer: the best guess, the parent its categories are under where
    the rule accepts it and none of them, or why it is "unknown": the catalog class it looks like, or the
    calibration's rule."""
    if answer.label == answer.best:
        return f"Best guess: **{as_text(answer.best)}** ({answer.confidence:.0%})"
    if answer.level == "parent":
        return (
            f"**{as_text(answer.label)}** ({answer.confidence:.0%}): {' or '.join(map(as_text, answer.candidates))}? "
            "Surely one of them, but not surely which (the calibration's rule)"
        )
    if answer.looks_like:
        return (
            f"**{UNKNOWN.capitalize()}**: it looks like {as_text(answer.looks_like)}, a catalog class nearer than any "
            f"taught category (the closest taught is {as_text(answer.best)})"
        )
    verdict = classifier.answering_calibration.verdict(answer.known_score, taught=len(classifier.classes))
    return (
        f"**{UNKNOWN.capitalize()}**: the closest is {as_text(answer.best)}, but not close enough "
        f"({verdict}, the calibration's rule)"
    )


def predict_with_classifier(backend: DemoBackend, image_path: str | None, text: str | None, k: int):
    classifier = backend.classifier
    if classifier is None:
        return "", {}, "⚠️ No checkpoint was given to `fsl demo` (--checkpoint).", []
    if not image_path:
        return "", {}, "⚠️ The checkpoint classifies photos: give one (the text is optional).", []
    if classifier.fused and not (text and text.strip()):
        return (
            "",
            {},
            (
                f"⚠️ {classifier.name} reads a photo and its product text: give the text too "
                "(without it the text half would be empty and the answer worse)."
            ),
            [],
        )
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return "", {}, f"⚠️ {error}.", []
    answer = classifier.answer_features(image[None], [(text or "").strip()])[0]
    result = dict(answer.top[:5])
    return (
        answer.label,
        result,
        f"{lead_line(answer, classifier)}.\n\n_{classifier.describe(paths=False)}; encoder `{backend.encoder.id}`._",
        backend.nearest(image, text_feature, k),
    )


def search(backend: DemoBackend, image_path: str | None, text: str | None, k: int = 8):
    """Returns (gallery, message, the results' catalog rows: what "add to a category" picks from)."""
    if backend.index is None:
        return [], f"⚠️ No catalog to search: {backend.catalog_note or 'start the demo with --data DIR'}.", []
    if not image_path and not (text and text.strip()):
        return [], "⚠️ Search by a photo, a text, or both.", []
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return [], f"⚠️ {error}.", []
    rows = backend.search_rows(image, text_feature, int(k))
    return backend.gallery(rows), f"{int(k)} nearest products in the catalog. Click one to teach with it.", rows

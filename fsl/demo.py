"""The Gradio demo: teach new categories from a few examples (photos, texts, or catalog products
found by search), predict with calibrated confidences and a "none of these" answer, search the
embedded catalog by image, text or both; save the taught categories as a support folder (on the
server and as a zip) and load them back. Every bad input gets a message, never a traceback.
Binds to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from fsl import FslError
from fsl.calibration import CALIBRATION_DIR, Calibration, config_key, find_calibration
from fsl.catalog import Catalog
from fsl.encoder import Encoder
from fsl.features import FeatureStore
from fsl.index import SearchIndex, open_index
from fsl.io import CACHE_DIR, read_csv, safe_name
from fsl.predict import CatalogClassifier
from fsl.teach import (
    IMAGE_WEIGHT,
    MAX_IMAGE_BYTES,
    SCORER_CONFIGS,
    TEMPERATURE,
    Category,
    category_folder_name,
    confidences,
    embed_image,
    embed_text,
    load_categories,
    open_image,
    read_support_folder,
    save_categories,
    scorer_kind,
)

TAUGHT = "taught categories"
EXAMPLE_CATEGORIES = 3
EXAMPLES_PER_CATEGORY = 5
MAX_TEXT_LINES = 100  # per teach request: more would hold the queue for everyone
MAX_TEXT_CHARS = 2000  # per query text
CONCURRENT_REQUESTS = 8  # predictions and searches served side by side (the model is shared read-only)
NONE_OF_THESE = "none of these"
SAVED_DIR = CACHE_DIR / "demo"  # saved category sets: one support folder (and its zip) each
MAX_ZIP_BYTES = 200 * 1024 * 1024  # unpacked size of an uploaded category set
MAX_ZIP_FILES = 2000


@dataclass
class DemoBackend:
    """What the page needs: the encoder for new inputs, the catalog and its stored features."""

    encoder: Encoder
    catalog: Catalog
    store: FeatureStore
    example_classes: list[str]
    classifier: CatalogClassifier | None = None  # a trained head over the catalog's classes, if given
    calibrations: dict[str, Calibration | None] = field(default_factory=dict)  # per scorer kind (teach.SCORER_CONFIGS)
    saved_root: Path = SAVED_DIR
    index: SearchIndex | None = None  # search and nearest examples: set by make_backend

    def answered_by(self, kind: str | None) -> str:
        """Which scorer, features and calibration gave an answer, in words."""
        encoder = f"encoder `{self.encoder.id}`"
        if kind is None:
            return f"_Cosine to the categories' text examples, {encoder}; uncalibrated (fixed temperature {TEMPERATURE})._"
        scorer = "image features" if kind == "image" else f"image and text features ({IMAGE_WEIGHT:.0%} image)"
        calibration = self.calibrations.get(kind)
        if calibration is None:
            return (f"_Cosine prototypes on {scorer}, {encoder}; uncalibrated (fixed temperature {TEMPERATURE}, no "
                    f"“{NONE_OF_THESE}”): run `fsl calibrate experiments/{SCORER_CONFIGS[kind].name}.yaml`._")
        return f"_Cosine prototypes on {scorer}, {encoder}; {calibration.describe()}._"

    def saved_sets(self) -> list[str]:
        return sorted(p.name for p in self.saved_root.glob("*") if p.is_dir() and not p.name.startswith("."))

    @property
    def sources(self) -> list[str]:
        """What the Predict tab can classify among."""
        extra = [f"{self.classifier.name}: {len(self.classifier.classes)} catalog classes"] if self.classifier else []
        return [TAUGHT, *extra]

    def embed(self, image_path: str | None, text: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A query's features; a bad photo or an overlong text is an FslError with the reason."""
        if text and len(text) > MAX_TEXT_CHARS:
            raise FslError(f"the text has {len(text)} characters; up to {MAX_TEXT_CHARS} are read")
        image = embed_image(self.encoder, open_image(image_path)) if image_path else None
        text = embed_text(self.encoder, text.strip()) if text and text.strip() else None
        return image, text

    def search_rows(self, image: np.ndarray | None, text: np.ndarray | None, k: int) -> list[int]:
        """Catalog rows of the k products closest to the query (the store's search index)."""
        return self.index.nearest(image, text, k)

    def gallery(self, rows: list[int]) -> list[tuple[str, str]]:
        products = self.catalog.products
        return [(products.at[i, "image_path"], f"{products.at[i, 'articleType']}: {products.at[i, 'productDisplayName']}")
                for i in rows]

    def nearest(self, image: np.ndarray | None, text: np.ndarray | None, k: int) -> list[tuple[str, str]]:
        """The k catalog products closest to the query, as (photo, caption) for a gallery."""
        return self.gallery(self.search_rows(image, text, k))

    def product_example(self, row: int) -> tuple[np.ndarray, np.ndarray, str, str]:
        """A catalog product as a teaching example: stored image and text features, photo, text."""
        return (np.asarray(self.store.image[row]), np.asarray(self.store.text("plain")[row]),
                str(self.catalog.products.at[row, "image_path"]), self.product_texts[row])

    @cached_property
    def product_texts(self) -> list[str]:
        """Each product's text as the store's plain text features were embedded from it."""
        return self.catalog.texts()

    def example_categories(self) -> list[Category]:
        """A few catalog classes with five examples each (photo and text), so one click is enough."""
        products = self.catalog.products
        categories = []
        for name in self.example_classes:
            category = Category(name)
            for row in products.index[products["articleType"] == name][:EXAMPLES_PER_CATEGORY]:
                add_product(category, self.product_example(row))
            categories.append(category)
        return categories


def add_product(category: Category, example: tuple[np.ndarray, np.ndarray, str, str]) -> None:
    image, text_feature, photo, text = example
    category.image_features.append(image)
    category.text_features.append(text_feature)
    category.thumbnails.append(photo)
    category.texts.append(text)


def make_backend(catalog: Catalog, encoder_config, store_root=None, episodes_root=None,
                 classifier: CatalogClassifier | None = None,
                 calibration_root: str | os.PathLike = CALIBRATION_DIR,
                 saved_root: str | os.PathLike = SAVED_DIR) -> DemoBackend:
    """The encoder and store of the same config as the CLI; example classes from the novel split."""
    from fsl.features import DEFAULT_ROOT
    from fsl.pipeline import (
        DEFAULT_EPISODES_DIR,
        encoder_from_config,
        episodes_dir_for,
        open_store,
    )

    store = open_store(catalog, encoder_config, store_root or DEFAULT_ROOT)
    split_files = sorted(episodes_dir_for(catalog, episodes_root or DEFAULT_EPISODES_DIR).glob("articleType-*-split.csv"))
    counts = catalog.labels("articleType").value_counts()
    if split_files:
        split = read_csv(split_files[0])
        novel = split[split["split"] == "novel"].sort_values("count", ascending=False)["class"].tolist()
    else:
        novel = counts.index.tolist()
    examples = [c for c in novel if counts.get(c, 0) >= 2 * EXAMPLES_PER_CATEGORY][:EXAMPLE_CATEGORIES]
    encoder = encoder_from_config(encoder_config)
    encoder.load()  # weights and image runtime now, not in the first visitor's request
    calibrations = {kind: find_calibration(config_key(config, store.encoder_id), calibration_root)
                    for kind, config in SCORER_CONFIGS.items()}
    return DemoBackend(encoder, catalog, store, examples, classifier, calibrations, Path(saved_root),
                       open_index(store, IMAGE_WEIGHT))


def summary(categories: list[Category]) -> pd.DataFrame:
    return pd.DataFrame([{"category": c.name, "photos": len(c.image_features), "texts": len(c.text_features)}
                         for c in categories], columns=["category", "photos", "texts"])


def thumbnails(categories: list[Category], limit: int = 60) -> list[tuple[str, str]]:
    return [(path, c.name) for c in categories for path in c.thumbnails][:limit]


def examples_of(categories: list[Category]) -> list[str]:
    """One line per example, for the remove-example menu: "Watches / photo 2: 1234.jpg"."""
    lines = []
    for c in categories:
        lines += [f"{c.name} / photo {i}: {Path(path).name}" for i, path in enumerate(c.thumbnails, 1)]
        lines += [f"{c.name} / text {i}: {text[:40]}" for i, text in enumerate(c.texts, 1)]
    return lines


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
        return categories, f"⚠️ A category named “{name}” already exists. Pick another name, or clear and re-teach."
    if not paths and not lines:
        return categories, f"⚠️ “{name}” has no examples: add at least one photo or one line of text."
    if len(lines) > MAX_TEXT_LINES:
        return categories, f"⚠️ Nothing was added: {len(lines)} text lines; up to {MAX_TEXT_LINES} per category."
    category = Category(name)
    try:
        for path in paths:
            category.image_features.append(embed_image(backend.encoder, open_image(path)))
            category.thumbnails.append(path)
    except FslError as error:
        return categories, f"⚠️ Nothing was added: {error}."
    category.text_features = [embed_text(backend.encoder, line) for line in lines]
    category.texts = lines
    updated = [*categories, category]
    hint = " Teach at least one more category to start predicting." if len(updated) < 2 else ""
    return updated, f"✅ Learned “{name}” from {len(paths)} photo(s) and {len(lines)} text(s).{hint}"


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
    return [c for c in categories if c.name != name], f"Removed “{name}”."


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
    return updated, f"Removed {removed}." + (f" “{next(iter(gone))}” had no examples left and was removed." if gone else "")


def save(backend: DemoBackend, categories: list[Category], name: str):
    """Save the taught categories as a support folder under the cache and as a zip to download;
    returns (message, zip path or None)."""
    if not categories:
        return "⚠️ Nothing to save: teach some categories first.", None
    try:
        name = safe_name((name or "").strip(), "the set's name")
        folder = save_categories(categories, backend.saved_root / name)
        zips = ensure_dir(backend.saved_root / ".zips")
        partial = shutil.make_archive(str(zips / f".{name}.partial"), "zip", folder)
        archive = str(zips / f"{name}.zip")
        os.replace(partial, archive)  # a zip is complete or absent, never half written
    except (FslError, OSError) as error:
        return f"⚠️ Not saved: {error}.", None
    return (f"✅ Saved {len(categories)} categories to `{folder}` (a support folder: `fsl predict --support "
            f"{folder}` classifies with them) and as {Path(archive).name}."), archive


def load_folder(backend: DemoBackend, folder: Path, label: str):
    """(categories, message) from a support folder; a bad one is a message and nothing changes."""
    try:
        support = read_support_folder(folder, photos_required=False)
        loaded = load_categories(support, backend.encoder)
    except FslError as error:
        return None, f"⚠️ Nothing was loaded from {label}: {error}."
    skipped = f" Skipped {len(support.skipped)} file(s): {support.skipped[0][0]} ({support.skipped[0][1]}) …" \
        if support.skipped else ""
    return loaded, f"✅ Loaded {len(loaded)} categories from {label}: {', '.join(c.name for c in loaded)}.{skipped}"


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
                if member.filename.startswith(("/", "\\")) or ".." in parts or (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise FslError(f"{archive.name}: {member.filename!r} points outside the folder or is a link")
            bundle.extractall(target)
    except (zipfile.BadZipFile, OSError) as error:
        raise FslError(f"{archive.name} is not a readable zip ({error})") from None


def predict(backend: DemoBackend, categories: list[Category], image_path: str | None, text: str | None,
            source: str = TAUGHT, k: int = 4):
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
    kind = scorer_kind(categories, image, text_feature)
    calibration = backend.calibrations.get(kind) if kind else None
    result = confidences(categories, image, text_feature,
                         temperature=calibration.temperature if calibration else TEMPERATURE)
    if not result:
        given = "a photo" if image is not None else "a text"
        return "", {}, f"⚠️ You gave {given}, but no category was taught with that kind of example.", []
    best = next(iter(result))
    who = backend.answered_by(kind)
    if calibration and result[best] < calibration.threshold:
        message = (f"**{NONE_OF_THESE.capitalize()}**: the closest, {best} ({result[best]:.0%}), is below the "
                   f"{calibration.threshold:.0%} an answer needs.\n\n{who}")
        return NONE_OF_THESE, result, message, backend.nearest(image, text_feature, k)
    return best, result, f"Best guess: **{best}** ({result[best]:.0%}).\n\n{who}", backend.nearest(image, text_feature, k)


def predict_with_classifier(backend: DemoBackend, image_path: str | None, text: str | None, k: int):
    classifier = backend.classifier
    if classifier is None:
        return "", {}, "⚠️ No checkpoint was given to `fsl demo` (--checkpoint).", []
    if not image_path:
        return "", {}, "⚠️ The checkpoint classifies photos: give one (the text is optional).", []
    if classifier.fused and not (text and text.strip()):
        return "", {}, (f"⚠️ {classifier.name} reads a photo and its product text: give the text too "
                        "(without it the text half would be empty and the answer worse)."), []
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return "", {}, f"⚠️ {error}.", []
    probabilities = classifier.probabilities(classifier.features(image, (text or "").strip())[None])[0]
    top = probabilities.topk(min(5, len(classifier.classes)))
    result = {classifier.classes[int(i)]: float(p) for p, i in zip(top.values, top.indices)}
    best = next(iter(result))
    answer = classifier.answer(best, result[best])
    answer = NONE_OF_THESE if answer != best else best
    lead = f"**{NONE_OF_THESE.capitalize()}** (closest: {best}, {result[best]:.0%})" if answer != best \
        else f"Best guess: **{best}** ({result[best]:.0%})"
    return answer, result, f"{lead}.\n\n_{classifier.describe()}; encoder `{backend.encoder.id}`._", \
        backend.nearest(image, text_feature, k)


def search(backend: DemoBackend, image_path: str | None, text: str | None, k: int = 8):
    """Returns (gallery, message, the results' catalog rows: what "add to a category" picks from)."""
    if not image_path and not (text and text.strip()):
        return [], "⚠️ Search by a photo, a text, or both.", []
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return [], f"⚠️ {error}.", []
    rows = backend.search_rows(image, text_feature, int(k))
    return backend.gallery(rows), f"{int(k)} nearest products in the catalog. Click one to teach with it.", rows


def build_app(backend: DemoBackend):
    import gradio as gr

    def photo_input(**options) -> gr.Image:
        """An image upload whose file reaches the app undecoded: the app checks it (size, pixels, format)
        and answers with a message, where gr.Image would fail inside its own decoder. (An override on
        the instance: a subclass would make Gradio write a .pyi file into this package.)"""
        image = gr.Image(type="filepath", **options)
        image.preprocess = lambda payload: None if payload is None else payload.path
        return image

    calibrated = [k for k, c in backend.calibrations.items() if c]
    with gr.Blocks(title="fsl: few-shot fashion") as app:
        gr.Markdown("# Few-shot fashion classifier\nTeach new categories from a few photos or product "
                    f"texts, then predict. Features: `{backend.encoder.id}`; catalog of {len(backend.catalog)} products; "
                    f"confidences {'calibrated on validation classes (' + ', '.join(calibrated) + ')' if calibrated else 'uncalibrated'}.")
        state = gr.State([])
        found = gr.State([])  # catalog rows of the last search
        with gr.Tab("Teach"):
            with gr.Row():
                with gr.Column():
                    name = gr.Textbox(label="Category name", placeholder="e.g. Sneakers", elem_id="category-name")
                    files = gr.File(label="Example photos", file_count="multiple", file_types=["image"], elem_id="example-photos")
                    texts = gr.Textbox(label="Example product texts (one per line)", lines=3)
                    with gr.Row():
                        teach_button = gr.Button("Teach category", variant="primary", elem_id="teach-button")
                        examples_button = gr.Button("Load example categories", elem_id="examples-button")
                        clear_button = gr.Button("Clear all", elem_id="clear-button")
                    teach_status = gr.Markdown(elem_id="teach-status")
                    with gr.Accordion("Remove", open=False):
                        with gr.Row():
                            category_menu = gr.Dropdown([], label="Category", elem_id="category-menu", allow_custom_value=True)
                            remove_category_button = gr.Button("Remove category")
                        with gr.Row():
                            example_menu = gr.Dropdown([], label="Example", elem_id="example-menu", allow_custom_value=True)
                            remove_example_button = gr.Button("Remove example")
                    with gr.Accordion("Save and load (a support folder: fsl predict --support reads it too)", open=True):
                        with gr.Row():
                            set_name = gr.Textbox(label="Save as", placeholder="e.g. my-shoes", elem_id="set-name")
                            save_button = gr.Button("Save", elem_id="save-button")
                        download = gr.File(label="Download (zip)", interactive=False, elem_id="download")
                        with gr.Row():
                            saved_menu = gr.Dropdown(backend.saved_sets(), label="Saved sets", elem_id="saved-menu",
                                                     allow_custom_value=True)
                            load_button = gr.Button("Load saved set", elem_id="load-button")
                        upload = gr.File(label="…or upload a zip of a support folder", file_types=[".zip"],
                                         elem_id="upload-zip")
                        upload_button = gr.Button("Load zip", elem_id="load-zip-button")
                with gr.Column():
                    table = gr.Dataframe(summary([]), label="What the model knows", interactive=False, elem_id="known")
                    gallery = gr.Gallery(label="Examples", columns=6, height=260)
        with gr.Tab("Predict", elem_id="predict-tab"):
            with gr.Row():
                with gr.Column():
                    query_image = photo_input(label="Product photo", elem_id="query-image")
                    query_text = gr.Textbox(label="Product text (optional)")
                    source = gr.Radio(backend.sources, value=TAUGHT, label="Classify among",
                                      visible=len(backend.sources) > 1)
                    predict_button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                with gr.Column():
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                    label = gr.Label(label="Confidence", num_top_classes=5, elem_id="confidence")
                    predict_status = gr.Markdown(elem_id="predict-status")
                    neighbours = gr.Gallery(label="Nearest catalog examples", columns=4, height=220)
        with gr.Tab("Search"):
            with gr.Row():
                with gr.Column():
                    search_image = photo_input(label="Find products like this photo")
                    search_text = gr.Textbox(label="…and/or this text")
                    search_k = gr.Slider(1, 24, value=8, step=1, label="Results")
                    search_button = gr.Button("Search", variant="primary")
                    picked = gr.Number(label="Picked result (click one)", precision=0, interactive=False)
                    pick_category = gr.Textbox(label="Add the picked product to category", placeholder="e.g. Sneakers")
                    pick_button = gr.Button("Add to category")
                    pick_status = gr.Markdown()
                with gr.Column():
                    search_status = gr.Markdown()
                    results = gr.Gallery(label="Results", columns=4, height=420, allow_preview=False)

        def refreshed(updated, message):
            """What every change of the taught categories updates."""
            return (updated, message, summary(updated), thumbnails(updated),
                    gr.update(choices=[c.name for c in updated], value=None),
                    gr.update(choices=examples_of(updated), value=None))

        def on_teach(categories, name_value, files_value, texts_value):
            return refreshed(*teach(backend, categories, name_value, files_value, texts_value))

        def on_examples(categories):
            known = {c.name for c in categories}
            added = [c for c in backend.example_categories() if c.name not in known]
            updated = [*categories, *added]
            return refreshed(updated, f"✅ Loaded {len(added)} example categories: {', '.join(c.name for c in added) or 'none new'}.")

        def on_save(categories, name_value):
            message, archive = save(backend, categories, name_value)
            return message, archive, gr.update(choices=backend.saved_sets())

        def on_pick(evt):
            return evt.index

        on_pick.__annotations__["evt"] = gr.SelectData  # resolved here: Gradio finds event data by this type

        teach_outputs = [state, teach_status, table, gallery, category_menu, example_menu]
        teach_button.click(on_teach, [state, name, files, texts], teach_outputs, api_name="teach")
        examples_button.click(on_examples, [state], teach_outputs, api_name="load_examples")
        clear_button.click(lambda _c: refreshed([], "Cleared."), [state], teach_outputs, api_name="clear")
        remove_category_button.click(lambda c, n: refreshed(*remove_category(c, n)), [state, category_menu],
                                     teach_outputs, api_name="remove_category")
        remove_example_button.click(lambda c, e: refreshed(*remove_example(c, e)), [state, example_menu],
                                    teach_outputs, api_name="remove_example")
        save_button.click(on_save, [state, set_name], [teach_status, download, saved_menu], api_name="save")
        load_button.click(lambda c, n: refreshed(*load_saved(backend, c, n)), [state, saved_menu], teach_outputs,
                          api_name="load_saved")
        upload_button.click(lambda c, f: refreshed(*load_zip(backend, c, f)), [state, upload], teach_outputs,
                            api_name="load_zip")
        predict_button.click(lambda c, i, t, s: predict(backend, c, i, t, s), [state, query_image, query_text, source],
                             [answer, label, predict_status, neighbours], api_name="predict",
                             concurrency_limit=CONCURRENT_REQUESTS)
        search_button.click(lambda i, t, k: search(backend, i, t, k), [search_image, search_text, search_k],
                            [results, search_status, found], api_name="search", concurrency_limit=CONCURRENT_REQUESTS)
        results.select(on_pick, None, picked)
        pick_button.click(lambda c, rows, i, n: refreshed(*teach_from_search(backend, c, rows, i, n)),
                          [state, found, picked, pick_category],
                          [state, pick_status, table, gallery, category_menu, example_menu], api_name="teach_from_search")
    return app


def launch(backend: DemoBackend, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the app; returns (app, url). With block=False the server runs in a thread."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if port is not None:
        check_port_free(host, port)
    app = build_app(backend)
    allowed = [str(Path(p).parent) for p in backend.catalog.image_paths[:1]] + [str(ensure_dir(backend.saved_root))]
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
                           allowed_paths=allowed, show_error=False, max_file_size=MAX_IMAGE_BYTES)
    return app, url


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise FslError(f"cannot serve on {host}:{port} ({error.strerror}); is another demo running? "
                           "Stop it or pass --port N") from None

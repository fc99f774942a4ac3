"""The Gradio demo: teach new categories from a few examples, predict with confidences, search
the embedded catalog by image, text or both. Every bad input gets a message, never a traceback.
Binds to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fsl import FslError
from fsl.catalog import Catalog
from fsl.encoder import Encoder
from fsl.features import FeatureStore
from fsl.io import read_csv
from fsl.predict import CatalogClassifier
from fsl.teach import (
    IMAGE_WEIGHT,
    MAX_IMAGE_BYTES,
    Category,
    confidences,
    embed_image,
    embed_text,
    open_image,
)

TAUGHT = "taught categories"
EXAMPLE_CATEGORIES = 3
EXAMPLES_PER_CATEGORY = 5
MAX_TEXT_LINES = 100  # per teach request: more would hold the queue for everyone
MAX_TEXT_CHARS = 2000  # per query text
CONCURRENT_REQUESTS = 8  # predictions and searches served side by side (the model is shared read-only)


@dataclass
class DemoBackend:
    """What the page needs: the encoder for new inputs, the catalog and its stored features."""

    encoder: Encoder
    catalog: Catalog
    store: FeatureStore
    example_classes: list[str]
    classifier: CatalogClassifier | None = None  # a trained head over the catalog's classes, if given

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

    def nearest(self, image: np.ndarray | None, text: np.ndarray | None, k: int) -> list[tuple[str, str]]:
        """The k catalog products closest to the query, as (photo, caption) for a gallery."""
        similarity = np.zeros(len(self.store.ids))
        if image is not None:
            similarity += (IMAGE_WEIGHT if text is not None else 1.0) * (self.store.image @ image)
        if text is not None:
            similarity += (1 - IMAGE_WEIGHT if image is not None else 1.0) * (self.store.text("plain") @ text)
        products = self.catalog.products
        return [(products.at[i, "image_path"], f"{products.at[i, 'articleType']}: {products.at[i, 'productDisplayName']}")
                for i in np.argsort(-similarity)[:k]]

    def example_categories(self) -> list[Category]:
        """A few catalog classes with five examples each (photo and text), so one click is enough."""
        products = self.catalog.products
        texts = self.store.text("plain")
        categories = []
        for name in self.example_classes:
            rows = products.index[products["articleType"] == name][:EXAMPLES_PER_CATEGORY]
            categories.append(Category(name, [np.asarray(self.store.image[r]) for r in rows],
                                       [np.asarray(texts[r]) for r in rows],
                                       [products.at[r, "image_path"] for r in rows]))
        return categories


def make_backend(catalog: Catalog, encoder_config, store_root=None, episodes_root=None,
                 classifier: CatalogClassifier | None = None) -> DemoBackend:
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
    return DemoBackend(encoder, catalog, store, examples, classifier)


def summary(categories: list[Category]) -> pd.DataFrame:
    return pd.DataFrame([{"category": c.name, "photos": len(c.image_features), "texts": len(c.text_features)}
                         for c in categories], columns=["category", "photos", "texts"])


def thumbnails(categories: list[Category]) -> list[tuple[str, str]]:
    return [(path, c.name) for c in categories for path in c.thumbnails[:4]]


def teach(backend: DemoBackend, categories: list[Category], name: str, files, texts: str):
    """Add a category from photos and/or text lines; returns (categories, message)."""
    name = (name or "").strip()
    lines = [line.strip() for line in (texts or "").splitlines() if line.strip()]
    paths = [f if isinstance(f, str) else f.name for f in (files or [])]
    if not name:
        return categories, "⚠️ Give the category a name first."
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
    updated = [*categories, category]
    hint = " Teach at least one more category to start predicting." if len(updated) < 2 else ""
    return updated, f"✅ Learned “{name}” from {len(paths)} photo(s) and {len(lines)} text(s).{hint}"


def predict(backend: DemoBackend, categories: list[Category], image_path: str | None, text: str | None,
            source: str = TAUGHT, k: int = 4):
    """Returns (confidences, message, nearest catalog examples)."""
    if source != TAUGHT:
        return predict_with_classifier(backend, image_path, text, k)
    if not categories:
        return {}, "⚠️ No categories yet: teach some, or load the examples.", []
    if len(categories) < 2:
        return {}, f"⚠️ Only “{categories[0].name}” is taught; a choice needs at least two categories.", []
    if not image_path and not (text and text.strip()):
        return {}, "⚠️ Give a photo, a product text, or both.", []
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return {}, f"⚠️ {error}.", []
    result = confidences(categories, image, text_feature)
    if not result:
        given = "a photo" if image is not None else "a text"
        return {}, f"⚠️ You gave {given}, but no category was taught with that kind of example.", []
    best = next(iter(result))
    return result, f"Best guess: **{best}** ({result[best]:.0%}).", backend.nearest(image, text_feature, k)


def predict_with_classifier(backend: DemoBackend, image_path: str | None, text: str | None, k: int):
    classifier = backend.classifier
    if classifier is None:
        return {}, "⚠️ No checkpoint was given to `fsl demo` (--checkpoint).", []
    if not image_path:
        return {}, "⚠️ The checkpoint classifies photos: give one (the text is optional).", []
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return {}, f"⚠️ {error}.", []
    probabilities = classifier.probabilities(classifier.features(image, (text or "").strip())[None])[0]
    top = probabilities.topk(min(5, len(classifier.classes)))
    result = {classifier.classes[int(i)]: float(p) for p, i in zip(top.values, top.indices)}
    best = next(iter(result))
    return result, f"Best guess ({classifier.name}): **{best}** ({result[best]:.0%}).", \
        backend.nearest(image, text_feature, k)


def search(backend: DemoBackend, image_path: str | None, text: str | None, k: int = 8):
    if not image_path and not (text and text.strip()):
        return [], "⚠️ Search by a photo, a text, or both."
    try:
        image, text_feature = backend.embed(image_path, text)
    except FslError as error:
        return [], f"⚠️ {error}."
    return backend.nearest(image, text_feature, int(k)), f"{int(k)} nearest products in the catalog."


def build_app(backend: DemoBackend):
    import gradio as gr

    def photo_input(**options) -> gr.Image:
        """An image upload whose file reaches the app undecoded: the app checks it (size, pixels, format)
        and answers with a message, where gr.Image would fail inside its own decoder. (An override on
        the instance: a subclass would make Gradio write a .pyi file into this package.)"""
        image = gr.Image(type="filepath", **options)
        image.preprocess = lambda payload: None if payload is None else payload.path
        return image

    with gr.Blocks(title="fsl: few-shot fashion") as app:
        gr.Markdown("# Few-shot fashion classifier\nTeach new categories from a few photos or product "
                    f"texts, then predict. Features: `{backend.encoder.id}`; catalog of {len(backend.catalog)} products.")
        state = gr.State([])
        with gr.Tab("Teach"):
            with gr.Row():
                with gr.Column():
                    name = gr.Textbox(label="Category name", placeholder="e.g. Sneakers", elem_id="category-name")
                    files = gr.File(label="Example photos", file_count="multiple", file_types=["image"], elem_id="example-photos")
                    texts = gr.Textbox(label="Example product texts (one per line)", lines=3)
                    with gr.Row():
                        teach_button = gr.Button("Teach category", variant="primary", elem_id="teach-button")
                        examples_button = gr.Button("Load example categories", elem_id="examples-button")
                        clear_button = gr.Button("Clear all")
                    teach_status = gr.Markdown(elem_id="teach-status")
                with gr.Column():
                    table = gr.Dataframe(summary([]), label="What the model knows", interactive=False)
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
                with gr.Column():
                    search_status = gr.Markdown()
                    results = gr.Gallery(label="Results", columns=4, height=420)

        def on_teach(categories, name_value, files_value, texts_value):
            updated, message = teach(backend, categories, name_value, files_value, texts_value)
            return updated, message, summary(updated), thumbnails(updated)

        def on_examples(categories):
            known = {c.name for c in categories}
            added = [c for c in backend.example_categories() if c.name not in known]
            updated = [*categories, *added]
            message = f"✅ Loaded {len(added)} example categories: {', '.join(c.name for c in added) or 'none new'}."
            return updated, message, summary(updated), thumbnails(updated)

        def on_clear(_categories):
            return [], "Cleared.", summary([]), []

        teach_outputs = [state, teach_status, table, gallery]
        teach_button.click(on_teach, [state, name, files, texts], teach_outputs, api_name="teach")
        examples_button.click(on_examples, [state], teach_outputs, api_name="load_examples")
        clear_button.click(on_clear, [state], teach_outputs, api_name="clear")
        predict_button.click(lambda c, i, t, s: predict(backend, c, i, t, s), [state, query_image, query_text, source],
                             [label, predict_status, neighbours], api_name="predict",
                             concurrency_limit=CONCURRENT_REQUESTS)
        search_button.click(lambda i, t, k: search(backend, i, t, k), [search_image, search_text, search_k],
                            [results, search_status], api_name="search", concurrency_limit=CONCURRENT_REQUESTS)
    return app


def launch(backend: DemoBackend, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the app; returns (app, url). With block=False the server runs in a thread."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if port is not None:
        check_port_free(host, port)
    app = build_app(backend)
    allowed = [str(Path(p).parent) for p in backend.catalog.image_paths[:1]]
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

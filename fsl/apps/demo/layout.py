"""The demo's Gradio layout and its launch on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fsl.apps.demo.backend import CONCURRENT_REQUESTS, TAUGHT, DemoBackend
from fsl.apps.demo.handlers import (
    ensure_dir,
    examples_of,
    load_saved,
    load_zip,
    predict,
    remove_category,
    remove_example,
    save,
    search,
    summary,
    teach,
    teach_from_search,
    thumbnails,
)
from fsl.config import UNKNOWN
from fsl.errors import FslError
from fsl.inference.heads import DEFAULT_HEAD
from fsl.inference.photos import MAX_IMAGE_BYTES


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
        gr.Markdown(
            "# Few-shot fashion classifier\nTeach a few categories with example photos (or product texts), "
            f"then show it a new photo: it answers with a category, or “{UNKNOWN}” when the photo looks like none "
            "of them."
        )
        with gr.Accordion("About the model", open=False):
            gr.Markdown(about(backend))
        state = gr.State([])
        found = gr.State([])  # catalog rows of the last search
        with gr.Tab("Teach"):
            with gr.Row():
                with gr.Column():
                    name = gr.Textbox(label="Category name", placeholder="e.g. Sneakers", elem_id="category-name")
                    files = gr.File(
                        label="Example photos", file_count="multiple", file_types=["image"], elem_id="example-photos"
                    )
                    texts = gr.Textbox(label="Example product texts (one per line)", lines=3)
                    with gr.Row():
                        teach_button = gr.Button("Teach category", variant="primary", elem_id="teach-button")
                        examples_button = gr.Button(
                            "Load example categories", elem_id="examples-button", visible=bool(backend.example_classes)
                        )
                        clear_button = gr.Button("Clear all", elem_id="clear-button")
                    teach_status = gr.Markdown(elem_id="teach-status")
                    with gr.Accordion("Remove", open=False):
                        with gr.Row():
                            category_menu = gr.Dropdown(
                                [], label="Category", elem_id="category-menu", allow_custom_value=True
                            )
                            remove_category_button = gr.Button("Remove category")
                        with gr.Row():
                            example_menu = gr.Dropdown(
                                [], label="Example", elem_id="example-menu", allow_custom_value=True
                            )
                            remove_example_button = gr.Button("Remove example")
                    with gr.Accordion(
                        "Save and load (a support folder: fsl predict --support reads it too)", open=True
                    ):
                        with gr.Row():
                            set_name = gr.Textbox(label="Save as", placeholder="e.g. my-shoes", elem_id="set-name")
                            save_button = gr.Button("Save", elem_id="save-button")
                        download = gr.File(label="Download (zip)", interactive=False, elem_id="download")
                        with gr.Row():
                            saved_menu = gr.Dropdown(
                                backend.saved_sets(), label="Saved sets", elem_id="saved-menu", allow_custom_value=True
                            )
                            load_button = gr.Button("Load saved set", elem_id="load-button")
                        upload = gr.File(
                            label="…or upload a zip of a support folder", file_types=[".zip"], elem_id="upload-zip"
                        )
                        upload_button = gr.Button("Load zip", elem_id="load-zip-button")
                with gr.Column():
                    table = gr.Dataframe(summary([]), label="What the model knows", interactive=False, elem_id="known")
                    gallery = gr.Gallery(label="Examples", columns=6, height=260)
        with gr.Tab("Predict", elem_id="predict-tab"):
            with gr.Row():
                with gr.Column():
                    query_image = photo_input(label="Product photo", elem_id="query-image")
                    query_text = gr.Textbox(label="Product text (optional)")
                    source = gr.Radio(
                        backend.sources, value=TAUGHT, label="Classify among", visible=len(backend.sources) > 1
                    )
                    predict_button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                with gr.Column():
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                    label = gr.Label(label="Confidence", num_top_classes=5, elem_id="confidence")
                    predict_status = gr.Markdown(elem_id="predict-status")
                    neighbours = gr.Gallery(label="Nearest catalog examples", columns=4, height=220)
        with gr.Tab("Search", visible=backend.index is not None):
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
            return (
                updated,
                message,
                summary(updated),
                thumbnails(updated),
                gr.update(choices=[c.name for c in updated], value=None),
                gr.update(choices=examples_of(updated), value=None),
            )

        def on_teach(categories, name_value, files_value, texts_value):
            return refreshed(*teach(backend, categories, name_value, files_value, texts_value))

        def on_examples(categories):
            known = {c.name for c in categories}
            added = [c for c in backend.example_categories() if c.name not in known]
            updated = [*categories, *added]
            return refreshed(
                updated, f"✅ Loaded {len(added)} example categories: {', '.join(c.name for c in added) or 'none new'}."
            )

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
        remove_category_button.click(
            lambda c, n: refreshed(*remove_category(c, n)),
            [state, category_menu],
            teach_outputs,
            api_name="remove_category",
        )
        remove_example_button.click(
            lambda c, e: refreshed(*remove_example(c, e)),
            [state, example_menu],
            teach_outputs,
            api_name="remove_example",
        )
        save_button.click(on_save, [state, set_name], [teach_status, download, saved_menu], api_name="save")
        load_button.click(
            lambda c, n: refreshed(*load_saved(backend, c, n)),
            [state, saved_menu],
            teach_outputs,
            api_name="load_saved",
        )
        upload_button.click(
            lambda c, f: refreshed(*load_zip(backend, c, f)), [state, upload], teach_outputs, api_name="load_zip"
        )
        predict_button.click(
            lambda c, i, t, s: predict(backend, c, i, t, s),
            [state, query_image, query_text, source],
            [answer, label, predict_status, neighbours],
            api_name="predict",
            concurrency_limit=CONCURRENT_REQUESTS,
        )
        search_button.click(
            lambda i, t, k: search(backend, i, t, k),
            [search_image, search_text, search_k],
            [results, search_status, found],
            api_name="search",
            concurrency_limit=CONCURRENT_REQUESTS,
        )
        results.select(on_pick, None, picked)
        pick_button.click(
            lambda c, rows, i, n: refreshed(*teach_from_search(backend, c, rows, i, n)),
            [state, found, picked, pick_category],
            [state, pick_status, table, gallery, category_menu, example_menu],
            api_name="teach_from_search",
        )
    return app


def launch(backend: DemoBackend, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the app; returns (app, url). With block=False the server runs in a thread."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if port is not None:
        check_port_free(host, port)
    app = build_app(backend)
    photos = photo_folders(backend.catalog.image_paths) if backend.catalog is not None else []
    allowed = photos + [str(ensure_dir(backend.saved_root))]
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=True,
        allowed_paths=allowed,
        show_error=False,
        max_file_size=MAX_IMAGE_BYTES,
    )
    return app, url


def about(backend: DemoBackend) -> str:
    """What answers, in words and without machine paths: the "About the model" fold."""
    calibration = backend.calibration
    if calibration is not None and backend.negatives is not None:
        calibration = calibration.answering_with_negatives()
    rule = (
        f"Confidences are calibrated on {calibration.fitted_on.split(' (')[0]} (temperature "
        f"{calibration.temperature:.3g}); the answer is “{UNKNOWN}” when {calibration.rule().split(' ', 1)[1]}."
        if calibration
        else f"No calibration was fitted for this head and encoder: confidences are the raw softmax, and no photo "
        f"is answered “{UNKNOWN}” by a threshold."
    )
    if backend.negatives is not None:
        rule += (
            f" A photo nearer one of {len(backend.negatives.names)} catalog classes than any taught category is "
            f"“{UNKNOWN}” too, and the answer says which class it looks like."
        )
    catalog = (
        f"Catalog: {len(backend.catalog)} products, searchable in the Search tab."
        if backend.catalog is not None
        else f"No catalog search: {backend.catalog_note or 'start the demo with --data DIR to search a catalog'}."
    )
    return (
        f"- Photos are answered by the head **{DEFAULT_HEAD}** on the features of the encoder "
        f"`{backend.encoder.id}`, as `fsl predict --support` and the Python API answer them.\n- {rule}\n- {catalog}"
    )


MANY_FOLDERS = 64  # beyond this many photo folders, the one folder that holds them all


def photo_folders(image_paths) -> list[str]:
    """The folders Gradio may serve catalog photos from: where the photos really are. Gradio resolves
    links before it checks a path, so a dump whose photos are links into another folder (a dataset
    cache, git-annex) needs that folder, not images/. Many folders collapse into the one holding
    them all, unless that is the file system's root or a home folder (then only the first few)."""
    folders = sorted({str(Path(p).resolve().parent) for p in image_paths})
    if len(folders) <= MANY_FOLDERS:
        return folders
    common = Path(os.path.commonpath(folders))
    if len(common.parts) > 2 and common != Path.home():
        return [str(common)]
    print(f"fsl demo: catalog photos lie in {len(folders)} folders; only those of the first {MANY_FOLDERS} are shown")
    return folders[:MANY_FOLDERS]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise FslError(
                f"cannot serve on {host}:{port} ({error.strerror}); is another demo running? Stop it or pass --port N"
            ) from None

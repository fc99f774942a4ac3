from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fsl.config import EncoderConfig
from fsl.data.prepared import load_catalog
from fsl.paths import Workspace
from tests.conftest import free_port, make_slice

gradio_client = pytest.importorskip("gradio_client")
CLASSES = ["Watches", "Handbags", "Casual Shoes"]
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CALIBRATION = (
    Path(__file__).resolve().parents[1] / "fsl" / "calibration"
)  # fitted on the real data's validation classes
TAUGHT = "taught categories"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """3 real classes x 12 products, offline encoder, a configured head over the catalog's classes."""
    from fsl.apps.demo.backend import make_backend
    from fsl.apps.predict import CatalogClassifier

    root = tmp_path_factory.mktemp("demo")
    catalog = load_catalog(make_slice(root / "dump", CLASSES, 12))
    workspace = Workspace(episodes=root / "episodes", features=root / "store")
    classifier = CatalogClassifier(catalog, None, str(EXPERIMENTS / "protonet-fused-masked.yaml"), workspace=workspace)
    return make_backend(
        catalog,
        EncoderConfig("offline"),
        workspace,
        classifier,
        calibration_dir=CALIBRATION,
        saved_root=root / "saved",
    )


@pytest.fixture(scope="module")
def served(backend):
    """The demo on 127.0.0.1."""
    from fsl.apps.demo.layout import launch

    app, url = launch(backend, port=None, block=False)
    yield url, backend.catalog
    app.close()


def photos(catalog, name):
    return [p for p, label in zip(catalog.image_paths, catalog.labels()) if label == name]


def client(url):
    return gradio_client.Client(url, verbose=False)


def teach(session, name, files=(), texts=""):
    return session.predict(name, [gradio_client.handle_file(str(f)) for f in files], texts, api_name="/teach")


def test_demo_binds_to_localhost(served):
    assert served[0].startswith("http://127.0.0.1:")


def test_teach_three_categories_then_predict_held_out_photos(served):
    url, catalog = served
    session = client(url)
    for name in CLASSES:
        status, table, *_ = teach(session, name, photos(catalog, name)[:5])
        assert status.startswith("✅")
    assert [row[0] for row in table["data"]] == CLASSES
    correct = total = 0
    for name in CLASSES:
        for path in photos(catalog, name)[5:9]:
            _, label, status, neighbours = session.predict(
                gradio_client.handle_file(str(path)), "", TAUGHT, api_name="/predict"
            )
            correct += label["label"] == name
            total += 1
            assert len(label["confidences"]) == 3 and len(neighbours) == 4
    assert correct / total > 0.7  # chance is 1/3


def test_text_only_examples_and_queries_work(served):
    session = client(served[0])
    teach(session, "Watch", texts="Titan Men Silver Analog Watch\nFastrack Women Black Digital Watch")
    teach(session, "Bag", texts="Baggit Women Brown Handbag\nLavie Women Red Tote Bag")
    _, label, status, _ = session.predict(None, "Casio men's steel watch", TAUGHT, api_name="/predict")
    assert label["label"] == "Watch" and "Best guess" in status


def test_search_returns_the_right_class_first(served):
    url, catalog = served
    session = client(url)
    gallery, status = session.predict(None, "leather handbag for women", 5, api_name="/search")
    assert gallery[0]["caption"].startswith("Handbags")
    watch = photos(catalog, "Watches")[-1]
    gallery, _ = session.predict(gradio_client.handle_file(str(watch)), "", 3, api_name="/search")
    assert gallery[0]["caption"].startswith("Watches") and len(gallery) == 3


def test_example_categories_load_in_one_click(served):
    session = client(served[0])
    status, table, gallery, *_ = session.predict(api_name="/load_examples")
    assert status.startswith("✅ Loaded 3") and len(table["data"]) == 3 and gallery


def test_every_bad_input_gets_a_message(served, tmp_path):
    url, catalog = served
    session = client(url)
    _, _, status, _ = session.predict(None, "a shirt", TAUGHT, api_name="/predict")
    assert "No categories yet" in status

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    status, *_ = teach(session, "Broken", [not_image])
    assert "not an image this app can read" in status

    huge = tmp_path / "huge.png"
    Image.new("RGB", (8000, 6000), "white").save(huge)
    status, *_ = teach(session, "Huge", [huge])
    assert "megapixels" in status

    assert "has no examples" in teach(session, "Empty")[0]
    assert "Give the category a name" in teach(session, "", photos(catalog, "Watches")[:1])[0]

    teach(session, "Watches", photos(catalog, "Watches")[:2])
    _, _, status, _ = session.predict(
        gradio_client.handle_file(str(photos(catalog, "Watches")[3])), "", TAUGHT, api_name="/predict"
    )
    assert "at least two categories" in status
    assert "already exists" in teach(session, "watches", photos(catalog, "Watches")[2:3])[0]
    teach(session, "Bags", photos(catalog, "Handbags")[:2])
    assert "Give a photo, a product text, or both" in session.predict(None, " ", TAUGHT, api_name="/predict")[2]
    assert "Search by a photo, a text, or both" in session.predict(None, "", 3, api_name="/search")[1]


def test_bad_uploads_to_predict_and_search_get_the_teach_tab_s_messages(served, tmp_path):
    """Gradio's own image decoder never sees the file: the app checks it and answers in words."""
    url, catalog = served
    session = client(url)
    teach(session, "Watches", photos(catalog, "Watches")[:2])
    teach(session, "Bags", photos(catalog, "Handbags")[:2])
    not_image = tmp_path / "fake.jpg"
    not_image.write_bytes(b"GIF89a but not really" * 10)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)  # a few KB on disk, 81 megapixels decoded
    for bad, message in ((not_image, "not an image this app can read"), (bomb, "megapixels")):
        _, _, status, _ = session.predict(gradio_client.handle_file(str(bad)), "", TAUGHT, api_name="/predict")
        assert message in status
        gallery, status = session.predict(gradio_client.handle_file(str(bad)), "", 3, api_name="/search")
        assert message in status and gallery == []
    lines = "\n".join(f"Product {i}" for i in range(2000))
    status, *_ = teach(session, "Many", texts=lines)
    assert "2000 text lines; up to 100" in status
    _, _, status, _ = session.predict(None, "x" * 5000, TAUGHT, api_name="/predict")
    assert "5000 characters" in status


def test_predictions_of_several_clients_run_side_by_side(served, backend, monkeypatch):
    import threading
    import time

    url, catalog = served
    sessions = [client(url) for _ in range(4)]
    for session in sessions:
        session.predict(api_name="/load_examples")
    real_embed = backend.embed

    def slow_embed(*args):
        time.sleep(1.0)  # a slow model: served one at a time, 4 requests would take 4 s
        return real_embed(*args)

    monkeypatch.setattr(backend, "embed", slow_embed)
    answers = []
    photo = gradio_client.handle_file(str(photos(catalog, "Watches")[-1]))
    threads = [
        threading.Thread(target=lambda s=s: answers.append(s.predict(photo, "", TAUGHT, api_name="/predict")))
        for s in sessions
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and all("Best guess" in status or "Unknown" in status for _, _, status, _ in answers)
    assert time.perf_counter() - started < 3.0


def test_a_person_in_a_real_browser_teaches_predicts_saves_and_loads(served, backend, tmp_path):
    from tests.browser import CHROMEDRIVER, CHROMIUM, drive_demo

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make test` installs them)")
    url, catalog = served
    watches = photos(catalog, "Watches")
    shot = tmp_path / "demo.png"
    before, after = drive_demo(url, watches[:4], watches[-1], shot, backend.saved_root / ".zips" / "browser-set.zip")
    assert any(word in before for word in ("Best guess", "Unknown"))
    assert after.split("\n")[0] == before.split("\n")[0]  # the same answer from the categories loaded back
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_predict_among_the_catalog_classes_of_a_checkpoint(served):
    url, catalog = served
    session = client(url)
    source = "protonet-fused-masked: 3 catalog classes"  # the head's name and the classes it chooses among
    products = catalog.products.set_index("image_path")
    for name in CLASSES:
        photo = photos(catalog, name)[-1]
        _, label, status, _ = session.predict(
            gradio_client.handle_file(str(photo)),
            products.at[str(photo), "productDisplayName"],
            source,
            api_name="/predict",
        )
        assert label["label"] == name and "protonet-fused-masked" in status and "offline" in status
    # a fused head without the product text would read a zero text half: refused, in words
    _, label, status, _ = session.predict(gradio_client.handle_file(str(photo)), "", source, api_name="/predict")
    assert "give the text too" in status and not label
    _, _, status, _ = session.predict(None, "a watch", source, api_name="/predict")
    assert "classifies photos" in status


def answer_of(session, photo):
    answer, label, status, _ = session.predict(gradio_client.handle_file(str(photo)), "", TAUGHT, api_name="/predict")
    return answer, {c["label"]: round(c["confidence"], 6) for c in label["confidences"]}, status


def test_saved_categories_load_back_from_the_server_and_from_the_zip_with_identical_predictions(served, backend):
    url, catalog = served
    session = client(url)
    teach(session, "Watches", photos(catalog, "Watches")[:4], texts="Titan Men Silver Analog Watch")
    teach(session, "Bags", photos(catalog, "Handbags")[:3])
    teach(session, "Shoes", photos(catalog, "Casual Shoes")[:3])
    queries = [photos(catalog, name)[-1] for name in CLASSES]
    before = [answer_of(session, q)[:2] for q in queries]
    status, archive, _ = session.predict("round-trip", api_name="/save")
    assert status.startswith("✅ Saved 3 categories") and archive.endswith("round-trip.zip")
    saved = backend.saved_root / "round-trip"
    assert sorted(p.name for p in saved.iterdir()) == ["Bags", "Shoes", "Watches", "texts.csv"]
    assert len(list((saved / "Watches").iterdir())) == 4

    session.predict(api_name="/clear")
    status, table, *_ = session.predict("round-trip", api_name="/load_saved")
    assert status.startswith("✅ Loaded 3 categories") and sorted(r[0] for r in table["data"]) == [
        "Bags",
        "Shoes",
        "Watches",
    ]
    assert [r[1:] for r in sorted(table["data"])] == [[3, 0], [3, 0], [4, 1]]  # photos, texts per category
    assert [answer_of(session, q)[:2] for q in queries] == before

    fresh = client(url)  # another visitor, from the downloaded zip
    status, *_ = fresh.predict(gradio_client.handle_file(archive), api_name="/load_zip")
    assert status.startswith("✅ Loaded 3 categories")
    assert [answer_of(fresh, q)[:2] for q in queries] == before


def test_the_saved_folder_is_a_support_folder_for_fsl_predict(served, backend, tmp_path):
    from fsl.apps.support import read_support_folder

    url, catalog = served
    session = client(url)
    teach(session, "Watches", photos(catalog, "Watches")[:2])
    teach(session, "Bags", photos(catalog, "Handbags")[:2], texts="a leather bag\na red tote")
    session.predict("for-predict", api_name="/save")
    support = read_support_folder(backend.saved_root / "for-predict")
    assert support.classes == ["Bags", "Watches"] and len(support.photos) == 4
    assert support.category_texts == {"Bags": ["a leather bag", "a red tote"]}  # every text of a category


def test_bad_saves_and_loads_are_messages_and_change_nothing(served, backend, tmp_path):
    import zipfile

    url, catalog = served
    session = client(url)
    assert "Nothing to save" in session.predict("empty", api_name="/save")[0]
    teach(session, "Watches", photos(catalog, "Watches")[:2])
    teach(session, "Bags", photos(catalog, "Handbags")[:2])
    assert "cannot be used as a file name" in session.predict("../escape", api_name="/save")[0]
    assert not (backend.saved_root.parent / "escape").exists()
    assert "Pick a saved set" in session.predict("no-such-set", api_name="/load_saved")[0]
    uploads = backend.saved_root / ".uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    before = set(uploads.iterdir())  # what earlier, accepted uploads keep (their photos are shown)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as bundle:
        bundle.writestr("../outside.txt", "x")
    status, table, *_ = session.predict(gradio_client.handle_file(str(evil)), api_name="/load_zip")
    assert "points outside the folder" in status and len(table["data"]) == 2  # the taught ones are kept
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not a zip")
    assert "not a readable zip" in session.predict(gradio_client.handle_file(str(broken)), api_name="/load_zip")[0]
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as bundle:
        bundle.write(photos(catalog, "Watches")[0], "Watches/a.jpg")
    assert (
        "a choice needs at least two" in session.predict(gradio_client.handle_file(str(one)), api_name="/load_zip")[0]
    )
    assert set(uploads.iterdir()) == before  # rejected uploads leave nothing behind


def test_remove_an_example_then_a_category(served):
    url, catalog = served
    session = client(url)
    teach(session, "Watches", photos(catalog, "Watches")[:3], texts="steel watch")
    teach(session, "Bags", photos(catalog, "Handbags")[:2])
    first = f"Watches / photo 1: {photos(catalog, 'Watches')[0].name}"
    status, table, *_ = session.predict(first, api_name="/remove_example")
    assert status.startswith("Removed Watches / photo 1") and table["data"][0][1:] == [2, 1]
    status, table, *_ = session.predict("Watches / text 1: steel watch", api_name="/remove_example")
    assert table["data"][0][1:] == [2, 0]
    status, table, *_ = session.predict("Watches", api_name="/remove_category")
    assert status == "Removed “Watches”." and [r[0] for r in table["data"]] == ["Bags"]
    assert "Pick a category" in session.predict("Nope", api_name="/remove_category")[0]


def test_teach_from_search_results(served):
    url, catalog = served
    session = client(url)
    assert "Search first" in session.predict(0, "Bags", api_name="/teach_from_search")[0]
    gallery, _ = session.predict(None, "leather handbag for women", 4, api_name="/search")
    status, table, *_ = session.predict(0, "Bags", api_name="/teach_from_search")
    assert status.startswith("✅ Added") and table["data"] == [["Bags", 1, 1]]
    assert "already an example" in session.predict(0, "Bags", api_name="/teach_from_search")[0]
    session.predict(1, "Bags", api_name="/teach_from_search")
    session.predict(None, "analog wrist watch", 3, api_name="/search")
    status, table, *_ = session.predict(0, "Watches", api_name="/teach_from_search")
    assert [r[0] for r in table["data"]] == ["Bags", "Watches"] and table["data"][0][1] == 2
    answer, confidences, _ = answer_of(session, photos(catalog, "Watches")[-1])
    assert max(confidences, key=confidences.get) == "Watches"


def test_a_category_outside_the_taught_ones_is_none_of_these(served):
    """With the calibration fitted on the real data's validation classes (offline encoder)."""
    url, catalog = served
    session = client(url)
    teach(session, "Watches", photos(catalog, "Watches")[:5])
    teach(session, "Bags", photos(catalog, "Handbags")[:5])
    answers = [answer_of(session, q) for q in photos(catalog, "Casual Shoes")[:8]]
    assert sum(a == "unknown" for a, _, _ in answers) >= 5
    assert all("fitted on base and validation classes" in status and "offline" in status for _, _, status in answers)
    known = [answer_of(session, q)[0] for q in photos(catalog, "Watches")[5:9] + photos(catalog, "Handbags")[5:9]]
    assert sum(a in ("Watches", "Bags") for a in known) >= 6


def test_a_second_visitor_saving_under_a_taken_name_is_refused_and_the_first_set_kept(served, backend):
    """Saved sets are shared by every visitor: one saving under another's name replaced it in silence."""
    url, catalog = served
    first, second = client(url), client(url)
    teach(first, "Watches", photos(catalog, "Watches")[:2])
    teach(first, "Bags", photos(catalog, "Handbags")[:2])
    assert first.predict("taken-name", api_name="/save")[0].startswith("✅ Saved 2 categories")
    teach(second, "Shoes", photos(catalog, "Casual Shoes")[:2])
    teach(second, "Bags", photos(catalog, "Handbags")[2:4])
    status, archive, _ = second.predict("taken-name", api_name="/save")
    assert "exists already" in status and archive is None
    assert sorted(p.name for p in (backend.saved_root / "taken-name").iterdir()) == ["Bags", "Watches"]


def test_a_dump_whose_photos_are_links_is_served_from_where_they_lie(tmp_path):
    """Gradio resolves a link before it checks the path against the folders it may serve: a dump of
    linked photos (a dataset cache, git-annex) needs the folders the links point into."""
    import os

    from gradio.utils import is_allowed_file

    from fsl.apps.demo.layout import MANY_FOLDERS, photo_folders

    (tmp_path / "objects").mkdir()
    (tmp_path / "dump" / "images").mkdir(parents=True)
    links = []
    for i in range(3):
        Image.new("RGB", (32, 32), "red").save(tmp_path / "objects" / f"{i}.jpg")
        links.append(tmp_path / "dump" / "images" / f"{i}.jpg")
        os.symlink(tmp_path / "objects" / f"{i}.jpg", links[-1])
    assert not is_allowed_file(links[0], [], [str(links[0].parent)], [])[0]  # images/ alone is refused
    assert all(is_allowed_file(link, [], photo_folders(links), [])[0] for link in links)
    scattered = [tmp_path / "objects" / f"k{i}" / "p.jpg" for i in range(MANY_FOLDERS + 1)]
    assert photo_folders(scattered) == [str((tmp_path / "objects").resolve())]  # many folders: the one above


def start_demo(folder: Path, env: dict, *options: str):
    """`fsl demo` in `folder`, as a user starts it; returns (process, url, what it printed) once it serves."""
    import subprocess
    import sys
    import time

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fsl.cli", "demo", "--port", str(port), *options],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if line.startswith("demo ready"):
            return process, f"http://127.0.0.1:{port}/", "".join(lines)
    process.kill()
    raise AssertionError("fsl demo did not start:\n" + "".join(lines)[-3000:])


def test_the_demo_starts_from_an_empty_folder_without_a_catalog_and_answers(own_folders, small_dump, tmp_path):
    """No dump, no FSL_DATA: Teach and Predict work from uploads; a catalog at hand but not embedded
    is left as it is (search off, said), never embedded to start."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "FSL_DATA"}
    env.update(FSL_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    (tmp_path / "empty").mkdir()
    process, url, said = start_demo(tmp_path / "empty", env, "--model", "FSL-Tiny", "--encoder", "clip",
                                    "--pretrained", "none")  # fmt: skip
    try:
        session = client(url)
        categories = sorted(p for p in (own_folders / "support").iterdir())
        for category in categories:
            status, *_ = teach(session, category.name, sorted(category.iterdir()))
            assert status.startswith("✅"), status
        query = sorted((own_folders / "support" / categories[0].name).iterdir())[0]
        answer, label, status, neighbours = session.predict(
            gradio_client.handle_file(str(query)), "", TAUGHT, api_name="/predict"
        )
        assert label["label"] in {c.name for c in categories} and neighbours == []
        gallery, status = session.predict(None, "a watch", 4, api_name="/search")
        assert gallery == [] and "No catalog to search" in status
    finally:
        process.kill()
    env["FSL_DATA"] = str(small_dump)
    (tmp_path / "with-catalog").mkdir()
    process, _, said = start_demo(tmp_path / "with-catalog", env, "--model", "FSL-Tiny", "--encoder", "clip",
                                  "--pretrained", "none")  # fmt: skip
    process.kill()
    assert "is not embedded with this encoder" in said and "catalog search and examples are off" in said
    assert not list((tmp_path / "cache" / "features").glob("*"))  # nothing was embedded

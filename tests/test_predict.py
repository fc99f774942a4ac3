"""`fsl predict --support`: your own categories from a folder of example photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsl.cli.main import main
from fsl.inference.calibration import Calibration
from fsl.inference.heads import DEFAULT_HEAD
from fsl.inference.negatives import find_negatives
from fsl.paths import Workspace

CLASSES = ["Watches", "Handbags", "Casual Shoes"]
OFFLINE_ID = "offline:efficientnet-lite0+all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "fsl" / "calibration"  # fitted by `fsl calibrate` on the real data's validation classes


@pytest.fixture(scope="module")
def folders(small_dump, tmp_path_factory):
    """A support folder (3 categories x 5 real photos) and a folder of 5 held-out photos of each."""
    from fsl.data.prepared import load_catalog

    root = tmp_path_factory.mktemp("support")
    catalog = load_catalog(small_dump)
    truth = {}
    for name in CLASSES:
        photos = [p for p, label in zip(catalog.image_paths, catalog.labels()) if label == name]
        (root / "support" / name).mkdir(parents=True)
        (root / "photos").mkdir(exist_ok=True)
        for photo in photos[:5]:
            shutil.copy(photo, root / "support" / name / photo.name)
        for photo in photos[5:10]:
            shutil.copy(photo, root / "photos" / photo.name)
            truth[photo.name] = name
    return root, truth


def predict(small_dump, root: Path, support: Path, out: Path, *extra: str, images: str = "photos") -> int:
    return main(
        [
            "predict",
            "--data",
            str(small_dump),
            "--support",
            str(support),
            "--images",
            str(root / images),
            "--out",
            str(out),
            "--store-root",
            str(root / "store"),
            "--calibration-dir",
            str(CALIBRATION),
            *extra,
        ]
    )


def test_own_categories_from_a_folder_classify_held_out_photos_with_a_contact_sheet(small_dump, folders, capsys):
    root, truth = folders
    out = root / "predictions.csv"
    assert predict(small_dump, root, root / "support", out) == 0
    printed = capsys.readouterr().out
    assert "3 categories from" in printed
    # the catalog is not embedded: it is never embedded for a few photos, and the output says so
    assert "catalog extras off: the catalog is not embedded with this encoder" in printed
    assert not (root / "store").exists()
    table = pd.read_csv(out)
    assert set(table["file"]) == set(truth) and table["error"].isna().all()
    assert table["nearest_id"].isna().all()
    correct = (table["label_1"] == table["file"].map(truth)).mean()
    assert correct >= 0.8  # chance is 1/3
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # once it is embedded, the closest catalog product of each photo (search index): these photos are
    # catalog products, so itself
    assert main(["embed", "--data", str(small_dump), "--store-root", str(root / "store")]) == 0
    assert predict(small_dump, root, root / "support", out) == 0
    assert "nearest catalog example on" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert (table["nearest_id"].astype(str) + ".jpg" == table["file"]).all()
    assert (table["nearest_label"] == table["file"].map(truth)).all()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.real_data  # the shipped calibration was fitted on real photos
def test_photos_of_a_category_not_in_the_support_are_mostly_unknown(small_dump, folders, tmp_path, capsys):
    """The unknown rule as shipped: calibrated on the real data's validation classes (offline encoder)."""
    from fsl.data.prepared import load_catalog

    root, truth = folders
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "photos", mixed)
    catalog = load_catalog(small_dump)
    tshirts = [p for p, label in zip(catalog.image_paths, catalog.labels()) if label == "Tshirts"][:8]
    for photo in tshirts:
        shutil.copy(photo, mixed / photo.name)
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                "--data",
                str(small_dump),
                "--support",
                str(root / "support"),
                "--images",
                str(mixed),
                "--out",
                str(out),
                "--store-root",
                str(root / "store"),
                "--calibration-dir",
                str(CALIBRATION),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        f"head {DEFAULT_HEAD}, encoder offline:efficientnet-lite0+all-MiniLM-L6-v2; calibration {CALIBRATION}"
        in printed
    )
    assert "fitted on base and validation classes" in printed and ' "unknown"' in printed
    table = pd.read_csv(out).set_index("file")
    unknown = table.loc[[p.name for p in tshirts], "answer"]
    known = table.loc[list(truth), "answer"]
    assert (unknown == "unknown").mean() > 0.5  # a category not in the support: "none of these", mostly
    assert (known == pd.Series(truth)).mean() >= 0.6  # the taught ones are still answered, mostly right
    assert set(table["answer"]) <= {*CLASSES, "unknown"}
    shipped = Calibration.load(CALIBRATION / f"{DEFAULT_HEAD}.json")
    threshold = shipped.answering_with_negatives().threshold_at(len(CLASSES))  # for 3 taught, beside the negatives
    assert threshold < shipped.threshold_at(len(CLASSES))  # they turn untaught photos away: it lets more through
    # the rule: the score, or nearer a shipped known negative than any taught category (which it then names)
    turned_away = table["looks_like"].notna() & (table["score"] >= threshold)
    assert ((table["score"] < threshold) | turned_away).eq(table["answer"] == "unknown").all()
    assert set(table["looks_like"].dropna()) <= set(find_negatives(OFFLINE_ID).names) - set(CLASSES)


def test_without_a_calibration_confidences_are_raw_and_it_says_so(small_dump, folders, tmp_path, capsys):
    root, _ = folders
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                "--data",
                str(small_dump),
                "--support",
                str(root / "support"),
                "--images",
                str(root / "photos"),
                "--out",
                str(out),
                "--store-root",
                str(root / "store"),
                "--calibration-dir",
                str(tmp_path / "none"),
            ]
        )
        == 0
    )
    assert 'uncalibrated (raw softmax, no "unknown" threshold)' in capsys.readouterr().out
    table = pd.read_csv(out)
    assert (table["answer"] == table["label_1"]).where(table["looks_like"].isna(), table["answer"] == "unknown").all()


def test_a_fused_head_without_texts_falls_back_to_its_image_part_and_says_so(small_dump, folders, tmp_path, capsys):
    root, truth = folders
    out = tmp_path / "p.csv"
    assert (
        predict(
            small_dump,
            root,
            root / "support",
            out,
            "--config",
            str(REPO / "experiments/linear-probe-fused-masked.yaml"),
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "linear-probe-fused-masked fuses image and text, but no --texts were given: classifying with its "
        "image part only (fusion: image)"
    ) in captured.err
    # the image-only head's calibration
    assert "linear-probe-fused-masked--image-part, encoder" in captured.out
    fitted = f"calibration {CALIBRATION / 'linear-probe-image.json'}, fitted on base and validation classes"
    assert fitted in captured.out
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"file": list(truth)[:3], "text": ["a product"] * 3}).to_csv(texts, index=False)
    assert (
        predict(
            small_dump,
            root,
            root / "support",
            out,
            "--config",
            str(REPO / "experiments/linear-probe-fused-masked.yaml"),
            "--texts",
            str(texts),
        )
        == 0
    )
    assert f"{len(truth) - 3} of {len(truth)} photos have no text in --texts" in capsys.readouterr().err
    trained = tmp_path / "meta-fused.yaml"
    trained.write_text("method: protonet\nmethod_options: {projection: linear}\nfusion: concat\ntrain: {steps: 5}\n")
    assert predict(small_dump, root, root / "support", out, "--config", str(trained)) == 2
    assert "was trained on image and text features, but no --texts were given" in capsys.readouterr().err


def test_classes_restricts_the_candidates(small_dump, folders, tmp_path, capsys):
    root, truth = folders
    out = tmp_path / "p.csv"
    config = str(REPO / "experiments/protonet-image.yaml")
    base = [
        "predict",
        "--data",
        str(small_dump),
        "--config",
        config,
        "--images",
        str(root / "photos"),
        "--out",
        str(out),
        "--store-root",
        str(root / "store"),
        "--calibration-dir",
        str(CALIBRATION),
    ]
    assert main([*base, "--classes", "Watches,Handbags"]) == 0
    assert "2 catalog classes" in capsys.readouterr().out
    assert set(pd.read_csv(out)["label_1"]) == {"Watches", "Handbags"}
    assert main([*base, "--classes", "Watches,Sarees"]) == 2
    assert "--classes: Sarees: not articleType classes of the catalog" in capsys.readouterr().err
    assert main([*base, "--classes", "split:novel"]) == 2  # the slice has no class split
    assert "--classes split:novel: no class split at" in capsys.readouterr().err
    assert predict(small_dump, root, root / "support", out, "--classes", "Watches,Handbags") == 0
    assert set(pd.read_csv(out)["label_1"]) == {"Watches", "Handbags"}
    assert predict(small_dump, root, root / "support", out, "--classes", "Watches,Sneakers") == 2
    assert "--classes: Sneakers: not among the categories of" in capsys.readouterr().err


def test_bad_support_folders_are_messages_naming_the_folder(small_dump, folders, tmp_path, capsys):
    root, _ = folders
    one = tmp_path / "one"
    shutil.copytree(root / "support" / "Watches", one / "Watches")
    assert predict(small_dump, root, one, tmp_path / "p.csv") == 2
    assert "has 1 category folder(s); a choice needs at least two" in capsys.readouterr().err

    empty = shutil.copytree(root / "support", tmp_path / "empty")
    (empty / "Nothing").mkdir()
    (empty / "Nothing" / "notes.txt").write_text("no photo here")
    assert predict(small_dump, root, empty, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert f"category folder {empty / 'Nothing'} has no usable photo" in err

    messy = shutil.copytree(root / "support", tmp_path / "messy")
    (messy / "Watches" / "readme.txt").write_text("not a photo")
    (messy / "Watches" / "broken.jpg").write_bytes(b"not a jpeg")
    twin = next((messy / "Handbags").iterdir())
    shutil.copy(twin, messy / "Watches" / twin.name)
    assert predict(small_dump, root, messy, tmp_path / "p.csv") == 0
    err = capsys.readouterr().err
    assert "skipped support file Watches/readme.txt: not a photo (.txt)" in err
    assert "skipped support file Watches/broken.jpg: broken.jpg is not an image" in err
    assert f"the same photo is in two categories: Handbags/{twin.name} and Watches/{twin.name}" in err


def test_predict_needs_a_head_or_a_support_folder(small_dump, tmp_path, capsys):
    assert main(["predict", "--data", str(small_dump), "--images", str(tmp_path)]) == 2
    assert "give --support DIR" in capsys.readouterr().err


def test_a_config_with_training_and_no_checkpoint_is_refused_not_run_untrained(small_dump, folders, tmp_path, capsys):
    root, _ = folders
    config = tmp_path / "meta.yaml"
    config.write_text(
        "method: protonet\nmethod_options: {projection: linear}\nfusion: image\n"
        "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\ntrain: {steps: 5}\n"
    )
    assert (
        main(
            [
                "predict",
                "--data",
                str(small_dump),
                "--config",
                str(config),
                "--images",
                str(root / "photos"),
                "--out",
                str(tmp_path / "p.csv"),
                "--store-root",
                str(tmp_path / "store"),
                "--shots",
                "2",
            ]
        )
        == 2
    )
    assert "no checkpoint at checkpoints/meta/best" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_text_examples_without_a_photo_are_reported_not_silently_dropped(small_dump, folders, tmp_path, capsys):
    root, _ = folders
    support = shutil.copytree(root / "support", tmp_path / "support")
    (support / "texts.csv").write_text("file,text\nWatches/,a steel analog watch\n")  # as the demo saves them
    assert predict(small_dump, root, support, tmp_path / "p.csv") == 0
    assert "1 text example(s) without a photo" in capsys.readouterr().err


def test_predict_refuses_an_out_that_is_no_csv_lists_inner_folders_and_conflicting_texts(
    small_dump, folders, tmp_path, capsys
):
    """--out x.png wrote the CSV over the contact sheet; a folder inside a category was ignored in
    silence; two different texts for one photo were taken as they came."""
    root, _ = folders
    support = Path(shutil.copytree(root / "support", tmp_path / "support"))
    assert predict(small_dump, root, support, tmp_path / "x.png") == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "x.png").exists()

    inner = support / "Watches" / "more"
    inner.mkdir()
    shutil.copy(next((support / "Watches").glob("*.jpg")), inner / "a.jpg")
    assert predict(small_dump, root, support, tmp_path / "p.csv") == 0
    assert "skipped support file Watches/more/: a folder inside a category" in capsys.readouterr().err

    photo = next((support / "Handbags").glob("*.jpg")).name
    (support / "texts.csv").write_text(f"file,text\nHandbags/{photo},Red tote\nHandbags/{photo},Blue tote\n")
    assert predict(small_dump, root, support, tmp_path / "q.csv") == 2
    assert f"gives 'Handbags/{photo}' two different texts (lines 2 and 3)" in capsys.readouterr().err


def test_a_short_write_is_a_message_naming_the_file(tmp_path):
    """numpy reports a full disk as '600 requested and 496 written', with no errno: named now."""
    from fsl.errors import FslError
    from fsl.files import atomic_path

    target = tmp_path / "x.npy"
    with pytest.raises(FslError, match=r"cannot write .*x.npy: the write stopped short .*most likely a full disk"):
        with atomic_path(target):
            raise OSError("600 requested and 496 written")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_every_file_of_the_images_folder_has_a_row(own_folders, tmp_path, monkeypatch):
    import os

    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FSL_DATA", raising=False)
    images = shutil.copytree(own_folders / "query", tmp_path / "images")
    photo = Image.open(next(images.iterdir())).convert("RGB")
    photo.save(images / "still.gif")
    photo.save(images / "scan.tif")
    (images / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    os.symlink(images / "gone.jpg", images / "dangling.jpg")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(images / "deep.png")
    assert main(["predict", "--support", str(own_folders / "support"), "--images", str(images),
                 "--config", str(own_folders / "tiny.yaml"), "--out", "p.csv"]) == 0  # fmt: skip
    rows = pd.read_csv("p.csv", keep_default_na=False).set_index("file")
    assert len(rows) == len(list(images.iterdir())) and list(rows.index) == sorted(rows.index)
    assert rows.loc["phone.heic", "error"].startswith("not a photo fsl reads (.heic)")
    assert "broken or looping link" in rows.loc["dangling.jpg", "error"]
    for readable in ("still.gif", "scan.tif", "deep.png"):
        assert rows.loc[readable, "error"] == "" and rows.loc[readable, "label_1"], readable


def test_caches_default_to_the_user_cache_so_a_second_folder_embeds_nothing(own_folders, tmp_path):
    """Without FSL_CACHE the caches live in the platform's user cache folder (XDG_CACHE_HOME here), not
    in the folder fsl runs from; a ./.fsl an older fsl left behind is used as it is, with a note."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("FSL_CACHE", "FSL_DATA")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "fsl.cli", "predict", "--support", str(own_folders / "support"), "--images",
               str(own_folders / "query"), "--config", str(own_folders / "tiny.yaml"), "--out", "p.csv"]  # fmt: skip
    said = {}
    for folder in ("first", "second", "old"):
        (tmp_path / folder).mkdir()
        if folder == "old":
            (tmp_path / folder / ".fsl").mkdir()
        run = subprocess.run(command, cwd=tmp_path / folder, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        said[folder] = run.stdout + run.stderr
    photos = len(list((own_folders / "query").iterdir())) + len(list((own_folders / "support").rglob("*.jpg")))
    assert f"(0 embeddings cached, {photos} computed)" in said["first"]
    assert f"({photos} embeddings cached, 0 computed)" in said["second"]
    assert (tmp_path / "xdg" / "fsl" / "embeddings").is_dir() and not (tmp_path / "first" / ".fsl").exists()
    assert "where an older fsl kept them" in said["old"] and f"(0 embeddings cached, {photos} computed)" in said["old"]


def test_the_api_fsl_predict_the_demo_and_a_catalog_head_answer_alike_through_one_core(
    small_dump, folders, tmp_path, monkeypatch
):
    """One support folder, four ways in: FewShotClassifier.predict, `fsl predict --support`, the demo's
    Predict tab (categories taught from the same photos) and a catalog head given the folder
    (CatalogClassifier, what `fsl predict --checkpoint/--config --support` uses). Each photo gets the
    same answer, confidences and "none of these" score from each, every one through the core."""
    from fsl.apps.classifier import FewShotClassifier
    from fsl.apps.demo.backend import TAUGHT, make_backend
    from fsl.apps.demo.handlers import predict as demo_predict
    from fsl.apps.predict import CatalogClassifier
    from fsl.apps.support import Category, read_support_folder
    from fsl.config import EncoderConfig
    from fsl.data.prepared import load_catalog
    from fsl.inference.classifier import SupportSetClassifier

    answered = []
    core_answer = SupportSetClassifier.answer

    def spy(self, queries):
        answers = core_answer(self, queries)
        answered.extend(answers)
        return answers

    monkeypatch.setattr(SupportSetClassifier, "answer", spy)
    root, _ = folders
    support = root / "support"
    photos = sorted((root / "photos").iterdir())

    api = FewShotClassifier.from_folder(support, calibration_dir=CALIBRATION).predict(photos)
    assert api[0].known_score is not None and answered == api  # calibrated, and answered by the core
    assert predict(small_dump, root, support, tmp_path / "cli.csv") == 0
    cli = pd.read_csv(tmp_path / "cli.csv").set_index("file")
    assert len(answered) == 2 * len(photos)

    backend = make_backend(None, EncoderConfig("offline"), calibration_dir=CALIBRATION, saved_root=tmp_path / "saved")
    categories = [
        Category(folder.name, [backend.embed(str(p), None)[0] for p in sorted(folder.iterdir())])
        for folder in sorted(support.iterdir())
    ]
    demo = [demo_predict(backend, categories, str(photo), None, TAUGHT) for photo in photos]
    assert len(answered) == 3 * len(photos)

    catalog_head = CatalogClassifier(
        load_catalog(small_dump),
        None,
        str(REPO / "experiments" / "linear-probe-image.yaml"),  # the default head, as a catalog config
        workspace=Workspace(features=tmp_path / "store"),
        support=read_support_folder(support),
        texts="no --texts were given",
        calibration_dir=CALIBRATION,
    )
    catalog = catalog_head.answer_features(catalog_head.embed_photos(photos))
    assert len(answered) == 4 * len(photos)

    for photo, ours, (demo_label, demo_confidences, _, _), theirs in zip(photos, api, demo, catalog):
        row = cli.loc[photo.name]
        assert ours.label == row["answer"] == demo_label == theirs.label
        assert ours.top[0][0] == row["label_1"] == next(iter(demo_confidences)) == theirs.top[0][0]
        assert ours.confidence == pytest.approx(row["confidence_1"], abs=1e-4)
        assert dict(ours.top) == pytest.approx(demo_confidences, abs=1e-5)
        assert dict(ours.top) == pytest.approx(dict(theirs.top), abs=1e-5)
        assert ours.known_score == pytest.approx(row["score"], rel=1e-5)
        assert ours.known_score == pytest.approx(theirs.known_score, rel=1e-4)


@pytest.mark.real_data  # the offline encoder's features of real photos and their product texts
def test_a_fused_head_meets_the_known_negatives_alike_in_the_api_and_as_a_catalog_config(small_dump, folders, tmp_path):
    from fsl.apps.classifier import FewShotClassifier
    from fsl.apps.predict import CatalogClassifier
    from fsl.apps.support import read_support_folder
    from fsl.data.prepared import load_catalog
    from fsl.inference.heads import FUSED_DEFAULT_HEAD

    root, _ = folders
    catalog = load_catalog(small_dump)
    text_of = dict(zip(catalog.ids, catalog.texts()))
    shutil.copytree(root / "support", tmp_path / "support")
    photos = sorted((tmp_path / "support").rglob("*.jpg"))
    files = [p.relative_to(tmp_path / "support").as_posix() for p in photos]
    texts = pd.DataFrame({"file": files, "text": [text_of[int(p.stem)] for p in photos]})
    texts.to_csv(tmp_path / "support" / "texts.csv", index=False)
    support = read_support_folder(tmp_path / "support")
    queries = sorted((root / "photos").iterdir())
    query_texts = [text_of[int(p.stem)] for p in queries]

    api = FewShotClassifier.from_support(support, FUSED_DEFAULT_HEAD, calibration_dir=CALIBRATION)
    assert api.negatives is not None and api.calibration.taught_right == 0.88  # on for a fused head, kept to 88%
    catalog_head = CatalogClassifier(
        catalog,
        None,
        str(REPO / "experiments" / f"{FUSED_DEFAULT_HEAD}.yaml"),
        workspace=Workspace(features=tmp_path / "store"),
        support=support,
        texts="all",
        calibration_dir=CALIBRATION,
    )
    assert catalog_head.negatives is not None
    ours = api.predict(queries, texts=query_texts)
    theirs = catalog_head.answer_features(catalog_head.embed_photos(queries), query_texts)
    assert [(a.label, a.looks_like) for a in ours] == [(a.label, a.looks_like) for a in theirs]
    assert [a.known_score for a in ours] == pytest.approx([a.known_score for a in theirs], rel=1e-4)

"""`fsl predict --support`: your own categories from a folder of example photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fsl.cli import main

CLASSES = ["Watches", "Handbags", "Casual Shoes"]


@pytest.fixture(scope="module")
def folders(small_dump, tmp_path_factory):
    """A support folder (3 categories x 5 real photos) and a folder of 5 held-out photos of each."""
    from fsl.catalog import load_catalog

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


def predict(small_dump, root: Path, support: Path, out: Path) -> int:
    return main(["predict", "--data", str(small_dump), "--support", str(support), "--images", str(root / "photos"),
                 "--out", str(out), "--store-root", str(root / "store")])


def test_own_categories_from_a_folder_classify_held_out_photos_with_a_contact_sheet(small_dump, folders, capsys):
    root, truth = folders
    out = root / "predictions.csv"
    assert predict(small_dump, root, root / "support", out) == 0
    assert "3 categories from" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert set(table["file"]) == set(truth) and table["error"].isna().all()
    correct = (table["label_1"] == table["file"].map(truth)).mean()
    assert correct >= 0.8  # chance is 1/3
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    config.write_text("method: protonet\nmethod_options: {projection: linear}\nfusion: image\n"
                      "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\ntrain: {steps: 5}\n")
    assert main(["predict", "--data", str(small_dump), "--config", str(config), "--images", str(root / "photos"),
                 "--out", str(tmp_path / "p.csv"), "--store-root", str(tmp_path / "store"), "--shots", "2"]) == 2
    assert "no checkpoint at checkpoints/meta/best" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()

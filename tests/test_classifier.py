"""The Python API's classifier as a hostile but legitimate user meets it: saves that never delete what
they did not write, a content cache that heals, saved calibrations that are checked, category names
that cannot be confused with the "unknown" answer, and photos of every Pillow mode."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsl.apps.classifier import FewShotClassifier
from fsl.apps.support import read_support_folder
from fsl.config import load_config
from fsl.errors import FslError
from fsl.harness.calibration import best_for_own_categories
from fsl.inference.calibration import Calibration
from fsl.inference.heads import DEFAULT_HEAD, FUSED_DEFAULT_HEAD, NAMED_HEADS
from fsl.paths import SHIPPED_CALIBRATION_DIR


@pytest.fixture
def classifier(own_folders, tmp_path):
    return FewShotClassifier.from_folder(
        own_folders / "support", load_config(own_folders / "tiny.yaml"), cache_root=tmp_path / "cache"
    )


def queries(own_folders) -> list[Path]:
    return sorted((own_folders / "query").iterdir())


def labels_of(answers) -> list[tuple[str, float]]:
    return [(a.label, round(a.confidence, 5)) for a in answers]


# Saving ---------------------------------------------------------------------------------------------


def test_saving_refuses_a_folder_of_other_files_and_deletes_nothing(classifier, tmp_path):
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("two years of work")
    (folder / "sub" / "notes.md").write_text("more")
    with pytest.raises(FslError, match="holds files fsl did not write"):
        classifier.save(folder)
    assert (folder / "thesis.txt").read_text() == "two years of work" and (folder / "sub" / "notes.md").is_file()
    file = tmp_path / "report.pdf"
    file.write_bytes(b"%PDF")
    with pytest.raises(FslError, match="not a folder"):
        classifier.save(file)
    assert file.read_bytes() == b"%PDF"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_saving_into_the_working_folder_is_a_message(classifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for target in (".", tmp_path, "/"):
        with pytest.raises(FslError, match="this program runs in it"):
            classifier.save(target)


def test_a_classifier_replaces_only_its_own_earlier_save(classifier, own_folders, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    classifier.save(empty)  # an empty folder is fine
    classifier.add_examples(classifier.classes[0], queries(own_folders)[:1])
    classifier.save(empty)  # and so is replacing what it wrote itself
    loaded = FewShotClassifier.load(empty, cache_root=tmp_path / "cache")
    assert len(loaded.labels) == len(classifier.labels)


def test_an_empty_classifier_is_not_saved(own_folders, tmp_path):
    lonely = FewShotClassifier(load_config(own_folders / "tiny.yaml"), cache_root=tmp_path / "cache")
    with pytest.raises(FslError, match="0 categories taught"):
        lonely.save(tmp_path / "nothing")
    lonely.add_examples("Watches", sorted((own_folders / "query").iterdir())[:2])
    with pytest.raises(FslError, match="1 categories taught"):
        lonely.save(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


# The content cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["empty file", "nan", "inf", "wrong length", "float64", "2-d", "zero vector", "not unit length", "text file",
     "plain npy", "sign flipped", "no vector"],
)  # fmt: skip
def test_a_bad_cache_entry_is_embedded_again_with_a_note(classifier, own_folders, damage, caplog):
    photos = queries(own_folders)
    clean = labels_of(classifier.predict(photos))
    entry = next(classifier.cache.folder.glob("*.npz"))
    with np.load(entry) as stored:
        good = stored["vector"]
    bad = {
        "nan": np.where(np.arange(len(good)) == 3, np.nan, good).astype(np.float32),
        "inf": np.where(np.arange(len(good)) == 0, np.inf, good).astype(np.float32),
        "wrong length": good[:-1],
        "float64": good.astype(np.float64),
        "2-d": good[None],
        "zero vector": np.zeros_like(good),
        "not unit length": 3 * good,
    }
    if damage == "empty file":
        entry.write_bytes(b"")
    elif damage == "text file":
        entry.write_text("hello")
    elif damage == "plain npy":
        with open(entry, "wb") as f:
            np.save(f, good)
    elif damage == "sign flipped":  # still a finite unit vector: only the zip's CRC-32 sees it
        data = bytearray(entry.read_bytes())
        at = data.index(good[0].tobytes()) + 3  # the high byte of the first value
        data[at] ^= 0x80
        entry.write_bytes(bytes(data))
    else:
        with open(entry, "wb") as f:
            np.savez(f, **({"other": good} if damage == "no vector" else {"vector": bad[damage]}))
    caplog.clear()
    again = FewShotClassifier.from_folder(
        own_folders / "support", classifier.config, cache_root=classifier.cache.folder.parent
    )
    assert labels_of(again.predict(photos)) == clean
    assert again.cache.repaired == 1 and "are bad" in caplog.text
    with np.load(entry) as healed:  # the next run reads it as it was
        np.testing.assert_array_equal(healed["vector"], good)


# Saved calibrations ---------------------------------------------------------------------------------


@pytest.fixture
def saved(classifier, tmp_path):
    classifier.calibrate_on_support(score="energy")
    return classifier.save(tmp_path / "saved")


def edit_calibration(folder: Path, **values) -> None:
    manifest = json.loads((folder / "classifier.json").read_text())
    manifest["calibration"].update(values)
    (folder / "classifier.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": float("nan")},
        {"temperature": 0},
        {"temperature": -0.3},
        {"temperature": float("inf")},
        {"temperature": "0.5"},
        {"temperature": 10**400},
        {"threshold": float("nan")},
        {"threshold": float("inf")},
        {"threshold": -float("inf")},
        {"false_accept": 1.5},
        {"score": "vibes"},
        {"fitted_on": 3},
    ],
)
def test_a_saved_calibration_out_of_range_is_refused(saved, tmp_path, values):
    edit_calibration(saved, **values)
    with pytest.raises(FslError, match="classifier.json"):
        FewShotClassifier.load(saved, cache_root=tmp_path / "cache")


def test_a_saved_calibration_for_other_photos_or_another_encoder_is_refused(saved, tmp_path, own_folders):
    replaced = next((saved / next(p.name for p in saved.iterdir() if p.is_dir())).iterdir())
    original = replaced.read_bytes()
    shutil.copy(queries(own_folders)[-1], replaced)  # a support photo changed since the calibration
    with pytest.raises(FslError, match="they have changed since"):
        FewShotClassifier.load(saved, cache_root=tmp_path / "cache")
    loaded = FewShotClassifier.load(saved, cache_root=tmp_path / "cache", calibration=None)  # the user's way out
    assert loaded.calibration is None
    replaced.write_bytes(original)
    assert FewShotClassifier.load(saved, cache_root=tmp_path / "cache").calibration.score == "energy"
    edit_calibration(saved, encoder="offline:efficientnet-lite0+all-MiniLM-L6-v2", key="0123456789abcdef")
    with pytest.raises(FslError, match="fitted for encoder offline"):
        FewShotClassifier.load(saved, cache_root=tmp_path / "cache")


def test_the_calibration_argument_is_checked_when_the_classifier_is_made(own_folders, tmp_path):
    config = load_config(own_folders / "tiny.yaml")
    for bad in ("bogus", 3, tmp_path / "missing.json"):
        with pytest.raises(FslError, match="calibration"):
            FewShotClassifier(config, calibration=bad, cache_root=tmp_path / "cache")


# Category names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unknown", "Unknown ", "", "   ", None, 7])
def test_the_unknown_answer_and_blank_names_cannot_name_a_category(classifier, own_folders, name):
    with pytest.raises(FslError, match="name"):
        classifier.add_examples(name, queries(own_folders)[:1])


def test_a_support_folder_with_a_category_named_unknown_is_refused(own_folders, tmp_path):
    support = shutil.copytree(own_folders / "support", tmp_path / "support")
    os.rename(next(p for p in support.iterdir() if p.is_dir()), support / "unknown")
    with pytest.raises(FslError, match='"unknown" cannot name a category'):
        read_support_folder(support)


def test_the_demo_refuses_a_category_named_unknown():
    from fsl.apps.demo.handlers import name_problem

    assert "cannot name a category" in name_problem("UNKNOWN")
    assert name_problem("Unknown watches") is None


# Photos ---------------------------------------------------------------------------------------------

MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16"]


def test_every_pillow_mode_is_answered_the_way_the_photo_looks(classifier, own_folders):
    photo = Image.open(queries(own_folders)[0]).convert("RGB")
    for mode in MODES:
        source = photo.convert("L") if mode in ("I", "F", "I;16") else photo
        assert classifier.predict([source.convert(mode)])[0].best in classifier.classes, mode
    grey = np.asarray(photo.convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(grey * 257)  # a 16-bit photo: Pillow's own conversion would make it white
    eight = classifier.embed_photos([photo.convert("L").convert("RGB")])
    assert float((classifier.embed_photos([sixteen]) * eight).sum()) > 0.999
    transparent = photo.convert("RGBA")
    transparent.putalpha(0)  # every pixel hidden: over white, the photo is a white page
    with pytest.raises(FslError, match="blank"):
        classifier.predict([transparent])


def test_a_16_bit_png_file_reads_as_the_photo_not_a_white_page(classifier, own_folders, tmp_path):
    photo = Image.open(queries(own_folders)[0]).convert("L")
    Image.fromarray(np.asarray(photo, dtype=np.uint16) * 257).save(tmp_path / "deep.png")
    photo.save(tmp_path / "flat.png")
    deep, flat = classifier.embed_photos([tmp_path / "deep.png", tmp_path / "flat.png"])
    assert Image.open(tmp_path / "deep.png").mode.startswith("I") and float(deep @ flat) > 0.999


@pytest.mark.parametrize(
    "size, colour, message",
    [((0, 0), "red", "at least 16"), ((1, 1), "red", "at least 16"), ((2000, 20), "red", "a strip"),
     ((64, 64), "white", "blank")],
)  # fmt: skip
def test_photos_that_cannot_be_product_photos_are_refused(classifier, size, colour, message, tmp_path):
    with pytest.raises(FslError, match=message):
        classifier.predict([Image.new("RGB", size, colour)])
    if min(size) > 0:
        Image.new("RGB", size, colour).save(tmp_path / "odd.png")
        with pytest.raises(FslError, match=message):
            classifier.add_examples(classifier.classes[0], [tmp_path / "odd.png"])


def test_every_file_of_a_support_folder_that_is_not_used_is_listed(own_folders, tmp_path):
    support = shutil.copytree(own_folders / "support", tmp_path / "support")
    category = next(p for p in sorted(support.iterdir()) if p.is_dir())
    os.symlink(category / "nowhere.jpg", category / "dangling.jpg")
    os.symlink(category / "loop-b.jpg", category / "loop-a.jpg")
    os.symlink(category / "loop-a.jpg", category / "loop-b.jpg")
    Image.new("RGB", (1, 1), "red").save(category / "pixel.png")
    Image.new("RGB", (64, 64), "white").save(category / "blank.png")
    Image.new("RGB", (4000, 20), "red").save(category / "strip.png")
    skipped = dict(read_support_folder(support).skipped)
    for name in ("dangling.jpg", "loop-a.jpg", "loop-b.jpg", "pixel.png", "blank.png", "strip.png"):
        assert f"{category.name}/{name}" in skipped, name


def test_calibrating_on_too_small_a_support_says_what_it_needs_in_plain_words(own_folders, tmp_path):
    clf = FewShotClassifier(load_config(own_folders / "tiny.yaml"), cache_root=tmp_path / "cache")
    clf.add_examples("Watches", queries(own_folders)[:3]).add_examples("Belts", queries(own_folders)[3:5])
    with pytest.raises(FslError) as error:
        clf.calibrate_on_support()
    assert "the taught examples: 2 categories, the smallest with 2 photo(s)" in str(error.value)


def test_the_default_heads_are_the_ones_selection_chose_among_the_shipped_calibrations():
    """The default head of your own categories (photos only, and photos with texts) is the shipped
    calibrated head that answers the most taught photos right on the selection episodes at its
    thresholds; a refit that changes the ranking must change the default too."""
    shipped = [Calibration.load(path) for path in sorted(SHIPPED_CALIBRATION_DIR.glob("*.json"))]
    named = [c for c in shipped if c.config in NAMED_HEADS]
    image_only = [c for c in named if NAMED_HEADS[c.config].fusion == "image"]
    fused = [c for c in named if NAMED_HEADS[c.config].fusion != "image"]
    assert len(image_only) >= 2 and len(fused) >= 2
    assert best_for_own_categories(image_only).config == DEFAULT_HEAD
    assert best_for_own_categories(fused).config == FUSED_DEFAULT_HEAD
    assert all(c.validation["open_set"].startswith("select-") for c in named)  # chosen without novel classes


def test_with_a_floor_of_taught_photos_right_the_default_is_the_head_that_lets_the_fewest_untaught_through():
    def fitted(name: str, taught: float, untaught: float, floor: float = 0.88) -> Calibration:
        validation = {"known_accuracy": taught, "false_accept": untaught}
        return Calibration(name, name, "e", 1.0, 0.5, 0.2, validation, taught_right=floor)

    heads = [fitted("keeps-it", 0.88, 0.3), fitted("fewer-through", 0.89, 0.25), fitted("below-it", 0.86, 0.1)]
    # below the floor loses, however few it lets through
    assert best_for_own_categories(heads).config == "fewer-through"
    plain = [fitted("more-right", 0.85, 0.2, 0.0), fitted("fewer-right", 0.80, 0.2, 0.0)]
    assert best_for_own_categories(plain).config == "more-right"  # no floor: the most taught photos right
    with pytest.raises(FslError, match="compared at one target.*20% false accepts, 20% false accepts with 88%"):
        best_for_own_categories([plain[0], heads[0]])


# Errors in the caller's words -----------------------------------------------------------------------


def test_library_errors_name_the_parameter_and_the_cli_names_its_flag(own_folders, tmp_path, capsys):
    """A Python caller reads the argument it passed (`classes`, `texts`, `false_accept`), never a CLI
    flag; `fsl predict` puts its own flag in the same place."""
    from fsl.apps.support import read_texts
    from fsl.cli.main import main

    tiny = load_config(own_folders / "tiny.yaml")
    with pytest.raises(FslError) as caught:
        FewShotClassifier.from_folder(own_folders / "support", tiny, classes=["Nope", "Other"])
    assert str(caught.value).startswith("classes: Nope, Other: not among") and caught.value.parameter == "classes"
    with pytest.raises(FslError, match=r"^texts \S+ is not a file$"):
        read_texts(tmp_path / "missing.csv")
    classifier = FewShotClassifier.from_folder(own_folders / "support", tiny, cache_root=tmp_path / "cache")
    with pytest.raises(FslError, match=r"^false_accept must lie strictly between 0 and 1, got 2$"):
        classifier.calibrate_on_support(false_accept=2)
    for flag, value, said in (
        ("--texts", str(tmp_path / "missing.csv"), "--texts "),
        ("--classes", "Nope,Other", "--classes: Nope, Other"),
    ):
        folders = ["--support", str(own_folders / "support"), "--images", str(own_folders / "query")]
        argv = ["predict", *folders, "--config", str(own_folders / "tiny.yaml"), "--out", str(tmp_path / "o.csv")]
        assert main([*argv, flag, value]) == 2
        assert f"fsl predict: error: {said}" in capsys.readouterr().err

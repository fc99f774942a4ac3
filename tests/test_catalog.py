from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fsl.data.catalog import label_word_pattern, mask_label_words, resolve_data_dir
from fsl.data.prepared import load_catalog
from fsl.errors import FslError

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


@pytest.fixture()
def messy_dump(tmp_path, small_dump) -> Path:
    """A crafted styles.csv with the faults of the original Kaggle file, over real photos."""
    ids = sorted(int(p.stem) for p in (small_dump / "images").glob("*.jpg"))[:6]
    (tmp_path / "images").mkdir()
    for i in ids:
        shutil.copy(small_dump / "images" / f"{i}.jpg", tmp_path / "images" / f"{i}.jpg")
    (tmp_path / "images" / "900.jpg").write_bytes(b"this is not a jpeg")
    good = (small_dump / "images" / f"{ids[0]}.jpg").read_bytes()
    (tmp_path / "images" / "901.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    rows = [
        f"{ids[0]},Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Men Grey T-shirt",
        f"{ids[1]},Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Peter England, Men, Blue Tshirt",
        f"{ids[2]},Women,Accessories,Watches,Watches,Black,Winter,2016,Casual,",
        f"{ids[3]},Men,Apparel",
        f"x{ids[4]},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Bad Id Tee",
        f"{ids[5]},Men,Footwear,Shoes,Casual Shoes,White,Summer,2012,Casual,Nike Men White Casual Shoes",
        "777,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,No Photo Tshirt",
        "900,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Not A Jpeg Tshirt",
        "901,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Truncated Tshirt",
    ]
    (tmp_path / "styles.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return tmp_path


def test_messy_rows_are_repaired_or_skipped_and_each_is_reported(messy_dump, tmp_path):
    catalog = load_catalog(messy_dump)
    report = catalog.report.astype({"id": str})
    names = dict(zip(catalog.products["id"], catalog.products["productDisplayName"]))
    ids = sorted(int(p.stem) for p in (messy_dump / "images").glob("*.jpg") if p.stem not in {"900", "901"})

    assert names[ids[1]] == "Peter England, Men, Blue Tshirt"  # commas joined back into the name
    assert set(catalog.ids) == {ids[0], ids[1], ids[2], ids[5]}
    by_issue = report.groupby("issue")["id"].apply(set).to_dict()
    assert by_issue["unquoted comma in productDisplayName"] == {str(ids[1])}
    assert by_issue["too few fields"] == {str(ids[3])}
    assert by_issue["id is not a whole number"] == {f"x{ids[4]}"}
    assert by_issue["image missing"] == {"777"}
    assert by_issue["image unreadable"] == {"900", "901"}
    assert by_issue["empty productDisplayName"] == {str(ids[2])}
    assert "skipped 2 rows: image unreadable" in catalog.summary()

    saved = pd.read_csv(catalog.save_report(tmp_path / "report.csv"), dtype=str)
    assert len(saved) == len(report)


def test_text_of_a_row_with_an_empty_name_comes_from_other_fields(messy_dump):
    catalog = load_catalog(messy_dump)
    texts = dict(zip(catalog.ids, catalog.texts()))
    empty_name_id = int(catalog.report.loc[catalog.report["issue"] == "empty productDisplayName", "id"].iloc[0])
    assert texts[empty_name_id] == "(Women, Black, Casual)"


def test_masking_catches_plurals_hyphens_and_variants():
    pattern = label_word_pattern(
        ["Tshirts", "Casual Shoes", "Watches", "Flip Flops", "Perfume and Body Mist"], other_values=["Casual", "Sports"]
    )
    assert mask_label_words("Puma Men Grey T-shirt", pattern) == "Puma Men Grey [MASK]"
    assert mask_label_words("Nike Men Tshirts and Tees", pattern) == "Nike Men [MASK] and [MASK]"
    assert mask_label_words("Roadster Men T Shirt", pattern) == "Roadster Men [MASK]"
    assert mask_label_words("Fastrack Women Watch", pattern) == "Fastrack Women [MASK]"
    assert mask_label_words("Nike Men White Casual Shoes", pattern) == "Nike Men White [MASK]"
    assert mask_label_words("Crocs Unisex Flip-Flop", pattern) == "Crocs Unisex [MASK]"
    assert mask_label_words("Davidoff Men Perfume", pattern) == "Davidoff Men [MASK]"
    # "Casual" is also a usage value: alone it is not a label word; "and" is never one.
    assert mask_label_words("Casual wear and more", pattern) == "Casual wear and more"
    assert mask_label_words("Nike brand Watchmen", pattern) == "Nike brand Watchmen"  # whole words only


def test_masked_texts_hide_the_task_label_in_real_rows(small_dump):
    catalog = load_catalog(small_dump)
    masked = catalog.texts(mask_column="articleType")
    for label, text in zip(catalog.labels("articleType"), masked):
        for word in ("tshirt", "t-shirt", "watch", "handbag", "shoe"):
            assert word not in text.lower(), (label, text)
    assert sum("[MASK]" in t for t in masked) >= 0.9 * len(masked)


def test_fingerprint_follows_content(small_dump, tmp_path):
    copy = Path(shutil.copytree(small_dump, tmp_path / "copy"))
    assert load_catalog(copy).fingerprint == load_catalog(small_dump).fingerprint
    photo = sorted((copy / "images").glob("*.jpg"))[0]
    photo.write_bytes((sorted((copy / "images").glob("*.jpg"))[1]).read_bytes())
    with pytest.raises(
        FslError, match=rf"changed since it was prepared \(1 photo\(s\) differ, e.g. {photo.name}\).*fsl prepare"
    ):
        load_catalog(copy)
    assert load_catalog(copy, refresh=True).fingerprint != load_catalog(small_dump).fingerprint


def test_the_prepared_catalog_opens_without_decoding_and_equals_a_full_read(small_dump, tmp_path, monkeypatch):
    import fsl.data.catalog
    import fsl.data.prepared

    copy = Path(shutil.copytree(small_dump, tmp_path / "copy"))
    full = load_catalog(copy, refresh=True)

    def no_decoding(path):
        raise AssertionError("a prepared catalog decoded a photo")

    monkeypatch.setattr(fsl.data.catalog, "image_problem", no_decoding)
    monkeypatch.setattr(fsl.data.prepared, "image_problem", no_decoding)
    prepared = load_catalog(copy)
    pd.testing.assert_frame_equal(prepared.products, full.products)
    pd.testing.assert_frame_equal(prepared.report, full.report.astype({"id": object}), check_dtype=False)
    assert prepared.fingerprint == full.fingerprint and prepared.data_rows == full.data_rows


def test_a_touched_photo_is_re_checked_and_other_changes_need_fsl_prepare(small_dump, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fsl")
    import os

    copy = Path(shutil.copytree(small_dump, tmp_path / "copy"))
    fingerprint = load_catalog(copy, refresh=True).fingerprint
    photo = sorted((copy / "images").glob("*.jpg"))[0]
    os.utime(photo, ns=(1, 1))  # same bytes, another mtime
    assert load_catalog(copy).fingerprint == fingerprint
    assert "re-checked 1 photo(s) whose size or mtime changed: their content is unchanged" in caplog.text
    caplog.clear()
    load_catalog(copy)
    assert "re-checked" not in caplog.text  # the new mtime was saved

    (copy / "styles.csv").write_text((copy / "styles.csv").read_text() + "\n")
    with pytest.raises(FslError, match=r"changed since it was prepared \(styles.csv\)"):
        load_catalog(copy)


def test_missing_data_names_the_folder_and_the_next_step(tmp_path, monkeypatch):
    monkeypatch.delenv("FSL_DATA", raising=False)
    with pytest.raises(FslError, match=r"nowhere.*--data DIR or set FSL_DATA.*fsl download"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("FSL_DATA", str(tmp_path))
    with pytest.raises(FslError, match=str(tmp_path)):
        resolve_data_dir()


def test_unknown_label_column_or_template_field_is_a_clear_error(small_dump):
    catalog = load_catalog(small_dump)
    with pytest.raises(FslError, match="unknown label column 'colour'"):
        catalog.labels("colour")
    with pytest.raises(FslError, match="unknown field 'brand'"):
        catalog.texts("{brand} {productDisplayName}")


def test_photo_stats_in_forked_workers_equal_one_loop(tmp_path, monkeypatch):
    """Large catalogs stat their photos in forked processes: same sizes and mtimes, -1 for a missing one."""
    import fsl.data.prepared
    from fsl.data.prepared import stat_all

    paths = []
    for i in range(50):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"x" * i)
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.jpg"))
    single = stat_all(paths)
    monkeypatch.setattr(fsl.data.prepared, "PARALLEL_FROM", 10)
    forked = stat_all(paths)
    assert all((a == b).all() for a, b in zip(single, forked))
    assert single[0][:50].tolist() == list(range(50)) and single[0][-1] == -1 and single[1][-1] == -1


def test_a_dump_copied_again_with_new_times_is_not_called_changed(small_dump, tmp_path):
    """A re-copied dump (rsync without times, a checkout, a restore) has the same bytes under new
    modification times: later commands open it as it was; a real edit is still caught."""
    import os
    import time

    from fsl.cli.main import main

    copy = Path(shutil.copytree(small_dump, tmp_path / "copy"))
    before = load_catalog(copy, refresh=True)
    later = time.time() + 3600
    for path in [copy / "styles.csv", *(copy / "images").glob("*.jpg")]:
        os.utime(path, (later, later))
    assert load_catalog(copy).fingerprint == before.fingerprint
    common = ["--data", str(copy), "--encoder", "clip", "--model", "FSL-Tiny", "--pretrained", "none"]
    assert main(["embed", *common, "--store-root", str(tmp_path / "store"), "--workers", "0"]) == 0
    (copy / "styles.csv").write_text((copy / "styles.csv").read_text().replace("Watches", "Watch"))
    with pytest.raises(FslError, match=r"changed since it was prepared \(styles.csv\)"):
        load_catalog(copy)


def test_links_to_nothing_and_folders_named_like_photos_are_reported_and_never_appear(small_dump, tmp_path):
    """A dangling link, a link loop and a folder named <id>.jpg are unreadable photos, reported with
    the reason: later commands open the dump instead of asking for `fsl prepare` forever."""
    import os

    copy = Path(shutil.copytree(small_dump, tmp_path / "copy"))
    photos = sorted((copy / "images").glob("*.jpg"))[:3]
    photos[0].unlink()
    os.symlink(copy / "images" / "gone.jpg", photos[0])
    photos[1].unlink()
    os.symlink(photos[1], photos[1])  # a loop
    photos[2].unlink()
    photos[2].mkdir()
    catalog = load_catalog(copy, refresh=True)
    reported = catalog.report.set_index("id")["detail"]
    ids = [int(p.stem) for p in photos]
    assert "leads to no file" in reported[ids[0]] and "leads to no file" in reported[ids[1]]
    assert "a folder" in reported[ids[2]]
    assert set(catalog.report.loc[catalog.report["id"].isin(ids), "issue"]) == {"image unreadable"}
    assert len(load_catalog(copy)) == len(catalog)  # opens as prepared: nothing "appeared"


def test_control_characters_huge_fields_and_huge_ids_are_repaired_or_reported(small_dump, tmp_path):
    """A NUL after a label made a one-product class; a 1 MB field and an id >= 2^63 ended in tracebacks."""
    copy = Path(shutil.copytree(small_dump, tmp_path / "copy"))
    lines = (copy / "styles.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    fields = rows[0].split(",")
    article = header.split(",").index("articleType")
    label = fields[article]
    fields[article] = label + "\x00"
    rows[0] = ",".join(fields)
    rows[1] = rows[1] + "x" * 1_000_000  # the name grows past the csv module's field limit
    rows[2] = "9" * 25 + rows[2][rows[2].index(",") :]
    (copy / "styles.csv").write_text("\n".join([header, *rows]) + "\n")
    catalog = load_catalog(copy, refresh=True)
    assert "\x00" not in "".join(catalog.labels()) and (catalog.labels() == label).sum() >= 2
    issues = dict(zip(catalog.report["line"], catalog.report["issue"]))
    assert issues[2] == "control characters" and issues[3] == "unparsable line" and issues[4] == "id out of range"

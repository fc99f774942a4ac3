"""The shifted query sets: temporal episodes with their paired control, re-rendered query photos,
and the encoder's preprocessing keeping a non-square product in frame."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fsl.episodes.shift import ReplacedImages, brand_of, draw_subpopulation_sets, draw_temporal_sets, rerender
from fsl.episodes.splits import ClassSplit
from fsl.paths import Workspace


def dated_catalog(late_per_class=12):
    rows = []
    for c, name in enumerate(["A", "B", "C", "D", "E", "F", "G"]):
        rows += [{"id": 1000 * (c + 1) + i, "articleType": name, "year": 2011.0} for i in range(20)]
        rows += [{"id": 1000 * (c + 1) + 500 + i, "articleType": name, "year": 2015.0} for i in range(late_per_class)]
    rows.append({"id": 99_999, "articleType": "A", "year": float("nan")})  # undated: in neither period
    products = pd.DataFrame(rows)
    catalog = SimpleNamespace(products=products, fingerprint="f" * 16, labels=lambda column: products[column])
    table = pd.DataFrame({"class": list("ABCDEFG"), "count": 32, "split": "novel", "parent": ""})
    return catalog, ClassSplit("articleType", 0, 10, table)


def test_temporal_episodes_take_support_early_queries_late_and_a_control_with_the_same_support():
    catalog, split = dated_catalog()
    sets = draw_temporal_sets(catalog, split, seed=6, n_episodes=40)
    shifted, control = sets["articleType-novel-5w5s-temporal"], sets["articleType-novel-5w5s-temporal-control"]
    year = catalog.products.set_index("id")["year"]
    label = catalog.products.set_index("id")["articleType"]
    assert (year[shifted.episodes.support.ravel()] < 2012).all()
    assert (year[shifted.episodes.query.ravel()] >= 2012).all()
    assert (year[control.episodes.query.ravel()] < 2012).all()
    np.testing.assert_array_equal(shifted.episodes.support, control.episodes.support)  # paired: same support
    np.testing.assert_array_equal(shifted.episodes.classes, control.episodes.classes)
    for e in range(40):
        assert not set(control.episodes.query[e]) & set(control.episodes.support[e])
        names = np.array(shifted.meta["classes"])[shifted.episodes.classes[e]]
        for episodes in (shifted.episodes, control.episodes):  # class-major blocks, labels 0..4
            np.testing.assert_array_equal(label[episodes.query[e]].to_numpy(), np.repeat(names, 10))
            np.testing.assert_array_equal(label[episodes.support[e]].to_numpy(), np.repeat(names, 5))
    again = draw_temporal_sets(catalog, split, seed=6, n_episodes=40)
    assert all(again[name].to_bytes() == sets[name].to_bytes() for name in sets)  # same seed, same bytes
    short, split = dated_catalog(late_per_class=9)  # 9 < 10 queries after 2012: no class qualifies
    assert draw_temporal_sets(short, split, seed=6) == {}


def test_rerender_is_deterministic_grey_three_by_four_and_smaller():
    photo = Image.new("RGB", (224, 224), (200, 30, 30))
    first, second = rerender(photo), rerender(photo)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert first.size == (112, 149)  # 3:4, halved
    top = np.asarray(first)[2, 56]
    assert abs(int(top[0]) - 128) < 12 and abs(int(top[1]) - 128) < 12  # the grey backdrop


def test_preprocessing_keeps_the_top_and_bottom_of_a_portrait_photo(offline_encoder):
    portrait = np.full((400, 300, 3), 255, dtype=np.uint8)
    portrait[:40] = (0, 0, 255)  # a blue band at the top, which a centre crop would cut away
    pixels = offline_encoder.image_transform(Image.fromarray(portrait))  # [3, 224, 224], normalised to [-1, 1]
    blue_rows = ((pixels[2] > 0.9) & (pixels[0] < -0.9)).any(dim=1)
    assert blue_rows.any()  # the band is still in frame
    square = Image.fromarray(np.full((224, 224, 3), 255, dtype=np.uint8))
    assert torch.equal(offline_encoder.image_transform(square), offline_encoder.image_transform(square.copy()))


def test_replaced_images_swap_the_image_part_of_the_listed_rows_only():
    features = np.arange(24, dtype=np.float32).reshape(6, 4)  # image dim 2, text dim 2
    replaced = ReplacedImages(features, np.array([4, 1]), np.array([[-4, -4], [-1, -1]], dtype=np.float32), 2)
    out = replaced[np.array([1, 4])]
    np.testing.assert_array_equal(out, [[-1, -1, 6, 7], [-4, -4, 18, 19]])
    with pytest.raises(Exception, match="lacks its re-rendered photo"):
        replaced[np.array([0])]


def test_eval_shifted_runs_the_same_episodes_with_rerendered_queries_embedded_once(twelve_classes, caplog):
    caplog.set_level(logging.INFO, logger="fsl")
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.harness.experiment import run_experiment
    from fsl.store.open import open_store

    root, catalog = twelve_classes
    config = ExperimentConfig(
        name="pn",
        method="protonet",
        fusion="image",
        episodes=("novel-5w5s",),
        encoder=EncoderConfig("clip", "FSL-Tiny", "none"),
    )
    results = {
        r.episode_set: r
        for r in run_experiment(
            config, catalog, Workspace(root / "episodes", root / "store"), shifted=True, progress=False
        )
    }
    assert set(results) == {"novel-5w5s", "novel-5w5s+rerendered"}  # no temporal or 15-way set drawn here
    assert "embedding the rerendered view" in caplog.text and "no shifted set novel-5w5s-temporal" in caplog.text
    assert not np.array_equal(results["novel-5w5s"].accuracy, results["novel-5w5s+rerendered"].accuracy)
    cache = open_store(catalog, config.encoder, root / "store").path / "rerendered-v1.npz"
    stamp = cache.stat().st_mtime_ns
    caplog.clear()
    again = run_experiment(config, catalog, Workspace(root / "episodes", root / "store"), shifted=True, progress=False)
    assert "rerendered view" not in caplog.text and cache.stat().st_mtime_ns == stamp  # cached
    np.testing.assert_array_equal(again[1].accuracy, results["novel-5w5s+rerendered"].accuracy)


def test_temporal_queries_leave_out_the_near_duplicates_of_the_support():
    from fsl.episodes.near_duplicates import NearDuplicates

    catalog, split = dated_catalog(late_per_class=20)
    ids = catalog.products["id"].to_numpy()
    # every early product i of a class has a late twin (i + 500) and an early twin (i + 10)
    groups = tuple((1000 * c + i, 1000 * c + i + 10, 1000 * c + 500 + i) for c in range(1, 8) for i in range(10))
    twins = NearDuplicates(groups, 0.98, "enc", catalog.fingerprint)
    group_of = dict(zip(ids, twins.group_index(ids)))
    plain = draw_temporal_sets(catalog, split, seed=6, n_episodes=40)
    sets = draw_temporal_sets(catalog, split, seed=6, n_episodes=40, near_duplicates=twins)

    def split_groups(episode_set) -> int:
        episodes = episode_set.episodes
        return sum(
            len({group_of[i] for i in episodes.support[e]} & {group_of[i] for i in episodes.query[e]})
            for e in range(len(episodes))
        )

    for name in plain:
        assert split_groups(plain[name]) > 20 and split_groups(sets[name]) == 0
        np.testing.assert_array_equal(plain[name].episodes.support, sets[name].episodes.support)
        assert sets[name].meta["near_duplicates"]["groups"] == 70


def subpopulation_catalog(kids_per_class=12):
    """7 novel and 3 validation classes: 20 adult products each (gender Men/Women, brands acme/zeta,
    usage Casual, season Summer), and `kids_per_class` others (Boys, brand kido, Sports, Winter); one
    novel class (G) has only 4 of the others."""
    rows, classes = [], list("ABCDEFG") + ["V1", "V2", "V3"]
    for c, name in enumerate(classes):
        for i in range(20):
            rows.append({"id": 1000 * (c + 1) + i, "articleType": name, "gender": ["Men", "Women"][i % 2],
                         "productDisplayName": f"{['Acme', 'Zeta'][i % 2]} shirt", "usage": "Casual",
                         "season": "Summer"})  # fmt: skip
        for i in range(4 if name == "G" else kids_per_class):
            rows.append({"id": 1000 * (c + 1) + 500 + i, "articleType": name, "gender": "Boys",
                         "productDisplayName": "Kido shirt", "usage": "Sports", "season": "Winter"})  # fmt: skip
    products = pd.DataFrame(rows)
    catalog = SimpleNamespace(products=products, fingerprint="f" * 16, labels=lambda column: products[column])
    splits = ["novel"] * 7 + ["val"] * 3
    table = pd.DataFrame({"class": classes, "count": 32, "split": splits, "parent": ""})
    return catalog, ClassSplit("articleType", 0, 10, table)


def test_subpopulation_sets_take_support_and_control_from_one_side_and_shifted_queries_from_the_other():
    catalog, split = subpopulation_catalog()
    products = catalog.products.set_index("id")
    sets = draw_subpopulation_sets(catalog, split, seed=3, n_episodes=30)
    for kind in ("gender", "brand", "usage", "season"):
        for split_name, ways in (("novel", 5), ("val", 3), ("select", 3)):  # select: base ∪ val, here val only
            shifted = sets[f"articleType-{split_name}-{kind}-5s"]
            control = sets[f"articleType-{split_name}-{kind}-5s-control"]
            assert shifted.meta["split"] == split_name and set(shifted.meta["classes"]) <= set(
                split.classes(split_name)
            )
            np.testing.assert_array_equal(shifted.episodes.support, control.episodes.support)  # paired
            np.testing.assert_array_equal(shifted.episodes.classes, control.episodes.classes)
            assert shifted.episodes.n_way == ways and "G" not in shifted.meta["classes"]  # G has 4 of the others
            support = products.loc[shifted.episodes.support.ravel()]
            queries = products.loc[shifted.episodes.query.ravel()]
            controls = products.loc[control.episodes.query.ravel()]
            if kind != "brand":  # the other side of gender, usage and season is the kids' products here
                assert (support["gender"] != "Boys").all() and (controls["gender"] != "Boys").all()
                assert (queries["gender"] == "Boys").all()
            assert not set(brand_of(support["productDisplayName"])) & set(brand_of(queries["productDisplayName"]))
            assert not set(shifted.episodes.query.ravel()) & set(shifted.episodes.support.ravel())
    again = draw_subpopulation_sets(catalog, split, seed=3, n_episodes=30)
    assert all(again[name].to_bytes() == sets[name].to_bytes() for name in sets)  # frozen: the same bytes


def test_a_subpopulation_shift_with_too_few_classes_is_skipped_with_a_note(caplog):
    catalog, split = subpopulation_catalog(kids_per_class=4)
    assert draw_subpopulation_sets(catalog, split, seed=3, n_episodes=10) == {}
    assert "skipping novel-gender-5s: only 0 novel class(es) have 15 products of gender Men/Women" in caplog.text


def test_test_time_views_average_the_mirrored_photo_into_support_and_queries(twelve_classes, caplog):
    caplog.set_level(logging.INFO, logger="fsl")
    import dataclasses

    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.harness.experiment import run_experiment
    from fsl.store.open import open_store

    root, catalog = twelve_classes
    config = ExperimentConfig(name="pn", method="protonet", fusion="image", episodes=("novel-5w5s",),
                              encoder=EncoderConfig("clip", "FSL-Tiny", "none"))  # fmt: skip
    plain = run_experiment(config, catalog, Workspace(root / "episodes", root / "store"), progress=False)[0]
    flipped = dataclasses.replace(config, test_time_views=("flip",))
    first = run_experiment(flipped, catalog, Workspace(root / "episodes", root / "store"), progress=False)[0]
    assert "embedding the flip view" in caplog.text
    assert not np.array_equal(plain.accuracy, first.accuracy)
    cache = open_store(catalog, config.encoder, root / "store").path / "flip-v1.npz"
    with np.load(cache) as data:
        assert len(data["ids"]) > 0 and np.allclose(np.linalg.norm(data["image"], axis=1), 1, atol=1e-5)
    caplog.clear()
    again = run_experiment(flipped, catalog, Workspace(root / "episodes", root / "store"), progress=False)[0]
    assert "flip view" not in caplog.text  # embedded once
    np.testing.assert_array_equal(again.accuracy, first.accuracy)

"""Your own categories anywhere: a support folder without the catalog, one classifier behind
`fsl predict`, the demo and the Python API, calibrations found from any folder, a threshold fitted on
the support itself, the "none of these" scores, and small catalogs that run what they can."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

import fsl.paths
from fsl.apps.classifier import FewShotClassifier
from fsl.apps.support import read_support_folder
from fsl.cli.main import main
from fsl.config import EncoderConfig, load_config, to_yaml
from fsl.errors import FslError
from fsl.harness.negatives import catalog_negatives
from fsl.inference.calibration import Calibration, calibrate_on_support, config_key, find_calibration
from fsl.inference.classifier import Hierarchy, SupportSetClassifier, answer_record
from fsl.inference.heads import DEFAULT_HEAD, FUSED_DEFAULT_HEAD, NAMED_HEADS, head_for_features
from fsl.inference.negatives import CatalogNegatives, KnownNegatives, find_negatives
from fsl.inference.open_set import known_scores, mahalanobis, nearest_support
from fsl.paths import SHIPPED_CALIBRATION_DIR, SHIPPED_NEGATIVES_DIR, Workspace
from fsl.store.content import ContentCache
from tests.conftest import TINY_PROBE

TINY = EncoderConfig("clip", "FSL-Tiny", "none")


# The "none of these" scores ------------------------------------------------------------------------


def test_mahalanobis_equals_scikit_learns_ledoit_wolf_precision():
    torch.manual_seed(0)
    support, labels, query = torch.randn(25, 64), torch.arange(5).repeat_interleave(5), torch.randn(7, 64)
    s, q = F.normalize(support.double(), dim=-1).numpy(), F.normalize(query.double(), dim=-1).numpy()
    means = np.stack([s[labels.numpy() == c].mean(0) for c in range(5)])
    precision = LedoitWolf(assume_centered=True).fit(s - means[labels.numpy()]).precision_
    differences = q[:, None] - means[None]
    expected = -np.einsum("qnd,de,qne->qn", differences, precision, differences).min(-1)
    np.testing.assert_allclose(mahalanobis(support, labels, query, 5).numpy(), expected, rtol=1e-9)


def test_feature_scores_rank_a_query_near_the_support_above_a_far_one():
    torch.manual_seed(1)
    centres = F.normalize(torch.randn(3, 32), dim=-1)
    labels = torch.arange(3).repeat_interleave(4)
    support = centres[labels] + 0.05 * torch.randn(12, 32)
    near, far = centres[1] + 0.05 * torch.randn(32), F.normalize(torch.randn(32), dim=-1)
    queries = torch.stack([near, far])
    logits = queries @ F.normalize(support, dim=-1).view(3, 4, -1).mean(1).T
    for name in ("nearest-support", "mahalanobis", "max-softmax", "energy"):
        scores = known_scores(name, logits, 0.1, support, labels, queries)
        assert scores[0] > scores[1], name
    assert float(nearest_support(support, support[:1])[0]) == pytest.approx(0.0, abs=1e-9)  # itself: distance 0
    energy = known_scores("energy", logits, 0.5)
    torch.testing.assert_close(energy, 0.5 * torch.logsumexp(logits.double() / 0.5, -1))


# A threshold from the support ----------------------------------------------------------------------


def clustered_support(categories: int = 4, photos: int = 5, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(categories, dim, generator=generator), dim=-1)
    labels = torch.arange(categories).repeat_interleave(photos)
    return F.normalize(centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=generator), dim=-1), labels


def test_calibrating_on_the_support_separates_taught_from_held_out_categories():
    features, labels = clustered_support()
    config = NAMED_HEADS["linear-probe-image"]
    head = head_for_features(config, 16, 0, "test").eval()
    fitted = calibrate_on_support(
        config, head, features, labels, "key", "test", "the support of a test", score="max-softmax"
    )
    again = calibrate_on_support(
        config, head, features, labels, "key", "test", "the support of a test", score="max-softmax"
    )
    assert (fitted.threshold, fitted.temperature) == (again.threshold, again.temperature)  # deterministic
    figures = fitted.validation
    assert figures["auroc"] > 0.9  # well separated clusters: taught photos score above untaught ones
    assert figures["categories"] == 4 and figures["photos"] == 20 and figures["taught_right"] == 1.0
    # every held-out taught photo was right: the NLL has no minimum, so T is the fallback, and it says so
    assert fitted.temperature == 1.0 and figures["temperature_from"].startswith("validation classes")
    assert 0 <= figures["estimated_false_accept"] <= 1 and 0 < figures["taught_answered"] <= 1
    assert fitted.fitted_on.startswith("the support of a test (leave one category out: 4 categories, 20 photos)")

    auto = calibrate_on_support(config, head, features, labels, "key", "test", "x")
    assert auto.score == max(auto.validation["score_aurocs"], key=auto.validation["score_aurocs"].get)

    with pytest.raises(FslError, match="at least 3 categories of at least 3 photos"):
        calibrate_on_support(config, head, features[:10], labels[:10], "key", "test", "x")  # 2 categories
    with pytest.raises(FslError, match="the smallest with 2"):
        keep = torch.cat([torch.arange(0, 20, 5), torch.arange(1, 20, 5)])  # 2 photos per category
        calibrate_on_support(config, head, features[keep], labels[keep], "key", "test", "x")


def test_known_negatives_turn_away_a_photo_nearer_a_catalog_class_and_say_which_it_looks_like():
    features, labels = clustered_support(categories=3, photos=10, seed=1)
    support, support_labels = features[labels < 2][::2], labels[labels < 2][::2]  # 5 photos of "Heels", "Tops"
    queries = features[1::2]  # the other photos: 5 of each taught category, 5 of an untaught one
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    negatives = KnownNegatives(
        ("Sports Shoes", "HEELS", "Stilettos"),  # the untaught one; a taught one by name; one by its features
        torch.stack([means[2], means[0], means[1] + 0.001]),
    )
    head = head_for_features(NAMED_HEADS["linear-probe-image"], 16, 0, "test").eval()
    plain = SupportSetClassifier(head, ["Heels", "Tops"], support, support_labels, None).answer(queries)
    core = SupportSetClassifier(head, ["Heels", "Tops"], support, support_labels, None, negatives=negatives)
    answers = core.answer(queries)
    assert core.negative_rule.left_out == ["HEELS", "Stilettos"] and core.negative_rule.negatives.names == (
        "Sports Shoes",
    )
    assert all(a.label in ("Heels", "Tops") for a in plain)  # without negatives, the untaught photos get a name
    untaught = answers[10:]
    assert all(a.label == "unknown" and a.looks_like == "Sports Shoes" for a in untaught)
    assert [a.label for a in answers[:10]] == [a.label for a in plain[:10]]  # taught photos keep their answers
    assert all(a.looks_like is None for a in answers[:10])
    never = SupportSetClassifier(
        head, ["Heels", "Tops"], support, support_labels, None, negatives=dataclasses.replace(negatives, margin=4.0)
    )
    assert [a.label for a in never.answer(queries)] == [a.label for a in plain]  # no excess reaches 4 (cosines)

    # beside negatives that answer, the calibration's thresholds fitted with them (fsl calibrate) decide
    calibration = Calibration("c", "k", "test", 1.0, 0.9, 0.2, score="max-softmax", thresholds={"2": 0.9},
                              with_negatives={"threshold": 0.6, "thresholds": {"2": 0.6}})  # fmt: skip
    for given, threshold in ((negatives, 0.6), (None, 0.9)):
        calibrated = SupportSetClassifier(
            head, ["Heels", "Tops"], support, support_labels, calibration, negatives=given
        )
        assert calibrated.answering_calibration.threshold_at(2) == threshold
        for answer in calibrated.answer(queries):
            assert (answer.label == answer.best) == (answer.confidence >= threshold and answer.looks_like is None)


def test_a_photos_lead_towards_a_negative_is_judged_against_its_own_categorys_support():
    """The reference of each taught category is the largest lead among its support photos, each against
    its category's mean without it (checked against a plain loop); a query's excess is its lead less the
    reference of its nearest taught category, so one lead can be ordinary beside one category (whose
    support also leans towards a catalog class) and too much beside another."""
    generator = torch.Generator().manual_seed(3)
    support, labels = torch.randn(12, 8, generator=generator), torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    negatives = KnownNegatives(("a", "b"), torch.randn(2, 8, generator=generator), same_as=1.1)
    rule = negatives.for_support(support, labels, ["x", "y", "z"])
    unit, prototypes = F.normalize(support.double(), dim=-1), F.normalize(negatives.prototypes.double(), dim=-1)
    expected = []
    for c in range(3):
        leads = []
        for j in torch.nonzero(labels == c).flatten().tolist():
            means = [unit[(labels == k) & (torch.arange(12) != j)].mean(0) for k in range(3)]
            nearest_taught = max(float(unit[j] @ F.normalize(m, dim=0)) for m in means)
            leads.append(float((unit[j] @ prototypes.T).max()) - nearest_taught)
        expected.append(max(leads))
    assert torch.allclose(rule.references, torch.tensor(expected, dtype=torch.float64))
    queries = torch.randn(20, 8, generator=generator)
    excess, lead, nearest = rule.judge(queries)
    closest = (F.normalize(queries.double(), dim=-1) @ rule.class_means.T).argmax(1)
    assert torch.allclose(excess, lead - rule.references[closest]) and nearest.max() <= 1
    assert len(set(rule.references.tolist())) == 3  # each category its own reference


def same_negatives(a: CatalogNegatives, b: CatalogNegatives) -> bool:
    return (a.names, a.encoder, a.catalog, a.column) == (b.names, b.encoder, b.catalog, b.column) and all(
        torch.equal(getattr(a, part), getattr(b, part)) for part in ("image", "text", "counts")
    )


def test_a_catalogs_negatives_are_its_class_means_and_travel_in_one_file(small_dump, tmp_path):
    from fsl.data.prepared import load_catalog
    from fsl.store.open import open_store

    catalog = load_catalog(small_dump)
    workspace = Workspace(features=tmp_path / "store")
    negatives = catalog_negatives(TINY, catalog, workspace, min_count=2)
    store = open_store(catalog, TINY, workspace.features)
    labels = catalog.labels().to_numpy()  # the store's rows are the catalog's, in order
    assert negatives.names == tuple(sorted(set(labels))) and negatives.counts.tolist() == [10] * 4
    for name, image, text in zip(negatives.names, negatives.image, negatives.text):
        assert torch.allclose(image, torch.from_numpy(np.asarray(store.image)[labels == name].mean(0)), atol=1e-6)
        assert torch.allclose(text, torch.from_numpy(store.text()[labels == name].mean(0)), atol=1e-6)
    with pytest.raises(FslError, match="no articleType class of the catalog has 11 products"):
        catalog_negatives(TINY, catalog, workspace, min_count=11)

    path = negatives.save(tmp_path / "negatives")
    found = find_negatives(negatives.encoder, tmp_path / "negatives")
    assert found.path == path and same_negatives(found, negatives)
    assert find_negatives(negatives.encoder, tmp_path / "elsewhere") is None
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(FslError, match=f"{path} is not a known-negatives file"):
        find_negatives(negatives.encoder, tmp_path / "negatives")


@pytest.mark.real_data  # the offline encoder's features of real photos
def test_your_own_categories_meet_the_catalog_negatives_in_the_api_fsl_predict_and_a_saved_classifier(
    own_folders, small_dump, tmp_path, monkeypatch
):
    from fsl.data.prepared import load_catalog

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FSL_DATA", raising=False)
    catalog = load_catalog(small_dump)  # its 4 classes: the 3 taught and the one the queries add
    # the offline encoder: the tiny random CLIP puts every photo within the same-as cosine of every other
    config = NAMED_HEADS[DEFAULT_HEAD]
    made = catalog_negatives(config.encoder, catalog, Workspace(features=tmp_path / "store"), min_count=2)
    monkeypatch.setattr(fsl.paths, "USER_NEGATIVES_DIR", tmp_path / "negatives")  # as `fsl negatives` leaves them
    made.save(tmp_path / "negatives")  # found before the shipped ones
    queries = sorted((own_folders / "query").iterdir())
    support = read_support_folder(own_folders / "support")
    untaught = (set(made.names) - set(support.classes)).pop()
    truth = [label for path in queries for label in catalog.labels()[catalog.products["id"] == int(path.stem)]]

    api = FewShotClassifier.from_support(support, config, calibration=None, cache_root=tmp_path / "cache")
    assert same_negatives(api.negatives, made)  # found for this encoder, with no catalog at hand
    rule = api._ready().negative_rule
    assert rule.left_out == support.classes and rule.negatives.names == (untaught,)  # a taught class is no negative
    assert f"left out as taught categories: {', '.join(support.classes)}" in api.describe()
    answers = api.predict(queries)
    plain = FewShotClassifier.from_support(
        support, config, calibration=None, cache_root=tmp_path / "cache", negatives=None
    ).predict(queries)
    assert all(a.label != "unknown" and a.looks_like is None for a in plain)  # uncalibrated: always a name
    turned = [(a, t) for a, t in zip(answers, truth) if a.looks_like]
    assert all(a.label == "unknown" and a.looks_like == untaught for a, _ in turned)
    assert sum(t == untaught for _, t in turned) >= 2  # most of the 3 untaught photos
    assert [a.label for a in answers if not a.looks_like] == [
        p.label for p, a in zip(plain, answers) if not a.looks_like
    ]

    argv = ["predict", "--support", str(own_folders / "support"), "--images", str(own_folders / "query")]
    argv += ["--calibration-dir", str(tmp_path / "none")]
    assert main([*argv, "--out", "with.csv"]) == 0
    table = pd.read_csv("with.csv", keep_default_na=False).set_index("file")
    assert [table.at[q.name, "looks_like"] for q in queries] == [a.looks_like or "" for a in answers]
    assert main([*argv, "--out", "without.csv", "--no-catalog-negatives"]) == 0
    table = pd.read_csv("without.csv", keep_default_na=False).set_index("file")
    assert (table["looks_like"] == "").all() and (table["answer"] != "unknown").all()

    # a fused head meets them too, in [image | text]: each photo with its product's text
    text_of = dict(zip(catalog.ids, catalog.texts()))
    fused = FewShotClassifier(NAMED_HEADS[FUSED_DEFAULT_HEAD], calibration=None, cache_root=tmp_path / "cache")
    assert same_negatives(fused.negatives, made) and "known negatives off" not in fused.describe()
    for index, name in enumerate(support.classes):
        photos = [photo for photo, label in zip(support.photos, support.labels) if label == index]
        fused.add_examples(name, photos, texts=[text_of[int(photo.stem)] for photo in photos])
    fused_answers = fused.predict(queries, texts=[text_of[int(path.stem)] for path in queries])
    assert fused._ready().negative_rule.left_out == support.classes  # in fused features, as in image ones
    assert all(a.label == "unknown" for a in fused_answers if a.looks_like)
    assert {a.looks_like for a in fused_answers} <= {None, untaught}

    api.save(tmp_path / "saved")
    loaded = FewShotClassifier.load(tmp_path / "saved", cache_root=tmp_path / "cache")
    assert [(a.label, a.looks_like) for a in loaded.predict(queries)] == [(a.label, a.looks_like) for a in answers]
    with pytest.raises(FslError, match="made with encoder"):
        FewShotClassifier(config, encoder=TINY, negatives=made)


# One classifier behind the CLI, the demo and the API ------------------------------------------------


def test_the_same_support_gives_the_same_answers_in_predict_the_demo_and_the_api(own_folders, tmp_path, monkeypatch):
    from fsl.apps.demo import handlers
    from fsl.apps.demo.backend import DemoBackend
    from fsl.encoders.factory import encoder_from_config

    monkeypatch.chdir(tmp_path)  # an empty folder: no catalog, no dump, the cache under ./.fsl
    monkeypatch.delenv("FSL_DATA", raising=False)
    config = dataclasses.replace(NAMED_HEADS[DEFAULT_HEAD], encoder=TINY)  # the demo's head, on the tiny encoder
    (tmp_path / "default.yaml").write_text(to_yaml(config))
    probe = FewShotClassifier.from_folder(own_folders / "support", config)
    fitted = dataclasses.replace(probe.calibrate_on_support(score="max-softmax"), temperature=0.05)
    probe.calibration = fitted
    confidences = [a.confidence for a in probe.predict(sorted((own_folders / "query").iterdir()))]
    fitted = dataclasses.replace(fitted, threshold=float(np.median(confidences)))  # half answered, half unknown
    fitted.save(tmp_path / "calibrations")  # a calibration of this head and encoder, as `fsl calibrate` leaves one

    api = FewShotClassifier.from_folder(own_folders / "support", config, calibration_dir=tmp_path / "calibrations")
    assert api.calibration is not None and api.calibration.threshold == fitted.threshold
    queries = sorted((own_folders / "query").iterdir())
    answers = api.predict(queries)

    out = tmp_path / "p.csv"
    argv = ["predict", "--support", str(own_folders / "support"), "--images", str(own_folders / "query")]
    argv += ["--config", str(tmp_path / "default.yaml"), "--calibration-dir", str(tmp_path / "calibrations")]
    assert main([*argv, "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("file")
    assert table["nearest_id"].isna().all()  # no catalog: no catalog extras

    encoder = encoder_from_config(TINY)
    backend = DemoBackend(encoder, None, None, [], calibration=api.calibration, cache=ContentCache(encoder))
    categories, _ = handlers.load_folder(backend, own_folders / "support", "support")
    for path, answer in zip(queries, answers):
        assert table.at[path.name, "answer"] == answer.label
        assert table.at[path.name, "confidence_1"] == pytest.approx(answer.confidence, abs=1e-4)
        label, confidences, message, _ = handlers.predict(backend, categories, str(path), None)
        assert label == answer.label  # "unknown" in all three
        assert confidences[answer.best] == pytest.approx(answer.confidence, abs=1e-5)  # one query vs a batch
        assert f"head {DEFAULT_HEAD}".replace("-", r"\-") in message  # (escaped for Markdown)
    assert {a.label for a in answers} <= {*api.classes, "unknown"}
    assert 0 < sum(a.label == "unknown" for a in answers) < len(answers)  # both kinds of answer were compared


def test_a_saved_classifier_loads_with_its_examples_head_and_calibration(own_folders, tmp_path):
    config = load_config(own_folders / "tiny.yaml")
    classifier = FewShotClassifier.from_folder(own_folders / "support", config, cache_root=tmp_path / "cache")
    classifier.calibrate_on_support(score="energy")
    queries = sorted((own_folders / "query").iterdir())
    before = classifier.predict(queries)
    classifier.save(tmp_path / "saved")
    loaded = FewShotClassifier.load(tmp_path / "saved", cache_root=tmp_path / "cache")
    assert loaded.classes == classifier.classes and loaded.config == classifier.config
    assert (loaded.calibration.score, loaded.calibration.threshold) == ("energy", classifier.calibration.threshold)
    assert [(a.label, round(a.confidence, 6)) for a in loaded.predict(queries)] == [
        (a.label, round(a.confidence, 6)) for a in before
    ]
    # more examples of a category, and the head follows them
    grown = loaded.add_examples(loaded.classes[0], queries[:1])
    assert grown.labels.count(0) == classifier.labels.count(0) + 1


def test_the_content_cache_embeds_each_file_once_and_a_changed_one_again(tmp_path):
    class Counting:
        id = "counting"
        embedded: list[str] = []

        def encode_images(self, paths, num_workers=None, progress=True):
            self.embedded += [Path(p).name for p in paths]
            return np.eye(4, dtype=np.float32)[[Path(p).stat().st_size for p in paths]]  # unit vectors, by size

    for name, payload in (("a.jpg", b"1"), ("b.jpg", b"22")):
        (tmp_path / name).write_bytes(payload)
    encoder = Counting()
    cache = ContentCache(encoder, tmp_path / "cache")
    first = cache.images([tmp_path / "a.jpg", tmp_path / "b.jpg"])
    assert encoder.embedded == ["a.jpg", "b.jpg"] and first.argmax(1).tolist() == [1, 2]
    shutil.copy(tmp_path / "a.jpg", tmp_path / "renamed.jpg")
    assert cache.images([tmp_path / "renamed.jpg", tmp_path / "b.jpg"]).argmax(1).tolist() == [1, 2]
    assert encoder.embedded == ["a.jpg", "b.jpg"] and (cache.hits, cache.misses) == (2, 2)  # same bytes: no work
    (tmp_path / "b.jpg").write_bytes(b"333")
    assert cache.images([tmp_path / "b.jpg"])[0].argmax() == 3 and encoder.embedded[-1] == "b.jpg"


def test_a_head_that_needs_the_catalog_says_so_without_one(own_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FSL_DATA", raising=False)
    (tmp_path / "simpleshot.yaml").write_text(TINY_PROBE.replace("linear_probe", "simpleshot").replace(
        "method_options: {init: prototypes, C: 10}", "method_options: {centering: base}"))  # fmt: skip
    argv = ["predict", "--support", str(own_folders / "support"), "--images", str(own_folders / "query")]
    assert main([*argv, "--config", "simpleshot.yaml", "--out", "p.csv"]) == 2
    assert "No Fashion Product Images dump" in capsys.readouterr().err  # it needs the catalog's base classes


# Calibrations from any folder, and the README's example ----------------------------------------------


def test_the_shipped_calibrations_and_negatives_travel_with_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = NAMED_HEADS[DEFAULT_HEAD]
    found = find_calibration(config_key(default, "offline:efficientnet-lite0+all-MiniLM-L6-v2"))
    assert found is not None and Path(found.path).parent == SHIPPED_CALIBRATION_DIR
    assert "fitted on base and validation classes" in found.describe() and found.path in found.describe()
    assert find_calibration(config_key(default, "offline:efficientnet-lite0+all-MiniLM-L6-v2"), tmp_path) is None
    shipped = find_negatives("offline:efficientnet-lite0+all-MiniLM-L6-v2")  # the catalog's classes, no catalog
    assert shipped is not None and shipped.path.parent == SHIPPED_NEGATIVES_DIR
    assert (shipped.image.shape, shipped.text.shape) == ((len(shipped.names), 1280), (len(shipped.names), 384))
    assert {"Sports Shoes", "Flip Flops", "Heels"} <= set(shipped.names) and (shipped.counts >= 20).all()


@pytest.mark.real_data  # the shipped calibration was fitted on real photos with the offline encoder
def test_the_readme_example_from_an_empty_folder_without_the_catalog(tmp_path, monkeypatch, capsys):
    from fsl.data.sample import own_categories_example
    from tests.conftest import data_source

    truth = own_categories_example(data_source(), tmp_path / "own").set_index("file")
    monkeypatch.chdir(tmp_path / "own")
    monkeypatch.delenv("FSL_DATA", raising=False)
    assert main(["predict", "--support", "support", "--images", "query", "--out", "p.csv"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"head {DEFAULT_HEAD}") and str(SHIPPED_CALIBRATION_DIR / f"{DEFAULT_HEAD}.json") in first
    assert "catalog extras off: no catalog" in first
    table = pd.read_csv("p.csv").set_index("file").join(truth)
    taught, untaught = table[table["taught"]], table[~table["taught"]]
    assert (taught["answer"] == taught["category"]).mean() >= 0.7
    assert (untaught["answer"] == "unknown").mean() >= 0.5
    assert (
        main(["predict", "--support", "support", "--images", "query", "--out", "p.csv", "--calibrate-on-support"]) == 0
    )
    printed = capsys.readouterr()
    assert "calibrated on the support: AUROC" in printed.err and f"{DEFAULT_HEAD}@support" in printed.out


# Small catalogs ------------------------------------------------------------------------------------


def test_eval_runs_the_sets_a_small_catalog_has_and_names_the_ones_it_skipped(twelve_classes, tmp_path, capsys):
    root, _ = twelve_classes
    (tmp_path / "pn.yaml").write_text(
        "method: protonet\nepisodes: [novel-5w5s, novel-15w5s]\n"
        "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\n"
    )
    common = [
        "--data",
        str(root / "dump"),
        "--episodes-dir",
        str(root / "episodes"),
        "--store-root",
        str(root / "store"),
    ]
    common += ["--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs")]
    assert main(["eval", str(tmp_path / "pn.yaml"), *common]) == 0
    err = capsys.readouterr().err
    assert "skipped novel-15w5s: the novel split of this catalog has" in err and "too few for it" in err
    assert set(pd.read_csv(tmp_path / "res" / "pn.csv")["episode_set"]) == {"novel-5w5s"}
    (tmp_path / "only.yaml").write_text((tmp_path / "pn.yaml").read_text().replace("novel-5w5s, ", ""))
    assert main(["eval", str(tmp_path / "only.yaml"), *common]) == 2
    assert "none of its episode sets exist for split 0 of this catalog: novel-15w5s (the novel split" in (
        capsys.readouterr().err
    )


def test_categories_under_a_parent_answer_the_parent_where_the_rule_accepts_it_and_not_one_of_them():
    """Heels and Flats are near twins under Footwear: a photo between them is neither surely, but surely
    footwear, so the answer is the parent, its categories likeliest first; Tops stay Tops, and a photo
    of nothing taught stays "unknown" (the parents' rule refuses it too)."""
    generator = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(3, 16, generator=generator), dim=-1)
    twins = F.normalize(centres[0] + torch.tensor([[0.05], [-0.05]]) * centres[2], dim=-1)  # Heels, Flats
    means = torch.cat([twins, centres[1:2]])
    labels = torch.arange(3).repeat_interleave(4)
    support = F.normalize(means[labels] + 0.01 * torch.randn(12, 16, generator=generator), dim=-1)
    basis = torch.linalg.qr(means.T).Q  # [16, 3]: the span of the taught means
    elsewhere = torch.randn(16, generator=generator)
    elsewhere = F.normalize(elsewhere - basis @ (basis.T @ elsewhere), dim=-1)  # as far from each taught mean
    queries = torch.stack([centres[0], centres[1], elsewhere])
    classes = ["Heels", "Flats", "Tops"]
    head = head_for_features(NAMED_HEADS["cosine-prototypes-image"], 16, 0, "test").eval()
    for score in ("max-softmax", "mahalanobis"):
        calibration = Calibration("c", "k", "test", 0.05, 0.0, 0.2, score=score)
        logits = SupportSetClassifier(head, classes, support, labels, None).logits(queries)
        scores = calibration.scores(logits, support, labels, queries)
        # the threshold between the twin photo's score and the Tops photo's: the first is refused as a category
        calibration.threshold = float((scores[0] + scores[1]) / 2)
        assert scores[0] < calibration.threshold <= scores[1] and scores[2] < calibration.threshold
        flat = SupportSetClassifier(head, classes, support, labels, calibration).answer(queries)
        nested = SupportSetClassifier(
            head, classes, support, labels, calibration, hierarchy=Hierarchy(("Footwear", "Footwear", None))
        ).answer(queries)
        assert [a.label for a in flat] == ["unknown", "Tops", "unknown"]
        twin = nested[0]
        assert (twin.label, twin.level, twin.best) == ("Footwear", "parent", flat[0].best), score
        assert twin.candidates == [name for name, _ in flat[0].top if name != "Tops"]
        assert twin.confidence == pytest.approx(sum(c for name, c in twin.top if name != "Tops"), abs=1e-5)
        assert [(a.label, a.level) for a in nested[1:]] == [("Tops", "category"), ("unknown", "unknown")]
        assert answer_record(twin, 2)["candidates"] == " or ".join(twin.candidates)
    # a parent of one category answers nothing a category would not: no hierarchy is kept
    alone = SupportSetClassifier(head, classes, support, labels, calibration, hierarchy=Hierarchy(("A", "B", None)))
    assert alone.hierarchy is None
    with pytest.raises(FslError, match="Tops: a parent category cannot also be a category"):
        SupportSetClassifier(head, classes, support, labels, calibration, hierarchy=Hierarchy(("Tops", "Tops", None)))
    with pytest.raises(FslError, match="cannot name a parent"):
        Hierarchy(("Unknown", None, None))
    # a catalog's parent column: a class under a parent named like a class (Watches under Watches) is under none
    catalog = {"Tshirts": "Topwear", "Shirts": "Topwear", "Watches": "Watches"}
    assert Hierarchy.of_catalog(["Tshirts", "Shirts", "Watches"], catalog).parents == ("Topwear", "Topwear", None)
    with pytest.raises(FslError, match="3 categories but 2 parents"):
        SupportSetClassifier(head, classes, support, labels, calibration, hierarchy=Hierarchy(("A", "A")))


def test_a_nested_support_folder_answers_parents_in_the_api_fsl_predict_a_saved_classifier_and_the_demo(
    own_folders, tmp_path, monkeypatch
):
    """support/Group/{A,B}/ and support/C/: A and B are under Group. A calibration that refuses every
    category (threshold 1 for 3 taught) and accepts every parent (0 for 2: Group, and C alone) answers
    Group wherever Group is likelier than C, and "unknown" where C is: C has no parent to fall back on."""
    from fsl.apps.demo import handlers
    from fsl.apps.demo.backend import DemoBackend
    from fsl.encoders.factory import encoder_from_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FSL_DATA", raising=False)
    first, second, third = sorted(p.name for p in (own_folders / "support").iterdir() if p.is_dir())
    nested = tmp_path / "support"
    shutil.copytree(own_folders / "support" / first, nested / "Group" / first)
    shutil.copytree(own_folders / "support" / second, nested / "Group" / second)
    shutil.copytree(own_folders / "support" / third, nested / third)
    (nested / "Group" / "notes.txt").write_text("not a photo")
    (nested / "texts.csv").write_text(f"file,text\nGroup/{first}/,a text without a photo\n")
    support = read_support_folder(nested)
    assert support.classes == [first, second, third] and support.parents == {first: "Group", second: "Group"}
    assert support.skipped == [("Group/notes.txt", "not a photo, beside the category folders of Group/")]
    assert support.category_texts == {first: ["a text without a photo"]}

    config = load_config(own_folders / "tiny.yaml")
    calibration = Calibration(
        "c", config_key(config, encoder_from_config(TINY).id), TINY.name, 0.05, 0.5, 0.2,
        score="max-softmax", thresholds={"2": 0.0, "3": 1.0},
    )  # fmt: skip
    classifier = FewShotClassifier.from_folder(nested, config, calibration=calibration)
    queries = sorted((own_folders / "query").iterdir())
    answers = classifier.predict(queries)
    probabilities = np.array([[dict(a.top)[c] for c in (first, second, third)] for a in answers])
    group = probabilities[:, :2].sum(1) > probabilities[:, 2]
    assert 0 < group.sum() < len(answers)  # both kinds of answer are compared
    for answer, in_group, p in zip(answers, group, probabilities):
        if in_group:
            assert (answer.label, answer.level) == ("Group", "parent")
            assert answer.candidates == sorted([first, second], key=lambda c: -dict(answer.top)[c])
            assert answer.confidence == pytest.approx(p[:2].sum(), abs=1e-5)
        else:
            assert (answer.label, answer.level, answer.candidates) == ("unknown", "unknown", [])
    assert "a parent answered where the rule refuses its categories but not it: Group" in classifier.describe()

    calibration.save(tmp_path / "calibrations")
    out = tmp_path / "p.csv"
    argv = ["predict", "--support", str(nested), "--images", str(own_folders / "query"), "--out", str(out)]
    assert (
        main([*argv, "--config", str(own_folders / "tiny.yaml"), "--calibration-dir", str(tmp_path / "calibrations")])
        == 0
    )
    table = pd.read_csv(out, keep_default_na=False).set_index("file")
    for path, answer in zip(queries, answers):
        assert (table.at[path.name, "answer"], table.at[path.name, "level"]) == (answer.label, answer.level)
        assert table.at[path.name, "candidates"] == " or ".join(answer.candidates)

    classifier.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved" / "Group").iterdir()) == [first, second]
    loaded = FewShotClassifier.load(tmp_path / "saved")
    assert loaded.parents == classifier.parents
    assert [(a.label, a.level) for a in loaded.predict(queries)] == [(a.label, a.level) for a in answers]

    encoder = encoder_from_config(TINY)
    backend = DemoBackend(encoder, None, None, [], calibration=calibration, cache=ContentCache(encoder))
    categories, _ = handlers.load_folder(backend, nested, "support")
    assert {c.name: c.parent for c in categories} == {first: "Group", second: "Group", third: None}
    label, _, message, _ = handlers.predict(backend, categories, str(queries[int(np.argmax(group))]), None)
    assert label == "Group" and "Surely one of them, but not surely which" in message

    (nested / "Other" / first).mkdir(parents=True)  # the same category name under two parents
    shutil.copy(next((nested / third).iterdir()), nested / "Other" / first / "x.jpg")
    with pytest.raises(FslError, match=f"two category folders are named {first}"):
        read_support_folder(nested)

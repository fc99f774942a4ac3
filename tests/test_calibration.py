"""Calibrated confidences and the unknown rule (`fsl calibrate`): the statistics on synthetic scores,
and the pipeline on a small real slice, which reads validation classes only until it has saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl.episodes.sampler import Episodes
from fsl.errors import FslError
from fsl.harness.calibration import (
    OpenSetScores,
    calibrate,
    expected_calibration_error,
    format_calibration,
    open_set_episodes,
    open_set_figures,
    selection_turned_away,
)
from fsl.inference.calibration import (
    Calibration,
    config_key,
    find_calibration,
    fit_temperature,
    threshold_for,
    threshold_for_floor,
)
from fsl.inference.negatives import KnownNegatives
from fsl.inference.open_set import SCORES
from fsl.paths import Workspace


def overconfident_scores(n=6000, n_way=5, scale=3.0, seed=0):
    """True logits z (labels drawn from softmax(z)) and a model's logits scale * z."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, n_way, generator=g)
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    return scale * z, labels


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_the_calibration_error():
    logits, labels = overconfident_scores(scale=3.0)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(torch.softmax(logits, -1), labels)
    after = expected_calibration_error(torch.softmax(logits / temperature, -1), labels)
    assert before > 0.1 and after < 0.03
    held_out, held_labels = overconfident_scores(scale=3.0, seed=1)  # and on other draws of the same model
    assert expected_calibration_error(torch.softmax(held_out / temperature, -1), held_labels) < 0.03


def test_the_threshold_accepts_the_target_share_of_unknowns_and_auroc_ranks_them():
    rng = np.random.default_rng(0)
    unknown = rng.uniform(0.2, 0.9, 5000)
    threshold = threshold_for(unknown, 0.2)
    assert 0.19 <= (unknown >= threshold).mean() <= 0.2
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    confidence = probabilities.max(-1).values.numpy()  # the max-softmax score
    figures = open_set_figures(probabilities.argmax(-1).numpy(), confidence, np.array([0, 1, -1, -1]), threshold=0.7)
    assert figures["auroc"] == 1.0  # every known query is more confident than every unknown one
    assert figures["known_unknown_rate"] == 0.0 and figures["false_accept"] == 0.0
    assert figures["known_accuracy"] == 0.5  # the second is answered, but wrong


def test_a_selection_query_meets_every_known_negative_but_the_taught_classes_and_its_own():
    # selection classes are known negatives: a taught photo that looks like an untaught class of its
    # own episode is turned away (as at answer time, where every negative is met), an untaught photo is
    # never judged against its own class, and a class outside the episode is met by every query
    axis = torch.eye(4)
    negatives = KnownNegatives(("a", "b", "c"), axis[:3])
    support = axis[0] + 0.05 * torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, -1]])  # taught "a", two photos
    labels = torch.tensor([0, 0])
    # class-major queries, two each: "a" like b, "a" like a; "b" like b, "b" like c
    query = torch.stack([axis[1], axis[0], axis[1], axis[2]])
    away = selection_turned_away(negatives, support, labels, ["a", "b"], query, q_query=2)
    assert away.tolist() == [True, False, False, True]
    with pytest.raises(FslError, match="3 queries for 2 classes"):
        selection_turned_away(negatives, support, labels, ["a", "b"], query[:3], q_query=2)


def test_thresholds_fitted_beside_known_negatives_keep_the_target_and_answer_more_taught_photos():
    rng = np.random.default_rng(0)
    labels = [np.array([0, 1, 0, 1, -1, -1, -1, -1])] * 400  # 4 taught queries, 4 untaught, per episode
    scores = [np.where(row >= 0, 1.0, 0.0) + rng.normal(size=8) for row in labels]
    away = [(row < 0) & (rng.random(8) < 0.6) | (row >= 0) & (rng.random(8) < 0.05) for row in labels]
    open_set = OpenSetScores([np.where(row >= 0, row, 0) for row in labels], {"s": scores}, labels, [2] * 400, away)
    plain = threshold_for(open_set.unknown_scores("s"), 0.2)
    beside = open_set.with_negatives("s")
    fitted = threshold_for(beside.unknown_scores("s"), 0.2)
    assert fitted < plain  # the negatives turn untaught photos away: the threshold can let more through
    alone, combined = open_set.figures("s", lambda _: plain), beside.figures("s", lambda _: fitted)
    assert combined["false_accept"] <= 0.2 + 1e-9 and alone["false_accept"] <= 0.2 + 1e-9  # the same target
    assert combined["known_accuracy"] > alone["known_accuracy"]  # more taught photos right and answered
    taught_away = np.concatenate(away)[np.concatenate(labels) >= 0]
    assert combined["known_unknown_rate"] >= taught_away.mean()  # a taught photo turned away is "unknown" too

    # the trade-off curve: at each taught share, the threshold that reaches it (brute force over every
    # threshold) and the most untaught photos answered "unknown" there; the negatives' curve lies above
    flat = {k: np.concatenate(v) for k, v in (("s", scores), ("y", labels), ("a", away))}
    right = np.concatenate(open_set.predicted) == flat["y"]
    for negatives in (False, True):
        answered_at = [(flat["s"] >= t) & ~(flat["a"] & negatives) for t in np.unique(flat["s"])]
        points = [(float((a & right)[flat["y"] >= 0].mean()), float((~a)[flat["y"] < 0].mean())) for a in answered_at]
        expected = [max(u for r, u in points if r >= target) for target in (0.5, 0.7, 0.9)]
        assert open_set.curve("s", negatives, (0.5, 0.7, 0.9)) == pytest.approx(expected)
    assert open_set.curve("s", False, (1.01,)) == [None]  # no threshold answers more than every taught photo
    alone_curve, beside_curve = open_set.curve("s", False), open_set.curve("s", True)
    assert all(b > a for a, b in zip(alone_curve, beside_curve)) and alone_curve == sorted(alone_curve, reverse=True)


def test_a_floor_of_taught_photos_right_lowers_a_threshold_only_where_the_target_answers_fewer():
    rng = np.random.default_rng(1)
    labels = [np.array([0, 1, 0, 1, -1, -1, -1, -1])] * 300
    predicted = [np.where(rng.random(8) < 0.9, np.where(row >= 0, row, 0), 1 - np.maximum(row, 0)) for row in labels]
    scores = [np.where(row >= 0, 1.0, 0.0) + rng.normal(size=8) for row in labels]
    away = [(row < 0) & (rng.random(8) < 0.5) | (row >= 0) & (rng.random(8) < 0.1) for row in labels]
    open_set = OpenSetScores(predicted, {"s": scores}, labels, [2] * 300, away)
    target = open_set.threshold("s", 0.2)
    assert target == threshold_for(open_set.unknown_scores("s"), 0.2)  # no floor: the false-accept target
    assert open_set.figures("s", lambda _: target)["known_accuracy"] < 0.8  # which answers fewer than 80% right
    floored = open_set.threshold("s", 0.2, taught_right=0.8)
    kept = open_set.figures("s", lambda _: floored)
    assert floored < target and kept["known_accuracy"] >= 0.8
    above = np.unique(np.concatenate(scores))
    above = above[above > floored][0]  # the next threshold up breaks the floor: the highest that keeps it
    assert open_set.figures("s", lambda _: above)["known_accuracy"] < 0.8
    assert open_set.threshold("s", 0.2, taught_right=0.3) == target  # a floor the target keeps changes nothing
    # beside the negatives, a photo they turn away is never answered: the floor counts only the others
    beside = open_set.with_negatives("s")
    floored_beside = beside.threshold("s", 0.2, taught_right=0.8)
    assert beside.figures("s", lambda _: floored_beside)["known_accuracy"] >= 0.8
    fitted = beside.thresholds("s", 0.2, taught_right=0.8)
    assert fitted == {"threshold": floored_beside, "thresholds": {"2": floored_beside}}
    # a floor above what the head names right: every right photo answered, the most any threshold keeps
    right = np.concatenate(predicted) == np.concatenate(labels)
    assert open_set.threshold("s", 0.2, taught_right=0.99) == np.concatenate(scores)[right].min()
    assert threshold_for_floor(np.array([3.0, 1.0, 2.0]), 4, 0.5) == 2.0  # 2 of 4 right: the second highest
    with pytest.raises(FslError, match="named none"):
        threshold_for_floor(np.array([]), 4, 0.5)


def test_open_set_episodes_teach_the_first_classes_and_keep_every_query():
    episodes = Episodes(
        np.arange(24).reshape(2, 12),
        np.arange(100, 124).reshape(2, 12),
        np.array([[0, 1, 2, 3], [3, 2, 1, 0]]),
        n_way=4,
        k_shot=3,
        q_query=3,
    )
    known, labels = open_set_episodes(episodes, 3)
    assert known.n_way == 3 and known.support.shape == (2, 9) and known.query.shape == (2, 12)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]
    with pytest.raises(FslError, match="known ways"):
        open_set_episodes(episodes, 4)


@pytest.fixture(scope="module")
def open_set_slice(twelve_classes, tmp_path_factory):
    """The twelve-class slice with a split of 3+ validation classes and small open-set-ready sets."""
    from fsl.episodes.frozen import draw_episode_set
    from fsl.episodes.splits import split_classes
    from fsl.paths import episodes_dir_for

    root, catalog = twelve_classes
    episodes_root = tmp_path_factory.mktemp("open-episodes")
    split = split_classes(catalog.labels(), 10, seed=0, fractions=(0.25, 0.35, 0.4))
    assert len(split.classes("val")) >= 4 and len(split.classes("novel")) >= 4
    out = episodes_dir_for(catalog, episodes_root)
    ids = catalog.products["id"].to_numpy()
    for seed, (name, split_name, n_way) in enumerate(
        [
            ("val-3w5s", "val", 3),
            ("val-allway-5s", "val", None),
            ("select-5w5s", "select", 5),
            ("select-allway-5s", "select", None),
            ("novel-3w5s", "novel", 3),
            ("novel-allway-5s", "novel", None),
        ]
    ):
        draw_episode_set(
            f"articleType-{name}", ids, catalog.labels(), split, split_name, catalog.fingerprint, n_way, 5, 5, 40, seed
        ).save(out / f"articleType-{name}.npz")
    return root, catalog, episodes_root


def test_calibrate_reads_validation_classes_only_until_it_has_saved(open_set_slice, tmp_path, monkeypatch):
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.frozen import EpisodeSet

    root, catalog, episodes_root = open_set_slice
    events = []
    real_load, real_save = EpisodeSet.load.__func__, Calibration.save

    def load(cls, path, fingerprint=None):
        episode_set = real_load(cls, path, fingerprint)
        events.append(episode_set.meta["split"])
        return episode_set

    monkeypatch.setattr(EpisodeSet, "load", classmethod(load))
    monkeypatch.setattr(Calibration, "save", lambda self, where: (events.append("saved"), real_save(self, where))[1])
    config = ExperimentConfig(
        name="pn", method="protonet", fusion="image", encoder=EncoderConfig("clip", "FSL-Tiny", "none")
    )
    workspace = Workspace(episodes_root, root / "store", root / "ckpt")
    calibration = calibrate(
        config,
        catalog,
        workspace,
        tmp_path,
        temperature_set="val-3w5s",
        report_sets=("novel-3w5s",),
        open_novel_set="novel-allway-5s",
    )
    first_save = events.index("saved")
    assert set(events[:first_save]) == {"val", "select"} and "novel" in events[first_save:]
    # open-set selection over base ∪ validation classes (7 here: 15-way is not drawn)
    assert calibration.validation["open_set"] == "select-allway-5s"
    assert calibration.validation["taught_counts"] == [2, 3, 5, 6]  # 8 taught: all but one of 7
    assert set(calibration.validation["by_taught"]) == {"2", "3", "5", "6"}
    power = calibration.validation["power"]  # the chosen score against the runner-up, paired
    assert power["chosen"] == calibration.score and power["runner_up"] != calibration.score
    assert power["separable"] == (power["difference"] - power["ci"] > 0) and "AUROC, paired over" in power["verdict"]
    assert power["verdict"].startswith("separable" if power["separable"] else "not separable")
    assert calibration.validation["nll_after"] <= calibration.validation["nll_before"]
    assert calibration.temperature > 0
    compared = calibration.validation["scores"]  # every "none of these" score, compared on validation only
    assert set(compared) == set(SCORES)
    assert calibration.score == max(compared, key=lambda name: compared[name]["auroc"])
    assert calibration.validation["false_accept"] <= 0.2 + 1e-9  # the threshold's target, on validation
    beside = calibration.with_negatives  # the same target with the known negatives answering too
    assert set(beside["thresholds"]) == set(calibration.thresholds)
    assert all(beside["thresholds"][c] <= calibration.thresholds[c] for c in calibration.thresholds)
    assert calibration.validation["with_negatives"]["false_accept"] <= 0.2 + 1e-9
    assert calibration.answering_with_negatives().thresholds == beside["thresholds"]
    assert set(calibration.novel) == {"novel-3w5s", "open-novel-allway-5s"}
    reported = calibration.novel["open-novel-allway-5s"]
    assert 0 <= reported["auroc"] <= 1 and reported["taught"] == 4 and set(reported["by_taught"]) == {"2", "3", "4"}
    assert reported["rank_agreement"] is None or -1 <= reported["rank_agreement"] <= 1

    found = find_calibration(config_key(config, calibration.encoder), tmp_path)
    assert found == calibration  # saved whole, found by what it was fitted for
    other = ExperimentConfig(name="pn", method="protonet", fusion="image", method_options={"metric": "cosine"})
    assert find_calibration(config_key(other, calibration.encoder), tmp_path) is None

    softmax = calibrate(config, catalog, workspace, tmp_path / "s",
                        temperature_set="val-3w5s", report_sets=(), open_novel_set="novel-allway-5s",
                        score="max-softmax", taught_counts=(4,))  # fmt: skip
    assert softmax.score == "max-softmax" and 0 < softmax.threshold <= 1
    assert list(softmax.thresholds) == ["4"] and softmax.novel["open-novel-allway-5s"]["by_taught"] == {}  # one count
    monkeypatch.setattr("fsl.harness.calibration.HARD_NOVEL_SET", "novel-3w5s")  # a hard set drawn: reported too
    events.clear()
    hard = calibrate(config, catalog, workspace, tmp_path / "h",
                     temperature_set="val-3w5s", report_sets=(), open_novel_set="novel-allway-5s")  # fmt: skip
    assert "novel" not in events[: events.index("saved")] and events.count("novel") == 2  # read after saving
    figures = hard.novel["open-novel-3w5s"]
    assert figures["taught"] == 2 and set(figures["scores"]) == set(SCORES) and 0 <= figures["false_accept"] <= 1
    assert figures["threshold"] == hard.threshold_at(2)
    assert (hard.thresholds, hard.score) == (calibration.thresholds, calibration.score)  # reporting chose nothing
    for described in (figures, hard.novel["open-novel-allway-5s"]):  # close neighbours, and random untaught classes
        assert set(described["curves"]) == set(SCORES)
        assert described["curve_taught_right"] == [0.75, 0.8, 0.85, 0.88, 0.9]  # 0.88: issue 33's floor
        for rule in described["curves"].values():
            for curve in rule.values():
                reached = [value for value in curve if value is not None]
                assert len(curve) == 5 and reached == sorted(reached, reverse=True)
                assert all(0 <= v <= 1 for v in reached)
    floored = calibrate(config, catalog, workspace, tmp_path / "f",
                        temperature_set="val-3w5s", report_sets=(), open_novel_set="novel-allway-5s",
                        taught_right=0.99)  # fmt: skip
    assert floored.taught_right == 0.99 and "at least 99% of taught photos right" in floored.fitted_on
    assert all(floored.thresholds[c] <= calibration.thresholds[c] for c in calibration.thresholds)
    assert all(floored.with_negatives["thresholds"][c] <= beside["thresholds"][c] for c in beside["thresholds"])
    kept, alone = floored.validation, floored.validation["without_floor"]  # the target alone, reported beside
    assert alone["known_accuracy"] == pytest.approx(calibration.validation["known_accuracy"])
    assert kept["known_accuracy"] >= min(0.99, alone["known_accuracy"])  # kept, as far as the head names right
    assert "without_floor" in floored.novel["open-novel-allway-5s"] and "without_floor" not in reported
    assert Calibration.load(tmp_path / "f" / "pn.json") == floored  # the floor saved and read back
    assert "the false-accept target alone (no floor)" in format_calibration(floored)
    with pytest.raises(FslError, match=r"within \[0, 1\)"):
        calibrate(config, catalog, workspace, tmp_path, taught_right=1.0)
    with pytest.raises(FslError, match="validation classes only"):
        calibrate(config, catalog, workspace, tmp_path, temperature_set="novel-3w5s")
    centred = ExperimentConfig(name="lp", method="linear_probe", fusion="image", encoder=config.encoder,
                               method_options={"centering": "base"})  # fmt: skip
    with pytest.raises(FslError, match="'select-5w5s' holds base classes, which lp learned from"):
        calibrate(centred, catalog, workspace, tmp_path, temperature_set="select-5w5s")
    with pytest.raises(FslError, match="between 0 and 1"):
        calibrate(config, catalog, workspace, tmp_path, false_accept=1.5)


def test_rank_agreement_is_spearman_over_the_scores_aurocs():
    from fsl.harness.calibration import rank_agreement

    selection = {name: {"auroc": a} for name, a in zip("abcd", (0.9, 0.8, 0.7, 0.6))}
    assert rank_agreement(selection, {name: {"auroc": a} for name, a in zip("abcd", (0.99, 0.5, 0.4, 0.1))}) == 1.0
    assert rank_agreement(selection, {name: {"auroc": a} for name, a in zip("abcd", (0.1, 0.2, 0.3, 0.4))}) == -1.0
    assert rank_agreement(selection, {name: {"auroc": 0.5} for name in "abcd"}) is None  # all tied: no order
    assert rank_agreement({"a": {"auroc": 1}, "b": {"auroc": 0}}, {"a": {"auroc": 1}, "b": {"auroc": 0}}) is None


def test_a_damaged_calibration_file_is_a_message_naming_it(tmp_path):
    (tmp_path / "x.json").write_text('{"config": "x", "temperature": -1}')
    with pytest.raises(FslError, match=r"x.json: the calibration is damaged \(it lacks .key.\); rerun `fsl calibrate`"):
        find_calibration("anything", tmp_path)


def test_a_verdict_shows_score_and_threshold_with_the_digits_that_tell_them_apart():
    from fsl.inference.calibration import Calibration

    softmax = Calibration("c", "k", "e", 1.0, 0.94, 0.2)
    assert softmax.verdict(0.9364) == "93.6% < 94.0%"  # never "94%" beside "unknown below 94%"
    assert softmax.verdict(0.9399) == "93.99% < 94.00%" and softmax.verdict(0.5) == "50% < 94%"
    energy = Calibration("c", "k", "e", 1.0, -2.9, 0.2, score="energy")
    assert energy.verdict(-3.21) == "energy -3.2 < -2.9" and energy.verdict(-2.5, named=False) == "-2.5 >= -2.9"
    mahalanobis = Calibration("c", "k", "e", 1.0, -5751.3, 0.2, score="mahalanobis")
    assert mahalanobis.verdict(-6310.7, named=False) == "-6311 < -5751"  # whole numbers written out, not 6.3e+03
    assert mahalanobis.verdict(-5751.34) == "mahalanobis -5751.34 < -5751.3"


def test_a_threshold_per_taught_count_is_interpolated_and_checked_when_read(tmp_path):
    import json

    per_count = Calibration("c", "k", "e", 1.0, -5.0, 0.2, score="mahalanobis",
                            thresholds={"2": -8.0, "8": -2.0, "3": -6.0})  # fmt: skip
    assert per_count.threshold_at(2) == -8.0 and per_count.threshold_at(8) == -2.0
    assert per_count.threshold_at(1) == -8.0 and per_count.threshold_at(40) == -2.0  # the nearest outside
    between = per_count.threshold_at(5)  # log(5) between log(3) and log(8)
    assert between == pytest.approx(-6.0 + 4.0 * (np.log(5) - np.log(3)) / (np.log(8) - np.log(3)))
    assert per_count.threshold_at(None) == -5.0  # no count: every count pooled
    assert per_count.known(np.array([-7.0, -5.5]), 2).tolist() == [True, True]
    assert per_count.known(np.array([-7.0, -5.5]), 3).tolist() == [False, True]
    assert per_count.verdict(-2.5, taught=8) == "mahalanobis -2.5 < -2"
    assert "for 3 categories" in per_count.rule(3) and "-8 for 2, -6 for 3, -2 for 8" in per_count.rule()
    plain = Calibration("c", "k", "e", 1.0, 0.9, 0.2)  # without thresholds: one for every count
    assert plain.threshold_at(2) == plain.threshold_at(9) == 0.9 and plain.rule(4) == '"unknown" below 90% confidence'

    record = {k: v for k, v in per_count.__dict__.items() if k != "path"}
    for bad in ({"x": -1.0}, {"2": "low"}, {"2": float("nan")}, {"0": 1.0}, {"2": True}):
        (tmp_path / "c.json").write_text(json.dumps({**record, "thresholds": bad}))
        with pytest.raises(FslError, match=r"c.json: the calibration is damaged \(thresholds\["):
            Calibration.load(tmp_path / "c.json")
    for bad in ({"threshold": -1.0, "thresholds": {"2": "low"}}, {"thresholds": {"2": -1.0}}, {"threshold": True}):
        (tmp_path / "c.json").write_text(json.dumps({**record, "with_negatives": bad}))  # those fitted beside negatives
        with pytest.raises(FslError, match=r"c.json: the calibration (with_negatives )?is damaged"):
            Calibration.load(tmp_path / "c.json")
    beside = {"threshold": -9.0, "thresholds": {"2": -9.0, "8": -3.0}}
    (tmp_path / "c.json").write_text(json.dumps({**record, "with_negatives": beside}))
    answering = Calibration.load(tmp_path / "c.json").answering_with_negatives()
    assert answering.threshold_at(2) == -9.0 and answering.threshold_at(None) == -9.0 and answering.with_negatives == {}
    assert per_count.answering_with_negatives() is per_count  # fitted without them: unchanged
    for bad in (1.0, -0.1, "high", float("nan")):  # a floor of taught photos right lies within [0, 1)
        (tmp_path / "c.json").write_text(json.dumps({**record, "taught_right": bad}))
        with pytest.raises(FslError, match=r"c.json: the calibration is damaged \(taught_right"):
            Calibration.load(tmp_path / "c.json")
    softmax = {**record, "score": "max-softmax", "threshold": 0.9, "thresholds": {"2": 1.5}}
    (tmp_path / "c.json").write_text(json.dumps(softmax))
    with pytest.raises(FslError, match="thresholds"):
        Calibration.load(tmp_path / "c.json")

"""Class folds of base ∪ validation classes (fsl/episodes/folds.py) and the power line (harness/select.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fsl.config import AdaptConfig
from fsl.episodes.folds import (
    CHOOSE,
    REPORT,
    ClassFold,
    check_fold,
    class_folds,
    fold_column,
    fold_episodes,
    fold_sets,
)
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.harness.select import power_line, shared_value


def toy_split(n_base=10, n_val=4, n_novel=6) -> tuple[ClassSplit, np.ndarray]:
    """A split of named classes and a catalog of 20 products per class (labels, one per product)."""
    names = [f"c{i:02d}" for i in range(n_base + n_val + n_novel)]
    kinds = ["base"] * n_base + ["val"] * n_val + ["novel"] * n_novel
    table = pd.DataFrame({"class": names, "count": 20, "split": kinds, "parent": ""})
    return ClassSplit("articleType", 3, 20, table), np.repeat(names, 20)


def test_folds_cover_the_pool_once_hold_no_novel_class_and_are_even():
    split, labels = toy_split()
    folds = class_folds(split, labels, k=4, seed=0)
    pool = set(split.classes("base")) | set(split.classes("val"))
    held = [set(fold.held) for fold in folds]
    assert set().union(*held) == pool and sum(map(len, held)) == len(pool)  # every pool class held once
    assert all(set(fold.train) == pool - set(fold.held) for fold in folds)  # trains on the rest, never its own
    assert sorted(map(len, held)) == [3, 3, 4, 4]
    for fold in folds:
        check_fold(fold, split)
    assert class_folds(split, labels, k=4, seed=0) == folds  # seeded
    with pytest.raises(FslError, match="fold 0 holds novel classes"):
        check_fold(ClassFold(0, ("c00",), ("c19", "c01")), split)
    with pytest.raises(FslError, match="trains on classes it holds out"):
        check_fold(ClassFold(0, ("c00", "c01"), ("c01", "c02")), split)


def test_classes_sharing_a_near_duplicate_group_stay_in_one_fold():
    split, labels = toy_split()
    groups = np.arange(len(labels))
    twin_a, twin_b = np.flatnonzero(labels == "c00")[0], np.flatnonzero(labels == "c11")[0]
    groups[twin_b] = groups[twin_a]  # one photo filed under c00 and c11
    twin_c = np.flatnonzero(labels == "c05")[3]
    groups[twin_c] = groups[twin_a]  # and under c05
    for seed in range(5):
        folds = class_folds(split, labels, groups, k=4, seed=seed)
        (together,) = [fold for fold in folds if "c00" in fold.held]
        assert {"c00", "c05", "c11"} <= set(together.held)
    before = class_folds(split, labels, groups, k=4)
    groups[np.flatnonzero(labels == "c19")[0]] = groups[np.flatnonzero(labels == "c02")[0]]
    assert class_folds(split, labels, groups, k=4) == before  # a twin in a novel class links no pool classes


def test_folds_by_a_coarser_column_hold_each_of_its_groups_whole():
    """`--fold-by subCategory`: every class whose products are mostly of one parent goes to one fold
    (a stray product filed under another parent does not link it there); the folds still cover the
    pool once, are named apart from plain folds, and the label column itself or too few groups for k
    folds are refused."""
    split, labels = toy_split()
    parent_of = {f"c{i:02d}": f"p{i // 3}" for i in range(20)}  # c00-c02 in p0, c03-c05 in p1, ...
    parents = pd.Series([parent_of[label] for label in labels], name="subCategory")
    parents[np.flatnonzero(labels == "c04")[0]] = "p0"  # one stray product of c04 filed under p0
    pool = set(split.classes("base")) | set(split.classes("val"))
    for seed in range(5):
        folds = class_folds(split, labels, k=3, seed=seed, parents=parents)
        assert sorted(c for fold in folds for c in fold.held) == sorted(pool)
        for fold in folds:
            check_fold(fold, split)
            held_parents = {parent_of[c] for c in fold.held}
            assert not held_parents & {parent_of[c] for c in fold.train}  # no held class has a training sibling
            assert fold.name == f"fold{fold.index}-by-subCategory" and fold.record()["by"] == "subCategory"
    (with_c03,) = [fold for fold in folds if "c03" in fold.held]
    assert "c04" in with_c03.held and "c00" not in with_c03.held  # the stray product links nothing
    plain = class_folds(split, labels, k=3, seed=0)
    assert plain[0].name == "fold0" and "by" not in plain[0].record()
    assert any({parent_of[c] for c in fold.held} & {parent_of[c] for c in fold.train} for fold in plain)
    with pytest.raises(FslError, match="would hold each class alone"):
        class_folds(split, labels, k=3, parents=pd.Series(labels, name="articleType"))
    with pytest.raises(FslError, match="subCategory groups tie the pool's classes .* or folds of classes alone"):
        class_folds(split, labels, k=3, parents=pd.Series(["a"] * 140 + ["b"] * 140 + ["c"] * 120, name="subCategory"))


def test_folds_hold_the_label_columns_parent_unless_told_otherwise():
    """`--fold-by` left out: the label column's parent; `none`: classes alone; a column named: that one."""
    assert fold_column(None, "articleType") == "subCategory"
    assert fold_column(None, "subCategory") == "masterCategory"
    assert fold_column(None, "baseColour") is None  # no parent: classes alone
    assert fold_column("none", "articleType") is None
    assert fold_column("masterCategory", "articleType") == "masterCategory"


@pytest.mark.parametrize("k", [1, 8, "4"])
def test_impossible_fold_counts_are_refused(k):
    split, labels = toy_split()
    with pytest.raises(FslError, match="folds must be a whole number from 2 to 7"):
        class_folds(split, labels, k=k)


def test_fold_episodes_draw_from_held_classes_only_and_are_the_same_for_every_caller():
    split, labels = toy_split()
    ids = np.arange(1000, 1000 + len(labels))
    fold = class_folds(split, labels, k=4)[1]
    first = fold_episodes(fold, split, ids, labels, "fp", n_episodes=40)
    drawn = np.unique(np.concatenate([first.episodes.support.ravel(), first.episodes.query.ravel()]))
    assert set(labels[drawn - 1000]) <= set(fold.held)
    assert first.meta["split"] == "fold1" and first.episodes.n_way == min(5, len(fold.held))
    again = fold_episodes(fold, split, ids, labels, "fp", n_episodes=40)
    assert again.digest == first.digest  # paired: every recipe meets the very same episodes


def test_a_fold_is_scored_at_one_and_five_shots_and_on_every_held_class_with_halves_apart():
    split, labels = toy_split(n_base=14, n_val=6)
    ids = np.arange(1000, 1000 + len(labels))
    fold = class_folds(split, labels, k=2)[0]  # 10 held classes
    sets = fold_sets(fold, split, ids, labels, "fp")
    shapes = {name: (s.episodes.n_way, s.episodes.k_shot) for name, s in sets.items()}
    assert shapes == {"5w5s": (5, 5), "5w1s": (5, 1), "allway-5s": (10, 5)}
    assert len({s.meta["seed"] for s in sets.values()}) == 3  # each setting its own episodes
    for episode_set in sets.values():
        drawn = np.concatenate([episode_set.episodes.support.ravel(), episode_set.episodes.query.ravel()])
        assert set(labels[drawn - 1000]) <= set(fold.held)
    episodes = np.arange(300)
    chose, read = set(episodes[CHOOSE]), set(episodes[REPORT])
    assert not chose & read and len(chose) == len(read) == 150  # the step never chosen on the reported episodes


def test_the_power_line_says_separable_only_when_the_paired_interval_clears_zero():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 1.0, 400)
    close = np.clip(base + rng.normal(0, 0.05, 400), 0, 1)
    clear = np.clip(base + 0.05, 0, 1)
    line = power_line(["a", "b", "c"], [base, clear, close], 1)
    assert line["separable"] and line["runner_up"] in {"a", "c"} and line["verdict"].startswith("separable (b - ")
    assert line["difference"] - line["ci"] > 0
    tie = power_line(["a", "c"], [base, close], int(close.mean() > base.mean()))
    assert not tie["separable"] and "not separable" in tie["verdict"] and "paired over 400 episodes" in tie["verdict"]
    assert power_line(["a"], [base], 0)["verdict"] == "one option: nothing to compare"
    worse = power_line(["b", "a"], [base, clear], 0)  # chosen by another criterion, worse on these episodes
    assert not worse["separable"] and worse["verdict"].startswith("reversed (b - a: -")


def test_a_candidate_whose_fold_run_fails_is_left_out_named_and_the_others_still_compared(tmp_path):
    """A diverging fold run (an FslError from run_fold) drops that candidate from the comparison with
    its fold and error under "failed"; the others are compared and one chosen; when none finishes, the
    comparison is an error naming why, not an empty choice."""
    from fsl.harness.select import compare_on_folds

    split, labels = toy_split()
    folds = class_folds(split, labels, k=2, seed=0)
    values = np.tile([0.9, 0.7], 50)

    def run_fold(i, fold):
        if i == 1 and fold.index == 1:
            raise FslError("train diverging stopped at step 294: weight 2 holds NaN/inf")
        accuracies = {setting: values - 0.1 * i for setting in ("5w5s", "5w1s", "allway-5s")}
        return {"accuracies": accuracies, "best_step": 5, "best": {"score": 0.9}, "start": {"score": 0.5}}

    candidates = [("steady", {}), ("diverging", {}), ("weaker", {})]
    summary = compare_on_folds(candidates, folds, run_fold, 3, tmp_path / "runs", tmp_path / "c.json", "toy")
    assert [row["name"] for row in summary["candidates"]] == ["steady", "weaker"]
    assert summary["chosen"] == "steady" and summary["power"]["runner_up"] == "weaker"
    assert summary["failed"] == [
        {"name": "diverging", "fold": 1, "error": "train diverging stopped at step 294: weight 2 holds NaN/inf"}
    ]

    def always_fails(i, fold):
        raise FslError(f"candidate {i} diverged")

    with pytest.raises(FslError, match="no candidate finished its class folds: candidate 0 diverged; candidate 1"):
        compare_on_folds(candidates[:2], folds, always_fails, 3, tmp_path / "runs", None, "toy")


def test_candidates_compared_on_folds_share_one_split_and_label_column():
    """The folds are drawn once for every candidate, so candidates of two splits are refused by name."""
    assert shared_value([AdaptConfig(name="a"), AdaptConfig(name="b")], "split_seed", "recipes") == 0
    with pytest.raises(FslError, match=r"recipes compared on class folds share one split_seed; got \[0, 1\]"):
        shared_value([AdaptConfig(name="a"), AdaptConfig(name="b", split_seed=1)], "split_seed", "recipes")

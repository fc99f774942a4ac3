from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fsl.episodes.frozen import EpisodeSet, draw_episode_set
from fsl.episodes.sampler import EpisodeSampler
from fsl.episodes.splits import split_classes
from fsl.errors import FslError


def toy_labels(n_classes: int = 30, per_class: int = 25, seed: int = 0) -> tuple[np.ndarray, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    counts = per_class + rng.integers(0, 10, n_classes)
    labels = pd.Series(np.repeat([f"class{i:02d}" for i in range(n_classes)], counts), name="articleType")
    parents = pd.Series(np.repeat([f"parent{i % 3}" for i in range(n_classes)], counts), name="masterCategory")
    ids = np.arange(10_000, 10_000 + len(labels))
    return ids, labels, parents


def test_splits_are_disjoint_cover_eligible_classes_and_are_stratified():
    ids, labels, parents = toy_labels()
    rare = pd.Series(["rare"] * 5, name="articleType")
    split = split_classes(
        pd.concat([labels, rare], ignore_index=True),
        min_count=20,
        seed=3,
        parents=pd.concat([parents, pd.Series(["parent0"] * 5)], ignore_index=True),
    )
    base, val, novel = (set(split.classes(s)) for s in ("base", "val", "novel"))
    assert not (base & val or base & novel or val & novel)
    assert base | val | novel == set(labels)  # "rare" has too few examples
    for name in ("base", "val", "novel"):
        assert set(split.table.loc[split.table["split"] == name, "parent"]) == {"parent0", "parent1", "parent2"}
    assert split_classes(labels, 20, seed=3).table.equals(split_classes(labels, 20, seed=3).table)
    assert not split_classes(labels, 20, seed=3).table.equals(split_classes(labels, 20, seed=4).table)


def test_sampler_shapes_labels_and_no_support_query_overlap():
    ids, labels, _ = toy_labels()
    classes = sorted(set(labels))[:12]
    episodes = EpisodeSampler(ids, labels, classes, n_way=5, k_shot=3, q_query=7, seed=0).sample(64)
    assert episodes.support.shape == (64, 15) and episodes.query.shape == (64, 35)
    assert episodes.classes.shape == (64, 5)
    label_of = dict(zip(ids, labels))
    for e in range(64):
        assert len(set(episodes.classes[e])) == 5
        assert not set(episodes.support[e]) & set(episodes.query[e])
        assert len(set(episodes.support[e]) | set(episodes.query[e])) == 50
        wanted = [classes[c] for c in episodes.classes[e]]
        assert [label_of[i] for i in episodes.support[e]] == [c for c in wanted for _ in range(3)]
        assert [label_of[i] for i in episodes.query[e]] == [c for c in wanted for _ in range(7)]
    # every class and many different products show up: the draw is not stuck on a few
    assert set(episodes.classes.ravel()) == set(range(12))
    assert len(set(episodes.support.ravel())) > 200


def test_all_way_uses_every_class_of_the_split():
    ids, labels, _ = toy_labels(n_classes=8)
    episodes = EpisodeSampler(ids, labels, sorted(set(labels)), n_way=None, k_shot=10, q_query=5).sample(3)
    assert episodes.n_way == 8 and episodes.support.shape == (3, 80)
    assert all(sorted(row) == list(range(8)) for row in episodes.classes)


def test_same_seed_same_episodes_and_byte_identical_files(tmp_path):
    ids, labels, parents = toy_labels()
    split = split_classes(labels, 20, seed=0, parents=parents)
    a = draw_episode_set("t-novel-5w5s", ids, labels, split, "novel", "fp", 5, 5, 15, 100, seed=7)
    b = draw_episode_set("t-novel-5w5s", ids, labels, split, "novel", "fp", 5, 5, 15, 100, seed=7)
    c = draw_episode_set("t-novel-5w5s", ids, labels, split, "novel", "fp", 5, 5, 15, 100, seed=8)
    assert a.save(tmp_path / "a.npz").read_bytes() == b.save(tmp_path / "b.npz").read_bytes()
    assert not np.array_equal(a.episodes.support, c.episodes.support)


def test_asking_for_too_many_shots_or_ways_names_the_classes_and_counts():
    ids, labels, _ = toy_labels(n_classes=6, per_class=20)
    classes = sorted(set(labels))
    counts = labels.value_counts()
    smallest = counts.idxmin()
    with pytest.raises(FslError, match=rf"need 40 examples per class; too few in: .*{smallest} \({counts.min()}\)"):
        EpisodeSampler(ids, labels, classes, n_way=5, k_shot=25, q_query=15)
    with pytest.raises(FslError, match=r"10-way episodes need 10 classes but the split has 6: class00, "):
        EpisodeSampler(ids, labels, classes, n_way=10, k_shot=1, q_query=1)


def test_episode_file_round_trip_and_refusal_on_another_catalog(tmp_path):
    ids, labels, parents = toy_labels()
    split = split_classes(labels, 20, seed=0, parents=parents)
    saved = draw_episode_set("t-novel-5w1s", ids, labels, split, "novel", "catalog-a", 5, 1, 15, 50, seed=1)
    path = saved.save(tmp_path / "set.npz")
    loaded = EpisodeSet.load(path, "catalog-a")
    assert loaded.name == "t-novel-5w1s" and loaded.meta["classes"] == split.classes("novel")
    assert loaded.meta["sampler_version"] == 2 and loaded.meta["seed"] == 1
    np.testing.assert_array_equal(loaded.episodes.support, saved.episodes.support)
    np.testing.assert_array_equal(loaded.episodes.query, saved.episodes.query)
    with pytest.raises(FslError, match="drawn from catalog catalog-a, not catalog-b"):
        EpisodeSet.load(path, "catalog-b")


@pytest.mark.real_data
def test_committed_episode_sets_belong_to_the_shared_data_and_its_split():
    from pathlib import Path

    from fsl.data.prepared import load_catalog
    from fsl.paths import episodes_dir_for
    from tests.conftest import REAL_DATA

    catalog = load_catalog(REAL_DATA)
    folder = episodes_dir_for(catalog, Path(__file__).resolve().parents[1] / "episodes")
    split = pd.read_csv(next(folder.glob("*-split.csv")))
    for name in ("novel-5w1s", "novel-5w5s", "novel-15w5s", "val-5w5s"):
        episode_set = EpisodeSet.load(folder / f"articleType-{name}.npz", catalog.fingerprint)
        assert len(episode_set.episodes) == 600
        assert set(episode_set.meta["classes"]) == set(split.loc[split["split"] == name.split("-")[0], "class"])
        assert np.isin(episode_set.episodes.query, catalog.ids).all()


@pytest.mark.real_data
def test_committed_episode_sets_never_split_a_near_duplicate_group():
    from pathlib import Path

    from fsl.data.prepared import load_catalog
    from fsl.episodes.near_duplicates import NEAR_DUPLICATES_FILE, NearDuplicates
    from fsl.paths import episodes_dir_for
    from tests.conftest import REAL_DATA

    catalog = load_catalog(REAL_DATA)
    root = Path(__file__).resolve().parents[1] / "episodes"
    for folder in [episodes_dir_for(catalog, root), *sorted(episodes_dir_for(catalog, s) for s in root.glob("split*"))]:
        groups = NearDuplicates.load(folder / NEAR_DUPLICATES_FILE, catalog.fingerprint)
        assert len(groups.groups) > 100 and groups.threshold == 0.98  # the real photos do have twins
        group_of = dict(zip(catalog.ids, groups.group_index(catalog.ids)))
        for path in sorted(folder.glob("*.npz")):
            episode_set = EpisodeSet.load(path, catalog.fingerprint)
            assert (
                episode_set.meta["sampler_version"] == 2
                and episode_set.meta["near_duplicates"]["sha256"] == groups.digest
            )
            support = np.vectorize(group_of.get)(episode_set.episodes.support)
            query = np.vectorize(group_of.get)(episode_set.episodes.query)
            assert not (query[:, :, None] == support[:, None, :]).any(), path


def twins_of(ids: np.ndarray, every: int = 3) -> np.ndarray:
    """Group numbers where every `every`-th product and the next one are near-duplicates."""
    groups = np.arange(len(ids))
    groups[1::every] = groups[0::every][: len(groups[1::every])]
    return groups


def test_grouped_sampler_never_puts_a_twin_of_the_support_among_the_queries():
    ids, labels, _ = toy_labels()
    classes = sorted(set(labels))[:10]
    groups = twins_of(ids)
    group_of = dict(zip(ids, groups))

    def split_pairs(episodes) -> int:
        return sum(
            len({group_of[i] for i in episodes.support[e]} & {group_of[i] for i in episodes.query[e]})
            for e in range(len(episodes))
        )

    plain = EpisodeSampler(ids, labels, classes, n_way=5, k_shot=5, q_query=10, seed=3).sample(200)
    assert split_pairs(plain) > 100  # without grouping, twins land on both sides often
    grouped = EpisodeSampler(ids, labels, classes, n_way=5, k_shot=5, q_query=10, seed=3, groups=groups).sample(200)
    assert split_pairs(grouped) == 0
    np.testing.assert_array_equal(grouped.support, plain.support)  # the support is drawn as before
    np.testing.assert_array_equal(grouped.classes, plain.classes)
    label_of = dict(zip(ids, labels))
    for e in range(200):
        assert len(set(grouped.query[e])) == 50 and not set(grouped.query[e]) & set(grouped.support[e])
        wanted = [classes[c] for c in grouped.classes[e]]
        assert [label_of[i] for i in grouped.query[e]] == [c for c in wanted for _ in range(10)]


def test_grouping_crosses_classes_and_without_twins_draws_the_version_one_bytes():
    ids, labels, _ = toy_labels()
    classes = sorted(set(labels))[:6]
    singletons = EpisodeSampler(ids, labels, classes, 5, 5, 15, seed=9, groups=np.arange(len(ids))).sample(50)
    plain = EpisodeSampler(ids, labels, classes, 5, 5, 15, seed=9).sample(50)
    np.testing.assert_array_equal(singletons.query, plain.query)
    np.testing.assert_array_equal(singletons.support, plain.support)
    # one group spanning two classes: a support photo of one class rules its twin out of the other's queries
    first, second = (ids[np.asarray(labels) == c] for c in classes[:2])
    groups = np.arange(len(ids))
    groups[np.searchsorted(ids, second)] = groups[np.searchsorted(ids, first[: len(second)])][: len(second)]
    group_of = dict(zip(ids, groups))
    episodes = EpisodeSampler(ids, labels, classes, 5, 5, 15, seed=9, groups=groups).sample(100)
    for e in range(100):
        assert not {group_of[i] for i in episodes.support[e]} & {group_of[i] for i in episodes.query[e]}


def test_too_many_twins_for_the_queries_is_an_error_naming_the_class():
    ids, labels, _ = toy_labels(n_classes=5, per_class=20)
    groups = np.arange(len(ids))
    crowded = ids[np.asarray(labels) == "class02"]
    groups[np.searchsorted(ids, crowded[:12])] = groups[np.searchsorted(ids, crowded[0])]  # 12 shots of one photo
    with pytest.raises(
        FslError, match=rf"need 20 distinct photos per class .* too few in: class02 \({len(crowded) - 11}\)"
    ):
        EpisodeSampler(ids, labels, sorted(set(labels)), 5, 5, 15, seed=0, groups=groups)
    # split_classes counts distinct photos too: class02 is no longer eligible at 20
    assert "class02" in set(split_classes(labels, 20).table["class"])
    assert "class02" not in set(split_classes(labels, 20, groups=groups).table["class"])
    # twins across two classes of exactly 20 products: each alone is fine, together one robs the other's queries
    labels = pd.Series(np.repeat(["a", "b", "c", "d", "e"], 20))
    ids = np.arange(100)
    groups = np.where(ids < 40, ids % 20, ids)  # a's product i and b's product i are one photo
    sampler = EpisodeSampler(ids, labels, ["a", "b", "c", "d", "e"], 5, 5, 15, seed=0, groups=groups)
    with pytest.raises(FslError, match="too few products remain for 15 queries in: a, b"):
        sampler.sample(5)


def test_near_duplicate_groups_are_the_photos_above_the_threshold_and_round_trip(tmp_path):
    from fsl.episodes.near_duplicates import NearDuplicates, near_duplicate_groups

    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 64))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    features = base.copy()
    nudge = rng.normal(size=64)
    for twin, original, strength in ((30, 3, 0.05), (31, 3, 0.05), (32, 7, 0.05), (33, 9, 0.6)):
        moved = base[original] + strength * nudge / np.linalg.norm(nudge)
        features[twin] = moved / np.linalg.norm(moved)  # cosine 0.9988 for 0.05; 0.86 for 0.6
    ids = np.arange(500, 540)
    found = near_duplicate_groups(ids, features, "enc", "fp", threshold=0.98)
    assert found.groups == ((503, 530, 531), (507, 532))  # 533 is only similar to 509
    assert near_duplicate_groups(ids, features, "enc", "fp", threshold=0.8).groups[-1] == (509, 533)
    index = found.group_index(ids)
    assert index[3] == index[30] == index[31] and index[7] == index[32] and len(set(index)) == 40 - 3
    path = tmp_path / "nd.json"
    path.write_bytes(found.to_bytes())
    assert NearDuplicates.load(path, "fp") == found
    with pytest.raises(FslError, match="groups the products of catalog fp, not other"):
        NearDuplicates.load(path, "other")
    path.write_text("{not json")
    with pytest.raises(FslError, match="nd.json: the near-duplicate groups cannot be read"):
        NearDuplicates.load(path, "fp")
    with pytest.raises(FslError, match=r"image cosine in \(0, 1\]"):
        near_duplicate_groups(ids, features, "enc", "fp", threshold=1.5)


def damaged_sets(episode_set):
    """(what was done, the file's bytes) for each hand edit and damage the loader must refuse."""
    import dataclasses

    episodes = episode_set.episodes

    def edited(**arrays):
        changed = dataclasses.replace(episodes, **{k: v.copy() for k, v in arrays.items()})
        return EpisodeSet(episode_set.name, changed, episode_set.meta).to_bytes()

    swapped = episodes.support.copy()
    swapped[0, 0], swapped[0, -1] = swapped[0, -1], swapped[0, 0]  # two classes' examples trade labels
    leaked = episodes.query.copy()
    leaked[0, 0] = episodes.support[0, 0]  # a query that is also a support example
    doubled = episodes.support.copy()
    doubled[0, 1] = doubled[0, 0]
    good = episode_set.to_bytes()
    return {
        "swapped support labels": (edited(support=swapped), "among the support of"),
        "a query among the support": (edited(query=leaked), "a product twice"),
        "a duplicated support id": (edited(support=doubled), "a product twice"),
        "a wrong support shape": (edited(support=episodes.support[:, :-1]), r"support array has shape"),
        "no episode": (
            edited(support=episodes.support[:0], query=episodes.query[:0], classes=episodes.classes[:0]),
            "no episode",
        ),
        "a truncated file": (good[: len(good) // 2], "cannot be read"),
        "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)), "cannot be read"),
    }


def test_damaged_or_edited_episode_files_are_refused_with_a_message(twelve_classes, tmp_path):
    """Swapped labels, a leaked query or a repeated id gave 49-76% with no warning; truncated or
    malformed files ended in tracebacks; an empty file gave an empty table with exit 0."""
    import re
    import shutil
    from pathlib import Path

    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.standard import load_episode_set
    from fsl.paths import episode_set_path

    root, catalog = twelve_classes
    config = ExperimentConfig(name="pn", encoder=EncoderConfig("clip", "FSL-Tiny", "none"))
    episodes_root = Path(shutil.copytree(root / "episodes", tmp_path / "episodes"))
    path = episode_set_path(catalog, "articleType", "novel-5w5s", episodes_root)
    original = load_episode_set(config, catalog, "novel-5w5s", episodes_root)  # the real file passes
    (path.parent / "digests.json").unlink()  # so each edit meets the structural checks, not the digest
    missed = []
    for what, (payload, message) in damaged_sets(original).items():
        path.write_bytes(payload)
        try:
            load_episode_set(config, catalog, "novel-5w5s", episodes_root)
            missed.append(f"{what}: accepted")
        except FslError as error:
            if not re.search(message, str(error)) or "fsl episodes --force" not in str(error):
                missed.append(f"{what}: {error}")
    assert not missed


def test_an_episode_file_replaced_by_another_valid_draw_is_refused_by_its_recorded_digest(twelve_classes, tmp_path):
    """Every file is checked against the digest recorded when it was drawn (digests.json): a set swapped
    for another valid one (another seed's, say) would give other numbers under the same name."""
    import shutil
    from pathlib import Path

    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.frozen import read_digests
    from fsl.episodes.standard import draw_standard_episodes, load_episode_set
    from fsl.paths import episode_digests_path, episode_set_path

    root, catalog = twelve_classes
    config = ExperimentConfig(name="pn", encoder=EncoderConfig("clip", "FSL-Tiny", "none"))
    episodes_root = Path(shutil.copytree(root / "episodes", tmp_path / "episodes"))
    digests = read_digests(episode_digests_path(catalog, episodes_root))
    path = episode_set_path(catalog, "articleType", "novel-5w5s", episodes_root)
    assert digests[path.name] == load_episode_set(config, catalog, "novel-5w5s", episodes_root).digest
    other = draw_standard_episodes(catalog, tmp_path / "other", seed=0, stratify=None, n_episodes=31, q_query=5,
                                   benchmarks={"novel-5w5s": ("novel", 5, 5)})[1]  # fmt: skip
    shutil.copy(next(p for p in other if p.name == path.name), path)
    with pytest.raises(FslError, match="is not the .* recorded when it was drawn"):
        load_episode_set(config, catalog, "novel-5w5s", episodes_root)


def test_an_episode_file_without_a_recorded_digest_is_said_to_be_unverified(twelve_classes, tmp_path, caplog):
    import shutil
    from pathlib import Path

    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.standard import load_episode_set
    from fsl.paths import episode_digests_path

    root, catalog = twelve_classes
    config = ExperimentConfig(name="pn", encoder=EncoderConfig("clip", "FSL-Tiny", "none"))
    episodes_root = Path(shutil.copytree(root / "episodes", tmp_path / "episodes"))
    load_episode_set(config, catalog, "novel-5w5s", episodes_root)
    assert "unverified" not in caplog.text
    episode_digests_path(catalog, episodes_root).unlink()
    load_episode_set(config, catalog, "novel-5w5s", episodes_root)
    load_episode_set(config, catalog, "novel-5w5s", episodes_root)
    assert caplog.text.count("novel-5w5s.npz is unverified") == 1  # said once, not per load


def test_sibling_picks_put_a_sibling_of_two_taught_classes_among_the_untaught():
    from fsl.episodes.siblings import HARD_TAUGHT, sibling_picks

    classes = [f"class{i:02d}" for i in range(12)]
    parents = {name: ["shoes", "shoes", "shoes", "bags", "bags", "tops"][i % 6] for i, name in enumerate(classes)}
    picks = sibling_picks(classes, parents, 200, seed=3)
    assert picks.shape == (200, 7) and (np.sort(picks, 1)[:, 1:] != np.sort(picks, 1)[:, :-1]).all()
    parent = np.vectorize(lambda index: parents[classes[index]])(picks)
    assert (parent[:, HARD_TAUGHT:] == parent[:, :2]).all()  # slot 5 is a sibling of slot 0, slot 6 of slot 1
    assert (parent[:, 0] != parent[:, 1]).all()  # from two families
    assert {"shoes", "bags", "tops"} <= set(parent[:, 0]) | set(parent[:, 1])  # every family takes its turn
    assert (sibling_picks(classes, parents, 200, seed=3) == picks).all()
    lone = {name: "shoes" if i < 2 else f"only{i}" for i, name in enumerate(classes)}
    assert sibling_picks(classes, lone, 10, seed=3) is None  # one family of siblings: no hard episode


@pytest.mark.real_data
def test_committed_hard_open_set_episodes_hold_siblings_and_redraw_byte_identically():
    from pathlib import Path

    from fsl.data.prepared import load_catalog
    from fsl.episodes.siblings import HARD_SEED_OFFSET, HARD_TAUGHT, draw_hard_sets, parents_of
    from fsl.episodes.splits import ClassSplit
    from fsl.episodes.standard import saved_near_duplicates
    from fsl.paths import episodes_dir_for, split_root
    from tests.conftest import REAL_DATA

    catalog = load_catalog(REAL_DATA)
    root = Path(__file__).resolve().parents[1] / "episodes"
    parents = parents_of(catalog, "articleType")
    for seed in range(5):
        folder = episodes_dir_for(catalog, split_root(root, seed))
        for pool in ("select", "novel"):
            episode_set = EpisodeSet.load(folder / f"articleType-{pool}-hard-7w5s.npz", catalog.fingerprint)
            names = np.asarray(episode_set.meta["classes"])[episode_set.episodes.classes]
            parent = np.vectorize(parents.get)(names)
            assert episode_set.meta["split"] == pool and len(episode_set.episodes) == 600
            assert (parent[:, HARD_TAUGHT:] == parent[:, :2]).all(), (seed, pool)
        if seed == 0:  # the file is what the drawing code makes of the split
            split = ClassSplit.load(catalog, "articleType", 0, split_root(root, 0))
            drawn = draw_hard_sets(catalog, split, HARD_SEED_OFFSET, 600, 15, saved_near_duplicates(catalog, root))
            for stem, episode_set in drawn.items():
                assert episode_set.to_bytes() == (folder / f"{stem}.npz").read_bytes(), stem

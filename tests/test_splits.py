"""Several class splits: reproducible files per split, every split evaluated, and a table whose
interval reflects split-to-split variation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fsl.harness.evaluate import mean_ci, paired_difference
from fsl.harness.results import across_splits, results_frame, summary_table
from fsl.paths import Workspace

BENCHMARKS = {"val-2w5s": ("val", 2, 5), "novel-5w5s": ("novel", 5, 5)}


def test_split_seeds_write_reproducible_files_and_every_split_is_evaluated(twelve_classes, tmp_path):
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.standard import draw_standard_episodes
    from fsl.harness.experiment import run_experiment
    from fsl.paths import available_splits, split_root

    root, catalog = twelve_classes
    episodes = tmp_path / "episodes"
    for seed in (0, 1, 2):
        draw_standard_episodes(
            catalog,
            split_root(episodes, seed),
            seed=seed,
            stratify=None,
            n_episodes=20,
            q_query=5,
            benchmarks=BENCHMARKS,
        )
    assert available_splits(catalog, episodes) == [0, 1, 2]
    folder = lambda seed: split_root(episodes, seed) / catalog.fingerprint  # noqa: E731
    first = {seed: (folder(seed) / "articleType-novel-5w5s.npz").read_bytes() for seed in (0, 1, 2)}
    assert len(set(first.values())) == 3  # other splits, other episodes
    splits = [pd.read_csv(folder(seed) / f"articleType-seed{seed}-split.csv") for seed in (0, 1, 2)]
    novel = [set(s.loc[s["split"] == "novel", "class"]) for s in splits]
    assert novel[0] != novel[1] and all(len(n) == len(novel[0]) for n in novel)  # same fractions, other classes
    _, written = draw_standard_episodes(
        catalog, split_root(episodes, 1), seed=1, stratify=None, n_episodes=20, q_query=5, benchmarks=BENCHMARKS
    )
    assert (
        written == [] and (folder(1) / "articleType-novel-5w5s.npz").read_bytes() == first[1]
    )  # same seed, same bytes

    config = ExperimentConfig(
        name="pn",
        method="protonet",
        fusion="image",
        episodes=("novel-5w5s",),
        encoder=EncoderConfig("clip", "FSL-Tiny", "none"),
    )
    results = [
        r
        for seed in (0, 1, 2)
        for r in run_experiment(config, catalog, Workspace(episodes, root / "store"), seed, progress=False)
    ]
    frame = results_frame(results)
    assert sorted(frame["split"].unique()) == [0, 1, 2]
    assert set(summary_table(frame)["split"]) == {0, 1, 2}  # one row per split, never pooled episodes


def test_across_split_interval_is_over_split_means_and_paired_differences_combine_per_split():
    rng = np.random.default_rng(0)
    rows = []
    for split, shift in enumerate([0.0, 0.1, -0.05]):  # the splits differ far more than episodes do
        base = np.clip(0.7 + shift + 0.05 * rng.standard_normal(50), 0, 1)
        for method, accuracy in (("a", base), ("b", np.clip(base + 0.02 + 0.01 * rng.standard_normal(50), 0, 1))):
            rows.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "split": split,
                        "episode_set": "novel-5w5s",
                        "episode": np.arange(50),
                        "accuracy": accuracy,
                    }
                )
            )
    frame = pd.concat(rows, ignore_index=True)
    table = across_splits(frame, baseline="a").set_index("method")
    split_means = frame[frame["method"] == "b"].groupby("split")["accuracy"].mean().to_numpy()
    assert table.at["b", "splits"] == 3
    np.testing.assert_allclose((table.at["b", "accuracy"], table.at["b", "ci95"]), mean_ci(split_means))
    pooled = mean_ci(frame[frame["method"] == "b"]["accuracy"].to_numpy())[1]
    assert table.at["b", "ci95"] > 3 * pooled  # the split-to-split spread, not the episode spread
    per_split = [
        paired_difference(
            frame[(frame["method"] == "b") & (frame["split"] == s)]["accuracy"].to_numpy(),
            frame[(frame["method"] == "a") & (frame["split"] == s)]["accuracy"].to_numpy(),
        )[0]
        for s in range(3)
    ]
    np.testing.assert_allclose(
        (table.at["b", "difference"], table.at["b", "difference_ci95"]), mean_ci(np.array(per_split))
    )
    assert table.at["b", "difference"] > table.at["b", "difference_ci95"] > 0  # b beats a on every split


def protonet_eval(root, tmp_path, episodes=None) -> tuple:
    """A tiny ProtoNet config and the `fsl eval` arguments that run it on the twelve-class slice."""
    config = tmp_path / "pn.yaml"
    config.write_text(
        "method: protonet\nfusion: image\nepisodes: [novel-5w5s]\n"
        "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\n"
    )
    return config, [
        "--data",
        str(root / "dump"),
        "--episodes-dir",
        str(episodes or root / "episodes"),
        "--store-root",
        str(root / "store"),
        "--results",
        str(tmp_path / "results"),
        "--runs",
        str(tmp_path / "runs"),
    ]


def test_eval_keeps_earlier_sets_of_the_same_config_and_drops_those_of_another(twelve_classes, tmp_path, capsys):
    from fsl.cli.main import main
    from fsl.files import read_csv

    root, catalog = twelve_classes
    config, common = protonet_eval(root, tmp_path)
    main(["eval", str(config), *common, "--shifted"])  # novel-5w5s and novel-5w5s+rerendered
    main(["eval", str(config), *common])  # novel-5w5s again: the shifted set is kept
    frame = read_csv(tmp_path / "results" / "pn.csv")
    assert sorted(frame["episode_set"].unique()) == ["novel-5w5s", "novel-5w5s+rerendered"]
    assert len(frame) == 2 * len(frame[frame["episode_set"] == "novel-5w5s"])  # no duplicate rows
    assert "kept 1 earlier set(s)" in capsys.readouterr().out
    config.write_text(config.read_text().replace("fusion: image", "fusion: image\nbatch_size: 8"))
    main(["eval", str(config), *common])  # another config under the same name: nothing earlier is kept
    assert list(read_csv(tmp_path / "results" / "pn.csv")["episode_set"].unique()) == ["novel-5w5s"]


def test_results_files_of_several_splits_load_with_every_split(tmp_path):
    from fsl.harness.results import load_results

    rows = lambda split: pd.DataFrame(
        {
            "method": "m",
            "split": split,
            "episode_set": "novel-5w5s",  # noqa: E731
            "episode": np.arange(3),
            "accuracy": [0.5, 0.6, 0.7],
        }
    )
    pd.concat([rows(0), rows(1)]).to_csv(tmp_path / "m.csv", index=False)
    rows(0).drop(columns="split").assign(method="old").to_csv(tmp_path / "old.csv", index=False)  # before splits
    frame = load_results([tmp_path / "m.csv", tmp_path / "old.csv"])
    assert sorted(frame[frame["method"] == "m"]["split"].unique()) == [0, 1] and len(frame) == 9
    assert (frame[frame["method"] == "old"]["split"] == 0).all()


def test_compare_of_several_splits_plots_one_bar_per_config_over_the_splits(tmp_path, capsys):
    from fsl.cli.main import main

    for method, shift in (("a", 0.0), ("b", 0.1)):
        pd.DataFrame(
            {
                "method": method,
                "split": np.repeat([0, 1, 2], 4),
                "episode_set": "novel-5w5s",
                "episode": np.tile(np.arange(4), 3),
                "accuracy": np.tile([0.5, 0.6, 0.7, 0.6], 3) + shift,
            }
        ).to_csv(tmp_path / f"{method}.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "across class splits" in out and (tmp_path / "c.png").is_file() and (tmp_path / "c-paired.png").is_file()


def test_rows_of_a_redrawn_episode_file_are_neither_kept_nor_paired(twelve_classes, tmp_path, capsys):
    import shutil

    from fsl.cli.main import main
    from fsl.episodes.standard import draw_standard_episodes
    from fsl.files import read_csv

    root, catalog = twelve_classes
    episodes = tmp_path / "episodes"
    shutil.copytree(root / "episodes", episodes)
    config = tmp_path / "pn.yaml"
    config.write_text(
        "method: protonet\nfusion: image\nepisodes: [novel-5w5s]\n"
        "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\n"
    )
    common = [
        "--data",
        str(root / "dump"),
        "--episodes-dir",
        str(episodes),
        "--store-root",
        str(root / "store"),
        "--runs",
        str(tmp_path / "runs"),
    ]
    assert main(["eval", str(config), *common, "--shifted", "--results", str(tmp_path / "old")]) == 0
    before = read_csv(tmp_path / "old" / "pn.csv")
    assert before["episodes_sha"].nunique() == 1 and len(before["episodes_sha"].iloc[0]) == 16
    draw_standard_episodes(
        catalog,
        episodes,
        stratify=None,
        n_episodes=40,
        q_query=5,
        force=True,
        benchmarks={"val-2w5s": ("val", 2, 5), "novel-5w5s": ("novel", 5, 5)},
    )  # redrawn
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    capsys.readouterr()
    assert main(["eval", str(config), *common, "--results", str(tmp_path / "new")]) == 0
    assert (
        "dropped earlier rows of split 0 novel-5w5s+rerendered: their episode files were redrawn"
        in capsys.readouterr().err
    )
    after = read_csv(tmp_path / "new" / "pn.csv")
    assert list(after["episode_set"].unique()) == ["novel-5w5s"] and len(after) == 40
    (tmp_path / "old" / "pn.csv").rename(tmp_path / "old" / "pn-old.csv")
    assert (
        main(
            [
                "compare",
                str(tmp_path / "new" / "pn.csv"),
                str(tmp_path / "old" / "pn-old.csv"),
                "--plot",
                str(tmp_path / "c.png"),
            ]
        )
        == 2
    )
    assert "novel-5w5s (split 0) was run on different draws of its episodes" in capsys.readouterr().err


def test_results_from_before_draw_digests_are_dropped_and_each_config_is_saved_as_it_finishes(
    twelve_classes, tmp_path, capsys, monkeypatch
):
    from fsl.cli.main import main
    from fsl.errors import FslError
    from fsl.files import read_csv
    from fsl.harness import experiment

    root, catalog = twelve_classes
    config, common = protonet_eval(root, tmp_path)
    assert main(["eval", str(config), *common, "--shifted"]) == 0
    path = tmp_path / "results" / "pn.csv"
    read_csv(path).drop(columns="episodes_sha").to_csv(path, index=False)  # a file from before digests
    capsys.readouterr()
    assert main(["eval", str(config), *common]) == 0
    assert "dropped earlier rows of split 0 novel-5w5s+rerendered" in capsys.readouterr().err
    assert list(read_csv(path)["episode_set"].unique()) == ["novel-5w5s"]
    absent = tmp_path / "absent.yaml"  # a set this catalog never had: refused before any work
    absent.write_text(
        "method: protonet\nfusion: image\nepisodes: [novel-9w9s]\n"
        "encoder: {name: clip, model: FSL-Tiny, pretrained: none}\n"
    )
    config.write_text(config.read_text().replace("fusion: image", "fusion: image\nname: first"))
    assert main(["eval", str(config), str(absent), *common]) == 2
    assert "absent: none of its episode sets exist for split 0 of this catalog: novel-9w9s" in capsys.readouterr().err
    assert not (tmp_path / "results" / "first.csv").exists()
    broken = tmp_path / "broken.yaml"  # runs second and fails: the first config's file is written already
    broken.write_text(config.read_text().replace("name: first", "name: broken"))
    real_run = experiment.run_experiment

    def failing(config, *args, **kwargs):
        if config.name == "broken":
            raise FslError("a failure while it runs")
        return real_run(config, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_experiment", failing)
    assert main(["eval", str(config), str(broken), *common]) == 2
    assert (tmp_path / "results" / "first.csv").is_file() and not (tmp_path / "results" / "broken.csv").exists()


def test_eval_says_which_splits_it_will_run_and_how_long_the_last_run_took(
    twelve_classes, tmp_path, capsys, monkeypatch
):
    from fsl.cli.main import main
    from fsl.episodes.standard import draw_standard_episodes
    from fsl.paths import split_root

    root, catalog = twelve_classes
    episodes = tmp_path / "episodes"
    for seed in (0, 1):
        draw_standard_episodes(
            catalog,
            split_root(episodes, seed),
            seed=seed,
            stratify=None,
            n_episodes=10,
            q_query=5,
            benchmarks={"novel-5w5s": ("novel", 5, 5)},
        )
    config, common = protonet_eval(root, tmp_path, episodes)
    monkeypatch.chdir(tmp_path)  # the timing records go to ./.fsl/timings
    assert main(["eval", str(config), *common]) == 0
    first = capsys.readouterr().err
    assert "pn: splits 0 1" in first and "--splits 0` runs split 0 alone" in first and "last run" not in first
    assert main(["eval", str(config), *common, "--splits", "1"]) == 0
    assert "pn: split 1 (last run, splits 0 1: " in capsys.readouterr().err


def test_selection_sets_pool_base_and_validation_classes_and_leave_the_standard_files_byte_identical(
    twelve_classes, tmp_path
):
    from fsl.episodes.frozen import EpisodeSet
    from fsl.episodes.splits import ClassSplit
    from fsl.episodes.standard import draw_standard_episodes

    _, catalog = twelve_classes
    options = {"stratify": None, "n_episodes": 20, "q_query": 5, "benchmarks": BENCHMARKS}
    draw_standard_episodes(catalog, tmp_path / "without", selection={}, **options)
    draw_standard_episodes(catalog, tmp_path / "with", **options)
    without, with_ = tmp_path / "without" / catalog.fingerprint, tmp_path / "with" / catalog.fingerprint
    for path in without.glob("*.npz"):  # adding the selection sets changed no standard or shifted file
        assert (with_ / path.name).read_bytes() == path.read_bytes(), path.name
    split = ClassSplit.load(catalog, "articleType", 0, tmp_path / "with")
    pool = split.classes("select")
    assert pool == sorted(split.classes("base") + split.classes("val")) and not set(pool) & set(split.classes("novel"))
    selection = EpisodeSet.load(with_ / "articleType-select-5w5s.npz", catalog.fingerprint)
    assert selection.meta["split"] == "select" and selection.meta["classes"] == pool
    drawn = np.unique(np.concatenate([selection.episodes.support.ravel(), selection.episodes.query.ravel()]))
    label_of = pd.Series(catalog.labels().to_numpy(), index=catalog.products["id"].to_numpy())
    assert set(label_of.loc[drawn]) <= set(pool)
    assert not (with_ / "articleType-select-15w5s.npz").exists()  # 7 pool classes: too few for 15-way

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fsl.cli.main import main
from fsl.config import EncoderConfig, ExperimentConfig
from fsl.harness.analysis import confusion_matrix, per_class_accuracy, per_class_difference, predict_episodes
from fsl.harness.experiment import run_experiment
from fsl.paths import Workspace

TINY = EncoderConfig("clip", "FSL-Tiny", "none")


def config(fusion: str = "image") -> ExperimentConfig:
    return ExperimentConfig(
        name=f"proto-{fusion}", method="protonet", fusion=fusion, episodes=("novel-allway-5s",), encoder=TINY
    )


def test_per_class_accuracy_sums_back_and_confusion_rows_are_query_counts(twelve_classes):
    root, catalog = twelve_classes
    workspace = Workspace(root / "episodes", root / "store", root / "ckpt")
    p = predict_episodes(config(), catalog, "novel-allway-5s", workspace)
    (overall,) = run_experiment(config(), catalog, workspace, progress=False)
    table = per_class_accuracy(p)
    assert table["correct"].sum() / table["queries"].sum() == pytest.approx(overall.accuracy.mean(), abs=1e-12)
    matrix = confusion_matrix(p)
    queries = table.set_index("class")["queries"]
    assert (matrix.sum(axis=1).reindex(queries.index) == queries).all()
    assert np.trace(matrix.to_numpy()) == table["correct"].sum()
    assert set(matrix.index) == set(p.episode_set.meta["classes"])
    # answers are not photos: episodes re-use the same query photos, and the table says how many there are
    photos = pd.Series(p.query_ids).groupby(p.true).nunique()
    assert (table.set_index("class")["photos"] == photos.reindex(table["class"]).to_numpy()).all()
    assert (table["photos"] < table["queries"]).all() and (table["episodes"] <= len(p.episode_set.episodes)).all()
    assert (table["ci95"] > 0).any() and np.isfinite(table["ci95"]).all()


def test_analyse_writes_pictures_and_tensorboard_figures_and_compare_shows_per_class_differences(
    twelve_classes, tmp_path, capsys
):
    root, _ = twelve_classes
    common = [
        "--data",
        str(root / "dump"),
        "--episodes-dir",
        str(root / "episodes"),
        "--store-root",
        str(root / "store"),
        "--results",
        str(tmp_path / "a"),
        "--runs",
        str(tmp_path / "runs"),
    ]
    for fusion in ("image", "concat"):
        (tmp_path / f"proto-{fusion}.yaml").write_text(
            f"method: protonet\nfusion: {fusion}\nencoder: {{name: clip, model: FSL-Tiny, pretrained: none}}\n"
        )
        assert main(["analyse", str(tmp_path / f"proto-{fusion}.yaml"), *common, "--projector", "20"]) == 0
    for kind in ("per-class", "confusion", "confusions"):
        assert (tmp_path / "a/analysis/proto-image" / f"novel-allway-5s-{kind}.png").stat().st_size > 5000
    events = EventAccumulator(str(tmp_path / "runs/analysis/proto-image"), size_guidance={"images": 0})
    events.Reload()
    assert "analysis/novel-allway-5s/confusion" in events.Tags()["images"]
    assert (tmp_path / "runs/analysis/projector/projector_config.pbtxt").is_file()

    capsys.readouterr()
    files = [str(tmp_path / f"a/analysis/proto-{f}/novel-allway-5s-per-class.csv") for f in ("image", "concat")]
    assert main(["compare", *files]) == 0
    out = capsys.readouterr().out
    assert "a_minus_b_points" in out and "a: proto-image" in out
    difference = per_class_difference([pd.read_csv(f) for f in files])
    assert len(difference) == len(pd.read_csv(files[0]))
    a, b = "a: proto-image (%)", "b: proto-concat (%)"  # points beside points, never fractions
    assert difference[a].between(0, 100).all() and difference[a].max() > 1
    assert (difference[a] - difference[b] - difference["a_minus_b_points"]).abs().max() < 1e-9

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from fsl.episodes.frozen import draw_episode_set
from fsl.episodes.splits import split_classes
from fsl.harness.evaluate import EvalResult, mean_ci, paired_difference, run_episodes
from fsl.harness.results import (
    log_to_tensorboard,
    paired_table,
    plot_paired,
    plot_summary,
    results_frame,
    summary_table,
)
from fsl.methods import create_head
from fsl.methods.fusion import create_fusion
from fsl.store.rows import store_rows


def image_protonet(dim: int):
    return create_head("protonet", create_fusion("image", dim, 0))


def test_ci_matches_scipy_t_interval():
    values = np.array([0.6, 0.8, 0.7, 0.9, 0.75, 0.65, 0.85])
    mean, half = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert (mean - half, mean + half) == pytest.approx((low, high))


def test_paired_difference_is_tight_where_unpaired_intervals_overlap():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.3, 0.9, 200)  # episodes vary a lot; method a is always 2 points better
    a, b = difficulty + 0.02, difficulty
    diff, half = paired_difference(a, b)
    assert diff == pytest.approx(0.02) and half < 1e-9
    (mean_a, ci_a), (mean_b, ci_b) = mean_ci(a), mean_ci(b)
    assert mean_a - ci_a < mean_b + ci_b  # unpaired intervals overlap: only pairing shows the gain
    table = paired_table(results_frame([EvalResult("a", "s", a, {}), EvalResult("b", "s", b, {})]))
    assert table.loc[0, "a_minus_b"] == pytest.approx(0.02) and bool(table.loc[0, "significant"])


def _clustered(n_classes=10, per_class=30, dim=16, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    features = np.repeat(centres, per_class, axis=0) + noise * rng.normal(size=(n_classes * per_class, dim))
    labels = pd.Series(np.repeat([f"c{i}" for i in range(n_classes)], per_class), name="articleType")
    return np.arange(len(labels)), features.astype(np.float32), labels


def test_prototype_head_solves_separable_episodes_and_chance_on_noise():
    ids, features, labels = _clustered()
    split = split_classes(labels, 20, fractions=(0.0, 0.0, 1.0))
    episodes = draw_episode_set("toy", ids, labels, split, "novel", "fp", 5, 5, 10, 100, seed=0)
    head = image_protonet(16)
    assert run_episodes(head, features, ids, episodes, batch_size=16, progress=False).mean() > 0.98
    noise = np.random.default_rng(1).normal(size=features.shape).astype(np.float32)
    assert abs(run_episodes(head, noise, ids, episodes, progress=False).mean() - 0.2) < 0.05


def test_batch_size_does_not_change_results():
    ids, features, labels = _clustered(noise=2.0)
    split = split_classes(labels, 20, fractions=(0.0, 0.0, 1.0))
    episodes = draw_episode_set("toy", ids, labels, split, "novel", "fp", 5, 1, 10, 50, seed=0)
    head = image_protonet(16)
    one = run_episodes(head, features, ids, episodes, batch_size=1, progress=False)
    np.testing.assert_array_equal(one, run_episodes(head, features, ids, episodes, batch_size=50, progress=False))


@pytest.mark.parametrize("method", ["protonet", "linear_probe"])
def test_each_batch_classifies_its_own_rows_in_the_reused_buffers(method):
    """The harness copies each batch into the same buffers; a last, shorter batch must not see stale rows."""
    ids, features, labels = _clustered(noise=2.0)
    split = split_classes(labels, 20, fractions=(0.0, 0.0, 1.0))
    episode_set = draw_episode_set("toy", ids, labels, split, "novel", "fp", 5, 2, 10, 50, seed=0)
    episodes, head = episode_set.episodes, create_head(method, create_fusion("image", 16, 0))
    predictions = np.empty(episodes.query.shape, dtype=np.int64)
    run_episodes(head, features, ids, episode_set, batch_size=7, progress=False, predictions=predictions)  # 7 * 7 + 1
    for e in range(len(episodes)):
        support, query = (
            torch.from_numpy(features[store_rows(ids, rows)])[None] for rows in (episodes.support[e], episodes.query[e])
        )
        alone = head(support, torch.as_tensor(episodes.support_labels)[None], query, episodes.n_way)
        np.testing.assert_array_equal(predictions[e], alone.argmax(-1)[0].numpy())


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = EvalResult("protonet-image", "novel-5w5s", np.array([0.5, 0.7, 0.9]), {"fusion": "image"})
    run_dir = log_to_tensorboard(result, tmp_path)
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    scalars = accumulator.Scalars("eval/novel-5w5s/episode_accuracy")
    assert [round(s.value, 4) for s in scalars] == [0.5, 0.7, 0.9]
    hparams = EventAccumulator(str(run_dir))
    hparams.Reload()
    assert "hparam/accuracy" in hparams.Tags()["scalars"]
    assert hparams.Scalars("hparam/accuracy")[0].value == pytest.approx(0.7)


def test_summary_and_plot(tmp_path):
    frame = results_frame(
        [EvalResult("a", "s1", np.array([0.5, 0.6]), {}), EvalResult("b", "s1", np.array([0.7, 0.9]), {})]
    )
    summary = summary_table(frame)
    assert list(summary["accuracy"].round(2)) == [0.55, 0.8]
    path = plot_summary(summary, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paired = paired_table(frame)
    assert list(paired["a_minus_b"].round(2)) == [-0.25] and bool(paired["significant"].iloc[0]) is False
    assert plot_paired(paired, tmp_path / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_head_contract_shapes():
    head = image_protonet(8)
    support, query = torch.randn(4, 15, 8), torch.randn(4, 20, 8)
    labels = torch.arange(5).repeat_interleave(3).expand(4, -1)
    assert head(support, labels, query, 5).shape == (4, 20, 5)

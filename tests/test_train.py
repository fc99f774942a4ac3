from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fsl.config import EncoderConfig, ExperimentConfig, TrainConfig
from fsl.data.prepared import load_catalog
from fsl.episodes.standard import draw_standard_episodes, load_episode_set
from fsl.errors import FslError
from fsl.harness.evaluate import run_episodes
from fsl.harness.experiment import run_experiment
from fsl.harness.train import train
from fsl.inference.checkpoints import load_head
from fsl.inference.heads import build_head
from fsl.paths import Workspace
from fsl.store.open import open_store
from fsl.store.rows import store_features
from tests.conftest import make_slice

TINY = EncoderConfig("clip", "FSL-Tiny", "none")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 12-class real slice, its tiny-CLIP store, a split and small episode sets."""
    from tests.conftest import real_styles

    root = tmp_path_factory.mktemp("train")
    counts = real_styles()["articleType"].value_counts()
    catalog = load_catalog(make_slice(root / "dump", list(counts.index[:12]), 20))
    open_store(catalog, TINY, root / "store")
    draw_standard_episodes(
        catalog,
        root / "episodes",
        stratify=None,
        n_episodes=40,
        benchmarks={"val-2w5s": ("val", 2, 5), "novel-5w5s": ("novel", 5, 5)},
    )
    return root, catalog


def config(steps: int, name: str = "proto-proj", train_sources: tuple[str, ...] = (), **changes) -> ExperimentConfig:
    settings = TrainConfig(
        steps=steps, lr=3e-3, episodes_per_step=4, val_every=5, val_episodes="val-2w5s", sources=train_sources
    )
    return ExperimentConfig(
        name=name,
        method="protonet",
        method_options={"projection": "linear", "projection_dim": 16},
        fusion="gate",
        episodes=("novel-5w5s",),
        encoder=TINY,
        train=settings,
        **changes,
    )


def run(workspace, cfg, tag, resume=True):
    root, catalog = workspace
    workspace = Workspace(root / "episodes", root / "store", root / tag / "ckpt", runs=root / tag / "runs")
    return train(cfg, catalog, workspace, resume=resume, progress=False)


def test_training_logs_to_tensorboard_and_saves_best_and_last(workspace):
    root, _ = workspace
    summary = run(workspace, config(20), "a")
    assert 0 <= summary["best_val_accuracy"] <= 1 and summary["best_step"] in (0, 5, 10, 15, 20)
    for kind in ("best", "last"):
        assert (root / "a/ckpt/proto-proj" / kind / "head.safetensors").is_file()
    events = EventAccumulator(str(root / "a/runs/train/proto-proj"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 20 and len(events.Scalars("val/accuracy")) == 5
    validation = events.Scalars("val/accuracy")
    assert validation[0].step == 0  # the untrained start is scored, and the chosen step is never worse
    assert summary["best_val_accuracy"] == pytest.approx(max(v.value for v in validation))
    losses = [s.value for s in events.Scalars("train/loss")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns on base classes


def test_training_resumes_where_it_stopped_with_the_same_result(workspace):
    root, _ = workspace
    run(workspace, config(10), "b")
    resumed = run(workspace, config(20), "b")
    straight = run(workspace, config(20), "c")
    for summary in (resumed, straight):  # a resumed run scores its chosen head again: the same accuracies
        summary["accuracies"] = {name: values.tolist() for name, values in summary["accuracies"].items()}
    assert resumed == straight
    from safetensors.torch import load_file

    a = load_file(str(root / "b/ckpt/proto-proj/last/head.safetensors"))
    b = load_file(str(root / "c/ckpt/proto-proj/last/head.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_checkpoint_round_trip_gives_identical_predictions_and_refuses_another_encoder(workspace):
    root, catalog = workspace
    cfg = config(10)
    run(workspace, cfg, "d")
    store = open_store(catalog, TINY, root / "store")
    trained, fresh = build_head(cfg, store), build_head(cfg, store)
    load_head(root / "d/ckpt/proto-proj/best", trained, store.encoder_id)
    load_head(root / "d/ckpt/proto-proj/best", fresh, store.encoder_id)
    episodes = load_episode_set(cfg, catalog, "novel-5w5s", root / "episodes")
    features = store_features(store, cfg.text_variant)
    np.testing.assert_array_equal(
        run_episodes(trained, features, store.ids, episodes, progress=False),
        run_episodes(fresh, features, store.ids, episodes, progress=False),
    )
    with pytest.raises(FslError, match="trained on features of encoder 'clip:FSL-Tiny:random', not 'offline:x'"):
        load_head(root / "d/ckpt/proto-proj/best", fresh, "offline:x")
    results = run_experiment(
        cfg, catalog, Workspace(root / "episodes", root / "store", root / "d/ckpt"), progress=False
    )
    assert len(results[0].accuracy) == 40


def test_untrained_or_untrainable_configs_are_clear_errors(workspace):
    root, catalog = workspace
    with pytest.raises(FslError, match="no checkpoint at .*fsl train"):
        run_experiment(
            config(5, name="never-trained"), catalog, Workspace(root / "episodes", root / "store", root / "none")
        )
    with pytest.raises(FslError, match="has no train: section"):
        run(workspace, dataclasses.replace(config(5), train=None), "e")
    with pytest.raises(FslError, match="no meta-parameters to train"):
        run(workspace, dataclasses.replace(config(5), method_options={}, fusion="concat"), "e")


def test_diverging_training_stops_naming_the_step_and_saves_nothing_non_finite(workspace):
    from safetensors.torch import load_file

    root, _ = workspace
    cfg = config(40, name="diverge")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e30))
    with pytest.raises(FslError, match=r"stopped at step \d+: .*train.lr = 1e\+30"):
        run(workspace, cfg, "d")
    for saved in (root / "d/ckpt/diverge").glob("*/head.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(str(saved)).values())


def test_warm_eval_and_train_build_no_encoder(workspace, monkeypatch):
    """The store key comes from the config and class-name prompts are cached: no weights are loaded."""
    from fsl.encoders.clip import ClipEncoder
    from fsl.encoders.factory import encoder_from_config

    root, catalog = workspace
    zero_shot = ExperimentConfig(name="zs", method="zero_shot", fusion="text", episodes=("novel-5w5s",), encoder=TINY)
    run_experiment(
        zero_shot, catalog, Workspace(root / "episodes", root / "store"), progress=False
    )  # caches the prompts
    encoder_from_config.cache_clear()

    def no_model(*args, **kwargs):
        raise AssertionError("a warm command built the encoder")

    monkeypatch.setattr(ClipEncoder, "__init__", no_model)
    assert run_experiment(zero_shot, catalog, Workspace(root / "episodes", root / "store"), progress=False)
    assert run(workspace, config(5, name="warm"), "w")["steps"] == 5


def test_each_split_trains_its_own_checkpoint_on_its_own_base_classes(workspace, tmp_path):
    import json

    import pandas as pd

    from fsl.paths import split_root

    root, catalog = workspace
    episodes = tmp_path / "episodes"
    for seed in (0, 1):
        draw_standard_episodes(
            catalog,
            split_root(episodes, seed),
            seed=seed,
            stratify=None,
            n_episodes=20,
            benchmarks={"val-2w5s": ("val", 2, 5), "novel-5w5s": ("novel", 5, 5)},
        )
    cfg = config(5, name="per-split")
    workspace = Workspace(episodes, root / "store", tmp_path / "ckpt", runs=tmp_path / "runs")
    train(cfg, catalog, workspace, 1, progress=False)
    meta = json.loads((tmp_path / "ckpt" / "split1" / "per-split" / "best" / "head.json").read_text())
    split = pd.read_csv(split_root(episodes, 1) / catalog.fingerprint / "articleType-seed1-split.csv")
    assert sorted(meta["base_classes"]) == sorted(split.loc[split["split"] == "base", "class"])
    (result,) = run_experiment(cfg, catalog, workspace, 1, progress=False)
    assert result.hparams["split"] == 1
    with pytest.raises(FslError, match="checkpoint"):  # split 0 was never trained: said, not guessed
        run_experiment(cfg, catalog, workspace, 0, progress=False)


def small_episodes(cfg: ExperimentConfig) -> ExperimentConfig:
    """5-way 2-shot 3-query training episodes: the slice's few base products fill other columns' classes."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, k_shot=2, q_query=3))


def test_no_product_of_a_validation_or_novel_class_enters_a_training_episode(workspace):
    from fsl.episodes.sampler import EpisodeSampler
    from fsl.harness.train import training_samplers
    from fsl.inference.heads import base_classes

    root, catalog = workspace
    cfg = small_episodes(config(4, train_sources=("subCategory", "baseColour", "gender", "usage", "season")))
    base = base_classes(catalog, cfg, 0, root / "episodes")
    samplers = training_samplers(cfg, catalog, base, root / "episodes")
    assert list(samplers) == ["articleType", "subCategory", "baseColour", "gender", "usage", "season"]
    article = catalog.labels("articleType").to_numpy()
    for column, sampler in samplers.items():
        episodes = sampler.sample(300)
        rows = np.concatenate([episodes.support.ravel(), episodes.query.ravel()])
        assert set(article[rows]) <= set(base), column  # other columns' values, base-class products only
        labels = catalog.labels(column).to_numpy()
        classes = np.asarray(sampler.class_names)[episodes.classes]
        np.testing.assert_array_equal(
            labels[episodes.support].reshape(300, sampler.n_way, -1), np.repeat(classes[..., None], sampler.k_shot, -1)
        )
    # a column that also has validation- and novel-class products does reach them when not restricted
    everything = EpisodeSampler(
        np.arange(len(article)), catalog.labels("gender").to_numpy(), ["Men", "Women"], 2, 2, 3
    ).sample(300)
    assert not set(article[everything.query.ravel()]) <= set(base)
    # the label column's own sampler draws what training drew before sources existed (same checkpoints)
    plain = EpisodeSampler(np.arange(len(article)), article, base, 5, 2, 3, seed=0).sample(20)
    again = samplers["articleType"]
    again.generator.manual_seed(0)
    np.testing.assert_array_equal(again.sample(20).support, plain.support)


def test_training_with_other_label_columns_takes_them_in_turn_and_refuses_a_missing_column(workspace):
    root, catalog = workspace
    summary = run(
        workspace, small_episodes(config(6, name="proto-sources", train_sources=("gender", "subCategory"))), "s"
    )
    assert summary["steps"] == 6 and (root / "s/ckpt/proto-sources/best/head.safetensors").is_file()
    with pytest.raises(FslError, match="train.sources: the catalog has no column 'colour'"):
        run(workspace, config(6, name="proto-bad", train_sources=("colour",)), "t")
    with pytest.raises(FslError, match="each column once, and not the label column articleType"):
        run(workspace, config(6, name="proto-bad", train_sources=("gender", "articleType")), "t")


def test_training_refuses_to_choose_its_checkpoint_on_a_test_set(workspace, tmp_path, capsys):
    """`--set train.val_episodes=novel-5w5s` would pick the best step on the test set that fsl eval
    then reports: refused before anything trains, by the check every selecting command shares."""
    import dataclasses

    from fsl.cli.main import main
    from fsl.config import to_yaml

    root, catalog = workspace
    on_test = config(5, name="picks-on-test")
    on_test = dataclasses.replace(on_test, train=dataclasses.replace(on_test.train, val_episodes="novel-5w5s"))
    with pytest.raises(FslError, match="fsl train chooses on validation classes only; 'novel-5w5s' is drawn from"):
        run(workspace, on_test, "test-set")
    assert not (root / "test-set").exists()
    path = tmp_path / "proto.yaml"
    path.write_text(to_yaml(config(5, name="proto")))
    common = [
        "--data",
        str(root / "dump"),
        "--episodes-dir",
        str(root / "episodes"),
        "--store-root",
        str(root / "store"),
    ]
    args = [*common, "--checkpoints", str(tmp_path / "ckpt"), "--runs", str(tmp_path / "runs"), "--splits", "0"]
    assert main(["train", str(path), *args, "--set", "train.val_episodes=novel-5w5s"]) == 2
    assert "chooses on validation classes only" in capsys.readouterr().err and not (tmp_path / "ckpt").exists()


def test_a_checkpoint_of_another_shape_is_a_message_not_a_size_mismatch_traceback(tmp_path):
    from fsl.inference.checkpoints import load_head, save_head
    from fsl.methods import create_head
    from fsl.methods.fusion import create_fusion

    trained = create_head("protonet", create_fusion("gate", 8, 4), projection="linear", projection_dim=16)
    save_head(tmp_path / "best", trained, {"encoder_id": "enc"})
    other = create_head("protonet", create_fusion("gate", 8, 4), projection="linear", projection_dim=6)
    with pytest.raises(
        FslError, match=r"does not fit this head \(size mismatch for .*another fusion, method or options"
    ):
        load_head(tmp_path / "best", other, "enc")


def test_a_fold_run_trains_on_the_folds_classes_and_chooses_its_step_on_half_of_its_held_episodes(workspace):
    """`fsl train --folds`: fold f's head learns from the other folds' classes only (no held or novel
    class in a training episode) and is scored on fold f's held classes in every FOLD_SETTINGS set; the
    step is chosen on the choosing half of those episodes, and the chosen head's every episode is kept."""
    import json

    from fsl.episodes.folds import CHOOSE, FOLD_SETTINGS, class_folds
    from fsl.episodes.splits import ClassSplit
    from fsl.harness.train import training_samplers

    root, catalog = workspace
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    labels = catalog.labels().to_numpy()
    fold = class_folds(split, labels, k=2)[1]
    cfg = config(10, name="proto-fold")
    for sampler in training_samplers(cfg, catalog, list(fold.train), root / "episodes").values():
        episodes = sampler.sample(200)
        seen = set(labels[np.concatenate([episodes.support.ravel(), episodes.query.ravel()])])
        assert seen <= set(fold.train) and not seen & (set(fold.held) | set(split.classes("novel")))
    workspace_ = Workspace(root / "episodes", root / "store", root / "f" / "ckpt", runs=root / "f" / "runs")
    summary = train(cfg, catalog, workspace_, progress=False, fold=fold)
    assert list(summary["accuracies"]) == list(FOLD_SETTINGS)
    assert all(len(values) == 300 for values in summary["accuracies"].values())
    chosen = np.mean([values[CHOOSE].mean() for values in summary["accuracies"].values()])
    assert summary["best"]["score"] == pytest.approx(chosen) and summary["best_step"] in (0, 5, 10)
    meta = json.loads((root / "f/ckpt/proto-fold/fold1/best/head.json").read_text())
    assert meta["base_classes"] == list(fold.train) and meta["fold"]["held"] == list(fold.held)
    resumed = train(cfg, catalog, workspace_, progress=False, fold=fold)  # the chosen head scored again
    for name, values in summary["accuracies"].items():
        np.testing.assert_array_equal(resumed["accuracies"][name], values)


def test_heads_compared_on_class_folds_choose_the_best_mean_and_fsl_train_folds_writes_it(workspace, tmp_path, capsys):
    """compare_heads trains each config on every fold and chooses the best mean over the folds'
    reporting episodes, with its power line; `fsl train --folds 2 --no-final` prints and writes the
    comparison and trains no final run; --no-final alone, and folds on an adapted store, are refused."""
    import json

    from fsl.cli.main import main
    from fsl.config import to_yaml
    from fsl.harness.experiment import check_learned_nothing
    from fsl.harness.select import compare_heads

    root, catalog = workspace
    configs = [config(5, name="slow"), config(5, name="fast")]
    configs[1] = dataclasses.replace(configs[1], train=dataclasses.replace(configs[1].train, lr=3e-2))
    workspace_ = Workspace(root / "episodes", root / "store", tmp_path / "ckpt", runs=tmp_path / "runs")
    summary = compare_heads(configs, catalog, workspace_, 0, 2, tmp_path / "folds.json", progress=False)
    assert [row["name"] for row in summary["candidates"]] == ["slow", "fast"]
    best = max(summary["candidates"], key=lambda row: row["mean"])
    assert summary["chosen"] == best["name"] and summary["power"]["chosen"] == best["name"]
    assert summary["power_over_folds"]["folds"] == 2
    assert json.loads((tmp_path / "folds.json").read_text())["chosen"] == summary["chosen"]
    with pytest.raises(FslError, match="distinct names"):
        compare_heads([configs[0], configs[0]], catalog, workspace_, 0, 2)

    for cfg in configs:
        (tmp_path / f"{cfg.name}.yaml").write_text(to_yaml(cfg))
    common = ["--data", str(root / "dump"), "--episodes-dir", str(root / "episodes"), "--store-root",
              str(root / "store"), "--checkpoints", str(tmp_path / "cli"), "--runs", str(tmp_path / "cli-runs"),
              "--results", str(tmp_path / "results"), "--splits", "0"]  # fmt: skip
    yamls = [str(tmp_path / "slow.yaml"), str(tmp_path / "fast.yaml")]
    assert main(["train", *yamls, *common, "--folds", "2", "--no-final", "--fold-by", "none"]) == 0
    printed = capsys.readouterr().out
    assert "2 class folds" in printed and "<- chosen" in printed and "paired over 2 folds" in printed
    written = json.loads((tmp_path / "results/train-folds/split0.json").read_text())
    assert written["chosen"] == summary["chosen"]  # the same folds, episodes and seeds: the same choice
    for name in ("slow", "fast"):  # --no-final: the folds only
        assert (tmp_path / f"cli/{name}/fold1/best").is_dir() and not (tmp_path / f"cli/{name}/best").exists()
    assert main(["train", *yamls, *common, "--folds", "2", "--fold-by", "none"]) == 0  # resumed; the chosen trained
    other = next(name for name in ("slow", "fast") if name != summary["chosen"])
    assert (tmp_path / f"cli/{summary['chosen']}/best/head.safetensors").is_file()
    assert not (tmp_path / f"cli/{other}/best").exists()
    assert main(["train", *yamls, *common, "--no-final"]) == 2
    assert "--no-final goes with --folds" in capsys.readouterr().err

    class Adapted:
        manifest = {"adaptation": {"split_seed": 0}}
        path = tmp_path / "adapted-store"

    with pytest.raises(FslError, match="class folds hold base classes out, but feature store adapted-store"):
        check_learned_nothing(Adapted(), "class folds")

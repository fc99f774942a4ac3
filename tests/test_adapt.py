"""`fsl adapt`: the image tower's last layers trained on base classes from cached activations."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fsl.episodes.folds
import fsl.harness.adapt
import fsl.harness.select
from fsl.config import AdaptConfig, EncoderConfig
from fsl.encoders.adapted import WEIGHTS_FILE, AdaptedEncoder, TextTop, load_adaptation
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.files import read_json, write_json
from fsl.harness.adapt import BaseBatches, adapt, check_adapt_config, mix, random_crop
from fsl.inference.heads import DEFAULT_HEAD
from fsl.paths import Workspace
from fsl.store.activations import OfflineTextCut, cached_activations, cached_tower
from fsl.store.features import TextVariant
from fsl.store.open import open_store

TINY = AdaptConfig(
    name="tiny", steps=4, val_every=2, batch_size=16, n_way=3, k_shot=2, q_query=2, val_episodes=("val-2w5s",)
)


@pytest.fixture(scope="module")
def slice_(twelve_classes, offline_encoder):
    """The twelve-class slice (240 real photos), its offline store and the activations at cut 1."""
    root, catalog = twelve_classes
    open_store(catalog, EncoderConfig("offline"), root / "offline-store")
    activations = cached_activations(catalog, offline_encoder, 1, root / "offline-store", progress=False)
    return root, catalog, activations


def run(slice_, tmp_path, config: AdaptConfig = TINY, **kwargs) -> dict:
    root, catalog, _ = slice_
    workspace = Workspace(episodes=root / "episodes", features=root / "offline-store", runs=tmp_path / "runs")
    return adapt(config, catalog, workspace, tmp_path / "adapt", progress=False, **kwargs)


def test_cached_activations_equal_the_towers_own_intermediate_output(slice_, offline_encoder):
    _, catalog, activations = slice_
    seen = []
    model = offline_encoder.image_model
    hook = model._blocks[-1].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    try:
        pixels = next(iter(offline_encoder.image_batches(catalog.image_paths[:8], 8, 0)))
        with torch.inference_mode():
            pooled = model.extract_features(pixels).mean(dim=(2, 3))
    finally:
        hook.remove()
    assert activations.shape == (len(catalog), 192, 7, 7) and activations.dtype == np.float16
    expected = seen[0].numpy()
    np.testing.assert_allclose(activations[:8].astype(np.float32), expected, atol=2e-2, rtol=1e-2)
    # the top of a cut tower on the cached rows gives the tower's own pooled feature
    from fsl.encoders.adapted import ImageTop, top_features

    top = top_features(ImageTop(model, 1), activations, np.arange(8))
    cosine = torch.nn.functional.cosine_similarity(top, pooled, dim=-1)
    assert cosine.min() > 0.999


def test_every_training_batch_holds_base_class_products_only(slice_):
    root, catalog, _ = slice_
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    batches = BaseBatches(catalog, TINY, split.classes("base"), root / "episodes")
    labels = catalog.labels().to_numpy()
    seen = set()
    for _ in range(50):
        rows, classes = batches.supervised()
        assert list(np.asarray(split.classes("base"))[classes.numpy()]) == list(labels[rows])
        episode = batches.episode()
        seen |= set(labels[rows]) | set(labels[np.concatenate([episode.support[0], episode.query[0]])])
    assert seen == set(split.classes("base"))
    assert not seen & (set(split.classes("val")) | set(split.classes("novel")))


def test_map_augmentations_crop_and_blend_within_a_class(slice_):
    root, catalog, _ = slice_
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(40, 3, 7, 7, generator=generator)
    cropped = random_crop(maps, 0.7, generator)
    assert cropped.shape == (40, 3, 5, 5)
    places = set()
    for original, crop in zip(maps, cropped):
        found = [
            (top, left)
            for top in range(3)
            for left in range(3)
            if torch.equal(original[:, top : top + 5, left : left + 5], crop)
        ]
        assert found  # a square of the map itself, not a resampled one
        places.add(found[0])
    assert len(places) > 3  # each map cropped at its own place
    # a blend weighs the partner by at most `mix`, the same weight over a whole map
    zeros, ones = torch.zeros(40, 3, 7, 7), torch.ones(40, 3, 7, 7)
    blended = mix(zeros, ones, 0.3, generator)
    weights = blended.flatten(1)
    assert torch.all(weights == weights[:, :1]) and 0 <= weights.min() and weights.max() <= 0.3
    assert weights[:, 0].unique().numel() > 10
    # partners: products of the same class, drawn over the class (not the product itself each time)
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    batches = BaseBatches(catalog, TINY, split.classes("base"), root / "episodes")
    labels = catalog.labels().to_numpy()
    rows = batches.rows[::3]
    partners = batches.partners(rows, generator)
    assert list(labels[partners]) == list(labels[rows]) and np.isin(partners, batches.rows).all()
    assert (partners != rows).mean() > 0.8


def test_an_augmented_recipe_trains_on_its_augmented_maps(slice_, tmp_path, monkeypatch):
    seen_shapes = []
    real_augment = fsl.harness.adapt.augment

    def recorded(maps, config, generator, partner_maps=None):
        seen_shapes.append((tuple(maps.shape), partner_maps is not None))
        return real_augment(maps, config, generator, partner_maps)

    monkeypatch.setattr(fsl.harness.adapt, "augment", recorded)
    plain = dataclasses.replace(TINY, name="plain", objective="episodic")
    augmented = dataclasses.replace(plain, name="augmented", crop=0.7, mix=0.4)
    run(slice_, tmp_path, plain)
    assert seen_shapes and all(not partnered for _, partnered in seen_shapes)
    seen_shapes.clear()
    run(slice_, tmp_path, augmented)
    assert len(seen_shapes) == augmented.steps and all(partnered for _, partnered in seen_shapes)
    meta = load_adaptation(tmp_path / "adapt" / "augmented" / "last")[1]
    assert (meta["config"]["crop"], meta["config"]["mix"]) == (0.7, 0.4)
    # the same recipe and seeds, the maps augmented otherwise: other weights
    weights = [load_file(tmp_path / "adapt" / name / "last" / WEIGHTS_FILE) for name in ("plain", "augmented")]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_adapt_writes_best_and_last_with_a_sidecar_and_an_adapted_store(slice_, tmp_path):
    root, catalog, _ = slice_
    summary = run(slice_, tmp_path)
    state, meta = load_adaptation(summary["folder"])
    assert (meta["cut"], meta["mode"], meta["objective"], meta["split_seed"]) == (1, "full", "supervised", 0)
    assert meta["trained_on"].endswith(
        f"of the {len(ClassSplit.load(catalog, 'articleType', 0, root / 'episodes').classes('base'))} base classes"
    )
    assert (tmp_path / "adapt" / "tiny" / "last" / WEIGHTS_FILE).is_file()
    assert summary["start"]["score"] <= summary["best"]["score"]  # step 0 is a candidate
    # the adapted store (derived from the cached activations) equals the photos through the adapted tower
    pretrained = str(tmp_path / "adapt" / "tiny" / "last")
    store = open_store(catalog, EncoderConfig("adapted", pretrained=pretrained), root / "offline-store")
    assert store.manifest["adaptation"]["split_seed"] == 0
    encoder = AdaptedEncoder(pretrained=pretrained)
    photos = encoder.encode_images(catalog.image_paths[:12], num_workers=0, progress=False)
    cosine = (photos * np.asarray(store.image[:12])).sum(-1)
    assert cosine.min() > 0.999
    frozen = open_store(catalog, EncoderConfig("offline"), root / "offline-store")
    assert not np.allclose(np.asarray(store.image[:12]), np.asarray(frozen.image[:12]), atol=1e-4)  # it did train
    np.testing.assert_array_equal(store.text("plain"), frozen.text("plain"))


def test_lora_trains_adapters_only_and_saves_merged_weights(slice_, tmp_path):
    summary = run(
        slice_, tmp_path, dataclasses.replace(TINY, name="lora", mode="lora", rank=2, objective="episodic", lr=1e-2)
    )
    state, meta = load_adaptation(tmp_path / "adapt" / "lora" / "last")
    assert meta["mode"] == "lora" and meta["rank"] == 2
    assert not any("lora" in key for key in state)  # merged: the adapted encoder needs no PEFT
    assert meta["trainable_parameters"] < 50_000  # the adapters, not the 1.0 M weights
    AdaptedEncoder(pretrained=str(tmp_path / "adapt" / "lora" / "last"))  # merged weights load into the plain top
    assert summary["steps"] == 4


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(slice_, tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, objective="supervised+episodic")
    run(slice_, tmp_path / "whole", config)
    real, calls = fsl.harness.adapt.prototypical_loss, []

    def killed_at_step_3(*args):
        calls.append(1)
        if len(calls) == 1:  # supervised+episodic: steps 3-4 are episodic
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fsl.harness.adapt, "prototypical_loss", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(slice_, tmp_path / "killed", config)
    assert load_adaptation(tmp_path / "killed" / "adapt" / "tiny" / "last")[1]["step"] == 2
    run(slice_, tmp_path / "killed", config)
    whole = load_file(str(tmp_path / "whole" / "adapt" / "tiny" / "last" / WEIGHTS_FILE))
    resumed = load_file(str(tmp_path / "killed" / "adapt" / "tiny" / "last" / WEIGHTS_FILE))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key])


def test_a_non_finite_loss_stops_the_run_and_keeps_the_earlier_checkpoints(slice_, tmp_path, monkeypatch):
    calls = []

    def nan_at_step_3(features, classes, weights, scale):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(features @ torch.zeros(features.shape[1], 2), classes % 2)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(fsl.harness.adapt, "cosine_classifier_loss", nan_at_step_3)
    with pytest.raises(FslError, match="stopped at step 3: the loss is nan"):
        run(slice_, tmp_path)
    _, meta = load_adaptation(tmp_path / "adapt" / "tiny" / "last")
    assert meta["step"] == 2


def test_the_frozen_start_is_chosen_when_no_step_beats_it(slice_, tmp_path, monkeypatch):
    scores = iter([0.9, 0.5, 0.4])
    monkeypatch.setattr(
        fsl.harness.adapt.Validation, "summary", lambda self, accuracies: {"val-2w5s": (s := next(scores)), "score": s}
    )
    summary = run(slice_, tmp_path)
    assert summary["best_step"] == 0
    assert load_adaptation(summary["folder"])[1]["step"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "half"}, "mode must be one of"),
        ({"objective": "contrastive"}, "objective must be one of"),
        ({"cut": 9}, "cut must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"image_weight": 1.5}, "image_weight must lie"),
        ({"crop": 0}, "crop .* must lie in"),
        ({"crop": 1.2}, "crop .* must lie in"),
        ({"mix": 0.6}, "mix .* must lie in"),
        ({"towers": "text", "mix": 0.3}, "towers 'text' does not train it"),
    ],
)
def test_bad_recipes_are_refused_before_any_work(change, message):
    with pytest.raises(FslError, match=message):
        check_adapt_config(dataclasses.replace(TINY, **change))


def test_adapt_refuses_to_choose_on_a_novel_set(slice_, tmp_path):
    with pytest.raises(FslError, match="validation classes only"):
        run(slice_, tmp_path, dataclasses.replace(TINY, val_episodes=("novel-5w5s",)))


def test_every_shipped_recipe_is_valid_and_set_overrides_it():
    from pathlib import Path

    from fsl.config import load_adapt_config, override, parse_assignment

    recipes = sorted((Path(__file__).resolve().parents[1] / "experiments" / "adapt").glob("*.yaml"))
    assert {path.stem for path in recipes} >= {"supervised", "episodic", "lora"}
    for path in recipes:
        recipe = check_adapt_config(load_adapt_config(path))
        assert recipe.name == path.stem
    lora = load_adapt_config(recipes[[p.stem for p in recipes].index("lora")])
    changed = override(lora, [parse_assignment("rank=4"), parse_assignment("lr=3e-4")])
    assert (changed.rank, changed.lr, changed.name) == (4, 3e-4, "lora--rank-4--lr-0.0003")
    with pytest.raises(FslError, match="unknown key 'rnak'"):
        override(lora, [parse_assignment("rnak=4")])


def test_fsl_eval_runs_an_adapted_config_on_the_split_it_was_adapted_for(slice_, tmp_path):
    from fsl.config import ExperimentConfig
    from fsl.encoders.adapted import adaptation_for_split
    from fsl.harness.experiment import check_alignment, config_for_split, run_experiment

    root, catalog, _ = slice_
    run(slice_, tmp_path)
    pretrained = str(tmp_path / "adapt" / "tiny" / "best")
    config = ExperimentConfig(
        name="adapted-protonet-image",
        encoder=EncoderConfig("adapted", pretrained=pretrained),
        episodes=("novel-5w5s",),
    )
    (result,) = run_experiment(config, catalog, Workspace(root / "episodes", root / "offline-store"), progress=False)
    assert result.hparams["encoder"].startswith("adapted:") and 0 < result.accuracy.mean() <= 1
    # split s reads split s's adaptation, laid out as fsl train's checkpoints
    assert config_for_split(config, 0).encoder.pretrained == pretrained
    assert config_for_split(config, 3).encoder.pretrained == str(tmp_path / "adapt" / "split3" / "tiny" / "best")
    assert adaptation_for_split(pretrained, 3) == str(tmp_path / "adapt" / "split3" / "tiny" / "best")
    # a folder whose sidecar names the split already (a class-fold tower of split 3) is read as named
    fold_tower = tmp_path / "adapt" / "split3" / "tiny" / "fold0" / "best"
    shutil.copytree(pretrained, fold_tower)
    write_json(fold_tower / "adapt.json", {**read_json(fold_tower / "adapt.json"), "split_seed": 3})
    assert adaptation_for_split(fold_tower, 3) == str(fold_tower)
    store = open_store(catalog, config.encoder, root / "offline-store")

    class OtherSplit:
        name, meta = "novel-5w5s", {"split_seed": 1}

    with pytest.raises(FslError, match="split seed 0; episode set 'novel-5w5s' comes from split seed 1"):
        check_alignment(store, OtherSplit())


def test_a_views_features_through_an_adapted_tower_come_from_its_cached_activations(slice_, tmp_path):
    from PIL import ImageOps

    from fsl.episodes.shift import view_image_features

    root, catalog, _ = slice_
    run(slice_, tmp_path)
    pretrained = str(tmp_path / "adapt" / "tiny" / "last")
    store = open_store(catalog, EncoderConfig("adapted", pretrained=pretrained), root / "offline-store")
    encoder = AdaptedEncoder(pretrained=pretrained)
    ids = catalog.products["id"].to_numpy()[[3, 1, 7]]
    got_ids, image = view_image_features(store, catalog, encoder, ids, "flip", progress=False)
    assert list(got_ids) == sorted(ids)
    paths = catalog.products.set_index("id").loc[got_ids, "image_path"]
    expected = encoder.encode_images([str(p) for p in paths], num_workers=0, progress=False, render=ImageOps.mirror)
    assert (image * expected).sum(-1).min() > 0.999
    assert list((root / "offline-store").glob("*/flip-v1-activations-cut1.npz"))  # kept for the next tower


@pytest.mark.parametrize("towers", ["both", "text"])
def test_a_views_features_follow_the_towers_that_learned(slice_, tmp_path, towers):
    """Both towers: the view through the adapted image top; the text tower alone: the frozen photo's view."""
    from PIL import ImageOps

    from fsl.episodes.shift import view_image_features

    root, catalog, _ = slice_
    summary = run(slice_, tmp_path, dataclasses.replace(TINY, name=towers, towers=towers, lr=1e-3))
    pretrained = str(summary["folder"].parent / "last")
    store = open_store(catalog, EncoderConfig("adapted", pretrained=pretrained), root / "offline-store")
    encoder = AdaptedEncoder(pretrained=pretrained)
    ids = catalog.products["id"].to_numpy()[[2, 5]]
    got_ids, image = view_image_features(store, catalog, encoder, ids, "flip", progress=False)
    paths = [str(p) for p in catalog.products.set_index("id").loc[got_ids, "image_path"]]
    expected = encoder.encode_images(paths, num_workers=0, progress=False, render=ImageOps.mirror)
    assert (image * expected).sum(-1).min() > 0.999


def test_fsl_adapt_refuses_a_bad_override_before_any_work(tmp_path, capsys):
    from pathlib import Path

    from fsl.cli.main import main

    recipe = Path(__file__).resolve().parents[1] / "experiments" / "adapt" / "lora.yaml"
    nowhere = str(tmp_path / "no-data")
    assert main(["adapt", str(recipe), "--set", "mode=half", "--data", nowhere, "--out", str(tmp_path)]) == 2
    assert "adapt mode must be one of ['full', 'lora'], got 'half'" in capsys.readouterr().err
    assert main(["adapt", str(recipe), "--set", "rank=0", "--data", nowhere]) == 2
    assert "rank must be a positive whole number" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_your_own_categories_through_an_adapted_tower(slice_, tmp_path):
    import shutil

    import fsl

    root, catalog, _ = slice_
    run(slice_, tmp_path)
    support, products = tmp_path / "support", catalog.products
    for label in products["articleType"].unique()[:3]:
        (support / label).mkdir(parents=True)
        for path in products[products["articleType"] == label]["image_path"].iloc[:4]:
            shutil.copy(path, support / label)
    queries = list(products.groupby("articleType").nth(5).loc[lambda f: f["articleType"].isin(
        products["articleType"].unique()[:3])]["image_path"])  # fmt: skip
    encoder = EncoderConfig("adapted", pretrained=str(tmp_path / "adapt" / "tiny" / "last"), runtime="eager")
    classifier = fsl.FewShotClassifier.from_folder(support, encoder=encoder, cache_root=tmp_path / "cache")
    answers = classifier.predict(queries)
    assert len(answers) == 3 and all(a.best in set(products["articleType"]) for a in answers)
    said = classifier.describe()  # the offline tower's shipped calibration is not borrowed for another tower
    assert said.startswith(f"head {DEFAULT_HEAD}, encoder adapted:") and "uncalibrated" in said


def test_fsl_predict_answers_your_own_categories_through_an_adapted_tower(slice_, tmp_path, capsys):
    """`fsl predict --support --encoder adapted --pretrained DIR`: the default head on that tower
    (the CSV's answers among the support's categories); --encoder without --support, or beside
    --config, is refused before any work."""
    import shutil

    import pandas as pd

    from fsl.cli.main import main

    _, catalog, _ = slice_
    run(slice_, tmp_path)
    capsys.readouterr()
    products, labels = catalog.products, sorted(catalog.products["articleType"].unique())[:3]
    for label in labels:
        rows = products[products["articleType"] == label]["image_path"]
        (tmp_path / "support" / label).mkdir(parents=True)
        (tmp_path / "query").mkdir(exist_ok=True)
        for path in rows.iloc[:4]:
            shutil.copy(path, tmp_path / "support" / label)
        shutil.copy(rows.iloc[5], tmp_path / "query" / f"{label}.jpg")
    tower = ["--encoder", "adapted", "--pretrained", str(tmp_path / "adapt" / "tiny" / "last")]
    common = ["predict", "--images", str(tmp_path / "query"), "--out", str(tmp_path / "answers.csv")]
    assert main([*common, "--support", str(tmp_path / "support"), *tower, "--store-root", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith(f"head {DEFAULT_HEAD}, encoder adapted:")
    answers = pd.read_csv(tmp_path / "answers.csv")
    assert len(answers) == 3 and set(answers["label_1"]) <= set(labels)
    assert main([*common, "--checkpoint", "checkpoints/head/best", *tower]) == 2
    assert "--encoder goes with --support" in capsys.readouterr().err
    config = ["--config", "experiments/protonet-image.yaml"]
    assert main([*common, "--support", str(tmp_path / "support"), *config, *tower]) == 2
    assert "--encoder goes without --config" in capsys.readouterr().err
    assert main([*common, "--support", str(tmp_path / "support"), *tower[2:]]) == 2  # --pretrained alone
    assert "--model and --pretrained go with --encoder" in capsys.readouterr().err


# Nothing silently wrong in what adaptation derives ---------------------------------------------------


@pytest.fixture
def own_store(slice_, tmp_path):
    """A copy of the slice's offline store and its activations, free to damage."""
    import shutil

    root, catalog, _ = slice_
    return shutil.copytree(root / "offline-store", tmp_path / "store")


@pytest.mark.parametrize("damage", ["nan", "truncated", "other shape", "flipped bytes"])
def test_damaged_activations_are_computed_again_never_used(slice_, own_store, offline_encoder, damage, caplog):
    from fsl.store.activations import activations_path

    _, catalog, good = slice_
    path = activations_path(catalog, 1, own_store)
    if damage == "nan":
        rows = np.load(path, mmap_mode="r+")
        rows[5, 0, 0, 0] = np.nan
        rows.flush()
        del rows
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif damage == "other shape":
        np.save(path, np.zeros((len(catalog), 4, 7, 7), dtype=np.float16))
    else:
        data = bytearray(path.read_bytes())
        data[-100:] = bytes(100)
        path.write_bytes(bytes(data))
    again = cached_activations(catalog, offline_encoder, 1, own_store, progress=False)
    assert "are damaged" in caplog.text
    np.testing.assert_array_equal(np.asarray(again), np.asarray(good))


def test_an_adaptation_with_bad_weights_is_refused_by_name(slice_, tmp_path, offline_encoder):
    import copy

    from safetensors.torch import save_file

    from fsl.encoders.adapted import adapted_top

    run(slice_, tmp_path)
    folder = tmp_path / "adapt" / "tiny" / "best"
    state = load_file(str(folder / WEIGHTS_FILE))
    key = next(k for k, v in state.items() if v.is_floating_point())
    save_file({**state, key: state[key] * 1.01}, str(folder / WEIGHTS_FILE))  # finite, right shapes, other bytes
    with pytest.raises(FslError, match="does not match the sha256 recorded"):
        load_adaptation(folder)
    meta = json.loads((folder / "adapt.json").read_text())
    del meta["weights_sha256"]  # as adaptations saved before it was recorded: the other checks still hold
    (folder / "adapt.json").write_text(json.dumps(meta))
    for label, changed in (
        ("NaN or infinite", {**state, key: torch.full_like(state[key], float("nan"))}),
        ("does not fit", {k: v for k, v in state.items() if k != key}),
        ("does not fit", {**state, key: torch.zeros(3, 3)}),
    ):
        save_file(changed, str(folder / WEIGHTS_FILE))
        with pytest.raises(FslError, match=label):
            weights, meta = load_adaptation(folder)
            adapted_top(copy.deepcopy(offline_encoder.image_model), weights, meta["cut"], folder)


def test_verify_rebuilds_an_adapted_store_with_nan_rows_and_a_damaged_view_cache(slice_, own_store, tmp_path, caplog):
    from fsl.episodes.shift import view_image_features
    from fsl.store.manifest import array_record
    from fsl.store.rows import store_features

    _, catalog, _ = slice_
    run(slice_, tmp_path)
    config = EncoderConfig("adapted", pretrained=str(tmp_path / "adapt" / "tiny" / "best"))
    store = open_store(catalog, config, own_store)
    clean = np.array(store.image)
    rows = np.load(store.path / "image.npy", mmap_mode="r+")  # NaN written where the checksum cannot see it
    rows[7] = np.nan
    rows.flush()
    del rows
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["arrays"]["image"] = array_record(store.path / "image.npy")
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FslError, match="fsl embed --verify"):
        np.asarray(store_features(open_store(catalog, config, own_store)))
    verified = open_store(catalog, config, own_store, full_check=True)  # what `fsl embed --verify` runs
    assert "NaN or infinite values" in caplog.text
    np.testing.assert_allclose(np.asarray(verified.image), clean, atol=1e-6)
    # a damaged view cache (re-rendered or flipped photos) is computed again, not a traceback
    ids = catalog.products["id"].to_numpy()[:4]
    first = view_image_features(verified, catalog, AdaptedEncoder(pretrained=config.pretrained), ids, "flip", False)[1]
    cache = verified.path / "flip-v1.npz"
    for payload in (b"", b"PK\x03\x04 not a zip", cache.read_bytes()[:200]):
        cache.write_bytes(payload)
        again = view_image_features(verified, catalog, AdaptedEncoder(pretrained=config.pretrained), ids, "flip", False)
        np.testing.assert_allclose(again[1], first, atol=1e-6)
        assert "is damaged" in caplog.text
        caplog.clear()


def test_two_splits_whose_adaptations_kept_the_same_weights_share_a_store(slice_, own_store, tmp_path):
    import shutil

    from fsl.harness.experiment import check_alignment

    _, catalog, _ = slice_
    run(slice_, tmp_path)
    split0 = tmp_path / "adapt" / "tiny" / "best"
    split1 = tmp_path / "adapt" / "split1" / "tiny" / "best"
    shutil.copytree(split0, split1)  # the same frozen-start weights, trained (and kept) on split 1
    meta = json.loads((split1 / "adapt.json").read_text())
    (split1 / "adapt.json").write_text(json.dumps({**meta, "split_seed": 1}))
    first = open_store(catalog, EncoderConfig("adapted", pretrained=str(split1)), own_store)
    second = open_store(catalog, EncoderConfig("adapted", pretrained=str(split0)), own_store)
    assert first.path == second.path and second.manifest["adaptation"]["split_seeds"] == [0, 1]

    class Split:
        name = "novel-5w5s"

        def __init__(self, seed):
            self.meta = {"split_seed": seed}

    check_alignment(second, Split(0))
    check_alignment(second, Split(1))
    with pytest.raises(FslError, match="split seed 0 or 1; episode set 'novel-5w5s' comes from split seed 2"):
        check_alignment(second, Split(2))


@pytest.mark.parametrize(
    "change, message",
    [({"batch_size": 100_000}, "batch_size 100000 is more than the products"),
     ({"objective": "episodic", "n_way": 50}, "n_way 50 is more than the classes")],
)  # fmt: skip
def test_steps_larger_than_the_split_are_refused_before_the_activations_are_cached(
    slice_, tmp_path, change, message, monkeypatch
):
    monkeypatch.setattr(fsl.harness.adapt, "cached_tower", lambda *a, **k: pytest.fail("cached first"))
    with pytest.raises(FslError, match=message):
        run(slice_, tmp_path, dataclasses.replace(TINY, **change))


def test_a_step_too_large_for_memory_is_refused_before_it_runs(slice_, offline_encoder, monkeypatch):
    from types import SimpleNamespace

    from fsl.harness.adapt import check_step_memory, trainable_top

    _, _, activations = slice_
    model = trainable_top(offline_encoder, TINY)

    def forward(rows):
        return model(torch.from_numpy(np.asarray(activations[rows], dtype=np.float32)))

    check_step_memory(forward, "batch_size", 16)  # fits
    monkeypatch.setattr(fsl.harness.adapt.psutil, "virtual_memory", lambda: SimpleNamespace(available=2**30))
    with pytest.raises(FslError, match=r"batch_size = 5000 products a step needs about .* GiB; 1.0 GiB is available"):
        check_step_memory(forward, "batch_size", 5000)


def test_fsl_eval_runs_while_fsl_adapt_caches_the_activations(slice_, tmp_path):
    """The activations have their own file and lock: reading the store never waits on their caching."""
    import shutil
    import subprocess
    import sys
    import time

    from fsl.cli.main import main
    from fsl.store.activations import activations_path

    root, catalog, _ = slice_
    store = shutil.copytree(root / "offline-store", tmp_path / "store")
    partial = activations_path(catalog, 1, store).with_suffix(".partial.npy")
    for cached in partial.parent.glob("activations-cut1*"):
        cached.unlink()  # so that the adaptation caches them again
    (tmp_path / "tiny.yaml").write_text("name: tiny\nsteps: 2\nval_every: 2\nbatch_size: 8\nn_way: 3\nk_shot: 2\n"
                                        "q_query: 2\nval_episodes: [val-2w5s]\n")  # fmt: skip
    (tmp_path / "eval.yaml").write_text("name: pn\nmethod: protonet\nfusion: image\nepisodes: [novel-5w5s]\n"
                                        "encoder: {name: offline}\n")  # fmt: skip
    folders = ["--data", str(root / "dump"), "--episodes-dir", str(root / "episodes"), "--store-root", str(store)]
    adapting = subprocess.Popen(
        [sys.executable, "-m", "fsl.cli", "adapt", str(tmp_path / "tiny.yaml"), *folders, "--out",
         str(tmp_path / "adapt"), "--runs", str(tmp_path / "runs")],  # fmt: skip
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not partial.is_file() and adapting.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial.is_file(), "fsl adapt never started caching"
        assert main(["eval", str(tmp_path / "eval.yaml"), *folders, "--results", str(tmp_path / "results"),
                     "--runs", str(tmp_path / "eval-runs")]) == 0  # fmt: skip
        out, err = adapting.communicate(timeout=300)
    finally:
        adapting.kill()
    assert adapting.returncode == 0, err[-2000:]
    assert "caching the activations at cut 1" in err and "step 2/2, validation score" in out + err
    assert list((tmp_path / "results").glob("pn*.csv"))


def test_recipes_compared_on_class_folds_never_train_on_a_fold_held_classes(slice_, tmp_path):
    """Two recipes x two folds of the slice's base ∪ validation classes: each fold trains on the other
    fold's classes only (its batches checked), is scored on its own, and the power line compares them."""
    from fsl.episodes.folds import class_folds
    from fsl.harness.select import compare_recipes

    root, catalog, _ = slice_
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    labels = catalog.labels().to_numpy()
    folds = class_folds(split, labels, k=2)
    for fold in folds:
        batches = BaseBatches(catalog, TINY, list(fold.train), root / "episodes")
        seen = set()
        for _ in range(30):
            rows, _ = batches.supervised()
            episode = batches.episode()
            seen |= set(labels[rows]) | set(labels[np.concatenate([episode.support[0], episode.query[0]])])
        assert seen <= set(fold.train) and not seen & (set(fold.held) | set(split.classes("novel")))
    recipes = [TINY, dataclasses.replace(TINY, name="tiny-lr", lr=1e-3)]
    workspace = Workspace(episodes=root / "episodes", features=root / "offline-store", runs=tmp_path / "runs")
    summary = compare_recipes(
        recipes, catalog, workspace, 2, tmp_path / "adapt", tmp_path / "folds.json", progress=False
    )
    assert [row["name"] for row in summary["candidates"]] == ["tiny", "tiny-lr"]
    assert [f["held"] for f in summary["folds"]] == [list(f.held) for f in folds]
    for row in summary["candidates"]:
        assert [f["fold"] for f in row["folds"]] == [0, 1] and 0 <= row["mean"] <= 1
        for fold in folds:  # each fold's run trained on the fold's training classes, and said so
            sidecar = json.loads((tmp_path / "adapt" / row["name"] / f"fold{fold.index}/best/adapt.json").read_text())
            assert sidecar["base_classes"] == list(fold.train) and sidecar["fold"]["held"] == list(fold.held)
    best = max(summary["candidates"], key=lambda row: row["mean"])
    assert summary["chosen"] == best["name"] and summary["power"]["chosen"] == best["name"]
    assert json.loads((tmp_path / "folds.json").read_text())["chosen"] == summary["chosen"]
    with pytest.raises(FslError, match="distinct names"):
        compare_recipes(
            [TINY, TINY], catalog, Workspace(root / "episodes", root / "offline-store"), 2, tmp_path / "adapt"
        )


def test_a_recipe_that_wins_only_on_the_episodes_that_chose_its_step_is_not_chosen(slice_, tmp_path, monkeypatch):
    """Fold scores are read on the other half of each set's episodes: "lucky" leads on the choosing
    half (even episodes) and trails on the reporting half (odd), so "steady" is chosen, and each
    fold's figures and the power line are the reporting half's."""
    root, catalog, _ = slice_
    pattern = {"lucky": (1.0, 0.5), "steady": (0.8, 0.7)}  # (even, odd) episodes

    def fake_adapt(recipe, catalog, workspace, out, resume, progress, fold):
        even, odd = pattern[recipe.name]
        odd = odd - (0.15 if recipe.name == "steady" and fold.index == 1 else 0.0)  # steady leads by 0.2, then 0.05
        values = np.tile([even, odd], 50)
        return {"accuracies": {"5w5s": values, "5w1s": values, "allway-5s": values}, "best_step": 2,
                "best": {"score": even}, "start": {"score": 0.1}}  # fmt: skip

    monkeypatch.setattr(fsl.harness.select, "adapt", fake_adapt)
    recipes = [dataclasses.replace(TINY, name="lucky"), dataclasses.replace(TINY, name="steady")]
    workspace = Workspace(episodes=root / "episodes", runs=tmp_path / "runs")
    summary = fsl.harness.select.compare_recipes(recipes, catalog, workspace, 2, progress=False)
    assert summary["chosen"] == "steady" and summary["power"]["separable"]
    lucky, steady = summary["candidates"]
    assert lucky["mean"] == pytest.approx(0.5) and steady["mean"] == pytest.approx(0.625)
    assert lucky["folds"][0]["score"] == pytest.approx(0.5) and lucky["folds"][0]["chosen_on"] == 1.0
    assert steady["settings"] == pytest.approx({"5w5s": 0.625, "5w1s": 0.625, "allway-5s": 0.625})
    assert summary["power"]["episodes"] == 2 * 3 * 50  # two folds, three settings, the reporting halves
    # the episodes of a fold share its classes: over the two folds' class sets the lead is not separable
    over_folds = summary["power_over_folds"]
    assert over_folds["differences"] == pytest.approx([0.2, 0.05]) and not over_folds["separable"]
    assert over_folds["verdict"].startswith("over the 2 folds' class sets: not separable (steady - lucky: +12.50")


def test_a_fold_run_scored_on_other_episodes_is_not_resumed(slice_, tmp_path, monkeypatch):
    """A fold run's saved state names the episodes it was scored on: a run of another scoring protocol
    (here: other 1-shot settings) is refused, never continued with its step chosen the old way."""
    root, catalog, _ = slice_
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    fold = fsl.episodes.folds.class_folds(split, catalog.labels().to_numpy(), k=2)[0]
    config = dataclasses.replace(TINY, steps=2, val_every=2)
    first = run(slice_, tmp_path, config, fold=fold)
    assert run(slice_, tmp_path, config, fold=fold)["best_step"] == first["best_step"]  # same episodes: resumed
    monkeypatch.setitem(fsl.episodes.folds.FOLD_SETTINGS, "5w1s", (5, 2))
    with pytest.raises(FslError, match="saved by a run with other settings"):
        run(slice_, tmp_path, config, fold=fold)


def test_fsl_adapt_folds_prints_the_comparison_and_the_power_line(slice_, tmp_path, capsys):
    from fsl.cli.main import main

    root, _, _ = slice_
    (tmp_path / "a.yaml").write_text("name: a\nsteps: 2\nval_every: 2\nbatch_size: 8\nn_way: 3\nk_shot: 2\n"
                                     "q_query: 2\nobjective: episodic\n")  # fmt: skip
    (tmp_path / "b.yaml").write_text((tmp_path / "a.yaml").read_text().replace("name: a", "name: b\nlr: 0.001"))
    folders = ["--data", str(root / "dump"), "--episodes-dir", str(root / "episodes"), "--store-root",
               str(root / "offline-store"), "--out", str(tmp_path / "adapt"),
               "--runs", str(tmp_path / "runs")]  # fmt: skip
    assert main(["adapt", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), *folders, "--folds", "2", "--no-final",
                 "--results", str(tmp_path / "res")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "split 0, 2 class folds of base and validation classes" in out and "<- chosen" in out
    assert "separable" in out and (tmp_path / "res/adapt-folds/split0-by-subCategory.json").is_file()  # the default
    assert (tmp_path / "adapt" / "a" / "fold1-by-subCategory" / "best").is_dir()
    assert not (tmp_path / "adapt" / "a" / "best").exists()  # --no-final: the folds only
    assert main(["adapt", str(tmp_path / "a.yaml"), *folders, "--no-final"]) == 2
    assert "--no-final goes with --folds" in capsys.readouterr().err


# Towers for your own categories: trained on more than the base classes ---------------------------------


@pytest.mark.parametrize("classes, pool", [("all", "all"), ("selection", "select")])
def test_a_tower_on_more_classes_trains_on_them_and_keeps_its_last_step(slice_, tmp_path, monkeypatch, classes, pool):
    """Nothing is held out, so no step is chosen: best/ is the last step, with no figures; the batches
    hold every class of the pool (all: the novel ones too; selection: never a novel one)."""
    root, catalog, _ = slice_
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    labels, drawn = catalog.labels().to_numpy(), set()
    original = BaseBatches.episode

    def recorded(batches):
        episode = original(batches)
        drawn.update(labels[np.concatenate([episode.support[0], episode.query[0]])])
        return episode

    monkeypatch.setattr(BaseBatches, "episode", recorded)
    config = dataclasses.replace(TINY, name=classes, classes=classes, objective="episodic", steps=40, val_every=20)
    summary = run(slice_, tmp_path, config)
    assert summary["best_step"] == 40 and summary["start"] is None and summary["best"] == {"step": 40}
    assert drawn == set(split.classes(pool))  # 40 episodes of 3 ways drew every class of the pool
    assert (classes == "all") == bool(drawn & set(split.classes("novel")))
    _, meta = load_adaptation(summary["folder"])
    assert meta["classes"] == classes and meta["base_classes"] == split.classes(pool) and meta["validation"] == {}
    assert (
        load_file(summary["folder"] / WEIGHTS_FILE).keys()
        == load_file(summary["folder"].parent / "last" / WEIGHTS_FILE).keys()
    )
    for name, tensor in load_file(summary["folder"] / WEIGHTS_FILE).items():  # best/ is the last step's
        assert torch.equal(tensor, load_file(summary["folder"].parent / "last" / WEIGHTS_FILE)[name])


def test_a_tower_on_every_class_is_never_measured_on_them_and_calibrates_on_the_whole_pool(slice_, tmp_path):
    """An all-classes tower's store refuses the novel sets (it trained on them); a config on a tower
    that trained on the selection pool (or all) chooses on that pool, not on its 6 seen validation
    classes; one on a base-class tower still chooses on validation classes; novel sets stay refused."""
    from fsl.config import ExperimentConfig
    from fsl.episodes.standard import load_episode_set
    from fsl.harness.experiment import check_alignment, check_validation_only, selection_sets

    root, catalog, _ = slice_
    folders = {}
    for classes in ("all", "selection", "base"):
        run(slice_, tmp_path, dataclasses.replace(TINY, name=classes, classes=classes, steps=2, val_every=2))
        folders[classes] = str(tmp_path / "adapt" / classes / "best")
    configs = {
        classes: ExperimentConfig(
            name=f"lp-{classes}", method="linear_probe", encoder=EncoderConfig("adapted", pretrained=folder)
        )
        for classes, folder in folders.items()
    }
    novel, val = (
        load_episode_set(configs["all"], catalog, name, root / "episodes") for name in ("novel-5w5s", "val-2w5s")
    )
    store = open_store(catalog, configs["all"].encoder, root / "offline-store")
    assert store.manifest["adaptation"]["classes"] == "all"
    with pytest.raises(
        FslError, match="adapted on every class of the split .* 'articleType-novel-5w5s' holds classes it trained on"
    ):
        check_alignment(store, novel)
    check_alignment(store, val)  # choosing on classes it saw is all it can do
    check_alignment(open_store(catalog, configs["selection"].encoder, root / "offline-store"), novel)  # held out
    assert [selection_sets(configs[c], "pool", "validation", 0) for c in ("all", "selection", "base")] == [
        "pool",
        "pool",
        "validation",
    ]
    for config in configs.values():
        with pytest.raises(FslError, match="read only to report"):
            check_validation_only(config, catalog, ["novel-5w5s"], root / "episodes", "fsl calibrate", "val-*")


def test_a_tower_on_every_class_is_calibrated_on_classes_it_saw_and_reports_no_novel_figures(
    slice_, tmp_path, monkeypatch
):
    """fsl calibrate on an all-classes tower: it chooses on the pool, says the classes were seen, and
    reads no novel set (each holds classes it trained on), so nothing flattering is reported."""
    import shutil

    from fsl.config import ExperimentConfig
    from fsl.episodes.frozen import EpisodeSet
    from fsl.episodes.standard import draw_standard_episodes
    from fsl.harness.calibration import calibrate

    root, catalog, _ = slice_
    run(slice_, tmp_path, dataclasses.replace(TINY, name="all", classes="all", steps=2, val_every=2))
    shutil.copytree(root / "episodes", tmp_path / "episodes")  # the same split, and a 4-way set over its pool
    draw_standard_episodes(catalog, tmp_path / "episodes", n_episodes=30, q_query=5, stratify=None,
                           benchmarks={"select-4w5s": ("select", 4, 5)}, selection={})  # fmt: skip
    read, real_load = [], EpisodeSet.load.__func__
    monkeypatch.setattr(EpisodeSet, "load", classmethod(lambda cls, path, fingerprint=None: (
        read.append(path.name), real_load(cls, path, fingerprint))[1]))  # fmt: skip
    encoder = EncoderConfig("adapted", pretrained=str(tmp_path / "adapt" / "all" / "best"))
    config = ExperimentConfig(name="pn", method="protonet", fusion="image", encoder=encoder)
    workspace = Workspace(tmp_path / "episodes", root / "offline-store", tmp_path / "ckpt")
    calibration = calibrate(config, catalog, workspace, tmp_path / "cal", temperature_set="select-4w5s",
                            open_selection_set="select-4w5s", report_sets=("novel-5w5s",))  # fmt: skip
    assert calibration.novel == {} and "all seen by its tower (adapted on all classes)" in calibration.fitted_on
    assert read and not [name for name in read if "novel" in name]
    assert (tmp_path / "cal" / "pn.json").is_file()


def test_fsl_adapt_all_classes_takes_its_steps_from_the_class_folds(slice_, tmp_path, monkeypatch, capsys):
    """--all-classes with --folds: the chosen recipe trains on every class for the median of the steps
    its folds chose; where the frozen tower won on most folds, nothing is trained."""
    from fsl.cli.main import main

    root, _, _ = slice_
    steps = {"a": [2, 4, 6], "b": [0, 0, 4]}

    def fake_compare(recipes, *args, **kwargs):
        (recipe,) = recipes
        assert recipe.classes == "all" and recipe.name == f"{recipe.name.split('--')[0]}--classes-all"
        row = {"name": recipe.name, "mean": 0.9, "ci": 0.01, "settings": {},
               "folds": [{"fold": i, "step": s} for i, s in enumerate(steps[recipe.name[0]])]}  # fmt: skip
        verdict = {"verdict": "one recipe"}
        return {"candidates": [row], "chosen": recipe.name, "power": verdict, "power_over_folds": verdict,
                "failed": [], "fold_by": None}  # fmt: skip

    monkeypatch.setattr(fsl.harness.select, "compare_recipes", fake_compare)
    folders = ["--data", str(root / "dump"), "--episodes-dir", str(root / "episodes"), "--store-root",
               str(root / "offline-store"), "--out", str(tmp_path / "adapt"), "--runs", str(tmp_path / "runs"),
               "--results", str(tmp_path / "res")]  # fmt: skip
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nsteps: 50\nval_every: 2\nbatch_size: 8\nn_way: 3\n"
                                               "k_shot: 2\nq_query: 2\nobjective: episodic\n")  # fmt: skip
        assert main(["adapt", str(tmp_path / f"{name}.yaml"), *folders, "--all-classes", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "a--classes-all: 4 steps, the median of the folds' chosen steps" in out
    assert "a--classes-all (split 0): trained 4 steps on its all classes" in out
    _, meta = load_adaptation(tmp_path / "adapt" / "a--classes-all" / "best")
    assert meta["step"] == 4 and meta["classes"] == "all"
    assert "b--classes-all: the frozen tower won on most folds" in out
    assert not (tmp_path / "adapt" / "b--classes-all").exists()


# The offline text tower (MiniLM) and both towers -------------------------------------------------------

MASKED = TextVariant(mask_column="articleType")


@pytest.mark.parametrize("cut", [1, 3])
def test_cached_text_tokens_equal_minilms_own_intermediate_output(slice_, offline_encoder, cut):
    root, catalog, _ = slice_
    cached = cached_tower(catalog, OfflineTextCut(offline_encoder, cut, MASKED), root / "offline-store", progress=False)
    texts = catalog.texts(MASKED.template, MASKED.mask_column)[:6]
    bert = offline_encoder.text_model[0].auto_model
    tokens = offline_encoder.text_model.tokenizer(texts, padding=True, return_tensors="pt")
    seen = []
    hook = bert.encoder.layer[-cut].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    try:
        with torch.no_grad():
            bert(**tokens)
    finally:
        hook.remove()
    for row, length in enumerate(tokens["attention_mask"].sum(1).tolist()):  # its tokens, then zeros (padding)
        np.testing.assert_allclose(cached[row, :length].astype(np.float32), seen[0][row, :length], atol=2e-2)
        assert not cached[row, length:].any()
    whole = offline_encoder.encode_texts(texts, progress=False)
    with torch.no_grad():
        through_top = TextTop(offline_encoder.text_model, cut)(torch.from_numpy(cached[:6].astype(np.float32)))
    cosine = torch.nn.functional.cosine_similarity(through_top, torch.from_numpy(whole), dim=-1)
    assert cosine.min() > 0.999


def test_both_offline_towers_adapt_with_lora_and_their_store_equals_embedding_through_the_adapted_pair(
    slice_, tmp_path
):
    root, catalog, _ = slice_
    config = dataclasses.replace(TINY, name="both", towers="both", mode="lora", rank=2, objective="episodic", lr=1e-2)
    summary = run(slice_, tmp_path, config)
    last = str(summary["folder"].parent / "last")
    state, meta = load_adaptation(last)
    assert meta["adapted"] == ["image", "text"] and not any("lora" in key for key in state)
    assert {key.split(".")[1] for key in state} == {"image", "text"}
    store = open_store(catalog, EncoderConfig("adapted", pretrained=last, runtime="eager"), root / "offline-store")
    encoder = AdaptedEncoder(pretrained=last)
    photos = encoder.encode_images(catalog.image_paths[:8], num_workers=0, progress=False)
    assert (photos * np.asarray(store.image[:8])).sum(-1).min() > 0.999
    frozen = open_store(catalog, EncoderConfig("offline"), root / "offline-store")
    for variant in ("plain", "masked-articleType"):
        recipe = store.manifest["text_variants"][variant]
        texts = catalog.texts(recipe["template"], recipe["mask_column"])[:8]
        assert (encoder.encode_texts(texts, progress=False) * np.asarray(store.text(variant)[:8])).sum(-1).min() > 0.999
        assert not np.allclose(np.asarray(store.text(variant)[:8]), np.asarray(frozen.text(variant)[:8]), atol=1e-4)


def test_a_text_only_adaptation_leaves_the_image_tower_as_it_was(slice_, tmp_path):
    root, catalog, _ = slice_
    summary = run(slice_, tmp_path, dataclasses.replace(TINY, name="text", towers="text", lr=1e-3))
    last = str(summary["folder"].parent / "last")
    assert load_adaptation(last)[1]["adapted"] == ["text"]
    store = open_store(catalog, EncoderConfig("adapted", pretrained=last), root / "offline-store")
    frozen = open_store(catalog, EncoderConfig("offline"), root / "offline-store")
    np.testing.assert_array_equal(store.image, frozen.image)
    assert not np.allclose(np.asarray(store.text("plain")), np.asarray(frozen.text("plain")), atol=1e-4)

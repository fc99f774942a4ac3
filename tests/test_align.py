"""`fsl align`: one image-text space over the frozen offline towers, trained on base classes only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fsl.errors import FslError
from fsl.paths import Workspace


@pytest.fixture(scope="module")
def aligned(twelve_classes, tmp_path_factory):
    """The twelve-class slice's offline store, an alignment trained on its base classes, and the rows
    `training_rows` handed to training (recorded)."""
    import fsl.harness.align
    from fsl.harness.align import AlignConfig, align

    root, catalog = twelve_classes
    out = tmp_path_factory.mktemp("align")
    recorded = []
    real = fsl.harness.align.training_rows
    fsl.harness.align.training_rows = lambda labels, base: recorded.append(real(labels, base)) or recorded[-1]
    try:
        summary = align(
            AlignConfig(name="tiny", dim=32, steps=120, batch_size=64, val_every=40),
            catalog,
            Workspace(episodes=root / "episodes", features=root / "offline-store", runs=out / "runs"),
            out / "ckpt",
            progress=False,
        )
    finally:
        fsl.harness.align.training_rows = real
    return root, catalog, out, summary, recorded


def test_alignment_trains_on_base_class_products_only(aligned):
    from fsl.episodes.splits import ClassSplit

    root, catalog, _, _, recorded = aligned
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    labels = catalog.labels().to_numpy()
    (rows,) = recorded
    assert set(labels[rows]) == set(split.classes("base"))
    assert not set(labels[rows]) & (set(split.classes("val")) | set(split.classes("novel")))


def test_alignment_lowers_the_loss_and_improves_retrieval_on_the_slice(aligned):
    from fsl.config import EncoderConfig
    from fsl.encoders.aligned import Projections, load_alignment
    from fsl.encoders.factory import encoder_from_config
    from fsl.episodes.splits import ClassSplit
    from fsl.harness.align import contrastive_loss, retrieval_figures
    from fsl.store.open import open_store

    root, catalog, _, summary, recorded = aligned
    trained, meta = load_alignment(summary["folder"])
    store = open_store(catalog, EncoderConfig("offline"), root / "offline-store")
    rows = recorded[0]
    base = ClassSplit.load(catalog, "articleType", 0, root / "episodes").classes("base")
    encoder = encoder_from_config(EncoderConfig("offline"))
    prompts = torch.from_numpy(store.short_texts(base, lambda t: encoder.encode_texts(t, progress=False)))
    image = torch.from_numpy(np.asarray(store.image[rows]))
    text = torch.from_numpy(np.asarray(store.text("plain")[rows]))
    classes = torch.as_tensor(np.searchsorted(base, catalog.labels().to_numpy()[rows]))
    torch.manual_seed(0)
    untrained = Projections(meta["image_dim"], meta["text_dim"], meta["dim"], meta["hidden"])

    def measure(heads):
        with torch.no_grad():
            i, t, p = heads.embed_image(image), heads.embed_text(text), heads.embed_text(prompts)
            return contrastive_loss(i, t, p, classes, heads.scale).item(), retrieval_figures(i, t, p, classes)

    loss_before, before = measure(untrained)
    loss_after, after = measure(trained)
    assert loss_after < 0.7 * loss_before
    assert after["text_recall@10"] > before["text_recall@10"] + 0.2
    assert after["class_precision@10"] > before["class_precision@10"]


def test_the_checkpoint_round_trips_and_the_aligned_encoder_matches_its_store(aligned, offline_encoder):
    from fsl.config import EncoderConfig
    from fsl.encoders.aligned import alignment_digest, load_alignment
    from fsl.encoders.factory import create_encoder, encoder_id, shared_space
    from fsl.store.open import open_store

    root, catalog, out, summary, _ = aligned
    model, meta = load_alignment(summary["folder"])
    assert meta["split_seed"] == 0 and meta["towers"].startswith("offline:") and meta["dim"] == 32
    assert encoder_id("aligned", pretrained=summary["folder"]).endswith(alignment_digest(summary["folder"]))
    config = EncoderConfig("aligned", pretrained=str(summary["folder"]), runtime="eager")
    store = open_store(catalog, config, root / "offline-store")
    assert store.encoder_id.startswith("aligned:") and shared_space(store.encoder_id)
    assert store.image.shape == (len(catalog), 32) and store.manifest["alignment"]["split_seed"] == 0
    encoder = create_encoder("aligned", pretrained=str(summary["folder"]))
    photo = catalog.image_paths[5]
    pixels = encoder.image_transform(__import__("PIL.Image", fromlist=["Image"]).open(photo).convert("RGB"))
    assert float(encoder.embed_pixels(pixels[None])[0] @ store.image[5]) > 0.999
    text = catalog.texts()[5]
    assert float(encoder.encode_texts([text], progress=False)[0] @ store.text("plain")[5]) > 0.999


def test_an_aligned_store_refuses_another_tower_or_split(aligned, tmp_path):
    import shutil

    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.encoders.aligned import load_alignment
    from fsl.episodes.standard import draw_standard_episodes
    from fsl.files import read_json, write_json
    from fsl.harness.experiment import run_experiment

    root, catalog, _, summary, _ = aligned
    other = shutil.copytree(summary["folder"], tmp_path / "other")
    write_json(other / "align.json", {**read_json(other / "align.json"), "towers": "clip:ViT-B-32:openai"})
    with pytest.raises(FslError, match="cannot be used with these features"):
        load_alignment(other)
    config = ExperimentConfig(
        name="zs",
        method="zero_shot",
        fusion="image",
        episodes=("novel-5w5s",),
        encoder=EncoderConfig("aligned", pretrained=str(summary["folder"]), runtime="eager"),
    )
    (result,) = run_experiment(config, catalog, Workspace(root / "episodes", root / "offline-store"), progress=False)
    assert 0 <= result.accuracy.mean() <= 1  # zero-shot on photos runs: image and text share one space
    draw_standard_episodes(
        catalog,
        tmp_path / "seed1",
        seed=1,
        stratify=None,
        n_episodes=5,
        q_query=5,
        benchmarks={"novel-5w5s": ("novel", 5, 5)},
    )
    with pytest.raises(FslError, match=r"trained \(alignment\) on the base classes of split seed 0"):
        run_experiment(dataclasses.replace(config), catalog, Workspace(tmp_path / "seed1", root / "offline-store"))


def test_retrieval_figures_count_what_they_say():
    from fsl.harness.align import retrieval_figures

    image = torch.eye(4)  # four products, classes 0, 0, 1, 1
    classes = torch.tensor([0, 0, 1, 1])
    texts = torch.eye(4)[[0, 2, 1, 3]]  # products 1 and 2 have each other's text
    prompts = torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.5, 0.0, 0.0, 1.0]])  # class 1's second best: product 0
    figures = retrieval_figures(image, texts, prompts, classes, ks=(1, 2))
    assert figures["text_recall@1"] == 0.5  # products 0 and 3 find themselves first, 1 and 2 do not
    assert figures["class_recall@1"] == 1.0 and figures["class_recall@2"] == 1.0
    assert figures["class_precision@2"] == 0.75


def align_run(twelve_classes, out, steps=40, **changes):
    from fsl.harness.align import AlignConfig, align

    root, catalog = twelve_classes
    config = AlignConfig(**{"name": "loop", "dim": 16, "steps": steps, "batch_size": 32, "val_every": 20, **changes})
    workspace = Workspace(episodes=root / "episodes", features=root / "offline-store", runs=out / "runs")
    return align(config, catalog, workspace, out / "ckpt", progress=False)


def test_alignment_resumes_to_the_weights_of_an_unstopped_run_and_stops_at_a_non_finite_loss(
    twelve_classes, tmp_path, monkeypatch
):
    """The one training loop (fsl/harness/loop.py) gives `fsl align` what train and adapt have: a run
    stopped mid-way goes on to the very weights of an uninterrupted one, a last/ saved with other
    settings is refused rather than continued, and a non-finite loss stops the run before it is saved."""
    from safetensors.torch import load_file

    import fsl.harness.align

    straight = align_run(twelve_classes, tmp_path / "straight")
    real, calls = fsl.harness.align.contrastive_loss, []

    def stopped_at_step_30(*args):
        calls.append(1)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fsl.harness.align, "contrastive_loss", stopped_at_step_30)
    with pytest.raises(KeyboardInterrupt):
        align_run(twelve_classes, tmp_path / "stopped")
    last = tmp_path / "stopped/ckpt/loop/last"
    assert torch.load(last / "train_state.pt", weights_only=True)["step"] == 20
    resumed = align_run(twelve_classes, tmp_path / "stopped")  # calls go on past 30: no second stop
    assert resumed["best_step"] == straight["best_step"] and resumed["best"] == pytest.approx(straight["best"])
    ours, theirs = (
        load_file(str(last / "projections.safetensors")),
        load_file(str(tmp_path / "straight/ckpt/loop/last/projections.safetensors")),
    )
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key])
    with pytest.raises(FslError, match="saved by a run with other settings or another catalog; pass --restart"):
        align_run(twelve_classes, tmp_path / "stopped", dim=8)

    monkeypatch.setattr(fsl.harness.align, "contrastive_loss", lambda *args: real(*args) * float("nan"))
    with pytest.raises(
        FslError, match=r"align loop stopped at step 1: the loss is nan\. Nothing of this step was saved"
    ):
        align_run(twelve_classes, tmp_path / "diverged")
    assert not (tmp_path / "diverged/ckpt/loop/last").exists()


def test_alignments_compared_on_class_folds_train_on_each_folds_classes_and_score_zero_shot_on_its_held_ones(
    twelve_classes, tmp_path, monkeypatch, capsys
):
    """`fsl align --folds`: fold f's projections learn from the products and prompts of the other folds'
    classes only (never a held or novel class), its step is chosen on half of the held classes'
    episodes and its score, zero-shot photo accuracy from the held classes' names, read on the other
    half (recomputed here from the saved projections); the best mean is chosen, a resumed fold run
    returns the same accuracies, and the CLI's candidates are every combination of the values given,
    which without --folds are refused."""
    import json

    import fsl.harness.align
    from fsl.cli.main import main
    from fsl.config import EncoderConfig
    from fsl.encoders.aligned import load_alignment
    from fsl.encoders.factory import encoder_from_config
    from fsl.episodes.folds import REPORT, fold_sets
    from fsl.episodes.splits import ClassSplit
    from fsl.episodes.standard import near_duplicate_index
    from fsl.harness.align import AlignConfig, align
    from fsl.harness.select import compare_alignments, split_folds
    from fsl.store.open import open_store

    root, catalog = twelve_classes
    workspace = Workspace(episodes=root / "episodes", features=root / "offline-store", runs=tmp_path / "runs")
    split = ClassSplit.load(catalog, "articleType", 0, root / "episodes")
    labels = catalog.labels().to_numpy()
    recorded, real = [], fsl.harness.align.training_rows
    monkeypatch.setattr(
        fsl.harness.align, "training_rows", lambda column, base: recorded.append(real(column, base)) or recorded[-1]
    )
    common = {"dim": 16, "steps": 40, "batch_size": 32, "val_every": 20}
    configs = [AlignConfig(name=f"tiny--lr-{lr:g}", lr=lr, **common) for lr in (1e-3, 1e-2)]
    summary = compare_alignments(
        configs, catalog, workspace, 2, tmp_path / "ckpt", tmp_path / "folds.json", progress=False
    )

    folds = split_folds(catalog, workspace, "articleType", 0, 2)
    assert len(recorded) == 4  # two candidates x two folds
    for rows, fold in zip(recorded, folds * 2):
        assert set(labels[rows]) == set(fold.train)
        assert not set(labels[rows]) & (set(fold.held) | set(split.classes("novel")))
    store = open_store(catalog, EncoderConfig("offline"), root / "offline-store")
    encoder = encoder_from_config(EncoderConfig("offline"))
    groups = near_duplicate_index(catalog, root / "episodes")
    for row in summary["candidates"]:
        for fold, figures in zip(folds, row["folds"]):
            model, meta = load_alignment(tmp_path / "ckpt" / row["name"] / f"fold{fold.index}" / "best")
            assert meta["fold"] == {"index": fold.index, "held": list(fold.held)} and meta["step"] == figures["step"]
            prompts = store.short_texts(list(fold.held), lambda t: encoder.encode_texts(t, progress=False))
            with torch.no_grad():
                names = model.embed_text(torch.from_numpy(prompts))
                photos = model.embed_image(torch.from_numpy(np.array(store.image, dtype=np.float32)))
            scores = []
            for episode_set in fold_sets(fold, split, store.ids, labels, catalog.fingerprint, groups).values():
                episodes = episode_set.episodes
                query = photos[np.searchsorted(store.ids, episodes.query)]  # [E, Q, D]
                logits = torch.einsum("eqd,end->eqn", query, names[torch.as_tensor(episodes.classes)])
                correct = logits.argmax(-1).numpy() == episodes.query_labels
                scores.append(correct.mean(-1)[REPORT].mean())
            assert figures["score"] == pytest.approx(np.mean(scores))
    means = {row["name"]: row["mean"] for row in summary["candidates"]}
    assert summary["chosen"] == max(means, key=means.get) and summary["power_over_folds"]["folds"] == 2
    assert json.loads((tmp_path / "folds.json").read_text())["chosen"] == summary["chosen"]
    again = align(configs[0], catalog, workspace, tmp_path / "ckpt", progress=False, fold=folds[1])  # resumed
    unstopped = summary["candidates"][0]["folds"][1]
    assert again["best_step"] == unstopped["step"]
    assert np.mean([v[REPORT].mean() for v in again["accuracies"].values()]) == pytest.approx(unstopped["score"])

    flags = ["--data", str(root / "dump"), "--episodes-dir", str(root / "episodes"), "--store-root",
             str(root / "offline-store"), "--out", str(tmp_path / "ckpt"), "--runs", str(tmp_path / "runs"),
             "--results", str(tmp_path / "results"), "--name", "tiny", "--dim", "16", "--steps", "40",
             "--batch-size", "32", "--val-every", "20", "--lr", "1e-3", "1e-2"]  # fmt: skip
    assert main(["align", *flags, "--folds", "2", "--no-final", "--fold-by", "none"]) == 0  # the folds resumed
    printed = capsys.readouterr().out
    assert "2 class folds" in printed and "tiny--lr-0.001" in printed and "tiny--lr-0.01" in printed
    assert json.loads((tmp_path / "results/align-folds/split0.json").read_text())["chosen"] == summary["chosen"]
    assert not (tmp_path / "ckpt" / summary["chosen"] / "best").exists()  # --no-final: no final run
    assert main(["align", *flags, "--folds", "2", "--fold-by", "none"]) == 0
    assert (tmp_path / "ckpt" / summary["chosen"] / "best" / "align.json").exists()
    assert f"{summary['chosen']}: chosen at step" in capsys.readouterr().out
    assert main(["align", *flags]) == 2
    assert "go with --folds K" in capsys.readouterr().err
    assert main(["align", *flags, "--folds", "2", "--no-final"]) == 0  # by default: folds by the label's parent
    assert "each holding whole subCategory groups" in capsys.readouterr().out
    by_parent = json.loads((tmp_path / "results/align-folds/split0-by-subCategory.json").read_text())
    assert all(fold["by"] == "subCategory" for fold in by_parent["folds"])
    assert (tmp_path / "ckpt" / "tiny--lr-0.01" / "fold1-by-subCategory" / "best" / "align.json").exists()
    assert main(["align", *flags[:-1], "--fold-by", "subCategory"]) == 2
    assert "--fold-by goes with --folds" in capsys.readouterr().err

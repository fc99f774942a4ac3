from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsl.errors import FslError
from fsl.methods import create_head
from fsl.methods.fusion import create_fusion
from fsl.methods.maml import MAML
from fsl.methods.protonet import ProtoNet
from fsl.paths import Workspace

IMAGE_DIM, TEXT_DIM = 12, 8


def toy_episodes(n_episodes=8, n_way=5, k_shot=3, q_query=6, noise=0.3, seed=0, text_signal=True):
    """Separable episodes: each class has an image centre and a text centre."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_episodes, n_way, IMAGE_DIM + TEXT_DIM, generator=g)
    if not text_signal:
        centres[..., IMAGE_DIM:] = 0

    def draw(k):
        points = centres.repeat_interleave(k, dim=1)
        return points + noise * torch.randn(points.shape, generator=g)

    support_labels = torch.arange(n_way).repeat_interleave(k_shot).expand(n_episodes, -1)
    query_labels = torch.arange(n_way).repeat_interleave(q_query)
    return draw(k_shot), support_labels, draw(q_query), query_labels


def accuracy(logits, query_labels):
    return (logits.argmax(-1) == query_labels).float().mean().item()


@pytest.mark.parametrize(
    "method,options",
    [
        ("protonet", {}),
        ("protonet", {"projection": "diagonal"}),
        ("protonet", {"projection": "linear", "projection_dim": 6}),
        ("linear_probe", {}),
        ("linear_probe", {"init": "prototypes"}),
        ("maml", {"inner_steps": 5}),
        ("maml", {"hidden": 16}),
        ("maml", {"init": "prototypes", "projection": "diagonal"}),
        ("simpleshot", {}),
        ("simpleshot", {"centering": "none"}),
        ("gda", {}),
        ("bd_cspn", {}),
        ("pt_map", {"normalize": True}),
        ("cosine_prototypes", {}),
    ],
)
@pytest.mark.parametrize("fusion", ["image", "concat"])
def test_each_head_learns_a_separable_toy_task(method, options, fusion):
    torch.manual_seed(0)
    head = create_head(method, create_fusion(fusion, IMAGE_DIM, TEXT_DIM), **options)
    support, labels, query, query_labels = toy_episodes()
    with torch.no_grad():
        logits = head(support, labels, query, 5)
    assert logits.shape == (8, 30, 5)
    if "projection_dim" not in options and "hidden" not in options:  # random layers need meta-training first
        assert accuracy(logits, query_labels) > 0.95


def test_zero_shot_reads_class_names_and_refuses_images_without_a_shared_space():
    support, labels, query, query_labels = toy_episodes(text_signal=True)
    class_text = query.view(8, 5, 6, -1).mean(2)[..., IMAGE_DIM:]  # the class's text centre as its "name"
    head = create_head("zero_shot", create_fusion("text", IMAGE_DIM, TEXT_DIM))
    assert accuracy(head(support, labels, query, 5, class_text), query_labels) > 0.9
    with pytest.raises(FslError, match="needs an encoder whose image and text towers share"):
        create_head("zero_shot", create_fusion("image", IMAGE_DIM, TEXT_DIM))
    create_head("zero_shot", create_fusion("image", 8, 8), shared_space=True)  # CLIP: allowed


# 12-way: 36 support rows in 20 dimensions (a singular Gram matrix); a photo repeated in the support set
# (a near-duplicate) makes it singular at 3-way too
@pytest.mark.parametrize("n_way,repeated", [(3, False), (3, True), (12, False)])
def test_linear_probe_matches_scikit_learn_on_the_same_episodes(n_way, repeated):
    from sklearn.linear_model import LogisticRegression

    support, labels, query, query_labels = toy_episodes(n_episodes=4, n_way=n_way, noise=1.2, seed=3)
    if repeated:
        support[:, 1] = support[:, 0]
    head = create_head("linear_probe", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0), C=0.5, max_iter=50)
    ours = F.softmax(head(support, labels, query, n_way), -1)
    for e in range(4):
        model = LogisticRegression(C=0.5, max_iter=1000, tol=1e-8).fit(support[e].numpy(), labels[e].numpy())
        np.testing.assert_allclose(ours[e].numpy(), model.predict_proba(query[e].numpy()), atol=2e-3)


def test_linear_probe_refits_in_float64_an_episode_float32_cannot_converge(monkeypatch):
    import fsl.methods.linear_probe as linear_probe

    support, labels, _, _ = toy_episodes(n_episodes=3, n_way=3, noise=1.2, seed=5)
    coordinates = linear_probe.span_coordinates(support @ support.transpose(1, 2))
    prior = torch.zeros(3, support.shape[1], 3)
    dtypes = []
    newton = linear_probe.newton
    monkeypatch.setattr(
        linear_probe, "newton", lambda features, *a: dtypes.append(features.dtype) or newton(features, *a)
    )
    loose = linear_probe.fit_logistic(coordinates, prior, labels, 3, 1.0, 50)
    assert dtypes == [torch.float32]  # sklearn's tolerance: float32 gets there
    tight = linear_probe.fit_logistic(coordinates, prior, labels, 3, 1.0, 50, tolerance=1e-10)  # below float32's reach
    assert dtypes[1:] == [torch.float32, torch.float64]
    exact, converged = newton(coordinates.double(), prior.double(), labels, 3, 1.0, 50, 1e-10)
    assert converged.all() and torch.allclose(tight.double(), exact, atol=1e-6)
    assert torch.allclose(loose, tight, atol=1e-2)  # scikit-learn's tolerance: near the tight optimum, not on it


def test_protonet_gram_form_gives_the_same_logits():
    features = F.normalize(torch.randn(40, 16), dim=-1)
    support_rows, query_rows = torch.randperm(40)[:15].view(1, 15), torch.randperm(40)[:10].view(1, 10)
    head = create_head("protonet", create_fusion("image", 16, 0))
    labels = torch.arange(5).repeat_interleave(3).view(1, 15)
    expected = head(features[support_rows], labels, features[query_rows], 5)
    torch.testing.assert_close(
        ProtoNet.logits_from_gram(features @ features.T, support_rows, query_rows, 5), expected, atol=1e-5, rtol=1e-5
    )


def _maml_meta_gradient(first_order: bool, hidden: int):
    torch.manual_seed(0)
    head = MAML(create_fusion("image", 4, 0), hidden=hidden, inner_steps=3, inner_lr=0.4, first_order=first_order)
    with torch.no_grad():
        head.w0.normal_()
        head.b0.fill_(0.1)
    support, labels, query, query_labels = toy_episodes(n_episodes=1, n_way=3, k_shot=2, q_query=2, seed=1)
    support, query = support[..., :4], query[..., :4]
    loss = F.cross_entropy(head(support, labels, query, 3)[0], query_labels)
    grads = torch.autograd.grad(loss, [head.w0, head.b0, *head.body.parameters()])
    return head, support[0], labels[0], query[0], query_labels, grads


class ExpandedLinear(torch.nn.Module):
    """The MAML head as higher / learn2learn see it: a body and an [N, D] classifier whose initial
    rows are copies of (w0, b0); the meta-gradient of w0 is the sum over those rows."""

    def __init__(self, head: MAML, n_way: int):
        super().__init__()
        self.body = copy.deepcopy(head.body)
        self.weight = torch.nn.Parameter(head.w0.detach().expand(n_way, -1).clone())
        self.bias = torch.nn.Parameter(head.b0.detach().expand(n_way).clone())

    def forward(self, x):
        return self.body(x) @ self.weight.T + self.bias


@pytest.mark.parametrize("hidden", [0, 5])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_higher(first_order, hidden):
    import higher

    head, support, labels, query, query_labels, ours = _maml_meta_gradient(first_order, hidden)
    model = ExpandedLinear(head, 3)
    inner = torch.optim.SGD(model.parameters(), lr=0.4)
    with higher.innerloop_ctx(model, inner, copy_initial_weights=False, track_higher_grads=not first_order) as (
        fmodel,
        diffopt,
    ):
        for _ in range(3):
            diffopt.step(F.cross_entropy(fmodel(support), labels))
        loss = F.cross_entropy(fmodel(query), query_labels)
        # first order: the query gradient at the adapted weights (in order weight, bias, body...)
        wrt = fmodel.fast_params if first_order else [model.weight, model.bias, *model.body.parameters()]
        reference = torch.autograd.grad(loss, wrt)
    expected = [reference[0].sum(0), reference[1].sum(), *reference[2:]]
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_maml_meta_gradient_matches_learn2learn():
    l2l = pytest.importorskip("learn2learn")
    head, support, labels, query, query_labels, ours = _maml_meta_gradient(False, 0)
    maml = l2l.algorithms.MAML(ExpandedLinear(head, 3), lr=0.4, first_order=False)
    learner = maml.clone()
    for _ in range(3):
        learner.adapt(F.cross_entropy(learner(support), labels))
    loss = F.cross_entropy(learner(query), query_labels)
    weight, bias = torch.autograd.grad(loss, [maml.module.weight, maml.module.bias])
    torch.testing.assert_close(ours[0], weight.sum(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[1], bias.sum(), atol=1e-5, rtol=1e-4)


def test_bad_method_name_or_options_are_clear_errors():
    fusion = create_fusion("image", 4, 0)
    with pytest.raises(FslError, match="unknown head 'knn'"):
        create_head("knn", fusion)
    with pytest.raises(FslError, match=r"head protonet has no option 'steps'; its options are \['projection'"):
        create_head("protonet", fusion, steps=3)
    with pytest.raises(
        FslError, match="head linear_probe init must be one of zeros, prototypes, class_text, got 'ones'"
    ):
        create_head("linear_probe", fusion, init="ones")


def test_simpleshot_l2n_predicts_as_easyfsl_at_one_shot_on_unit_features():
    """easyfsl: cosine to the mean of raw support features; the paper: Euclidean to the mean of
    normalised ones. With one shot and unit-norm features both are the same nearest neighbour."""
    from easyfsl.methods import SimpleShot as EasySimpleShot

    support, labels, query, _ = toy_episodes(n_episodes=6, k_shot=1, q_query=10, noise=1.0, seed=5)
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    ours = create_head("simpleshot", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0), centering="none")
    theirs = EasySimpleShot().eval()
    with torch.no_grad():
        predicted = ours(support, labels, query, 5).argmax(-1)
        for e in range(6):
            theirs.process_support_set(support[e], labels[e])
            assert torch.equal(theirs(query[e]).argmax(-1), predicted[e])


def test_simpleshot_centres_on_the_mean_of_base_class_products_only(twelve_classes):
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.frozen import EpisodeSet
    from fsl.files import read_csv
    from fsl.inference.heads import experiment_head
    from fsl.paths import episodes_dir_for

    root, catalog = twelve_classes
    config = ExperimentConfig(
        name="ss",
        method="simpleshot",
        fusion="concat",
        episodes=("novel-5w5s",),
        encoder=EncoderConfig("clip", "FSL-Tiny", "none"),
    )
    store, features, head = experiment_head(
        config, catalog, Workspace(root / "episodes", root / "store", root / "ckpt")
    )
    seed = EpisodeSet.load(episodes_dir_for(catalog, root / "episodes") / "articleType-novel-5w5s.npz").meta[
        "split_seed"
    ]
    split = read_csv(episodes_dir_for(catalog, root / "episodes") / f"articleType-seed{seed}-split.csv")
    base = catalog.labels().isin(split.loc[split["split"] == "base", "class"]).to_numpy()
    assert 0 < base.sum() < len(catalog)
    every = np.asarray(features[np.arange(len(catalog))])
    np.testing.assert_allclose(head.base_mean.numpy(), every[base].mean(0), atol=1e-5)
    assert not np.allclose(head.base_mean.numpy(), every.mean(0), atol=1e-3)  # val and novel products left out


@pytest.mark.real_data  # random tiny-CLIP features carry signal on real photos, none on drawn shapes
def test_simpleshot_centred_on_base_classes_beats_chance_on_real_photos(twelve_classes):
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.harness.experiment import run_experiment

    root, catalog = twelve_classes
    config = ExperimentConfig(name="ss", method="simpleshot", fusion="concat", episodes=("novel-5w5s",),
                              encoder=EncoderConfig("clip", "FSL-Tiny", "none"))  # fmt: skip
    (result,) = run_experiment(config, catalog, Workspace(root / "episodes", root / "store"), progress=False)
    assert result.accuracy.mean() > 0.2  # chance is 0.2 at 5-way


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 0.9])
def test_gda_matches_scikit_learn_lda_with_the_same_shrinkage(shrinkage):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    support, labels, query, _ = toy_episodes(n_episodes=3, k_shot=4, q_query=5, noise=1.0, seed=7)
    head = create_head("gda", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0), shrinkage=shrinkage)
    with torch.no_grad():
        ours = head(support, labels, query, 5)
    for e in range(3):
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(support[e].numpy(), labels[e].numpy())
        theirs = lda.decision_function(query[e].numpy())  # ours, plus log(1/5) for every class
        np.testing.assert_allclose(ours[e].numpy() + np.log(1 / 5), theirs, rtol=1e-4, atol=1e-3)


def test_gda_at_one_shot_predicts_as_protonet():
    support, labels, query, _ = toy_episodes(n_episodes=4, k_shot=1, q_query=8, noise=1.0, seed=2)
    fusion = create_fusion("image", IMAGE_DIM + TEXT_DIM, 0)
    with torch.no_grad():
        gda = create_head("gda", fusion)(support, labels, query, 5).argmax(-1)
        protonet = create_head("protonet", fusion)(support, labels, query, 5).argmax(-1)
    assert torch.equal(gda, protonet)


def test_bd_cspn_is_transductive_and_predicts_as_easyfsl_at_temperature_one():
    from easyfsl.methods import BDCSPN

    support, labels, query, _ = toy_episodes(n_episodes=5, k_shot=3, q_query=6, noise=1.2, seed=11)
    ours = create_head("bd_cspn", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0), temperature=1.0)
    assert ours.transductive and not create_head("protonet", create_fusion("image", 4, 0)).transductive
    theirs = BDCSPN().eval()
    with torch.no_grad():
        predicted = ours(support, labels, query, 5)
        for e in range(5):
            theirs.process_support_set(support[e], labels[e])
            torch.testing.assert_close(predicted[e], theirs(query[e]), atol=1e-5, rtol=1e-5)


def test_pt_map_predicts_as_easyfsl_on_non_negative_features():
    """Same soft assignments as easyfsl's PTMAP (which runs Sinkhorn in the linear domain: fine at
    these small distances); the transductive flag set."""
    from easyfsl.methods import PTMAP

    support, labels, query, _ = toy_episodes(n_episodes=4, k_shot=3, q_query=6, noise=0.6, seed=4)
    support, query = support.abs() / 4, query.abs() / 4  # non-negative and close, as after an activation
    ours = create_head("pt_map", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0))
    assert ours.transductive
    theirs = PTMAP().eval()
    with torch.no_grad():
        predicted = ours(support, labels, query, 5).exp()
        for e in range(4):
            theirs.process_support_set(support[e], labels[e])
            reference = theirs(query[e])  # float32 and 1e-10 guards in easyfsl: equal to 1e-3
            assert torch.equal(predicted[e].argmax(-1), reference.argmax(-1))
            torch.testing.assert_close(predicted[e], reference, atol=1e-3, rtol=1e-2)


def test_cosine_prototypes_weights_the_cosines_to_each_modality_s_normalised_mean():
    """Cosine prototypes (the default own-categories head, and the demo's text-only scorer) is, per
    query and class, w·cos(image, mean image) + (1-w)·cos(text, mean text), written out in numpy."""
    support, labels, query, _ = toy_episodes(n_episodes=1, n_way=3, k_shot=4, q_query=2)
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    for fusion, weight in (("concat", 0.7), ("concat", 0.0), ("image", 1.0)):
        options = {"image_weight": weight} if fusion == "concat" else {}
        head = create_head("cosine_prototypes", create_fusion(fusion, IMAGE_DIM, TEXT_DIM, **options))
        logits = head(support, labels, query, 3)[0].numpy()
        expected = np.zeros_like(logits)
        for part, share in ((slice(0, IMAGE_DIM), weight), (slice(IMAGE_DIM, None), 1 - weight)):
            means = np.stack([support[0][labels[0] == c][:, part].mean(0).numpy() for c in range(3)])
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            expected += share * (query[0][:, part].numpy() @ means.T)
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    with pytest.raises(FslError, match="use fusion image or concat"):
        create_head("cosine_prototypes", create_fusion("gate", IMAGE_DIM, TEXT_DIM))


def test_the_named_support_heads_are_the_experiment_files():
    """What `fsl predict --support`, the demo and the API look their calibration up by is what
    `fsl calibrate experiments/...` fitted."""
    from pathlib import Path

    from fsl.config import load_config
    from fsl.inference.calibration import config_key
    from fsl.inference.heads import NAMED_HEADS

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    for config in NAMED_HEADS.values():
        assert config_key(config, "enc") == config_key(load_config(experiments / f"{config.name}.yaml"), "enc")


def test_tip_adapter_equals_a_plain_per_episode_loop_and_learns_a_toy_task():
    support, labels, query, query_labels = toy_episodes(n_episodes=4, n_way=5, k_shot=3, q_query=4, seed=3)
    class_text = query.view(4, 5, 4, -1).mean(2)[..., IMAGE_DIM:]  # each class's text centre as its "name"
    head = create_head(
        "tip_adapter", create_fusion("concat", IMAGE_DIM, TEXT_DIM, image_weight=0.7), alpha=2.0, beta=5.5
    )
    logits = head(support, labels, query, 5, class_text)
    for e in range(4):  # the paper's formula, one episode at a time, in numpy

        def fused(x):
            x = np.concatenate([np.sqrt(0.7) * x[:, :IMAGE_DIM], np.sqrt(0.3) * x[:, IMAGE_DIM:]], 1)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        keys, q = fused(support[e].numpy()), fused(query[e].numpy())
        names = np.concatenate([np.zeros((5, IMAGE_DIM)), np.sqrt(0.3) * class_text[e].numpy()], 1)
        names /= np.linalg.norm(names, axis=1, keepdims=True)
        expected = 100 * q @ names.T + 2.0 * np.exp(-5.5 * (1 - q @ keys.T)) @ np.eye(5)[labels[e].numpy()]
        np.testing.assert_allclose(logits[e].numpy(), expected, rtol=1e-4, atol=1e-3)
    strong = create_head(
        "tip_adapter", create_fusion("concat", IMAGE_DIM, TEXT_DIM, image_weight=0.7), alpha=1000.0, beta=5.5
    )
    assert accuracy(strong(support, labels, query, 5, class_text), query_labels) > 0.95  # the cache decides
    zero = create_head("tip_adapter", create_fusion("concat", IMAGE_DIM, TEXT_DIM, image_weight=0.7), alpha=0.0)
    zero_shot = create_head("zero_shot", create_fusion("concat", IMAGE_DIM, TEXT_DIM, image_weight=0.7))
    assert torch.equal(
        zero(support, labels, query, 5, class_text).argmax(-1),
        zero_shot(support, labels, query, 5, class_text).argmax(-1),
    )  # alpha 0: zero-shot
    with pytest.raises(FslError, match="alpha must be a finite number"):
        create_head("tip_adapter", create_fusion("image", IMAGE_DIM, TEXT_DIM), alpha=-1.0)


@pytest.mark.parametrize(
    "method,options",
    [
        ("tim", {}),
        ("laplacian_shot", {}),
        ("lp_plus_plus", {}),
        ("tip_adapter", {"finetune": True, "alpha": 10.0}),
    ],
)
def test_each_new_head_learns_a_separable_toy_task(method, options):
    support, labels, query, query_labels = toy_episodes(noise=0.6, seed=5)
    class_text = query.view(8, 5, 6, -1).mean(2)[..., IMAGE_DIM:]
    head = create_head(method, create_fusion("concat", IMAGE_DIM, TEXT_DIM), **options)
    with torch.no_grad():
        logits = head(support, labels, query, 5, class_text)
    assert logits.shape == (8, 30, 5) and torch.isfinite(logits).all()
    assert accuracy(logits, query_labels) > 0.95


def test_tim_predicts_as_easyfsl():
    """Same fine-tuned prototypes as easyfsl's TIM, one episode at a time; the batched optimiser
    must not let episodes share a gradient (a steep learning rate makes any leak visible)."""
    from easyfsl.methods import TIM as EasyTIM

    support, labels, query, _ = toy_episodes(n_episodes=4, k_shot=2, q_query=5, noise=1.5, seed=8)
    options = {"steps": 30, "lr": 1e-2, "temperature": 10.0}
    ours = create_head("tim", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0), **options)
    assert ours.transductive
    predicted = ours(support, labels, query, 5)
    theirs = EasyTIM(torch.nn.Identity(), fine_tuning_steps=30, fine_tuning_lr=1e-2, temperature=10.0)
    for e in range(4):
        theirs.process_support_set(support[e], labels[e])
        reference = theirs(query[e]) * 10.0  # easyfsl returns the cosine, we return temperature · cosine
        torch.testing.assert_close(predicted[e], reference, atol=1e-4, rtol=1e-4)
    alone = ours(support[:1], labels[:1], query[:1], 5)
    torch.testing.assert_close(alone[0], predicted[0], atol=1e-5, rtol=1e-5)  # batch-mates change nothing


def test_laplacian_shot_predicts_as_easyfsl():
    from easyfsl.methods import LaplacianShot as EasyLaplacianShot

    support, labels, query, _ = toy_episodes(n_episodes=5, k_shot=3, q_query=6, noise=1.4, seed=9)
    ours = create_head("laplacian_shot", create_fusion("image", IMAGE_DIM + TEXT_DIM, 0), knn=3)
    assert ours.transductive
    with torch.no_grad():
        predicted = ours(support, labels, query, 5).exp()
    theirs = EasyLaplacianShot(knn=4).eval()  # its k includes the point itself (module docstring)
    with torch.no_grad():
        for e in range(5):
            theirs.process_support_set(support[e], labels[e])
            reference = theirs(query[e])
            assert torch.equal(predicted[e].argmax(-1), reference.argmax(-1))
            torch.testing.assert_close(predicted[e], reference, atol=1e-3, rtol=1e-3)


def test_lp_plus_plus_fits_a_probe_that_uses_the_class_names():
    """With names that carry the class, LP++'s text term helps at one shot; α = 0 steps leave a plain
    probe. Offline image-only features have no text to blend: refused."""
    support, labels, query, query_labels = toy_episodes(n_episodes=8, k_shot=1, q_query=6, noise=1.2, seed=12)
    class_text = query.view(8, 5, 6, -1).mean(2)[..., IMAGE_DIM:]
    fusion = create_fusion("concat", IMAGE_DIM, TEXT_DIM)
    with_names = create_head("lp_plus_plus", fusion)(support, labels, query, 5, class_text)
    wrong_names = create_head("lp_plus_plus", fusion)(support, labels, query, 5, class_text.roll(1, dims=1))
    assert accuracy(with_names, query_labels) > accuracy(wrong_names, query_labels) + 0.1
    support_logits = create_head("lp_plus_plus", fusion)(support, labels, support, 5, class_text)
    assert accuracy(support_logits, labels[0]) == 1.0  # the support set is fitted
    with pytest.raises(FslError, match="share one space"):
        create_head("lp_plus_plus", create_fusion("image", IMAGE_DIM, TEXT_DIM))
    with pytest.raises(FslError, match="steps must be a whole number >= 1"):
        create_head("lp_plus_plus", fusion, steps=0)


def test_tip_adapter_f_tunes_each_episode_s_keys_on_its_own_support():
    support, labels, query, query_labels = toy_episodes(n_episodes=4, k_shot=3, q_query=4, noise=1.0, seed=6)
    class_text = torch.zeros(4, 5, TEXT_DIM)  # uninformative names: only the cache can decide
    fusion = create_fusion("concat", IMAGE_DIM, TEXT_DIM)
    tuned = create_head("tip_adapter", fusion, alpha=1.0, beta=5.5, finetune=True, steps=20, lr=1e-2)
    plain = create_head("tip_adapter", fusion, alpha=1.0, beta=5.5)
    embedded = [tuned.embed(x) for x in (support, query)]
    keys = tuned.tuned_keys(embedded[0], labels, F.one_hot(labels, 5).float(), torch.zeros(4, 5, IMAGE_DIM + TEXT_DIM))
    assert not torch.allclose(keys, embedded[0])  # the keys moved
    alone = tuned.tuned_keys(
        embedded[0][:1], labels[:1], F.one_hot(labels[:1], 5).float(), torch.zeros(1, 5, IMAGE_DIM + TEXT_DIM)
    )
    torch.testing.assert_close(alone[0], keys[0], atol=1e-6, rtol=1e-6)  # batch-mates change nothing

    def support_loss(head):
        logits = head(support, labels, support, 5, class_text)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()

    assert support_loss(tuned) < support_loss(plain)  # fine-tuning fits the support set better
    with pytest.raises(FslError, match="finetune must be true or false"):
        create_head("tip_adapter", fusion, finetune="yes")


def test_gda_base_prior_equals_the_dense_formula_and_zero_shot_weight_adds_name_logits():
    support, labels, query, _ = toy_episodes(n_episodes=3, k_shot=4, q_query=5, noise=0.8, seed=13)
    fusion = create_fusion("image", IMAGE_DIM + TEXT_DIM, 0)
    head = create_head("gda", fusion, shrinkage=0.3, prior="base")
    assert head.needs_base_classes and not head.needs_class_text
    g = torch.Generator().manual_seed(1)
    base = torch.randn(200, IMAGE_DIM + TEXT_DIM, generator=g) * torch.linspace(0.2, 2, IMAGE_DIM + TEXT_DIM)
    base_labels = torch.arange(200) % 4
    head.fit_base(base, base_labels)
    logits = head(support, labels, query, 5).double()
    b, s, q = base.double(), support.double(), query.double()
    class_means = torch.stack([b[base_labels == c].mean(0) for c in range(4)])
    pooled = (b - class_means[base_labels]).T @ (b - class_means[base_labels]) / 200
    pooled += 1e-4 * pooled.trace() / len(pooled) * torch.eye(len(pooled), dtype=torch.float64)
    for e in range(3):
        means = torch.stack([s[e][labels[e] == c].mean(0) for c in range(5)])
        z = s[e] - means[labels[e]]
        within = z.T @ z / len(z)
        sigma = 0.7 * within + 0.3 * within.trace() / (pooled.trace() - 1e-4 * pooled.trace()) * pooled
        weights = torch.linalg.solve(sigma, means.T).T
        expected = q[e] @ weights.T - 0.5 * (weights * means).sum(-1)
        torch.testing.assert_close(logits[e], expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="needs fit_base"):
        create_head("gda", fusion, prior="base")(support, labels, query, 5)
    concat = create_fusion("concat", IMAGE_DIM, TEXT_DIM)
    names = torch.randn(3, 5, TEXT_DIM, generator=g)
    plain = create_head("gda", concat)(support, labels, query, 5)
    ensemble = create_head("gda", concat, zero_shot_weight=0.5)
    assert ensemble.needs_class_text
    zero_shot = create_head("zero_shot", concat, temperature=0.01)(support, labels, query, 5, names)
    torch.testing.assert_close(
        ensemble(support, labels, query, 5, names), plain + 0.5 * zero_shot, rtol=1e-4, atol=1e-3
    )


def test_lp_plus_plus_kernel_form_equals_the_authors_primal_loop():
    """The authors' loop, per episode, in the primal: a linear layer trained by SGD with momentum
    0.9 at step 4M / λ_max(XᵀX), α stepped every 10 steps (with its own current gradient)."""
    support, labels, query, _ = toy_episodes(n_episodes=3, k_shot=2, q_query=4, noise=1.0, seed=14)
    class_text = torch.randn(3, 5, TEXT_DIM, generator=torch.Generator().manual_seed(2))
    fusion = create_fusion("concat", IMAGE_DIM, TEXT_DIM)
    head = create_head("lp_plus_plus", fusion, steps=40)
    logits = head(support, labels, query, 5, class_text)
    for e in range(3):
        x, q = head.embed(support[e]).double(), head.embed(query[e]).double()
        t = F.normalize(head.class_features(class_text[e : e + 1], False)[0], dim=-1).double()
        scores, m = x @ t.T, len(x)
        layer = torch.nn.Linear(x.shape[1], 5).double()
        with torch.no_grad():
            layer.weight.copy_(F.one_hot(labels[e], 5).double().T @ x)
            layer.bias.zero_()
        alpha = torch.full((5,), 250 * scores.mean().item(), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD(
            layer.parameters(), lr=4 * m / torch.linalg.eigvalsh(x.T @ x)[-1].item(), momentum=0.9
        )
        for step in range(40):
            loss = F.cross_entropy(layer(x) + alpha * scores, labels[e])
            optimizer.zero_grad()
            alpha.grad = None
            loss.backward()
            optimizer.step()
            if (step + 1) % 10 == 0:
                with torch.no_grad():
                    alpha -= m / (4 * scores.pow(2).sum(0).max()) * alpha.grad
        expected = layer(q) + alpha * (q @ t.T)
        torch.testing.assert_close(logits[e].double(), expected.detach(), rtol=1e-4, atol=1e-4)


def test_pt_map_stabilised_sinkhorn_equals_the_log_domain_loop_where_exp_underflows():
    """Distances large enough that exp(-λ d²) underflows float64 (one class far from every query): the
    block-scaled Sinkhorn gives the plain log-domain iterates, stopping rule included."""
    g = torch.Generator().manual_seed(3)
    query = torch.rand(3, 20, 16, generator=g, dtype=torch.float64) * 3
    prototypes = torch.rand(3, 4, 16, generator=g, dtype=torch.float64) * 3
    prototypes[:, 3] += 6.0  # exp(-30 · d²) of this class is 0 in float64 for every query
    head = create_head("pt_map", create_fusion("image", 16, 0), regularization=30.0)
    assert torch.exp(-30.0 * torch.cdist(query, prototypes[:, 3:]) ** 2).max() == 0
    ours = head.assignments(query, prototypes)
    log_plan = -30.0 * torch.cdist(query, prototypes) ** 2
    log_plan = log_plan - log_plan.logsumexp((1, 2), keepdim=True)
    for _ in range(1000):
        rows = log_plan.logsumexp(2, keepdim=True)
        log_plan = log_plan - rows
        log_plan = log_plan + np.log(20 / 4) - log_plan.logsumexp(1, keepdim=True)
        if (rows.exp() - 1).abs().max() < 1e-6:
            break
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.exp(), log_plan.exp(), atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(ours.exp().sum(1), torch.full((3, 4), 5.0, dtype=torch.float64))


def test_proto_maml_starts_at_protonet_and_meta_learns_its_body_through_the_inner_loop():
    support, labels, query, query_labels = toy_episodes(n_episodes=4)
    fusion = create_fusion("concat", IMAGE_DIM, TEXT_DIM)
    protonet = ProtoNet(fusion)
    still = MAML(fusion, init="prototypes", inner_steps=0)
    with torch.no_grad():  # no inner step: ProtoNet's logits up to each query's |q|²
        embedded = fusion(query)
        torch.testing.assert_close(
            still(support, labels, query, 5) - protonet(support, labels, query, 5),
            embedded.pow(2).sum(-1, keepdim=True).expand(-1, -1, 5),
        )
    for first_order in (False, True):
        head = MAML(
            fusion, init="prototypes", projection="linear", inner_steps=3, inner_lr=0.5, first_order=first_order
        )
        loss = F.cross_entropy(head(support, labels, query, 5).flatten(0, 1), query_labels.repeat(4))
        loss.backward()  # the body shapes both the starting classifier and the features it adapts on
        assert head.projection.weight.grad.abs().sum() > 0
    adapted = MAML(fusion, init="prototypes", inner_steps=5)
    with torch.no_grad():  # episodes stay independent in a batch
        together = adapted(support, labels, query, 5)
        alone = adapted(support[1:2], labels[1:2], query[1:2], 5)
    torch.testing.assert_close(together[1:2], alone)
    with pytest.raises(FslError, match="is Proto-MAML's body: set init: prototypes"):
        MAML(fusion, projection="linear")
    with pytest.raises(FslError, match="head maml init must be one of shared, prototypes"):
        create_head("maml", fusion, init="zeros")


def test_maml_learned_scale_changes_the_loss_never_the_prediction():
    support, labels, query, query_labels = toy_episodes(n_episodes=3)
    fusion = create_fusion("gate", IMAGE_DIM, TEXT_DIM, image_weight=0.7)
    plain, scaled = MAML(fusion, inner_steps=3), MAML(fusion, inner_steps=3, learn_scale=True)
    with torch.no_grad():
        scaled.log_scale.fill_(1.5)
        a, b = plain(support, labels, query, 5), scaled(support, labels, query, 5)
    torch.testing.assert_close(b, a * np.exp(1.5))
    loss = F.cross_entropy(scaled(support, labels, query, 5).flatten(0, 1), query_labels.repeat(3))
    loss.backward()
    assert scaled.log_scale.grad.abs() > 0


# The registry drives these: a new head is checked by adding its line to EXAMPLE_OPTIONS ----------


def test_every_registered_head_has_example_options():
    from fsl.methods import EXAMPLE_OPTIONS, HEADS

    assert set(EXAMPLE_OPTIONS) == set(HEADS)
    assert all(name == head.name for name, head in HEADS.items())


@pytest.mark.parametrize("name", sorted(__import__("fsl.methods", fromlist=["HEADS"]).HEADS))
def test_every_registered_head_gives_finite_logits_of_the_contract_shape(name):
    from fsl.methods import EXAMPLE_OPTIONS, HEADS

    torch.manual_seed(0)
    fusion = "text" if name == "zero_shot" else "concat"
    head = create_head(name, create_fusion(fusion, IMAGE_DIM, TEXT_DIM), **EXAMPLE_OPTIONS[name])
    support, labels, query, _ = toy_episodes(n_episodes=3, n_way=4, k_shot=2, q_query=5)
    class_text = torch.randn(3, 4, TEXT_DIM)
    if head.needs_base_classes:
        head.fit_base(torch.randn(40, IMAGE_DIM + TEXT_DIM), torch.arange(40) % 4)
    logits = head(support, labels, query, 4, class_text if head.needs_class_text else None)
    assert logits.shape == (3, 20, 4) and torch.isfinite(logits).all()
    assert isinstance(HEADS[name].transductive, bool)


@pytest.mark.parametrize(
    "name", sorted(n for n, h in __import__("fsl.methods", fromlist=["HEADS"]).HEADS.items() if not h.uses_class_names)
)
def test_an_image_only_head_embeds_and_answers_alike_with_or_without_a_text_part(name):
    """Under image fusion a head reads the image part alone: built on a store's [image | text] features
    (how `fsl calibrate` fits it) or on a support folder's [image] features (how your own categories are
    answered), it embeds (what the "none of these" scores read) and answers the same. Cosine prototypes
    once embedded the raw [image | text], so its shipped threshold was fitted on features no photo of a
    support folder has. (Heads that read class names need the text tower, and no support folder.)"""
    from fsl.methods import EXAMPLE_OPTIONS

    support, labels, query, _ = toy_episodes(n_episodes=2, n_way=4, k_shot=3, q_query=5)
    base, base_labels = torch.randn(40, IMAGE_DIM + TEXT_DIM), torch.arange(40) % 4
    outputs = []
    for text_dim in (TEXT_DIM, 0):
        width = IMAGE_DIM + text_dim
        torch.manual_seed(0)
        head = create_head(name, create_fusion("image", IMAGE_DIM, text_dim), **EXAMPLE_OPTIONS[name])
        if head.needs_base_classes:
            head.fit_base(base[:, :width], base_labels)
        class_text = torch.randn(2, 4, TEXT_DIM, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        logits = head(
            support[..., :width], labels, query[..., :width], 4, class_text if head.needs_class_text else None
        )
        outputs.append((head.embed(query[..., :width]), logits))
    (embedded, logits), (embedded_alone, logits_alone) = outputs
    torch.testing.assert_close(embedded, embedded_alone)
    torch.testing.assert_close(logits, logits_alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(__import__("fsl.methods", fromlist=["HEADS"]).HEADS))
def test_every_head_cites_its_paper_and_documents_each_option(name):
    import inspect
    import re

    from fsl.methods import HEADS

    head = HEADS[name]
    doc = head.__doc__ or ""
    assert re.search(r"\b(19|20)\d\d\b", doc.split("Options")[0]), f"{name}: no paper (author, year) in its docstring"
    options = [p for p in inspect.signature(head.__init__).parameters if p not in ("self", "fusion", "shared_space")]
    undocumented = [option for option in options if f"`{option}`" not in doc]
    assert not undocumented, f"{name}: options missing from its class docstring: {undocumented}"
    takes_shared_space = "shared_space" in inspect.signature(head.__init__).parameters
    assert head.uses_class_names == takes_shared_space, f"{name}: uses_class_names must match its shared_space option"


def test_a_head_without_classify_cannot_be_built():
    from fsl.methods.base import FewShotHead

    class Unfinished(FewShotHead):
        name = "unfinished"

    with pytest.raises(TypeError, match="abstract"):
        Unfinished(create_fusion("image", IMAGE_DIM, TEXT_DIM))


@pytest.mark.parametrize(
    "head,options,message",
    [
        ("linear_probe", {"C": -1}, r"C must be a finite number in \[1e-06, 1e\+06\], got -1"),
        ("linear_probe", {"C": 0}, "C must be a finite number in"),
        ("linear_probe", {"C": 1e-300}, "C must be a finite number in"),
        ("linear_probe", {"C": "abc"}, "C must be a finite number in"),
        ("linear_probe", {"C": "1e400"}, "C must be a finite number in"),  # YAML 1.1 reads it as text; inf
        ("linear_probe", {"C": True}, "C must be a finite number in"),  # YAML's true is no number
        ("linear_probe", {"max_iter": 2.5}, "max_iter must be a whole number in"),
        ("tim", {"lr": float("nan")}, "lr must be a finite number > 0"),
        ("gda", {"prior": "other"}, "prior must be one of identity, base"),
    ],
)
def test_every_option_is_typed_and_ranged_before_a_head_is_built(head, options, message):
    """Values that gave chance (C: -1), a traceback (C: 0, 1e-300, abc, 1e400) or nonsense are refused,
    naming the head and the option, by the declarations every head makes once."""
    with pytest.raises(FslError, match=f"head {head} {message}"):
        create_head(head, create_fusion("concat", IMAGE_DIM, TEXT_DIM), **options)


def test_fusion_options_are_typed_and_ranged_and_numeric_text_is_read_as_a_number():
    with pytest.raises(FslError, match=r"fusion concat image_weight must be a finite number in \[0, 1\], got nan"):
        create_fusion("concat", IMAGE_DIM, TEXT_DIM, image_weight=float("nan"))
    with pytest.raises(FslError, match="fusion concat has no option 'weight'"):
        create_fusion("concat", IMAGE_DIM, TEXT_DIM, weight=0.5)
    assert create_fusion("concat", IMAGE_DIM, TEXT_DIM, image_weight="7e-1").image_weight == 0.7
    assert create_head("linear_probe", create_fusion("image", 4, 4), C="3e-1").C == 0.3


def test_the_linear_probe_centres_on_the_support_or_the_base_classes():
    support, labels, query, _ = toy_episodes(n_episodes=3, n_way=4, k_shot=3, q_query=2, seed=5)
    fusion = create_fusion("image", IMAGE_DIM, TEXT_DIM)
    centred = create_head("linear_probe", fusion, centering="support", init="prototypes")
    plain = create_head("linear_probe", fusion, init="prototypes")
    image_support, image_query = fusion(support), fusion(query)
    mean = image_support.mean(1, keepdim=True)
    by_hand = plain.classify(
        F.normalize(image_support - mean, dim=-1), labels, F.normalize(image_query - mean, dim=-1), 4
    )
    torch.testing.assert_close(centred(support, labels, query, 4), by_hand)
    assert not torch.allclose(centred(support, labels, query, 4), plain(support, labels, query, 4))

    base = create_head("linear_probe", fusion, centering="base")
    assert base.needs_base_classes and not centred.needs_base_classes
    shift = torch.randn(IMAGE_DIM + TEXT_DIM)
    base.fit_base(shift.expand(10, -1) + 0.01 * torch.randn(10, IMAGE_DIM + TEXT_DIM), torch.zeros(10).long())
    torch.testing.assert_close(base.base_mean, shift, atol=0.01, rtol=0)
    torch.testing.assert_close(base.embed(support), F.normalize(fusion(support - base.base_mean), dim=-1))

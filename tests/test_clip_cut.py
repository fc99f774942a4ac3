"""The CLIP path of `fsl adapt`: a CLIP model's towers cut in two, their tokens cached once, low-rank
adapters on the attention projections trained from them and merged when saved. Tested with the tiny
random-weight CLIP (no pretrained CLIP weights can be had here): what is checked is that every piece
computes what the whole tower computes, not what accuracy it reaches."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fsl.harness.adapt
from fsl.config import AdaptConfig, EncoderConfig
from fsl.encoders.adapted import WEIGHTS_FILE, AdaptedEncoder, load_adaptation
from fsl.encoders.clip_cut import ClipImageTop, ClipTextTop, clip_image_bottom, clip_text_bottom
from fsl.errors import FslError
from fsl.harness.adapt import adapt, merged_top, trainable_top
from fsl.paths import Workspace
from fsl.store.activations import ClipCut, cached_tower
from fsl.store.features import TextVariant
from fsl.store.open import open_store

TINY_CLIP = EncoderConfig("clip", "FSL-Tiny", "none")
RECIPE = AdaptConfig(
    name="clip-lora",
    encoder=TINY_CLIP,
    towers="both",
    mode="lora",
    rank=2,
    objective="episodic",
    flip=False,
    steps=4,
    val_every=2,
    lr=1e-2,
    n_way=3,
    k_shot=2,
    q_query=2,
    val_episodes=("val-2w5s",),
)
MASKED = TextVariant(mask_column="articleType")


@pytest.fixture(scope="module")
def slice_(twelve_classes, tmp_path_factory):
    """The twelve-class slice, its episodes and a copy of its tiny-CLIP store, where the cached tokens
    and the adapted stores go (the shared fixture's store holds its one store only)."""
    root, catalog = twelve_classes
    stores = shutil.copytree(root / "store", tmp_path_factory.mktemp("clip-cut") / "store")
    return root / "episodes", catalog, stores


def run(slice_, tmp_path, config: AdaptConfig = RECIPE) -> dict:
    episodes, catalog, stores = slice_
    workspace = Workspace(episodes=episodes, features=stores, runs=tmp_path / "runs")
    return adapt(config, catalog, workspace, tmp_path / "adapt", progress=False)


def seen_at(block: torch.nn.Module, forward) -> torch.Tensor:
    """The input a block receives while `forward` runs the whole tower."""
    seen = []
    hook = block.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    try:
        with torch.no_grad():
            forward()
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("cut", [1, 2])
def test_cached_image_tokens_equal_the_towers_own_intermediate_output(slice_, tiny_clip, cut):
    _, catalog, stores = slice_
    tokens = cached_tower(catalog, ClipCut(tiny_clip, "image", cut), stores, progress=False)
    model = tiny_clip.model
    pixels = next(iter(tiny_clip.image_batches(catalog.image_paths[:6], 6, 0)))
    expected = seen_at(model.visual.transformer.resblocks[-cut], lambda: model.encode_image(pixels))
    assert tokens.shape == (len(catalog), *expected.shape[1:]) and tokens.dtype == np.float16
    np.testing.assert_allclose(tokens[:6].astype(np.float32), expected.numpy(), atol=2e-2, rtol=1e-2)
    top = ClipImageTop(model, cut)
    with torch.no_grad():
        through_top = top(torch.from_numpy(tokens[:6].astype(np.float32)))
        whole = model.encode_image(pixels)
    assert torch.nn.functional.cosine_similarity(through_top, whole).min() > 0.999


@pytest.mark.parametrize("cut", [1, 2])
def test_cached_text_tokens_equal_the_towers_own_output_up_to_each_texts_end(slice_, tiny_clip, cut):
    _, catalog, stores = slice_
    cached = cached_tower(catalog, ClipCut(tiny_clip, "text", cut, MASKED), stores, progress=False)
    model = tiny_clip.model
    ids = tiny_clip.tokenizer(catalog.texts(MASKED.template, MASKED.mask_column)[:6])
    ends = ids.argmax(-1)
    length = cached.shape[1]
    assert length == int(tiny_clip.tokenizer(catalog.texts(MASKED.template, "articleType")).argmax(-1).max()) + 1
    expected = seen_at(model.transformer.resblocks[-cut], lambda: model.encode_text(ids))
    for row in range(6):  # up to its end the tower's own tokens; after it, zeros (they never reach the end)
        end = int(ends[row])
        np.testing.assert_allclose(cached[row, : end + 1].astype(np.float32), expected[row, : end + 1], atol=2e-2)
        assert not cached[row, end + 1 :].any()
    with torch.no_grad():
        through_top = ClipTextTop(model, cut)(torch.from_numpy(cached[:6].astype(np.float32)))
    assert torch.nn.functional.cosine_similarity(through_top, model.encode_text(ids)).min() > 0.999
    # the bottom cut off at `length` computes what the whole context computes (the causal mask)
    np.testing.assert_allclose(
        clip_text_bottom(model, ids, cut, length).numpy(), clip_text_bottom(model, ids, cut)[:, :length].numpy(),
        atol=1e-5,
    )  # fmt: skip


def test_merged_adapters_give_the_features_of_the_unmerged_ones(tiny_clip):
    model = trainable_top(tiny_clip, RECIPE)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: give the adapters something to merge
            parameter.data.normal_(0, 0.5)
    pixels, ids = torch.randn(3, 3, 64, 64), tiny_clip.tokenizer(["red shirt", "blue jeans for men", "watch"])
    tokens = {
        "image": clip_image_bottom(tiny_clip.model, pixels, 1),
        "text": clip_text_bottom(tiny_clip.model, ids, 1),
    }
    with torch.no_grad():
        unmerged = model(tokens)
        merged = merged_top(model)(tokens)
        frozen = ClipImageTop(tiny_clip.model, 1)(tokens["image"])
    assert not any("lora" in key for key in merged_top(model).state_dict())
    for tower in ("image", "text"):
        torch.testing.assert_close(merged[tower], unmerged[tower], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unmerged["image"], frozen, atol=1e-3)  # the adapters do change the features


def test_clip_lora_adapts_both_towers_and_its_store_equals_embedding_through_the_adapted_model(slice_, tmp_path):
    _, catalog, stores = slice_
    summary = run(slice_, tmp_path)
    state, meta = load_adaptation(summary["folder"].parent / "last")
    assert meta["towers"] == "clip:FSL-Tiny:random" and meta["adapted"] == ["image", "text"] and meta["rank"] == 2
    assert not any("lora" in key for key in state) and {key.split(".")[1] for key in state} == {"image", "text"}
    last = str(summary["folder"].parent / "last")
    store = open_store(catalog, EncoderConfig("adapted", pretrained=last, runtime="eager"), stores)
    assert store.encoder_id.startswith("adapted:clip:FSL-Tiny:random:")
    encoder = AdaptedEncoder(pretrained=last)
    photos = encoder.encode_images(catalog.image_paths[:8], num_workers=0, progress=False)
    assert (photos * np.asarray(store.image[:8])).sum(-1).min() > 0.999
    for variant in ("plain", "masked-articleType"):
        template_and_column = store.manifest["text_variants"][variant]
        texts = catalog.texts(template_and_column["template"], template_and_column["mask_column"])[:8]
        embedded = encoder.encode_texts(texts, progress=False)
        assert (embedded * np.asarray(store.text(variant)[:8])).sum(-1).min() > 0.999
    frozen = open_store(catalog, TINY_CLIP, stores)
    assert not np.allclose(np.asarray(store.image[:8]), np.asarray(frozen.image[:8]), atol=1e-3)  # it did train
    assert not np.allclose(np.asarray(store.text("plain")[:8]), np.asarray(frozen.text("plain")[:8]), atol=1e-3)


def test_an_image_only_clip_adaptation_leaves_the_text_tower_as_it_was(slice_, tmp_path):
    _, catalog, stores = slice_
    summary = run(slice_, tmp_path, dataclasses.replace(RECIPE, name="image", towers="image", mode="full"))
    last = str(summary["folder"].parent / "last")
    assert load_adaptation(last)[1]["adapted"] == ["image"]
    store = open_store(catalog, EncoderConfig("adapted", pretrained=last), stores)
    frozen = open_store(catalog, TINY_CLIP, stores)
    np.testing.assert_array_equal(store.text("plain"), frozen.text("plain"))
    assert not np.allclose(np.asarray(store.image[:8]), np.asarray(frozen.image[:8]), atol=1e-3)


def test_a_killed_clip_lora_run_resumes_to_where_an_uninterrupted_one_ends(slice_, tmp_path, monkeypatch):
    run(slice_, tmp_path / "whole")
    real, calls = fsl.harness.adapt.prototypical_loss, []

    def killed_at_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fsl.harness.adapt, "prototypical_loss", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(slice_, tmp_path / "killed")
    assert load_adaptation(tmp_path / "killed" / "adapt" / "clip-lora" / "last")[1]["step"] == 2
    monkeypatch.setattr(fsl.harness.adapt, "prototypical_loss", real)
    run(slice_, tmp_path / "killed")
    whole = load_file(str(tmp_path / "whole" / "adapt" / "clip-lora" / "last" / WEIGHTS_FILE))
    resumed = load_file(str(tmp_path / "killed" / "adapt" / "clip-lora" / "last" / WEIGHTS_FILE))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key])


def test_a_non_finite_clip_loss_stops_the_run_and_keeps_the_earlier_checkpoints(slice_, tmp_path, monkeypatch):
    real, calls = fsl.harness.adapt.prototypical_loss, []

    def nan_at_step_3(*args):
        calls.append(1)
        return real(*args) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(fsl.harness.adapt, "prototypical_loss", nan_at_step_3)
    with pytest.raises(FslError, match="stopped at step 3: the loss is nan"):
        run(slice_, tmp_path)
    assert load_adaptation(tmp_path / "adapt" / "clip-lora" / "last")[1]["step"] == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"flip": True}, "cannot be mirrored: set flip: false"),
        ({"crop": 0.7}, "leave crop at 1 and mix at 0"),
        ({"mix": 0.3}, "leave crop at 1 and mix at 0"),
        ({"cut": 3}, "cut must be a whole number of last transformer blocks from 1 to 2"),
        ({"towers": "all"}, "towers must be one of"),
        ({"encoder": EncoderConfig("offline"), "towers": "text", "cut": 7}, "MiniLM's last layers from 1 to 6"),
        ({"encoder": EncoderConfig("offline", "ViT-B-32")}, "offline takes no model or pretrained weights"),
        ({"text_variant": "masked-gender"}, "has no text variant 'masked-gender'"),
    ],
)
def test_clip_recipes_that_cannot_run_are_refused_before_any_caching(slice_, tmp_path, change, message, monkeypatch):
    monkeypatch.setattr(fsl.harness.adapt, "cached_tower", lambda *a, **k: pytest.fail("cached first"))
    with pytest.raises(FslError, match=message):
        run(slice_, tmp_path, dataclasses.replace(RECIPE, **change))

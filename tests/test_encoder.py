from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl.data.prepared import load_catalog
from fsl.encoders.factory import create_encoder
from fsl.errors import FslError


def _check_unit_vectors(features: np.ndarray, rows: int, dim: int) -> None:
    assert features.shape == (rows, dim) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_tiny_clip_embeds_images_and_texts_as_unit_vectors(tiny_clip, small_dump):
    catalog = load_catalog(small_dump)
    images = tiny_clip.encode_images(catalog.image_paths[:8], batch_size=3, num_workers=0, progress=False)
    texts = tiny_clip.encode_texts(catalog.texts()[:5], batch_size=2, progress=False)
    _check_unit_vectors(images, 8, tiny_clip.image_dim)
    _check_unit_vectors(texts, 5, tiny_clip.text_dim)
    assert tiny_clip.id == "clip:FSL-Tiny:random"
    assert not any(p.requires_grad for p in tiny_clip.model.parameters()) and not tiny_clip.model.training


def test_a_repeated_text_is_encoded_once_and_lands_in_every_row_that_has_it(tiny_clip, small_dump):
    texts = load_catalog(small_dump).texts()[:4]
    calls = []
    original = tiny_clip._embed_texts
    tiny_clip._embed_texts = lambda batch: calls.append(list(batch)) or original(batch)
    try:
        repeated = tiny_clip.encode_texts(
            [texts[2], texts[0], texts[2], texts[1], texts[0]], batch_size=2, progress=False
        )
    finally:
        tiny_clip._embed_texts = original
    assert sorted(t for batch in calls for t in batch) == sorted(texts[:3])
    alone = tiny_clip.encode_texts(texts[:3], batch_size=1, progress=False)
    np.testing.assert_allclose(repeated, alone[[2, 0, 2, 1, 0]], atol=1e-6)


def test_batching_does_not_change_features(tiny_clip, small_dump):
    paths = load_catalog(small_dump).image_paths[:6]
    one = tiny_clip.encode_images(paths, batch_size=1, num_workers=0, progress=False)
    many = tiny_clip.encode_images(paths, batch_size=6, num_workers=1, progress=False)
    np.testing.assert_allclose(one, many, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_clip_loads_a_local_checkpoint_file_through_pretrained(tiny_clip, small_dump, tmp_path, suffix):
    torch.manual_seed(123)
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in tiny_clip.model.state_dict().items()}
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pt":
        torch.save(trained, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in trained.items()}, path)
    loaded = create_encoder("clip", model="FSL-Tiny", pretrained=str(path))
    assert loaded.id.startswith("clip:FSL-Tiny:file-")
    for name, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    paths = load_catalog(small_dump).image_paths[:2]
    assert not np.allclose(
        loaded.encode_images(paths, num_workers=0, progress=False),
        tiny_clip.encode_images(paths, num_workers=0, progress=False),
    )


def test_clip_without_weights_offline_fails_fast_and_says_how_to_pass_a_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FslError, match=r"(?s)ViT-B-32.*openai.*--pretrained /path"):
        create_encoder("clip", model="ViT-B-32", pretrained="openai")


def test_clip_names_valid_tags_for_an_unknown_one():
    with pytest.raises(FslError, match=r"'nope' is neither a pretrained tag of ViT-B-32 \(openai"):
        create_encoder("clip", model="ViT-B-32", pretrained="nope")
    with pytest.raises(FslError, match="unknown encoder 'vit'"):
        create_encoder("vit")


def test_offline_pair_embeds_real_photos_and_texts(offline_encoder, small_dump):
    catalog = load_catalog(small_dump)
    images = offline_encoder.encode_images(catalog.image_paths[:4], num_workers=0, progress=False)
    texts = offline_encoder.encode_texts(catalog.texts()[:4], progress=False)
    _check_unit_vectors(images, 4, 1280)
    _check_unit_vectors(texts, 4, 384)
    assert not any(p.requires_grad for p in offline_encoder.image_model.parameters())
    # Real pretrained text features: a paraphrase sits closer than an unrelated product.
    a, b, c = offline_encoder.encode_texts(
        ["men's blue denim jeans", "blue jeans for men", "gold wrist watch"], progress=False
    )
    assert a @ b > a @ c + 0.2


def test_onnx_image_tower_agrees_with_eager_and_is_refused_when_it_does_not(small_dump, tmp_path, monkeypatch):
    import fsl.encoders.onnx as encoder_module
    from fsl.data.prepared import load_catalog
    from fsl.encoders.factory import create_encoder

    catalog = load_catalog(small_dump)
    encoder = create_encoder("clip", model="FSL-Tiny", pretrained="none")
    eager = encoder.encode_images(catalog.image_paths[:8], num_workers=0, progress=False)
    assert "ONNX Runtime" in encoder.use_onnx(tmp_path) and encoder.runtime is not None
    fast = encoder.encode_images(catalog.image_paths[:8], num_workers=0, progress=False)
    assert (eager * fast).sum(-1).min() >= 0.999
    np.testing.assert_allclose(fast, eager, atol=1e-4)
    assert list(tmp_path.glob("*.onnx"))  # exported once, then reused

    other = create_encoder("clip", model="FSL-Tiny", pretrained="none")
    monkeypatch.setattr(encoder_module, "MIN_COSINE", 1.5)  # nothing can agree this well
    said = other.use_onnx(tmp_path)
    assert other.runtime is None and "eager" in said and "differ from eager" in said


def test_onnx_text_tower_agrees_with_eager_sentence_transformers_and_is_refused_when_it_does_not(
    offline_encoder, small_dump, tmp_path, monkeypatch
):
    import fsl.encoders.onnx as encoder_module
    from fsl.encoders.onnx import OnnxMismatch, OnnxTextTower

    texts = load_catalog(small_dump).texts()[:6] + ["a much longer product description " * 8]  # padded to its length
    eager = offline_encoder.encode_texts(texts, progress=False)
    tower = OnnxTextTower.load(offline_encoder, tmp_path)
    assert [p.name for p in tmp_path.glob("*.onnx")] == ["offline_efficientnet-lite0+all-MiniLM-L6-v2-text.onnx"]
    monkeypatch.setattr(offline_encoder, "text_runtime", tower)  # encode_texts now runs ONNX Runtime
    fast = offline_encoder.encode_texts(texts, progress=False)
    assert (eager * fast).sum(-1).min() >= 0.999
    np.testing.assert_allclose(fast, eager, atol=1e-4)
    monkeypatch.setattr(encoder_module, "MIN_COSINE", 1.5)  # nothing can agree this well
    with pytest.raises(OnnxMismatch, match="differ from eager"):
        OnnxTextTower.load(offline_encoder, tmp_path)  # the cached export, checked again


def test_a_stale_onnx_export_is_exported_again_once(tmp_path, caplog):
    """A cached export that no longer matches the model (new weights, a new library) is replaced, not
    given up on at every run until someone deletes .fsl/onnx/ by hand."""
    import torch

    from fsl.encoders.factory import create_encoder
    from fsl.encoders.onnx import _export, _input_size
    from fsl.paths import onnx_path

    encoder = create_encoder("clip", model="FSL-Tiny", pretrained="none")

    class Other(torch.nn.Module):  # same inputs and outputs, other features: what a stale export looks like
        def forward(self, pixels):
            return pixels.mean(dim=(2, 3)).repeat(1, encoder.image_dim)[:, : encoder.image_dim]

    stale = onnx_path(encoder.id, "", tmp_path)
    axes = {"pixels": {0: "batch"}, "features": {0: "batch"}}
    _export(Other().eval(), (torch.zeros(2, 3, *_input_size(encoder)),), stale, ["pixels"], axes)
    said = encoder.use_onnx(tmp_path)
    assert encoder.runtime is not None and "re-exported" in said and "is stale" in caplog.text
    again = create_encoder("clip", model="FSL-Tiny", pretrained="none")
    assert "re-exported" not in again.use_onnx(tmp_path)  # the new export is kept

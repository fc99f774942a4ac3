from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fsl.data.prepared import load_catalog
from fsl.errors import FslError
from fsl.paths import store_path
from fsl.store.embed import embed_catalog
from fsl.store.features import DEFAULT_TEXT_VARIANTS, FeatureStore, TextVariant
from tests.conftest import make_slice


def test_store_round_trip_matches_the_encoder(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    store = embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=16, num_workers=0, progress=False)
    assert list(store.ids) == catalog.ids
    assert isinstance(store.image, np.memmap)
    np.testing.assert_allclose(
        store.image, tiny_clip.encode_images(catalog.image_paths, num_workers=0, progress=False), atol=1e-5
    )
    masked = tiny_clip.encode_texts(catalog.texts(mask_column="articleType"), progress=False)
    np.testing.assert_allclose(store.text("masked-articleType"), masked, atol=1e-5)
    assert not (store.path / "chunks").exists()
    reopened = FeatureStore.open(store.path, tiny_clip.id, catalog.fingerprint)
    np.testing.assert_array_equal(reopened.text("plain"), store.text("plain"))


class CountingEncoder:
    """Wraps an encoder and counts the work it is asked to do."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.id, self.image_dim, self.text_dim = inner.id, inner.image_dim, inner.text_dim

    def image_batches(self, *args):
        self.calls += 1
        return self.inner.image_batches(*args)

    def embed_pixels(self, pixels):
        return self.inner.embed_pixels(pixels)

    def encode_texts(self, texts, **kwargs):
        self.calls += 1
        return self.inner.encode_texts(texts, **kwargs)


def test_warm_store_does_no_encoding_and_a_new_text_variant_encodes_only_texts(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    embed_catalog(catalog, tiny_clip, tmp_path, num_workers=0, progress=False)
    counting = CountingEncoder(tiny_clip)
    embed_catalog(catalog, counting, tmp_path, num_workers=0, progress=False)
    assert counting.calls == 0
    variants = (*DEFAULT_TEXT_VARIANTS, TextVariant("{productDisplayName}", None))
    store = embed_catalog(catalog, counting, tmp_path, variants, num_workers=0, progress=False)
    assert counting.calls == 1  # one text pass, no image pass
    assert store.text(variants[-1].name).shape == (len(catalog), tiny_clip.text_dim)


def test_store_of_another_encoder_or_catalog_is_refused_naming_both(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    store = embed_catalog(catalog, tiny_clip, tmp_path, num_workers=0, progress=False)
    with pytest.raises(FslError, match=r"encoder 'clip:FSL-Tiny:random', not 'offline:x'"):
        FeatureStore.open(store.path, "offline:x", catalog.fingerprint)
    with pytest.raises(FslError, match=rf"catalog '{catalog.fingerprint}', not 'feedface'"):
        FeatureStore.open(store.path, tiny_clip.id, "feedface")
    with pytest.raises(FslError, match="no complete feature store"):
        FeatureStore.open(tmp_path / "empty")


def test_embed_resumes_after_being_killed_mid_run(tmp_path, tiny_clip):
    dump = make_slice(tmp_path / "dump", ["Tshirts", "Shirts", "Watches"], 120)
    catalog = load_catalog(dump)
    root = tmp_path / "store"
    path = store_path(root, tiny_clip.id, catalog.fingerprint)
    command = [
        sys.executable,
        "-m",
        "fsl.cli",
        "embed",
        "--data",
        str(dump),
        "--encoder",
        "clip",
        "--model",
        "FSL-Tiny",
        "--pretrained",
        "none",
        "--store-root",
        str(root),
        "--chunk-size",
        "8",
        "--batch-size",
        "8",
        "--workers",
        "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((path / "chunks").glob("chunk-*.npz"))) < 3:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in (path / "chunks").glob("chunk-*.npz"))
    assert 3 <= len(done_before) < 45, "the kill must land mid-run"
    assert not json.loads((path / "manifest.json").read_text())["complete"]

    class Spy(CountingEncoder):
        def image_batches(self, paths, *args):
            self.paths = list(paths)
            return super().image_batches(paths, *args)

    spy = Spy(tiny_clip)
    store = embed_catalog(catalog, spy, root, chunk_size=8, batch_size=8, num_workers=0, progress=False)
    assert len(spy.paths) == len(catalog) - 8 * len(done_before)  # finished chunks are not redone
    fresh = tiny_clip.encode_images(catalog.image_paths, num_workers=0, progress=False)
    np.testing.assert_allclose(store.image, fresh, atol=1e-5)


def test_ranks_split_the_chunks_and_the_last_one_joins(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    assert (
        embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, rank=0, world_size=2, progress=False)
        is None
    )
    path = store_path(tmp_path, tiny_clip.id, catalog.fingerprint)
    assert sorted(p.name for p in (path / "chunks").glob("*.npz")) == [f"chunk-{i:05d}.npz" for i in (0, 2, 4)]
    store = embed_catalog(
        catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, rank=1, world_size=2, progress=False
    )
    assert store is not None and store.image.shape == (len(catalog), tiny_clip.image_dim)


def test_torchrun_with_two_processes_builds_the_store_one_process_builds(small_dump, tmp_path):
    """Ranks embed disjoint chunks, meet at a barrier, rank 0 joins: no second run, same store."""
    common = [
        *("embed", "--data", str(small_dump), "--encoder", "clip", "--model", "FSL-Tiny"),
        *("--pretrained", "none", "--workers", "0", "--chunk-size", "8", "--batch-size", "8"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FSL_CACHE": str(tmp_path / "cache")}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fsl.cli",
            *common,
            "--store-root",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1 of 2: its chunks are written; rank 0 joined the store" in two.stdout
    assert "40 products embedded" in two.stdout and "2 ranks" in two.stdout
    one = subprocess.run(
        [sys.executable, "-m", "fsl.cli", *common, "--store-root", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    (two_path,), (one_path,) = (tmp_path / "two").iterdir(), (tmp_path / "one").iterdir()
    a, b = FeatureStore.open(two_path, full_check=True), FeatureStore.open(one_path, full_check=True)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.image, b.image, atol=1e-6)
    for variant in b.texts:
        np.testing.assert_allclose(a.text(variant), b.text(variant), atol=1e-6)


def test_chunk_texts_advance_the_progress_bar_in_slices_and_equal_one_call(tiny_clip):
    """The embedding bar moves while a chunk's texts are encoded (not in one jump at the chunk's end),
    and slicing changes nothing: each variant's rows equal encoding them all at once."""
    from fsl.store.embed import encode_chunk_texts

    texts = {
        "plain": [f"Acme Men Blue Shirt {i}" for i in range(10)],
        "masked": [f"Acme Men Blue [MASK] {i % 3}" for i in range(10)],
    }

    class Bar:
        def __init__(self):
            self.steps = []

        def update(self, n):
            self.steps.append(n)

    bar = Bar()
    arrays = encode_chunk_texts(tiny_clip, texts, 2, 9, bar, step=3)
    assert bar.steps == [1.5, 1.5, 0.5]  # 7 products in slices of 3: half of each counted with its texts
    for name in texts:
        whole = tiny_clip.encode_texts(texts[name][2:9], progress=False)
        np.testing.assert_allclose(arrays[f"text-{name}"], whole, atol=1e-6)

"""Random bytes and small random edits of every file fsl reads (styles.csv, episode files, store
manifests, experiment configs), seeded: each must give a message (FslError) or a correct result,
never a traceback, and never an episode set or a store that silently differs from what it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fsl.errors import FslError

CASES = int(os.environ.get("FSL_FUZZ_CASES", 100))  # per file kind; raise it for a longer hunt
SEED = int(os.environ.get("FSL_FUZZ_SEED", 0))  # each test adds its own offset


def mutated(data: bytes, rng: np.random.Generator) -> bytes:
    """1-3 random edits: flip a byte, delete, duplicate or insert a span, or cut the end; or random bytes."""
    if rng.random() < 0.1:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if not data:
            break
        at = int(rng.integers(0, len(data)))
        span = int(rng.integers(1, 16))
        kind = rng.integers(0, 5)
        if kind == 0:
            data[at] ^= int(rng.integers(1, 256))
        elif kind == 1:
            del data[at : at + span]
        elif kind == 2:
            data[at:at] = data[at : at + span]
        elif kind == 3:
            data[at:at] = bytes(rng.integers(0, 256, span, dtype=np.uint8))
        else:
            del data[at:]
    return bytes(data)


def test_mutated_styles_csv_gives_a_catalog_or_a_message(small_dump, tmp_path, monkeypatch):
    from fsl.data.prepared import load_catalog

    monkeypatch.chdir(tmp_path)  # prepared catalogs go to ./.fsl
    original = (small_dump / "styles.csv").read_bytes()
    rng = np.random.default_rng(SEED + 0)
    outcomes = {"catalog": 0, "message": 0}
    for case in range(CASES):
        dump = tmp_path / f"d{case}"
        dump.mkdir()
        os.symlink(small_dump / "images", dump / "images")
        (dump / "styles.csv").write_bytes(mutated(original, rng))
        try:
            catalog = load_catalog(dump, refresh=True)
        except FslError:
            outcomes["message"] += 1
            continue
        assert len(catalog) > 0 and catalog.products["id"].is_unique and catalog.products["id"].is_monotonic_increasing
        outcomes["catalog"] += 1
    assert outcomes["catalog"] > 10 and outcomes["message"] > 10  # both paths were exercised


def test_mutated_episode_files_are_refused_or_identical(twelve_classes, tmp_path):
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.standard import load_episode_set
    from fsl.paths import episode_set_path

    root, catalog = twelve_classes
    config = ExperimentConfig(name="pn", encoder=EncoderConfig("clip", "FSL-Tiny", "none"))
    episodes_root = Path(shutil.copytree(root / "episodes", tmp_path / "episodes"))
    path = episode_set_path(catalog, "articleType", "novel-5w5s", episodes_root)
    original_bytes = path.read_bytes()
    original = load_episode_set(config, catalog, "novel-5w5s", episodes_root).episodes
    rng = np.random.default_rng(SEED + 1)
    refused = 0
    for _ in range(CASES):
        path.write_bytes(mutated(original_bytes, rng))
        try:
            loaded = load_episode_set(config, catalog, "novel-5w5s", episodes_root).episodes
        except FslError:
            refused += 1
            continue
        for key in ("support", "query", "classes"):  # what loads is the very same episodes
            np.testing.assert_array_equal(getattr(loaded, key), getattr(original, key))
    assert refused > CASES // 2


def test_mutated_store_manifests_are_refused_or_open_the_same_store(small_dump, tiny_clip, tmp_path):
    from fsl.data.prepared import load_catalog
    from fsl.store.embed import embed_catalog
    from fsl.store.features import FeatureStore

    catalog = load_catalog(small_dump)
    store = embed_catalog(catalog, tiny_clip, tmp_path / "store", chunk_size=16, num_workers=0, progress=False)
    manifest_file = store.path / "manifest.json"
    original = manifest_file.read_bytes()
    values = [None, True, -1, 0, 2**70, 1.5, "x", [], {}, "ids"]
    rng = np.random.default_rng(SEED + 2)
    refused = 0
    for case in range(CASES):
        if case % 2:
            payload = mutated(original, rng)
        else:  # well-formed JSON with one value replaced, or one key dropped
            manifest = json.loads(original)
            key = list(manifest)[int(rng.integers(0, len(manifest)))]
            if rng.random() < 0.2:
                del manifest[key]
            else:
                manifest[key] = values[int(rng.integers(0, len(values)))]
            payload = json.dumps(manifest).encode()
        manifest_file.write_bytes(payload)
        try:
            opened = FeatureStore.open(store.path, tiny_clip.id, catalog.fingerprint)
        except FslError:
            refused += 1
            continue
        np.testing.assert_array_equal(opened.ids, store.ids)
        np.testing.assert_array_equal(np.asarray(opened.image), np.asarray(store.image))
    assert refused > CASES // 2


def test_mutated_configs_load_and_build_or_give_a_message(tmp_path):
    from fsl.config import load_config
    from fsl.harness.experiment import check_runnable

    base = (Path(__file__).resolve().parents[1] / "experiments" / "linear-probe-fused-masked.yaml").read_bytes()
    scalars = [b"-1", b"0", b"1e-300", b"abc", b"1e400", b".nan", b"true", b"null", b"[1, 2]", b"{a: 1}", b"*a"]
    rng = np.random.default_rng(SEED + 3)
    path = tmp_path / "c.yaml"
    outcomes = {"built": 0, "message": 0}
    for case in range(CASES):
        if case % 2:
            payload = mutated(base, rng)
        else:  # one value of a `key: value` line replaced by a YAML scalar that has bitten before
            lines = base.splitlines()
            editable = [i for i, line in enumerate(lines) if b": " in line and not line.strip().startswith(b"#")]
            i = editable[int(rng.integers(0, len(editable)))]
            lines[i] = lines[i].split(b": ")[0] + b": " + scalars[int(rng.integers(0, len(scalars)))]
            payload = b"\n".join(lines) + b"\n"
        path.write_bytes(payload)
        try:
            check_runnable(load_config(path))
            outcomes["built"] += 1
        except FslError:
            outcomes["message"] += 1
    assert outcomes["message"] > 10


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_as_any_of_the_files_give_a_message(small_dump, tmp_path, seed, monkeypatch):
    from fsl.config import load_config
    from fsl.data.prepared import load_catalog
    from fsl.episodes.frozen import EpisodeSet

    monkeypatch.chdir(tmp_path)
    junk = bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8))
    (tmp_path / "d").mkdir()
    os.symlink(small_dump / "images", tmp_path / "d" / "images")
    (tmp_path / "d" / "styles.csv").write_bytes(junk)
    (tmp_path / "e.npz").write_bytes(junk)
    (tmp_path / "c.yaml").write_bytes(junk)
    for read in (
        lambda: load_catalog(tmp_path / "d", refresh=True),
        lambda: EpisodeSet.load(tmp_path / "e.npz"),
        lambda: load_config(tmp_path / "c.yaml"),
    ):
        with pytest.raises(FslError):
            read()


def sidecar_cases(original: bytes, rng: np.random.Generator):
    """Mutated bytes, or the JSON object with one value replaced or one key dropped."""
    values = [None, True, -1, 0, 2**70, 1.5, "x", [], {}, float("nan")]
    for case in range(CASES):
        if case % 2:
            yield mutated(original, rng)
            continue
        record = json.loads(original)
        key = list(record)[int(rng.integers(0, len(record)))]
        if rng.random() < 0.2:
            del record[key]
        else:
            record[key] = values[int(rng.integers(0, len(values)))]
        yield json.dumps(record).encode()


def test_mutated_sidecars_are_refused_or_read_as_written(tmp_path):
    """The JSON beside checkpoints, calibrations and alignments, each read through its schema."""
    import torch

    from fsl.encoders.aligned import Projections, load_alignment, save_alignment
    from fsl.inference.calibration import Calibration
    from fsl.inference.checkpoints import load_head, save_head
    from fsl.methods import create_head
    from fsl.methods.fusion import create_fusion

    calibration = next((Path(__file__).resolve().parents[1] / "fsl" / "calibration").glob("*.json"))
    head = create_head("protonet", create_fusion("gate", 6, 4), projection="diagonal")
    save_head(tmp_path / "ckpt", head, {"encoder_id": "enc"})
    meta = {"towers": "offline:efficientnet-lite0+all-MiniLM-L6-v2", "image_dim": 6, "text_dim": 4, "dim": 3,
            "hidden": 0, "split_seed": 0, "label_column": "articleType", "catalog_fingerprint": "fp"}  # fmt: skip
    (tmp_path / "align").mkdir()
    save_alignment(tmp_path / "align", Projections(6, 4, 3), meta)
    readers = {  # (the file read, the field compared, the reader)
        calibration: (tmp_path / "c.json", "temperature", lambda path: Calibration.load(path).temperature),
        tmp_path / "ckpt" / "head.json": (
            tmp_path / "ckpt" / "head.json",
            "encoder_id",
            lambda path: load_head(path.parent, head, "enc")["encoder_id"],
        ),
        tmp_path / "align" / "align.json": (
            tmp_path / "align" / "align.json",
            "dim",
            lambda path: load_alignment(path.parent)[1]["dim"],
        ),
    }
    rng = np.random.default_rng(SEED + 4)
    for source, (target, field, read) in readers.items():
        original = source.read_bytes()
        refused = 0
        for payload in sidecar_cases(original, rng):
            target.write_bytes(payload)
            try:
                value = read(target)
            except FslError:
                refused += 1
                continue
            assert value == json.loads(payload)[field]  # what loads is what the file says
        assert refused > CASES // 3, source.name
        target.write_bytes(original)
    assert torch.isfinite(next(head.parameters())).all()


# The third pass: the Python API and every derived cache ------------------------------------------------


def answers_of(classifier, photos) -> list[tuple[str, float]]:
    return [(a.label, round(a.confidence, 5)) for a in classifier.predict(photos)]


def test_mutated_classifier_json_is_refused_or_loads_a_sound_classifier(own_folders, tmp_path):
    """classifier.json (head, encoder, calibration): a message, or a classifier whose calibration is in
    range and whose answers are categories or "unknown" with confidences that sum to 1."""
    from fsl.apps.classifier import FewShotClassifier
    from fsl.config import load_config

    cache = tmp_path / "cache"
    classifier = FewShotClassifier.from_folder(own_folders / "support", load_config(own_folders / "tiny.yaml"),
                                               cache_root=cache)  # fmt: skip
    classifier.calibrate_on_support(score="energy")
    folder = classifier.save(tmp_path / "saved")
    photos = sorted((own_folders / "query").iterdir())[:4]
    original = (folder / "classifier.json").read_bytes()
    record = json.loads(original)
    rng = np.random.default_rng(SEED + 5)
    values = [None, True, -1, 0, 10**400, 1.5, "x", [], {}, float("nan"), float("inf")]
    outcomes = {"loaded": 0, "message": 0}
    for case in range(CASES):
        if case % 2:
            payload = mutated(original, rng)
        else:  # one value of the calibration (or one of the three parts) replaced
            edited = json.loads(original)
            part = edited["calibration"] if rng.random() < 0.7 else edited
            key = list(part)[int(rng.integers(0, len(part)))]
            part[key] = values[int(rng.integers(0, len(values)))]
            payload = json.dumps(edited).encode()
        (folder / "classifier.json").write_bytes(payload)
        try:
            loaded = FewShotClassifier.load(folder, cache_root=cache)
            answers = loaded.predict(photos)
        except FslError:
            outcomes["message"] += 1
            continue
        outcomes["loaded"] += 1
        if loaded.calibration is not None:
            assert np.isfinite(loaded.calibration.temperature) and loaded.calibration.temperature > 0
            assert np.isfinite(loaded.calibration.threshold)
        for answer in answers:
            assert answer.label in [*loaded.classes, "unknown"]
            assert abs(sum(c for _, c in answer.top) - 1) < 1e-4
    assert outcomes["message"] > CASES // 3 and outcomes["loaded"] > 0, outcomes
    (folder / "classifier.json").write_bytes(original)
    assert FewShotClassifier.load(folder, cache_root=cache).calibration.threshold == record["calibration"]["threshold"]


def test_mutated_calibrations_in_the_users_cache_are_refused_or_in_range(tmp_path):
    """A calibration under $FSL_CACHE is found by what it was fitted for: a damaged one is a message
    naming it, never a temperature or threshold out of range."""
    from fsl.inference.calibration import find_calibration

    shipped = next((Path(__file__).resolve().parents[1] / "fsl" / "calibration").glob("*.json"))
    original = shipped.read_bytes()
    key = json.loads(original)["key"]
    rng = np.random.default_rng(SEED + 6)
    refused = 0
    for payload in sidecar_cases(original, rng):
        (tmp_path / "mine.json").write_bytes(payload)
        try:
            found = find_calibration(key, tmp_path)
        except FslError as error:
            assert "mine.json" in str(error)
            refused += 1
            continue
        if found is not None:
            assert found.temperature > 0 and np.isfinite(found.temperature) and np.isfinite(found.threshold)
            assert found.score != "max-softmax" or 0 <= found.threshold <= 1
    assert refused > CASES // 3


def test_mutated_content_cache_entries_are_embedded_again_never_used(own_folders, tmp_path):
    """Any edit of a cached vector (a crash, a full disk, a flipped bit) is seen: the photo's features
    are always those of a clean run."""
    from fsl.apps.classifier import FewShotClassifier
    from fsl.config import load_config

    classifier = FewShotClassifier(load_config(own_folders / "tiny.yaml"), cache_root=tmp_path / "cache")
    photo = sorted((own_folders / "query").iterdir())[0]
    clean = classifier.embed_photos([photo])
    entry = next(classifier.cache.folder.glob("*.npz"))
    original = entry.read_bytes()
    rng = np.random.default_rng(SEED + 7)
    for _ in range(CASES):
        entry.write_bytes(mutated(original, rng))
        np.testing.assert_array_equal(classifier.embed_photos([photo]), clean)
    assert classifier.cache.repaired >= CASES * 0.9  # a mutation that leaves the bytes as they were is the rest


def test_mutated_activations_are_always_seen(small_dump, offline_encoder, tmp_path):
    """The cached activations at the cut: any change of their bytes is damage, found on open."""
    from fsl.data.prepared import load_catalog
    from fsl.store.activations import activation_shape, activations_path, activations_problem, cached_activations

    catalog = load_catalog(small_dump)
    cached_activations(catalog, offline_encoder, 1, tmp_path / "store", progress=False)
    path = activations_path(catalog, 1, tmp_path / "store")
    shape = (len(catalog), *activation_shape(offline_encoder, 1))
    original = path.read_bytes()
    assert activations_problem(path, shape) is None
    rng = np.random.default_rng(SEED + 8)
    for _ in range(CASES):
        payload = mutated(original, rng)
        path.write_bytes(payload)
        assert payload == original or activations_problem(path, shape) is not None
    path.write_bytes(original)


def test_mutated_adaptations_are_refused_or_load_their_exact_weights(tmp_path, offline_encoder):
    """top.safetensors and adapt.json: a message, or the very weights that were saved."""
    import copy

    import torch

    from fsl.encoders.adapted import ImageTop, adapted_top, load_adaptation, save_adaptation

    top = ImageTop(copy.deepcopy(offline_encoder.image_model), 1)
    meta = {"towers": "offline:efficientnet-lite0+all-MiniLM-L6-v2", "cut": 1, "mode": "full", "objective": "episodic",
            "split_seed": 0, "label_column": "articleType", "catalog_fingerprint": "fp"}  # fmt: skip
    save_adaptation(tmp_path / "best", top, meta)
    saved = {k: v.clone() for k, v in top.state_dict().items()}
    rng = np.random.default_rng(SEED + 9)
    for name in ("top.safetensors", "adapt.json"):
        file = tmp_path / "best" / name
        original = file.read_bytes()
        cases = (
            (mutated(original, rng) for _ in range(CASES)) if name.endswith("tensors") else sidecar_cases(original, rng)
        )
        refused = 0
        for payload in cases:
            file.write_bytes(payload)
            try:
                state, loaded_meta = load_adaptation(tmp_path / "best")
                loaded = adapted_top(copy.deepcopy(offline_encoder.image_model), state, loaded_meta["cut"], file.parent)
            except FslError:
                refused += 1
                continue
            for key, value in loaded.state_dict().items():
                assert torch.equal(value, saved[key]), key
        assert refused > CASES // 3, name
        file.write_bytes(original)


def test_mutated_view_caches_are_computed_again(twelve_classes, tiny_clip, tmp_path):
    """The features of a view (re-rendered, flipped photos) cached beside a store: any damage is said
    and the view computed again; what comes back equals a clean run."""
    import shutil

    from fsl.episodes.shift import view_image_features
    from fsl.store.features import FeatureStore

    root, catalog = twelve_classes
    store_dir = next((root / "store").iterdir())
    store = FeatureStore.open(shutil.copytree(store_dir, tmp_path / store_dir.name))
    ids = catalog.products["id"].to_numpy()[:3]
    clean = view_image_features(store, catalog, tiny_clip, ids, "flip", progress=False)[1]
    cache = store.path / "flip-v1.npz"
    original = cache.read_bytes()
    rng = np.random.default_rng(SEED + 10)
    for _ in range(CASES // 4):  # each damaged case embeds the three photos again
        cache.write_bytes(mutated(original, rng))
        got_ids, again = view_image_features(store, catalog, tiny_clip, ids, "flip", progress=False)
        assert list(got_ids) == sorted(ids)
        np.testing.assert_allclose(again, clean, atol=1e-6)


def random_image(rng: np.random.Generator, mode: str, width: int, height: int):
    """A Pillow image of `mode`: random pixels (or one flat value), integers and floats over their range."""
    from PIL import Image

    flat = rng.random() < 0.2
    deep = {"I": (np.int32, 2**31 - 1), "F": (np.float32, 1.0 if rng.random() < 0.5 else 1e6),
            "I;16": (np.uint16, 65535), "I;16B": (">u2", 65535)}  # fmt: skip
    if mode in deep:
        dtype, top = deep[mode]
        values = np.full((height, width), top) if flat else rng.uniform(0, top, (height, width))
        return Image.fromarray(values.astype(dtype))
    pixels = np.full((height, width, 4), 200, np.uint8) if flat else rng.integers(0, 256, (height, width, 4), np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def test_random_pil_images_give_an_answer_or_a_message(own_folders, tmp_path):
    """Photos as Pillow images of a random mode, size and bit depth through FewShotClassifier.predict:
    an answer among the categories, or an FslError; never another exception."""
    from fsl.apps.classifier import FewShotClassifier
    from fsl.config import load_config

    classifier = FewShotClassifier.from_folder(own_folders / "support", load_config(own_folders / "tiny.yaml"),
                                               cache_root=tmp_path / "cache")  # fmt: skip
    modes = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
             "I", "F", "I;16", "I;16B"]  # fmt: skip
    rng = np.random.default_rng(SEED + 11)
    outcomes = {"answer": 0, "message": 0}
    for _ in range(CASES):
        width, height = (int(v) for v in rng.choice([0, 1, 15, 16, 64, 200, 1500], 2))
        image = random_image(rng, modes[int(rng.integers(0, len(modes)))], width, height)
        try:
            (answer,) = classifier.predict([image])
        except FslError:
            outcomes["message"] += 1
            continue
        outcomes["answer"] += 1
        assert answer.best in classifier.classes and np.isfinite(answer.confidence)
    assert outcomes["answer"] > 10 and outcomes["message"] > 10, outcomes

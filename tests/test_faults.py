"""Fault injection: bad files, odd options, faults mid-run. Each case must end in a clear `fsl` message
or a correct result, with nothing lost and nothing silently wrong."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fsl.cli.main import main
from fsl.config import load_config
from fsl.data.prepared import load_catalog
from fsl.errors import FslError
from fsl.files import atomic_path, write_csv
from fsl.inference.checkpoints import load_head, save_head
from fsl.paths import Workspace, store_path
from fsl.store.embed import embed_catalog
from fsl.store.features import FeatureStore
from fsl.store.locks import writer_lock

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
TINY = ["--encoder", "clip", "--model", "FSL-Tiny", "--pretrained", "none"]


@pytest.fixture()
def store(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    return catalog, embed_catalog(catalog, tiny_clip, tmp_path / "store", chunk_size=16, num_workers=0, progress=False)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*.tmp")]


# The feature store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option,value",
    [
        ("--chunk-size", "-5"),
        ("--chunk-size", "0"),
        ("--batch-size", "0"),
        ("--batch-size", "true"),
        ("--workers", "-1"),
    ],
)
def test_bad_embed_options_stop_before_any_store_is_written(small_dump, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as stop:
        main(["embed", "--data", str(small_dump), *TINY, "--store-root", str(tmp_path / "s"), option, value])
    assert stop.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_library_refuses_a_bad_chunk_size_too(tiny_clip, small_dump, tmp_path):
    with pytest.raises(FslError, match="chunk size must be a whole number >= 1, got -5"):
        embed_catalog(load_catalog(small_dump), tiny_clip, tmp_path, chunk_size=-5, progress=False)
    assert not list(tmp_path.iterdir())


def test_a_second_writer_is_refused_naming_the_first(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    path = store_path(tmp_path, tiny_clip.id, catalog.fingerprint)
    with writer_lock(path):
        with pytest.raises(FslError, match=rf"being written by fsl embed \(pid {os.getpid()} on "):
            embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, progress=False)
    assert embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, progress=False) is not None


def test_concurrent_real_embeds_leave_one_correct_store(tiny_clip, small_dump, tmp_path):
    """Two `fsl embed` processes with different chunk sizes: one writes, the other is told why not."""
    command = [
        sys.executable,
        "-m",
        "fsl.cli",
        "embed",
        "--data",
        str(small_dump),
        *TINY,
        "--store-root",
        str(tmp_path),
        "--workers",
        "0",
        "--batch-size",
        "4",
    ]
    runs = [
        subprocess.Popen([*command, "--chunk-size", size], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for size in ("4", "7")
    ]
    outcomes = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert all("Traceback" not in err for _, err in outcomes)
    for code, err in outcomes:
        assert code == 0 or (code == 2 and "is being written by fsl embed" in err)
    catalog = load_catalog(small_dump)
    store = FeatureStore.open(
        store_path(tmp_path, tiny_clip.id, catalog.fingerprint), tiny_clip.id, catalog.fingerprint, full_check=True
    )
    np.testing.assert_allclose(
        store.image, tiny_clip.encode_images(catalog.image_paths, num_workers=0, progress=False), atol=1e-5
    )


def damage_manifest(path: Path) -> None:
    (path / "manifest.json").write_text("{ not json")


def truncate_image(path: Path) -> None:
    data = (path / "image.npy").read_bytes()
    (path / "image.npy").write_bytes(data[: len(data) // 2])


def remove_text(path: Path) -> None:
    (path / "text-plain.npy").unlink()


def flip_a_byte(path: Path) -> None:
    data = bytearray((path / "image.npy").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "image.npy").write_bytes(bytes(data))


def arrays_as_text(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"] = "ids image text-plain"
    (path / "manifest.json").write_text(json.dumps(manifest))


def ids_as_objects(path: Path) -> None:
    from fsl.store.manifest import array_record

    np.save(path / "ids.npy", np.load(path / "ids.npy").astype(object), allow_pickle=True)
    manifest = json.loads((path / "manifest.json").read_text())  # even with a matching checksum
    manifest["arrays"]["ids"] = array_record(path / "ids.npy")
    (path / "manifest.json").write_text(json.dumps(manifest))


def shuffle_ids(path: Path) -> None:
    ids = np.load(path / "ids.npy")
    np.save(path / "ids.npy", ids[::-1].copy())
    manifest = json.loads((path / "manifest.json").read_text())  # even with a matching checksum
    from fsl.store.manifest import array_record

    manifest["arrays"]["ids"] = array_record(path / "ids.npy")
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage,message",
    [
        (damage_manifest, "feature store manifest cannot be read"),
        (truncate_image, r"image.npy has \d+ bytes, the manifest says \d+ \(truncated"),
        (remove_text, "text-plain.npy is missing"),
        (flip_a_byte, "image.npy does not match its checksum"),
        (shuffle_ids, "ids in increasing order"),
        (arrays_as_text, "manifest is damaged \\(arrays is str, expected dict\\)"),
        (ids_as_objects, "ids.npy is not an array of int64"),
    ],
)
def test_a_damaged_store_is_refused_on_open_and_rebuilt_by_embed(store, tiny_clip, tmp_path, caplog, damage, message):
    catalog, good = store
    expected = np.array(good.image)
    damage(good.path)
    with pytest.raises(FslError, match=message):
        FeatureStore.open(good.path, tiny_clip.id, catalog.fingerprint)
    rebuilt = embed_catalog(catalog, tiny_clip, tmp_path / "store", chunk_size=16, num_workers=0, progress=False)
    assert "rebuilding it" in caplog.text
    np.testing.assert_array_equal(rebuilt.image, expected)


def test_full_verification_reads_every_byte(store, tiny_clip, monkeypatch):
    catalog, good = store
    import fsl.store.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "SAMPLE_BLOCKS", 1)  # the cheap check now reads one block only
    monkeypatch.setattr(manifest_module, "BLOCK_BYTES", 128)
    manifest = json.loads((good.path / "manifest.json").read_text())
    flip_a_byte(good.path)
    for key, record in manifest["arrays"].items():
        record["sample_sha256"] = manifest_module.sample_digest(good.path / f"{key}.npy")
    (good.path / "manifest.json").write_text(json.dumps(manifest))
    FeatureStore.open(good.path, tiny_clip.id, catalog.fingerprint)  # the sample misses the flipped byte
    with pytest.raises(FslError, match="does not match its sha256 checksum"):
        FeatureStore.open(good.path, tiny_clip.id, catalog.fingerprint, full_check=True)


KILLED_MID_JOIN = """
import sys, time
from pathlib import Path
import numpy as np
from fsl.data.prepared import load_catalog
from fsl.encoders.factory import create_encoder
from fsl.store.embed import embed_catalog

dump, root, flag = sys.argv[1:4]
real_load, loads = np.load, []

def slow_load(file, *args, **kwargs):
    if str(file).endswith(".npz"):
        loads.append(file)
        if len(loads) == 7:  # 5 chunks checked, then the second chunk of the first array's write
            Path(flag).touch()
            time.sleep(120)
    return real_load(file, *args, **kwargs)

np.load = slow_load
embed_catalog(load_catalog(dump), create_encoder("clip", model="FSL-Tiny", pretrained="none"), root,
              chunk_size=8, num_workers=0, progress=False)
"""


def test_kill_9_mid_join_loses_nothing_and_the_next_run_completes(tiny_clip, small_dump, tmp_path):
    catalog = load_catalog(small_dump)
    flag, root = tmp_path / "joining", tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_JOIN, str(small_dump), str(root), str(flag)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while not flag.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert flag.exists(), process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    path = store_path(root, tiny_clip.id, catalog.fingerprint)
    assert list(path.glob(".image.npy.*.tmp")), "the kill must land while image.npy is being written"
    assert not json.loads((path / "manifest.json").read_text())["complete"]
    with pytest.raises(FslError, match="no complete feature store"):
        FeatureStore.open(path)

    store = embed_catalog(catalog, tiny_clip, root, chunk_size=8, num_workers=0, progress=False)
    assert no_temp_files(path) and not (path / "chunks").exists()
    np.testing.assert_allclose(
        store.image, tiny_clip.encode_images(catalog.image_paths, num_workers=0, progress=False), atol=1e-5
    )


def test_full_disk_before_the_join_is_a_message_and_keeps_the_chunks(tiny_clip, small_dump, tmp_path, monkeypatch):
    import fsl.store.embed as embedding

    catalog = load_catalog(small_dump)
    monkeypatch.setattr(embedding.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    with pytest.raises(FslError, match=r"needs \d+ MiB but the disk has 0 MiB free"):
        embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, progress=False)
    path = store_path(tmp_path, tiny_clip.id, catalog.fingerprint)
    assert len(list((path / "chunks").glob("chunk-*.npz"))) == 5 and no_temp_files(path)


def test_disk_full_while_writing_is_a_message_and_leaves_no_temp_file(tiny_clip, small_dump, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing image.npy (as on a full tmpfs): no SIGBUS, no half file."""
    catalog = load_catalog(small_dump)
    real_open = open

    class FullDisk:
        def __init__(self, inner):
            self.inner, self.written = inner, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if ".image.npy." in str(file) and "w" in mode else handle

    import fsl.store.embed as embedding

    monkeypatch.setattr(embedding, "open", failing_open, raising=False)
    with pytest.raises(FslError, match=r"cannot write .*image.npy: the disk is full; nothing was left half-written"):
        embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, progress=False)
    path = store_path(tmp_path, tiny_clip.id, catalog.fingerprint)
    assert no_temp_files(path) and not json.loads((path / "manifest.json").read_text())["complete"]
    monkeypatch.undo()
    assert embed_catalog(catalog, tiny_clip, tmp_path, chunk_size=8, num_workers=0, progress=False) is not None


def test_read_only_disk_is_a_message(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(FslError, match="the file system is read-only"):
        with atomic_path(tmp_path / "out.csv"):
            pass


# styles.csv ------------------------------------------------------------------------------------


def crafted_dump(tmp_path: Path, small_dump: Path, rows: list[str]) -> Path:
    (tmp_path / "images").mkdir(parents=True)
    for photo in (small_dump / "images").glob("*.jpg"):
        shutil.copy(photo, tmp_path / "images" / photo.name)
    (tmp_path / "styles.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return tmp_path


def real_rows(small_dump: Path, n: int) -> list[str]:
    ids = sorted(int(p.stem) for p in (small_dump / "images").glob("*.jpg"))[:n]
    return [f"{i},Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Men Grey T-shirt {i}" for i in ids]


def accounted(catalog) -> bool:
    skipped = catalog.report[catalog.report["action"] == "skipped"]
    lines = set(skipped["line"]) | set(catalog.products.get("line", []))
    return (
        len(catalog) + len(skipped) == catalog.data_rows
        and len(skipped) == len(set(skipped["line"]))
        and len(lines) <= catalog.data_rows
    )


def test_a_stray_quote_loses_no_other_row(small_dump, tmp_path):
    rows = real_rows(small_dump, 30)
    rows[3] = rows[3].replace("Puma Men", '"Puma Men')  # a leading quote that never closes
    rows[10] = rows[10].replace("Grey T-shirt", 'Grey "Slim" T-shirt')
    catalog = load_catalog(crafted_dump(tmp_path, small_dump, rows))
    assert len(catalog) == 30 and accounted(catalog)
    assert any("Puma Men" in name for name in catalog.products["productDisplayName"])


def test_formula_like_cells_are_reported_and_escaped_in_the_report(small_dump, tmp_path):
    rows = real_rows(small_dump, 5)
    rows[1] = '=HYPERLINK("http://x"),Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Bad'
    rows[2] = rows[2].replace("Puma Men", "=1+1 Puma Men")
    catalog = load_catalog(crafted_dump(tmp_path, small_dump, rows))
    assert len(catalog) == 4 and accounted(catalog)
    report = catalog.report
    assert report.loc[report["action"] == "skipped", "issue"].tolist() == ["id is not a whole number"]
    saved = tmp_path / "report.csv"
    catalog.save_report(saved)
    cells = pd.read_csv(saved, dtype=str)["id"].tolist()
    assert all(not cell.startswith(("=", "+", "-", "@")) for cell in cells)
    assert any(cell.startswith("'=HYPERLINK") for cell in cells)


def test_an_unquoted_comma_in_the_first_data_row_is_repaired(small_dump, tmp_path):
    rows = real_rows(small_dump, 4)
    rows[0] = rows[0].replace("Puma Men Grey", "Puma, Men, Grey")
    catalog = load_catalog(crafted_dump(tmp_path, small_dump, rows))
    assert len(catalog) == 4 and accounted(catalog)
    assert catalog.report["issue"].tolist() == ["unquoted comma in productDisplayName"]


@pytest.mark.parametrize(
    "rows,message",
    [
        ([], "has a header but no data rows"),
        (
            ["abc,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,x", "-1,Men,Apparel"],
            r"none of the 2 rows of styles.csv is usable \(1 id is not a whole number, 1 too few fields\)",
        ),
    ],
)
def test_a_file_with_no_usable_row_is_a_message(small_dump, tmp_path, rows, message):
    with pytest.raises(FslError, match=message):
        load_catalog(crafted_dump(tmp_path, small_dump, rows))


def test_every_line_is_a_product_or_a_skipped_report_row(small_dump, tmp_path):
    rows = real_rows(small_dump, 12)
    rows[0] = rows[0].replace("Puma Men", "Puma, Men")  # repaired
    rows[1] = rows[1].replace("Puma Men", '"Puma Men')  # stray quote
    rows[2] = "12x,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,bad id"
    rows[3] = rows[3].split(",", 5)[0] + ",Men,Apparel"  # too few fields
    rows[4] = rows[5]  # duplicate id
    rows[6] = "99999999,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,no photo"
    rows.insert(7, "")  # a blank line is no data row
    catalog = load_catalog(crafted_dump(tmp_path, small_dump, rows))
    assert catalog.data_rows == 12 and accounted(catalog)
    assert len(catalog) == 8  # 12 lines - bad id - too few fields - duplicate id - no photo
    assert "8 products from" in catalog.summary() and "12 data rows" in catalog.summary()


# Training and checkpoints ----------------------------------------------------------------------


def test_non_finite_learning_rates_are_config_errors(tmp_path):
    for lr in (".inf", ".nan", "-1", "0"):
        path = tmp_path / "bad.yaml"
        path.write_text(f"method: protonet\nfusion: gate\ntrain: {{steps: 5, lr: {lr}}}\n")
        with pytest.raises(FslError, match="train.lr must be a finite number > 0"):
            load_config(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ("batch_size: true\n", "batch_size must be a positive whole number, got True"),
        ("name: ../../etc/evil\n", "cannot be used as a file name"),
        ("name: /tmp/abs\n", "cannot be used as a file name"),
        ("episodes: [../novel-5w1s]\n", "episodes entry '../novel-5w1s' cannot be used as a file name"),
        ("method: maml\ntrain: {weight_decay: -1}\n", "train.weight_decay must be a finite number >= 0"),
        ("method: maml\ntrain: {seed: -3}\n", "train.seed must be a whole number >= 0"),
    ],
)
def test_config_values_that_would_mislead_or_escape_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FslError, match=message):
        load_config(path)


def test_a_non_finite_head_is_never_saved_and_never_loaded(tmp_path):
    head = torch.nn.Linear(3, 2)
    save_head(tmp_path / "ok", head, {"encoder_id": "x"})
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    with pytest.raises(FslError, match="refusing to save .*weight hold NaN"):
        save_head(tmp_path / "bad", head, {"encoder_id": "x"})
    assert not (tmp_path / "bad" / "head.safetensors").exists()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "ok" / "head.safetensors"))
    with pytest.raises(FslError, match="holds NaN or infinite weights"):
        load_head(tmp_path / "ok", torch.nn.Linear(3, 2), "x")


def test_truncated_checkpoint_and_broken_sidecar_are_messages(tmp_path):
    head = torch.nn.Linear(3, 2)
    save_head(tmp_path / "c", head, {"encoder_id": "x"})
    weights = tmp_path / "c" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(FslError, match="truncated or not a checkpoint"):
        load_head(tmp_path / "c", head, "x")
    (tmp_path / "c" / "head.json").write_text("{broken")
    with pytest.raises(FslError, match="checkpoint sidecar cannot be read"):
        load_head(tmp_path / "c", head, "x")


# Writes ----------------------------------------------------------------------------------------


def test_writes_refuse_fifos_devices_folders_and_symlinks(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    frame = pd.DataFrame({"a": [1]})
    for target, kind in (
        (fifo, "device, FIFO or socket"),
        (Path("/dev/null"), "device, FIFO or socket"),
        (tmp_path, "folder"),
        (link, "symbolic link"),
    ):
        with pytest.raises(FslError, match=kind):
            write_csv(frame, target)
    assert victim.read_text() == "keep me" and link.is_symlink() and fifo.exists()


def test_every_csv_cell_that_could_run_as_a_formula_is_escaped(tmp_path):
    frame = pd.DataFrame({"file": ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(1)", "ok.jpg"], "score": [1, 2, 3, 4, 5]})
    saved = pd.read_csv(write_csv(frame, tmp_path / "x.csv"), dtype=str)
    assert saved["file"].tolist() == ["'=cmd|' /C calc'!A0", "'+1", "'-2", "'@SUM(1)", "ok.jpg"]
    assert saved["score"].tolist() == ["1", "2", "3", "4", "5"]  # numbers stay numbers


def test_predict_escapes_file_names_and_refuses_a_fifo_output(small_dump, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(next((small_dump / "images").glob("*.jpg")), photos / "=HYPERLINK(1).jpg")
    config = tmp_path / "tiny.yaml"
    config.write_text("method: protonet\nfusion: image\nencoder: {name: clip, model: FSL-Tiny, pretrained: none}\n")
    common = [
        "predict",
        "--data",
        str(small_dump),
        "--config",
        str(config),
        "--images",
        str(photos),
        "--store-root",
        str(tmp_path / "store"),
        "--shots",
        "2",
    ]
    out = tmp_path / "p.csv"
    assert main([*common, "--out", str(out)]) == 0
    assert pd.read_csv(out, dtype=str)["file"].tolist() == ["'=HYPERLINK(1).jpg"]
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    assert main([*common, "--out", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err

    texts = tmp_path / "texts.csv"
    texts.write_bytes(b'file,text\n"unclosed,x\n')
    assert main([*common, "--out", str(out), "--texts", str(texts)]) == 2
    assert "is not a readable CSV" in capsys.readouterr().err


# Options and frozen episodes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["episodes", "--episodes", "0"],
        ["episodes", "--queries", "0"],
        ["episodes", "--seed", "-1"],
        ["predict", "--config", "x.yaml", "--images", "x", "--top-k", "0"],
        ["predict", "--config", "x.yaml", "--images", "x", "--shots", "-2"],
        ["demo", "--port", "70000"],
        ["embed", "--chunk-size", "1.5"],
    ],
)
def test_out_of_range_numbers_are_refused_by_name(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and argv[-2] in err and "Traceback" not in err


@pytest.fixture(scope="module")
def six_classes(tmp_path_factory) -> Path:
    """20 real products of 6 articleTypes: a split of 2 base, 1 val, 3 novel classes."""
    from tests.conftest import make_slice, pick_classes

    classes = pick_classes(["Tshirts", "Watches", "Casual Shoes", "Handbags", "Shirts", "Sports Shoes"], 6)
    return make_slice(tmp_path_factory.mktemp("six"), classes, 20)


def test_frozen_episodes_are_never_replaced_silently(six_classes, tmp_path, capsys):
    data = ["episodes", "--data", str(six_classes), "--stratify", "none", "--out", str(tmp_path), "--queries", "5"]
    assert main([*data, "--episodes", "20"]) == 0
    files = sorted(tmp_path.rglob("*.npz"))
    before = [f.read_bytes() for f in files]
    assert main([*data, "--episodes", "20"]) == 0 and "unchanged" in capsys.readouterr().err
    assert main([*data, "--episodes", "30"]) == 2
    assert "never replaced silently" in capsys.readouterr().err
    assert [f.read_bytes() for f in files] == before
    assert main([*data, "--episodes", "30", "--force"]) == 0
    assert [f.read_bytes() for f in files] != before


def test_a_split_with_one_class_gets_no_one_way_episode_set(six_classes, tmp_path, capsys):
    from fsl.episodes.sampler import EpisodeSampler

    dump = shutil.copytree(six_classes, tmp_path / "d")
    styles = pd.read_csv(dump / "styles.csv", dtype=str)
    styles[styles["articleType"].isin(["Tshirts", "Watches", "Handbags"])].to_csv(dump / "styles.csv", index=False)

    with pytest.raises(FslError, match="at least 2 classes"):
        EpisodeSampler(np.arange(10), np.array(["a"] * 10), ["a"], None, 1, 1)
    assert (
        main(
            [
                "episodes",
                "--data",
                str(dump),
                "--stratify",
                "none",
                "--out",
                str(tmp_path / "e"),
                "--episodes",
                "5",
                "--queries",
                "2",
            ]
        )
        == 0
    )
    said = capsys.readouterr().err  # the library's notes, as the CLI reports them
    assert "fsl: skipping" in said and "1 class(es)" in said


def test_a_port_in_use_is_a_message(tmp_path):
    import socket

    from fsl.apps.demo.layout import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(FslError, match=r"cannot serve on 127.0.0.1:\d+ .*--port N"):
            check_port_free("127.0.0.1", taken.getsockname()[1])


def test_ids_out_of_order_are_named_as_such_not_as_missing_ids():
    from fsl.store.rows import store_rows

    with pytest.raises(FslError, match="not in increasing order"):
        store_rows(np.array([5, 3, 1]), np.array([3]))
    with pytest.raises(FslError, match=r"lacks \(e.g. ids \[4\]\)"):
        store_rows(np.array([1, 3, 5]), np.array([4]))


def test_nan_rows_a_sampled_checksum_cannot_see_are_refused_when_gathered(twelve_classes, tmp_path):
    """NaN written into a store row (checksums recomputed, as a tool or a bad disk might leave them):
    evaluation refuses it, naming the product and the store, instead of reporting a wrong accuracy."""
    from fsl.config import EncoderConfig, ExperimentConfig
    from fsl.episodes.frozen import EpisodeSet
    from fsl.harness.experiment import run_experiment
    from fsl.paths import episode_set_path
    from fsl.store.manifest import array_record

    root, catalog = twelve_classes
    shutil.copytree(root / "store", tmp_path / "store")
    (path,) = [p for p in (tmp_path / "store").iterdir() if p.is_dir()]
    episodes = EpisodeSet.load(episode_set_path(catalog, "articleType", "novel-5w5s", root / "episodes")).episodes
    victim = int(episodes.query[0, 0])
    ids = np.load(path / "ids.npy")
    image = np.load(path / "image.npy", mmap_mode="r+")
    image[np.searchsorted(ids, victim)] = np.nan
    image.flush()
    del image
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"]["image"] = array_record(path / "image.npy")
    (path / "manifest.json").write_text(json.dumps(manifest))
    config = ExperimentConfig(
        name="pn",
        method="protonet",
        fusion="image",
        episodes=("novel-5w5s",),
        encoder=EncoderConfig("clip", "FSL-Tiny", "none"),
    )
    with pytest.raises(FslError, match=rf"NaN or infinite features \(e.g. id {victim}\).*fsl embed --verify"):
        run_experiment(config, catalog, Workspace(root / "episodes", tmp_path / "store"), progress=False)

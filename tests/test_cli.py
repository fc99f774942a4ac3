from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fsl.cli.main import main, report_to_stderr
from fsl.episodes.frozen import EpisodeSet
from tests.conftest import make_slice

TINY_CONFIG = """\
method: protonet
fusion: {fusion}
text_variant: masked-articleType
episodes: [novel-5w1s, novel-5w5s]
encoder: {{name: clip, model: FSL-Tiny, pretrained: none}}
"""


def test_the_cli_reports_library_notes_on_stderr_once_each(capsys):
    """The library logs; the CLI owns the one handler that writes "fsl: ..." lines to the stderr of the
    moment (however often main() runs in one process), and progress below a warning is shown too."""
    report_to_stderr()
    report_to_stderr()
    logging.getLogger("fsl.store.rows").warning("the cache x is damaged")
    logging.getLogger("fsl.harness.loop").info("step 0")
    logging.getLogger("other.library").warning("not ours")
    err = capsys.readouterr().err
    assert err.count("fsl: the cache x is damaged\n") == 1 and "fsl: step 0\n" in err and "fsl: not ours" not in err


def test_prepare_prints_a_summary_and_writes_the_report(small_dump, tmp_path, capsys):
    report = tmp_path / "report.csv"
    assert main(["prepare", "--data", str(small_dump), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "40 products from" in out and "catalog fingerprint" in out
    assert list(pd.read_csv(report).columns) == ["line", "id", "issue", "action", "detail"]


def test_missing_data_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.delenv("FSL_DATA", raising=False)
    done = subprocess.run(
        [sys.executable, "-m", "fsl.cli", "prepare", "--data", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "fsl prepare: error: No Fashion Product Images dump" in done.stderr
    assert "Traceback" not in done.stderr


def test_download_offline_fails_fast_and_says_where_to_put_a_dump(tmp_path, capsys):
    assert main(["download", "--dest", str(tmp_path / "dump")]) == 2
    err = capsys.readouterr().err
    assert "Put a dump there by hand" in err and str(tmp_path / "dump" / "styles.csv") in err
    assert not (tmp_path / "dump").exists()


@pytest.fixture(scope="module")
def twelve_class_dump(tmp_path_factory):
    from tests.conftest import real_styles

    counts = real_styles()["articleType"].value_counts()
    return make_slice(tmp_path_factory.mktemp("dump12"), list(counts.index[:12]), 20)


def test_episodes_eval_compare_end_to_end_and_reproducible(twelve_class_dump, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = ["--data", str(twelve_class_dump)]
    draw = [
        "episodes",
        *data,
        "--stratify",
        "none",
        "--episodes",
        "50",
        "--queries",
        "10",
        "--out",
        "eps",
        "--encoder",
        "clip",
        "--model",
        "FSL-Tiny",
        "--pretrained",
        "none",
        "--store-root",
        "store",
        "--near-duplicates",
        "0.9999",
    ]
    assert main(draw) == 0
    assert "fsl: near-duplicate photos (image cosine >= 0.9999, clip:FSL-Tiny" in capsys.readouterr().err
    files = sorted((tmp_path / "eps").glob("*/*.npz"))
    assert [f.name for f in files] == [
        "articleType-novel-5w1s.npz",
        "articleType-novel-5w5s.npz",
        "articleType-novel-allway-5s.npz",
        "articleType-select-5w1s.npz",  # the selection sets over base ∪ validation classes (too few for 15-way)
        "articleType-select-5w5s.npz",
        "articleType-select-allway-5s.npz",
        "articleType-val-allway-5s.npz",
    ]
    groups_file = files[0].parent / "near-duplicates.json"
    first = [f.read_bytes() for f in [*files, groups_file]]
    assert main(draw) == 0
    assert "near-duplicate photos" not in capsys.readouterr().err  # read back, not recomputed
    assert [f.read_bytes() for f in [*files, groups_file]] == first  # same config and seed: the same bytes
    loaded = EpisodeSet.load(files[0])
    assert len(loaded.episodes) == 50 and loaded.meta["near_duplicates"]["threshold"] == 0.9999
    assert main([*draw[:-1], "none"]) == 2  # no grouping would change the frozen sets: refused without --force
    assert "exists with other content" in capsys.readouterr().err

    for fusion in ("image", "concat"):
        (tmp_path / f"tiny-{fusion}.yaml").write_text(TINY_CONFIG.format(fusion=fusion))
    capsys.readouterr()
    run = [
        "eval",
        "tiny-image.yaml",
        "tiny-concat.yaml",
        *data,
        "--episodes-dir",
        "eps",
        "--store-root",
        "store",
        "--results",
        "res",
        "--runs",
        "runs",
    ]
    assert main(run) == 0
    out = capsys.readouterr().out
    assert "tiny-image" in out and "tiny-concat" in out and "accuracy % (95% CI)" in out and " ± " in out
    first_results = pd.read_csv(tmp_path / "res" / "tiny-image.csv")
    assert len(first_results) == 100 and first_results["accuracy"].between(0, 1).all()
    assert main(run) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "res" / "tiny-image.csv"), first_results)
    assert any((tmp_path / "runs" / "eval" / "tiny-image").rglob("events.out.tfevents.*"))  # runs/<command>

    assert main(["compare", "res/tiny-image.csv", "res/tiny-concat.csv", "--plot", "cmp.png"]) == 0
    out = capsys.readouterr().out
    assert "paired differences" in out and (tmp_path / "cmp.png").stat().st_size > 1000


def test_eval_refuses_a_config_with_an_unknown_key_before_any_work(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("method: protonet\nshots: 5\n")
    assert main(["eval", str(tmp_path / "bad.yaml"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "unknown key 'shots'" in capsys.readouterr().err


def test_quickstart_runs_end_to_end_on_the_sample_and_says_numbers_mean_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(Path(__file__).resolve().parents[1] / "experiments", tmp_path / "experiments")
    env = {k: v for k, v in os.environ.items() if k != "FSL_DATA"}
    (tmp_path / "results/quickstart").mkdir(parents=True)
    (tmp_path / "results/quickstart/results.csv").write_text("a real run's results\n")
    done = subprocess.run(
        [sys.executable, "-m", "fsl.cli", "quickstart"],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("SYNTHETIC SAMPLE CATALOG") == 2
    results = pd.read_csv(tmp_path / "results/quickstart-synthetic/results.csv")
    assert set(results["method"]) == {"protonet-image", "protonet-text-masked", "protonet-fused-masked"}
    assert (tmp_path / "results/quickstart-synthetic/accuracy.png").is_file()
    assert (tmp_path / "results/quickstart/results.csv").read_text() == "a real run's results\n"  # never replaced
    closing = done.stdout.rstrip().splitlines()[-5:]
    assert closing[0] == "What next (each command: --help):"
    assert [line.split()[1] for line in closing[1:4]] == ["eval", "train", "demo"] and "tensorboard" in closing[4]
    assert "Loading weights" not in done.stdout + done.stderr and "Loaded pretrained" not in done.stdout
    assert len(list((tmp_path / "runs" / "eval").rglob("events.out.tfevents.*"))) >= 3  # what `tensorboard` shows


def test_predict_classifies_a_folder_into_a_csv_and_reports_bad_files(small_dump, tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    photos = sorted((small_dump / "images").glob("*.jpg"))[:3]
    for photo in photos:
        shutil.copy(photo, images / photo.name)
    (images / "broken.jpg").write_text("no image")
    (tmp_path / "texts.csv").write_text(f"file,text\n{photos[0].name},Puma Men Grey T-shirt\n")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.format(fusion="concat"))
    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                "--config",
                str(tmp_path / "tiny.yaml"),
                "--data",
                str(small_dump),
                "--images",
                str(images),
                "--texts",
                str(tmp_path / "texts.csv"),
                "--out",
                str(out),
                "--top-k",
                "2",
                "--store-root",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == [
        "file",
        "answer",
        "level",
        "candidates",
        "score",
        "looks_like",
        "label_1",
        "confidence_1",
        "label_2",
        "confidence_2",
        "nearest_id",
        "nearest_label",
        "error",
    ]
    assert table.loc[table["file"] == "broken.jpg", "error"].item().startswith("broken.jpg is not an image")
    good = table[table["file"] != "broken.jpg"]
    assert len(good) == 3 and set(good["label_1"]) <= {"Tshirts", "Watches", "Casual Shoes", "Handbags"}
    assert (good["confidence_1"] >= good["confidence_2"]).all()
    assert ((good["level"] == "unknown") == (good["answer"] == "unknown")).all()  # no two classes share a parent here
    assert set(good["level"]) <= {"category", "unknown"} and (good["candidates"] == "").all()
    (tmp_path / "texts.csv").write_text("name,description\n")
    assert (
        main(
            [
                "predict",
                "--config",
                str(tmp_path / "tiny.yaml"),
                "--data",
                str(small_dump),
                "--images",
                str(images),
                "--texts",
                str(tmp_path / "texts.csv"),
                "--store-root",
                str(tmp_path / "store"),
            ]
        )
        == 2
    )
    assert "needs the columns file,text" in capsys.readouterr().err
    argv = ["predict", "--config", str(tmp_path / "tiny.yaml"), "--images", str(images), "--no-catalog-negatives"]
    assert main(argv) == 2  # checked before any work: a catalog head answers among the catalog's classes
    assert "--no-catalog-negatives needs --support DIR" in capsys.readouterr().err


def test_every_help_renders_clean(capsys):
    """No literal %%, no option without a word of help, in `fsl --help` and every subcommand's."""
    from fsl.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in [("fsl", parser), *commands.items()]:
        text = sub.format_help()
        assert "%%" not in text, name
        for action in sub._actions:
            if action.option_strings or action.dest != "help":
                assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}"
    assert ".bmp" in commands["predict"].format_help() and "FSL_CACHE" in commands["eval"].format_help()

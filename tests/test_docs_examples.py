"""Every fenced Python and shell example of README.md, docs/usage.md and docs/methods.md, run as written
(parsed by sybil), in a temporary folder holding what the examples name: support/ and query/ folders
and belt photos from the real data, the experiments, and as FSL_DATA a small real catalog (39
classes x 20 photos) with its episode sets, so that no example can drift from the code. What would
take the full dataset takes this slice instead; the set-up commands on the README's first screen are
what CI runs itself, and marked so (`<!-- skip: next -->`)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import SkipTest

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from tests.conftest import data_source, free_port, make_slice, real_styles

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/usage.md", "docs/methods.md"]
SERVERS = ("fsl demo",)  # commands that serve until stopped: each must come up, then it is stopped
COMMAND_TIMEOUT_S = 600


def shell_lines(source: str) -> list[str]:
    """The commands of a shell block: continued lines joined, comments and blank lines dropped."""
    joined = source.replace("\\\n", " ")
    return [line for line in (raw.strip() for raw in joined.splitlines()) if line and not line.startswith("#")]


def run_shell(example) -> None:
    """Each command of a bash block in the workspace (the current folder), as a user types it."""
    for line in shell_lines(example.parsed):
        command = ["bash", "-c", line]
        if line.startswith(SERVERS):  # comes up on a free port, answers, and is stopped
            command = ["bash", "-c", f"{line} --port {free_port()}"]
            serve(command, line)
            continue
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"


def serve(command: list[str], line: str) -> None:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said, deadline = [], time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            text = process.stdout.readline()
            said.append(text)
            if text.startswith("demo ready") or (not text and process.poll() is not None):
                break
    finally:
        process.kill()
        process.wait()
    assert any(text.startswith("demo ready") for text in said), f"`{line}` did not serve:\n{''.join(said)[-3000:]}"


SYBIL = Sybil(parsers=[SkipParser(), PythonCodeBlockParser(), CodeBlockParser("bash", run_shell)])


def photos_of(article_type: str, skip: int, count: int) -> list[Path]:
    styles = real_styles()
    ids = styles[styles["articleType"] == article_type].sort_values("id")["id"].iloc[skip : skip + count]
    return [data_source() / "images" / f"{product}.jpg" for product in ids]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder the examples run in, with every file and folder they name."""
    root = tmp_path_factory.mktemp("examples")
    counts = real_styles()["articleType"].value_counts()
    make_slice(root / "dump", list(counts[counts >= 20].index), 20)
    for category in ("Watches", "Handbags", "Sunglasses"):  # photos beyond the 20 the slice's catalog holds
        (root / "support" / category).mkdir(parents=True)
        for photo in photos_of(category, 20, 5):
            shutil.copy(photo, root / "support" / category)
    (root / "query").mkdir()
    for name, (category, skip) in {"a.jpg": ("Watches", 25), "b.jpg": ("Handbags", 25), "c.jpg": ("Sunglasses", 25),
                                   "d.jpg": ("Flip Flops", 20)}.items():  # fmt: skip
        shutil.copy(photos_of(category, skip, 1)[0], root / "query" / name)
    for i, photo in enumerate(photos_of("Belts", 20, 3), 1):
        shutil.copy(photo, root / f"belt-{i}.jpg")
    os.symlink(ROOT / "experiments", root / "experiments")
    env = {**os.environ, "FSL_DATA": str(root / "dump"), "FSL_CACHE": ".fsl", "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `fsl` as the set-up installs it
    drawn = subprocess.run(["fsl", "episodes", "--episodes", "100"], cwd=root, env=env, capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    return root


@pytest.mark.real_data
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_example_runs_as_written(document, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("FSL_DATA", str(workspace / "dump"))
    monkeypatch.setenv("FSL_CACHE", ".fsl")  # the same folder as the Python examples' (the tests' own setting)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    ran = skipped = 0
    for example in SYBIL.parse(ROOT / document):
        try:
            example.evaluate()
        except SkipTest:
            skipped += 1
            continue
        except Exception as error:
            pytest.fail(f"{document}, line {example.line}: {type(error).__name__}: {error}\n{example.parsed}"[:4000])
        ran += not isinstance(example.parsed, tuple)  # a code block, not a skip directive
    assert ran >= 2 if document != "docs/methods.md" else ran == 1, (ran, skipped)
    print(f"{document}: {ran} examples ran, {skipped} marked not to run here ({shlex.quote(str(workspace))})")

"""Every on-disk location fsl reads or writes: caches, feature stores, episode sets and their class
splits, checkpoints, calibrations. Nothing else builds these paths, so a layout change is made here."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import platformdirs

LEGACY_CACHE_DIR = Path(".fsl")  # where fsl kept its caches before: the folder it ran from
USER_CACHE_DIR = Path(platformdirs.user_cache_dir("fsl", appauthor=False))  # ~/.cache/fsl on Linux


def cache_dir() -> tuple[Path, str]:
    """Where every cache lives (feature stores, embeddings of your photos, ONNX exports, reports), and
    a note when it is not where the docs say: $FSL_CACHE when set; else a ./.fsl an older fsl left in
    the folder it runs from (used as it is: nothing is moved silently); else the platform's user cache
    folder, as pip, torch hub and Hugging Face use, so every working folder shares one cache."""
    if os.environ.get("FSL_CACHE"):
        return Path(os.environ["FSL_CACHE"]), ""
    if LEGACY_CACHE_DIR.is_dir():
        return LEGACY_CACHE_DIR, (
            f"fsl: note: using the caches in {LEGACY_CACHE_DIR.resolve()}, where an older fsl kept them; the "
            f"default is now {USER_CACHE_DIR}, shared by every folder (move them there, or set FSL_CACHE)"
        )
    return USER_CACHE_DIR, ""


CACHE_DIR, CACHE_NOTE = cache_dir()  # feature stores, reports, the synthetic sample, your photos' features
FEATURES_ROOT = CACHE_DIR / "features"
ONNX_DIR = CACHE_DIR / "onnx"
SAMPLE_DIR = CACHE_DIR / "sample"
SAMPLE_EPISODES_DIR = CACHE_DIR / "episodes"  # the synthetic sample's episode sets, apart from the real ones
PREPARE_REPORT = CACHE_DIR / "prepare-report.csv"
DEMO_SAVED_DIR = CACHE_DIR / "demo"  # the demo's saved category sets: one support folder (and its zip) each

DEFAULT_EPISODES_DIR = Path("episodes")
DEFAULT_CHECKPOINTS = Path("checkpoints")
ALIGN_DIR = DEFAULT_CHECKPOINTS / "align"
ADAPT_DIR = DEFAULT_CHECKPOINTS / "adapt"
# Calibrations: the ones shipped with the package (fitted by `fsl calibrate` on validation classes), and
# a user's own under the cache, looked up first. Both are found from any working directory.
SHIPPED_CALIBRATION_DIR = Path(__file__).parent / "calibration"
USER_CALIBRATION_DIR = CACHE_DIR / "calibration"
# Known negatives (each catalog class's mean features, by encoder): shipped ones, and a user's own first.
SHIPPED_NEGATIVES_DIR = Path(__file__).parent / "negatives"
USER_NEGATIVES_DIR = CACHE_DIR / "negatives"
CONTENT_CACHE_DIR = CACHE_DIR / "embeddings"  # features of users' own photos and texts, by content
RESULTS_DIR = Path("results")
PREDICTIONS_FILE = RESULTS_DIR / "predictions.csv"  # `fsl predict --out`
COMPARE_PLOT = RESULTS_DIR / "compare.png"  # `fsl compare --plot`
RUNS_DIR = Path("runs")  # TensorBoard logs: runs/<command>, e.g. runs/train (Workspace.runs_of)
NEAR_DUPLICATES_FILE = "near-duplicates.json"
DIGESTS_FILE = "digests.json"  # each frozen episode file's digest, recorded when it was drawn


class HasFingerprint(Protocol):
    """A catalog, as far as paths care: its content's fingerprint."""

    fingerprint: str


def split_root(root: str | os.PathLike, split_seed: int) -> Path:
    """Where the files of class split `split_seed` live under an episodes (or checkpoints, runs) root:
    split 0 at the root itself (as before several splits existed), split s in root/split<s>, so every
    function that takes a root works on any split unchanged."""
    return Path(root) if split_seed == 0 else Path(root) / f"split{split_seed}"


def episodes_dir_for(catalog: HasFingerprint, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> Path:
    """Episode sets live under episodes/<catalog fingerprint>/, so each catalog finds its own."""
    return Path(root) / catalog.fingerprint


def split_file(
    catalog: HasFingerprint, column: str, split_seed: int, root: str | os.PathLike = DEFAULT_EPISODES_DIR
) -> Path:
    """The CSV of a class split (class, count, split, parent) under one split's episodes root."""
    return episodes_dir_for(catalog, root) / f"{column}-seed{split_seed}-split.csv"


def episode_set_path(
    catalog: HasFingerprint, column: str, name: str, root: str | os.PathLike = DEFAULT_EPISODES_DIR
) -> Path:
    """A frozen episode set: `novel-5w5s` of articleType is articleType-novel-5w5s.npz."""
    return episodes_dir_for(catalog, root) / f"{column}-{name}.npz"


def episode_digests_path(catalog: HasFingerprint, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> Path:
    return episodes_dir_for(catalog, root) / DIGESTS_FILE


def near_duplicates_path(catalog: HasFingerprint, root: str | os.PathLike = DEFAULT_EPISODES_DIR) -> Path:
    return episodes_dir_for(catalog, root) / NEAR_DUPLICATES_FILE


def available_splits(
    catalog: HasFingerprint, root: str | os.PathLike = DEFAULT_EPISODES_DIR, column: str = "articleType"
) -> list[int]:
    """The split seeds drawn for this catalog (`fsl episodes --split-seeds ...`), 0 first."""
    seeds = [0] if split_file(catalog, column, 0, root).is_file() else []
    for folder in sorted(Path(root).glob("split*")):
        seed = folder.name.removeprefix("split")
        if seed.isdigit() and int(seed) > 0 and split_file(catalog, column, int(seed), folder).is_file():
            seeds.append(int(seed))
    return sorted(seeds)


@dataclass(frozen=True)
class Workspace:
    """Where fsl's jobs read and write, passed whole and by name (`workspace=`) rather than as five
    roots in five orders: episode sets and their class splits, feature stores, trained heads (and the
    alignments and adaptations beside them), results files, TensorBoard logs. It holds roots only;
    class split s's folders come from the methods below (split 0 at the root, split s in split<s>/),
    so no parameter means a root in one function and a split's folder in another. The CLI builds one
    from its flags in one place (fsl/cli/common.py: workspace_from). Caches follow $FSL_CACHE."""

    episodes: Path = DEFAULT_EPISODES_DIR
    features: Path = FEATURES_ROOT
    checkpoints: Path = DEFAULT_CHECKPOINTS
    results: Path = RESULTS_DIR
    runs: Path = RUNS_DIR

    def __post_init__(self) -> None:
        for field in fields(self):  # str or PathLike in, Path out
            object.__setattr__(self, field.name, Path(getattr(self, field.name)))

    def episodes_of(self, split_seed: int) -> Path:
        """Class split `split_seed`'s episode sets and split file."""
        return split_root(self.episodes, split_seed)

    def checkpoints_of(self, split_seed: int) -> Path:
        """The heads trained on class split `split_seed`."""
        return split_root(self.checkpoints, split_seed)

    def runs_of(self, command: str, split_seed: int = 0) -> Path:
        """TensorBoard logs of `fsl COMMAND` on one class split: runs/<command>[/split<s>]."""
        return split_root(self.runs / command, split_seed)

    @property
    def alignments(self) -> Path:
        return self.checkpoints / ALIGN_DIR.name

    @property
    def adaptations(self) -> Path:
        return self.checkpoints / ADAPT_DIR.name

    @property
    def analysis(self) -> Path:
        """`fsl analyse`'s tables and pictures, a folder per config."""
        return self.results / "analysis"


def checkpoint_dir(name: str, root: str | os.PathLike = DEFAULT_CHECKPOINTS) -> Path:
    """A trained head's folder (its best/ and last/ checkpoints) under one split's checkpoints root."""
    return Path(root) / name


def store_path(root: str | os.PathLike, encoder_id: str, catalog_fingerprint: str) -> Path:
    """The store's key: encoder id and catalog content, so a changed catalog gets a new store."""
    return Path(root) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', encoder_id)}-{catalog_fingerprint}"


def calibration_dirs(chosen: str | os.PathLike | None = None) -> list[Path]:
    """Where calibrations are looked up: only `chosen` (--calibration-dir) when given, else the user's
    own, then the shipped ones."""
    return [Path(chosen)] if chosen is not None else [USER_CALIBRATION_DIR, SHIPPED_CALIBRATION_DIR]


def negatives_dirs(chosen: str | os.PathLike | None = None) -> list[Path]:
    """Where known negatives are looked up: only `chosen` when given, else the user's own, then the shipped."""
    return [Path(chosen)] if chosen is not None else [USER_NEGATIVES_DIR, SHIPPED_NEGATIVES_DIR]


def negatives_path(root: str | os.PathLike, encoder_id: str) -> Path:
    """One encoder's known negatives file under a negatives folder."""
    return Path(root) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', encoder_id)}.safetensors"


def content_cache_dir(encoder_id: str, root: str | os.PathLike | None = None) -> Path:
    """One encoder's features of files and texts by content digest (fsl/store/content.py)."""
    return Path(root or CONTENT_CACHE_DIR) / re.sub(r"[^A-Za-z0-9.+-]+", "_", encoder_id)


def onnx_path(encoder_id: str, tower: str = "", root: str | os.PathLike = ONNX_DIR) -> Path:
    """An encoder's exported tower (image: no suffix, text: "-text")."""
    return Path(root) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', encoder_id)}{tower}.onnx"


def prepared_path(dump: Path) -> Path:
    """The prepared catalog of a dump folder, keyed by the folder's resolved path."""
    key = hashlib.sha256(str(Path(dump).resolve()).encode()).hexdigest()[:16]
    return CACHE_DIR / "catalogs" / f"{key}.parquet"


def timing_path(command: str, name: str, root: str | os.PathLike = CACHE_DIR / "timings") -> Path:
    """How long `fsl COMMAND` took on a config last time (read back before the next run starts)."""
    return Path(root) / f"{command}-{name}.json"

"""Frozen, versioned episode sets: the test sets every head is judged on, saved as small npz files."""


from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fsl.episodes.near_duplicates import NearDuplicates
from fsl.episodes.sampler import Episodes, EpisodeSampler
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.files import write_bytes

SAMPLER_VERSION = 2  # 2: queries never share a near-duplicate group with their episode's support


# Frozen episode sets ---------------------------------------------------------------------------

def file_digest(payload: bytes) -> str:
    """What results record of the episode file they ran on (16 hex digits of its sha256)."""
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass
class EpisodeSet:
    """Frozen episodes plus what they were drawn from, so every method sees the very same ones."""

    name: str
    episodes: Episodes
    meta: dict  # catalog_fingerprint, label_column, split, classes, seed, sampler_version, near_duplicates, ...
    digest: str = ""  # sha256 (16 hex) of the saved file's bytes: results record which draw they ran on

    def check_catalog(self, fingerprint: str) -> None:
        if self.meta["catalog_fingerprint"] != fingerprint:
            raise FslError(f"episode set {self.name!r} was drawn from catalog {self.meta['catalog_fingerprint']}, "
                           f"not {fingerprint}; draw episodes for this catalog with `fsl episodes`")

    def save(self, path: str | os.PathLike) -> Path:
        return write_bytes(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """A deterministic .npz: fixed zip timestamps, so the same draw gives the same bytes."""
        arrays = {"support": self.episodes.support.astype(np.int32), "query": self.episodes.query.astype(np.int32),
                  "classes": self.episodes.classes.astype(np.int16),
                  "meta": np.array(json.dumps({**self.meta, "name": self.name}, sort_keys=True))}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for key, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                                 compress_type=zipfile.ZIP_DEFLATED)
        return out.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike, catalog_fingerprint: str | None = None) -> EpisodeSet:
        path = Path(path)
        if not path.is_file():
            raise FslError(f"no episode set at {path}; draw one with `fsl episodes`")
        payload = path.read_bytes()
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            episodes = Episodes(data["support"].astype(np.int64), data["query"].astype(np.int64),
                                data["classes"].astype(np.int64), meta["n_way"], meta["k_shot"], meta["q_query"])
        episode_set = cls(meta.pop("name"), episodes, meta, file_digest(payload))
        if catalog_fingerprint is not None:
            episode_set.check_catalog(catalog_fingerprint)
        return episode_set


def draw_episode_set(name: str, ids: np.ndarray, labels: pd.Series, split: ClassSplit, split_name: str,
                     catalog_fingerprint: str, n_way: int | None, k_shot: int, q_query: int,
                     n_episodes: int, seed: int, near_duplicates: NearDuplicates | None = None) -> EpisodeSet:
    classes = split.classes(split_name)
    groups = None if near_duplicates is None else near_duplicates.group_index(ids)
    sampler = EpisodeSampler(ids, labels, classes, n_way, k_shot, q_query, seed, groups)
    meta = {"catalog_fingerprint": catalog_fingerprint, "label_column": split.column, "split": split_name,
            "split_seed": split.seed, "classes": classes, "seed": seed, "sampler_version": SAMPLER_VERSION,
            "n_way": sampler.n_way, "k_shot": k_shot, "q_query": q_query, "episodes": n_episodes,
            "near_duplicates": None if near_duplicates is None else near_duplicates.describe()}
    return EpisodeSet(name, sampler.sample(n_episodes), meta)


# name: (split, n_way or None for all-way, k_shot)
STANDARD_BENCHMARKS = {
    "novel-5w1s": ("novel", 5, 1), "novel-5w5s": ("novel", 5, 5), "novel-15w5s": ("novel", 15, 5),
    "val-5w5s": ("val", 5, 5), "novel-allway-5s": ("novel", None, 5),  # the original notebook's setting
    "val-allway-5s": ("val", None, 5),  # every validation class: open-set calibration (fsl calibrate)
}

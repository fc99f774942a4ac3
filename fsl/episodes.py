"""Class splits, the batched episodic sampler, and frozen EpisodeSets saved under episodes/.

Episodes are product ids (not store rows), so one file serves every encoder's store of the same
catalog; a file records the catalog fingerprint and is refused against any other catalog.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsl import FslError
from fsl.io import escape_cell, write_bytes

SAMPLER_VERSION = 1
DEFAULT_FRACTIONS = (0.4, 0.15, 0.45)  # base, val, novel: the 39 real classes with >= 20 photos leave 17 novel, enough for 15-way
SPLITS = ("base", "val", "novel")


# Class splits ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassSplit:
    """Disjoint base / val / novel classes of one label column, with the counts behind them."""

    column: str
    seed: int
    min_count: int
    table: pd.DataFrame  # columns: class, count, split, parent

    def classes(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise FslError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return sorted(self.table.loc[self.table["split"] == split, "class"])

    @property
    def name(self) -> str:
        return f"{self.column}-seed{self.seed}"

    def to_bytes(self) -> bytes:
        return self.table.map(escape_cell).to_csv(index=False).encode()


def split_classes(labels: pd.Series, min_count: int, seed: int = 0,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                  parents: pd.Series | None = None) -> ClassSplit:
    """Seeded split of the classes with >= min_count examples into base / val / novel.

    With `parents` (e.g. masterCategory), each parent's classes are split on their own, so every
    split sees every parent that has at least three eligible classes.
    """
    counts = labels.value_counts()
    eligible = counts[counts >= min_count]
    if eligible.empty:
        raise FslError(f"no {labels.name} class has {min_count} examples (largest: "
                       f"{counts.idxmax()} with {counts.max()})")
    parent_of = (parents.groupby(labels).agg(lambda s: s.mode().iloc[0]) if parents is not None
                 else pd.Series("", index=eligible.index))
    rng = np.random.default_rng(seed)
    rows = []
    for parent, group in sorted(pd.Series(eligible.index).groupby(parent_of.reindex(eligible.index).values)):
        classes = sorted(group)
        rng.shuffle(classes)
        n_novel = round(fractions[2] * len(classes))
        n_val = round(fractions[1] * len(classes))
        if len(classes) >= 3:  # every split gets at least one class of this parent
            n_novel, n_val = max(n_novel, 1), max(n_val, 1)
            n_novel = min(n_novel, len(classes) - 1 - n_val)
        for i, name in enumerate(classes):
            split = "novel" if i < n_novel else "val" if i < n_novel + n_val else "base"
            rows.append({"class": name, "count": int(eligible[name]), "split": split, "parent": parent})
    table = pd.DataFrame(rows).sort_values(["split", "parent", "class"], kind="stable").reset_index(drop=True)
    return ClassSplit(str(labels.name), seed, min_count, table)


# The sampler -----------------------------------------------------------------------------------

@dataclass
class Episodes:
    """A batch of N-way K-shot Q-query episodes as product ids; labels are 0..N-1 per episode."""

    support: np.ndarray  # [E, N*K] product ids, class-major
    query: np.ndarray  # [E, N*Q] product ids, class-major
    classes: np.ndarray  # [E, N] index into the class list
    n_way: int
    k_shot: int
    q_query: int

    def __len__(self) -> int:
        return len(self.support)

    @property
    def support_labels(self) -> np.ndarray:  # [N*K]
        return np.repeat(np.arange(self.n_way), self.k_shot)

    @property
    def query_labels(self) -> np.ndarray:  # [N*Q]
        return np.repeat(np.arange(self.n_way), self.q_query)


class EpisodeSampler:
    """Draws many episodes at once with tensor ops: no Python loop over episodes or classes."""

    def __init__(self, ids: np.ndarray, labels: pd.Series | np.ndarray, classes: list[str],
                 n_way: int | None, k_shot: int, q_query: int, seed: int = 0):
        labels = np.asarray(labels)
        self.class_names = list(classes)
        self.n_way = len(classes) if n_way is None else n_way  # None: all-way, every class
        self.k_shot, self.q_query = k_shot, q_query
        members = [np.asarray(ids)[labels == c] for c in self.class_names]
        counts = np.array([len(m) for m in members])
        short = [f"{c} ({n})" for c, n in zip(self.class_names, counts) if n < k_shot + q_query]
        if self.n_way < 2:
            raise FslError(f"an episode needs at least 2 classes to choose between; got {self.n_way}-way "
                           f"over {len(self.class_names)} class(es)")
        if type(k_shot) is not int or type(q_query) is not int or k_shot < 1 or q_query < 1:
            raise FslError(f"shots and queries must be whole numbers >= 1, got {k_shot} and {q_query}")
        if self.n_way > len(self.class_names):
            raise FslError(f"{self.n_way}-way episodes need {self.n_way} classes but the split has "
                           f"{len(self.class_names)}: {', '.join(self.class_names)}")
        if short:
            raise FslError(f"{k_shot}-shot {q_query}-query episodes need {k_shot + q_query} examples per class; "
                           f"too few in: {', '.join(short)}. Use fewer shots/queries or drop those classes.")
        self.counts = torch.as_tensor(counts)
        self.members = torch.zeros(len(members), counts.max(), dtype=torch.int64)
        for i, m in enumerate(members):
            self.members[i, : len(m)] = torch.as_tensor(m, dtype=torch.int64)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n_episodes: int) -> Episodes:
        n_classes, width = self.members.shape
        picked = torch.rand(n_episodes, n_classes, generator=self.generator).topk(self.n_way, dim=1).indices
        keys = torch.rand(n_episodes, self.n_way, width, generator=self.generator)
        keys.masked_fill_(torch.arange(width) >= self.counts[picked].unsqueeze(-1), 2.0)  # padding last
        slots = keys.topk(self.k_shot + self.q_query, dim=-1, largest=False).indices  # [E, N, K+Q]
        chosen = self.members[picked.unsqueeze(-1), slots]
        support = chosen[..., : self.k_shot].reshape(n_episodes, -1)
        query = chosen[..., self.k_shot:].reshape(n_episodes, -1)
        return Episodes(support.numpy(), query.numpy(), picked.numpy(), self.n_way, self.k_shot, self.q_query)


# Frozen episode sets ---------------------------------------------------------------------------

@dataclass
class EpisodeSet:
    """Frozen episodes plus what they were drawn from, so every method sees the very same ones."""

    name: str
    episodes: Episodes
    meta: dict  # catalog_fingerprint, label_column, split, classes, seed, sampler_version, ...

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
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            episodes = Episodes(data["support"].astype(np.int64), data["query"].astype(np.int64),
                                data["classes"].astype(np.int64), meta["n_way"], meta["k_shot"], meta["q_query"])
        episode_set = cls(meta.pop("name"), episodes, meta)
        if catalog_fingerprint is not None:
            episode_set.check_catalog(catalog_fingerprint)
        return episode_set


def draw_episode_set(name: str, ids: np.ndarray, labels: pd.Series, split: ClassSplit, split_name: str,
                     catalog_fingerprint: str, n_way: int | None, k_shot: int, q_query: int,
                     n_episodes: int, seed: int) -> EpisodeSet:
    classes = split.classes(split_name)
    sampler = EpisodeSampler(ids, labels, classes, n_way, k_shot, q_query, seed)
    meta = {"catalog_fingerprint": catalog_fingerprint, "label_column": split.column, "split": split_name,
            "split_seed": split.seed, "classes": classes, "seed": seed, "sampler_version": SAMPLER_VERSION,
            "n_way": sampler.n_way, "k_shot": k_shot, "q_query": q_query, "episodes": n_episodes}
    return EpisodeSet(name, sampler.sample(n_episodes), meta)


# name: (split, n_way or None for all-way, k_shot)
STANDARD_BENCHMARKS = {
    "novel-5w1s": ("novel", 5, 1), "novel-5w5s": ("novel", 5, 5), "novel-15w5s": ("novel", 15, 5),
    "val-5w5s": ("val", 5, 5), "novel-allway-5s": ("novel", None, 5),  # the original notebook's setting
    "val-allway-5s": ("val", None, 5),  # every validation class: open-set calibration (fsl calibrate)
}

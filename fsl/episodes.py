"""Class splits, the batched episodic sampler, and frozen EpisodeSets saved under episodes/.

Episodes are product ids (not store rows), so one file serves every encoder's store of the same
catalog; a file records the catalog fingerprint and is refused against any other catalog.
"""

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
import torch

from fsl import FslError
from fsl.io import escape_cell, write_bytes

SAMPLER_VERSION = 2  # 2: queries never share a near-duplicate group with their episode's support
NEAR_DUPLICATE_THRESHOLD = 0.98  # image cosine; why: see near_duplicate_groups
NEAR_DUPLICATES_FILE = "near-duplicates.json"
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


def distinct_photos(labels, groups: np.ndarray | None = None) -> pd.Series:
    """Products per label, near-duplicates (a shared group number) counted once."""
    labels = np.asarray(labels)
    return pd.Series(np.arange(len(labels)) if groups is None else np.asarray(groups)).groupby(labels).nunique()


def split_classes(labels: pd.Series, min_count: int, seed: int = 0,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                  parents: pd.Series | None = None, groups: np.ndarray | None = None) -> ClassSplit:
    """Seeded split of the classes with >= min_count examples into base / val / novel.

    With `parents` (e.g. masterCategory), each parent's classes are split on their own, so every
    split sees every parent that has at least three eligible classes. With near-duplicate `groups`,
    a class also needs min_count distinct photos (groups), so its episodes can always find queries
    that are no twin of the support.
    """
    counts = labels.value_counts()
    distinct = distinct_photos(labels, groups)
    eligible = counts[(counts >= min_count) & (distinct.reindex(counts.index) >= min_count)]
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


# Near-duplicate groups ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NearDuplicates:
    """Products whose photos are (nearly) the same shot: groups of two or more product ids.

    One group must never be split between the support and the queries of an episode, or the query
    is answered by its own twin. Computed once per catalog from one store's image features and saved
    beside the episode sets it shaped (they are product ids, so every encoder's store shares them)."""

    groups: tuple[tuple[int, ...], ...]  # each sorted; sorted by first id
    threshold: float
    encoder_id: str
    catalog_fingerprint: str

    def group_index(self, ids: np.ndarray) -> np.ndarray:
        """[P] a group number per product: shared within a group, unique otherwise."""
        ids = np.asarray(ids)
        index = np.arange(len(ids), dtype=np.int64)
        position = pd.Series(index, index=ids)
        for group in self.groups:
            rows = position.reindex(group).dropna().to_numpy(dtype=np.int64)  # members this id list has
            if len(rows):
                index[rows] = rows.min()
        return index

    def to_bytes(self) -> bytes:
        payload = {"threshold": self.threshold, "encoder_id": self.encoder_id,
                   "catalog_fingerprint": self.catalog_fingerprint, "groups": [list(g) for g in self.groups]}
        return (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def describe(self) -> dict:
        """What an episode set records of the grouping it was drawn with."""
        return {"threshold": self.threshold, "encoder_id": self.encoder_id, "groups": len(self.groups),
                "products": sum(map(len, self.groups)), "sha256": self.digest}

    @classmethod
    def load(cls, path: str | os.PathLike, catalog_fingerprint: str) -> NearDuplicates:
        try:
            payload = json.loads(Path(path).read_text())
            found = cls(tuple(tuple(int(i) for i in g) for g in payload["groups"]), float(payload["threshold"]),
                        str(payload["encoder_id"]), str(payload["catalog_fingerprint"]))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise FslError(f"{path}: the near-duplicate groups cannot be read ({error}); remove the file and "
                           "run `fsl episodes` again to recompute them") from None
        if found.catalog_fingerprint != catalog_fingerprint:
            raise FslError(f"{path} groups the products of catalog {found.catalog_fingerprint}, not "
                           f"{catalog_fingerprint}; remove it and run `fsl episodes` again")
        return found


def near_duplicate_groups(ids: np.ndarray, image_features: np.ndarray, encoder_id: str, catalog_fingerprint: str,
                          threshold: float = NEAR_DUPLICATE_THRESHOLD) -> NearDuplicates:
    """Connected components of the graph "image cosine >= threshold".

    Why 0.98 by default: on the offline image features of the 9,583 real photos, 2.5% of photos have
    a neighbour at >= 0.999, 2.6% at >= 0.99, 2.8% at >= 0.98, then the share climbs steeply (3.5% at
    0.97, 10.3% at 0.95): the plateau down to 0.98 is the same shot again (colour variants photographed
    identically), below it similar products begin."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import radius_neighbors_graph

    if not 0.0 < threshold <= 1.0:
        raise FslError(f"the near-duplicate threshold is an image cosine in (0, 1], got {threshold}")
    ids = np.asarray(ids)
    graph = radius_neighbors_graph(np.asarray(image_features, dtype=np.float32), radius=1.0 - threshold + 1e-6,
                                   metric="cosine", include_self=False)
    _, component = connected_components(graph, directed=False)
    members = pd.Series(ids).groupby(component).agg(lambda g: tuple(sorted(int(i) for i in g)))
    groups = sorted(g for g in members if len(g) > 1)
    return NearDuplicates(tuple(groups), float(threshold), encoder_id, catalog_fingerprint)


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
    """Draws many episodes at once with tensor ops: no Python loop over episodes or classes.

    Each class's products get random keys; the K smallest are the support. With `groups` (a group
    number per product, shared by near-duplicates), a query is never in a group the episode's
    support touches: the queries are the Q smallest keys among the rest. Without near-duplicates
    this is exactly the K + Q smallest keys (sampler version 1's episodes)."""

    def __init__(self, ids: np.ndarray, labels: pd.Series | np.ndarray, classes: list[str],
                 n_way: int | None, k_shot: int, q_query: int, seed: int = 0, groups: np.ndarray | None = None):
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
        if groups is not None:
            distinct = distinct_photos(labels, groups)
            few = [f"{c} ({distinct.get(c, 0)})" for c in self.class_names if distinct.get(c, 0) < k_shot + q_query]
            if few:
                raise FslError(f"{k_shot}-shot {q_query}-query episodes need {k_shot + q_query} distinct photos per "
                               f"class (near-duplicates count once); too few in: {', '.join(few)}. Use fewer "
                               "shots/queries, drop those classes, or a higher --near-duplicates threshold")
        self.counts = torch.as_tensor(counts)
        self.members = torch.zeros(len(members), counts.max(), dtype=torch.int64)
        for i, m in enumerate(members):
            self.members[i, : len(m)] = torch.as_tensor(m, dtype=torch.int64)
        self.groups = None
        if groups is not None:  # group numbers 0..G-1 per member; padding: G, never taken
            _, numbered = np.unique(np.asarray(groups), return_inverse=True)
            self.n_groups = int(numbered.max()) + 1
            self.groups = torch.full(self.members.shape, self.n_groups, dtype=torch.int64)
            for i, c in enumerate(self.class_names):
                self.groups[i, : counts[i]] = torch.as_tensor(numbered[labels == c])
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n_episodes: int) -> Episodes:
        n_classes, width = self.members.shape
        picked = torch.rand(n_episodes, n_classes, generator=self.generator).topk(self.n_way, dim=1).indices
        keys = torch.rand(n_episodes, self.n_way, width, generator=self.generator)
        keys.masked_fill_(torch.arange(width) >= self.counts[picked].unsqueeze(-1), 2.0)  # padding last
        if self.groups is None:
            slots = keys.topk(self.k_shot + self.q_query, dim=-1, largest=False).indices  # [E, N, K+Q]
            support_slots, query_slots = slots[..., : self.k_shot], slots[..., self.k_shot:]
        else:
            support_slots = keys.topk(self.k_shot, dim=-1, largest=False).indices  # [E, N, K]
            groups = self.groups[picked]  # [E, N, W]
            taken = torch.zeros(n_episodes, self.n_groups + 1, dtype=torch.bool)
            taken.scatter_(1, groups.gather(-1, support_slots).flatten(1), True)
            taken[:, self.n_groups] = False
            keys.masked_fill_(taken.gather(1, groups.flatten(1)).view_as(keys), 3.0)  # the support and its twins
            query_slots = keys.topk(self.q_query, dim=-1, largest=False).indices
            short = keys.gather(-1, query_slots).amax(-1) >= 2.0  # [E, N]: fewer free products than queries
            if short.any():
                names = sorted({self.class_names[c] for c in picked[short].tolist()})
                raise FslError(f"after leaving out the near-duplicates of the support, too few products remain for "
                               f"{self.q_query} queries in: {', '.join(names)}. Use fewer shots/queries or drop "
                               "those classes")
        support = self.members[picked.unsqueeze(-1), support_slots].reshape(n_episodes, -1)
        query = self.members[picked.unsqueeze(-1), query_slots].reshape(n_episodes, -1)
        return Episodes(support.numpy(), query.numpy(), picked.numpy(), self.n_way, self.k_shot, self.q_query)


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

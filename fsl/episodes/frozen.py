"""Frozen, versioned episode sets: the test sets every head is judged on, saved as small npz files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
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
from fsl.files import ARRAY_READ_ERRORS, read_json, write_bytes

logger = logging.getLogger(__name__)

SAMPLER_VERSION = 2  # 2: queries never share a near-duplicate group with their episode's support


# Frozen episode sets ---------------------------------------------------------------------------


def _damaged(path: Path, what: str) -> FslError:
    return FslError(
        f"episode set {path} is damaged or was edited: {what}. Frozen sets are test sets: restore it "
        "(`git checkout` for the shipped ones) or draw it again with `fsl episodes --force`"
    )


def _repeats(rows: np.ndarray) -> int | None:
    """The first row (episode) holding a value twice, or None."""
    ordered = np.sort(rows, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    return int(np.flatnonzero(repeated)[0]) if repeated.any() else None


_UNVERIFIED: set[Path] = set()  # episode files already said to have no recorded digest


def digests_bytes(digests: dict[str, str]) -> bytes:
    """digests.json: episode file name -> the digest of its bytes, sorted, so a redraw writes the same bytes."""
    return (json.dumps(dict(sorted(digests.items())), indent=1) + "\n").encode()


def read_digests(path: Path) -> dict[str, str]:
    """The digests recorded beside a folder's episode files ({} where none were recorded)."""
    digests = read_json(path, "episode digests") if path.is_file() else {}
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise FslError(
            f"{path}: the episode digests are damaged; restore it or draw the sets again with `fsl episodes --force`"
        )
    return digests


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
            raise FslError(
                f"episode set {self.name!r} was drawn from catalog {self.meta['catalog_fingerprint']}, "
                f"not {fingerprint}; draw episodes for this catalog with `fsl episodes`"
            )

    def save(self, path: str | os.PathLike) -> Path:
        return write_bytes(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """A deterministic .npz: fixed zip timestamps, so the same draw gives the same bytes."""
        arrays = {
            "support": self.episodes.support.astype(np.int32),
            "query": self.episodes.query.astype(np.int32),
            "classes": self.episodes.classes.astype(np.int16),
            "meta": np.array(json.dumps({**self.meta, "name": self.name}, sort_keys=True)),
        }
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for key, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                archive.writestr(
                    zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                    buffer.getvalue(),
                    compress_type=zipfile.ZIP_DEFLATED,
                )
        return out.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike, catalog_fingerprint: str | None = None) -> EpisodeSet:
        """A frozen set, its structure checked (`check_structure`): a damaged or hand-edited file is a
        message naming it, never a traceback or a silently different accuracy."""
        path = Path(path)
        if not path.is_file():
            raise FslError(f"no episode set at {path}; draw one with `fsl episodes`")
        payload = path.read_bytes()
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {key: data[key] for key in ("support", "query", "classes")}
            episodes = Episodes(
                *(np.asarray(arrays[key]).astype(np.int64) for key in ("support", "query", "classes")),
                int(meta["n_way"]),
                int(meta["k_shot"]),
                int(meta["q_query"]),
            )
            episode_set = cls(str(meta.pop("name")), episodes, meta, file_digest(payload))
        except ARRAY_READ_ERRORS as error:
            raise _damaged(path, f"it cannot be read ({type(error).__name__}: {str(error)[:120]})") from None
        episode_set.check_structure(path)
        if catalog_fingerprint is not None:
            episode_set.check_catalog(catalog_fingerprint)
        return episode_set

    def check_structure(self, path: Path) -> None:
        """What every frozen set is: at least one episode; support [E, N*K], query [E, N*Q], classes
        [E, N] as its meta says; distinct classes from the set's class list; no product twice in an
        episode, so no query is also one of its support examples."""
        episodes, classes = self.episodes, self.meta.get("classes")
        n, k, q = episodes.n_way, episodes.k_shot, episodes.q_query
        if min(n, k, q) < 1 or not isinstance(classes, list) or len(classes) < n:
            raise _damaged(path, f"its meta is inconsistent (n_way {n}, k_shot {k}, q_query {q})")
        expected = {"support": (n * k), "query": (n * q), "classes": n}
        for key, width in expected.items():
            array = getattr(episodes, key)
            if array.ndim != 2 or array.shape[1] != width or len(array) != len(episodes.support):
                raise _damaged(path, f"its {key} array has shape {array.shape}, not [episodes, {width}]")
        if len(episodes) == 0:
            raise _damaged(path, "it has no episode")
        if episodes.classes.min() < 0 or episodes.classes.max() >= len(classes):
            raise _damaged(path, "it names classes outside its class list")
        problems = {
            "a class twice": _repeats(episodes.classes),
            "a product twice (a query among the support examples, or a support or query photo repeated)": _repeats(
                np.concatenate([episodes.support, episodes.query], axis=1)
            ),
        }
        for what, episode in problems.items():
            if episode is not None:
                raise _damaged(path, f"episode {episode} has {what}")

    def check_digest(self, recorded: str | None, path: Path) -> None:
        """The file is byte for byte the one drawn (`recorded`: its digest in digests.json). Without a
        recorded digest it cannot be checked: said once per file, never passed over in silence."""
        if recorded is None:
            if path not in _UNVERIFIED:
                _UNVERIFIED.add(path)
                logger.warning(
                    f"{path} is unverified: no digest of it is recorded in digests.json beside it, so an "
                    f"edit since it was drawn would go unnoticed (draw the sets again with `fsl episodes --force` "
                    "to record one)"
                )
            return
        if recorded != self.digest:
            raise _damaged(path, f"its digest {self.digest} is not the {recorded} recorded when it was drawn")

    def check_labels(self, ids: np.ndarray, labels: np.ndarray, path: Path) -> None:
        """Every product of every episode is in the catalog (`ids` sorted, `labels` beside them) and
        has the class of the slot it fills: a support example under another class's label is refused."""
        episodes, names = self.episodes, np.asarray(self.meta["classes"])
        for key, per_class in (("support", episodes.k_shot), ("query", episodes.q_query)):
            products = getattr(episodes, key)
            rows = np.clip(np.searchsorted(ids, products), 0, len(ids) - 1)
            absent = ids[rows] != products
            if absent.any():
                raise _damaged(path, f"its {key} names product {products[absent][0]}, which the catalog lacks")
            slot_class = names[np.repeat(episodes.classes, per_class, axis=1)]  # [E, N*per_class]
            wrong = labels[rows] != slot_class
            if wrong.any():
                episode, column = np.argwhere(wrong)[0]
                raise _damaged(
                    path,
                    f"episode {episode} puts product {products[episode, column]} ({labels[rows][episode, column]}) "
                    f"among the {key} of {slot_class[episode, column]}",
                )

    def check_near_duplicates(self, groups: np.ndarray, ids: np.ndarray, path: Path) -> None:
        """No query shares a near-duplicate group (`groups` per sorted `ids`) with its episode's support."""
        episodes = self.episodes
        support = groups[np.searchsorted(ids, episodes.support)]
        query = groups[np.searchsorted(ids, episodes.query)]
        for episode in range(len(episodes)):
            if np.isin(query[episode], support[episode]).any():
                raise _damaged(
                    path, f"episode {episode} has a query that is a near-duplicate of one of its support photos"
                )


def episode_meta(
    catalog_fingerprint: str,
    split: ClassSplit,
    split_name: str,
    classes: list[str],
    seed: int,
    n_way: int,
    k_shot: int,
    q_query: int,
    n_episodes: int,
    near_duplicates: NearDuplicates | None,
) -> dict:
    """What a frozen set records of how it was drawn (its meta, in this key order: the file's bytes)."""
    return {
        "catalog_fingerprint": catalog_fingerprint,
        "label_column": split.column,
        "split": split_name,
        "split_seed": split.seed,
        "classes": classes,
        "seed": seed,
        "sampler_version": SAMPLER_VERSION,
        "n_way": n_way,
        "k_shot": k_shot,
        "q_query": q_query,
        "episodes": n_episodes,
        "near_duplicates": None if near_duplicates is None else near_duplicates.describe(),
    }


def draw_episode_set(
    name: str,
    ids: np.ndarray,
    labels: pd.Series,
    split: ClassSplit,
    split_name: str,
    catalog_fingerprint: str,
    n_way: int | None,
    k_shot: int,
    q_query: int,
    n_episodes: int,
    seed: int,
    near_duplicates: NearDuplicates | None = None,
) -> EpisodeSet:
    classes = split.classes(split_name)
    groups = None if near_duplicates is None else near_duplicates.group_index(ids)
    sampler = EpisodeSampler(ids, labels, classes, n_way, k_shot, q_query, seed, groups)
    meta = {
        **episode_meta(
            catalog_fingerprint,
            split,
            split_name,
            classes,
            seed,
            sampler.n_way,
            k_shot,
            q_query,
            n_episodes,
            near_duplicates,
        ),  # fmt: skip
    }
    return EpisodeSet(name, sampler.sample(n_episodes), meta)


# name: (split, n_way or None for all-way, k_shot)
STANDARD_BENCHMARKS = {
    "novel-5w1s": ("novel", 5, 1),
    "novel-5w5s": ("novel", 5, 5),
    "novel-15w5s": ("novel", 15, 5),
    "val-5w5s": ("val", 5, 5),
    "novel-allway-5s": ("novel", None, 5),  # the original notebook's setting
    "val-allway-5s": ("val", None, 5),  # every validation class: open-set calibration (fsl calibrate)
}
# Selection sets over base ∪ validation classes (splits.POOLS), for the choices that learn nothing from
# base classes; drawn with seeds of their own, so adding them left every standard file byte-identical.
SELECTION_BENCHMARKS = {
    "select-5w1s": ("select", 5, 1),
    "select-5w5s": ("select", 5, 5),
    "select-15w5s": ("select", 15, 5),  # open-set selection: a few classes taught, the others unknown
    "select-allway-5s": ("select", None, 5),
}
SELECTION_SEED_OFFSET = 900  # seed * 1000 + 900 + i: clear of the standard and shifted sets' seeds

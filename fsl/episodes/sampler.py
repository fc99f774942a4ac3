"""N-way K-shot Q-query episodes as index arrays, drawn in batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fsl.episodes.splits import distinct_photos
from fsl.errors import FslError

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

    def __init__(
        self,
        ids: np.ndarray,
        labels: pd.Series | np.ndarray,
        classes: list[str],
        n_way: int | None,
        k_shot: int,
        q_query: int,
        seed: int = 0,
        groups: np.ndarray | None = None,
    ):
        labels = np.asarray(labels)
        self.class_names = list(classes)
        self.n_way = len(classes) if n_way is None else n_way  # None: all-way, every class
        self.k_shot, self.q_query = k_shot, q_query
        members = [np.asarray(ids)[labels == c] for c in self.class_names]
        counts = np.array([len(m) for m in members])
        short = [f"{c} ({n})" for c, n in zip(self.class_names, counts) if n < k_shot + q_query]
        if self.n_way < 2:
            raise FslError(
                f"an episode needs at least 2 classes to choose between; got {self.n_way}-way "
                f"over {len(self.class_names)} class(es)"
            )
        if type(k_shot) is not int or type(q_query) is not int or k_shot < 1 or q_query < 1:
            raise FslError(f"shots and queries must be whole numbers >= 1, got {k_shot} and {q_query}")
        if self.n_way > len(self.class_names):
            raise FslError(
                f"{self.n_way}-way episodes need {self.n_way} classes but the split has "
                f"{len(self.class_names)}: {', '.join(self.class_names)}"
            )
        if short:
            raise FslError(
                f"{k_shot}-shot {q_query}-query episodes need {k_shot + q_query} examples per class; "
                f"too few in: {', '.join(short)}. Use fewer shots/queries or drop those classes."
            )
        if groups is not None:
            distinct = distinct_photos(labels, groups)
            few = [f"{c} ({distinct.get(c, 0)})" for c in self.class_names if distinct.get(c, 0) < k_shot + q_query]
            if few:
                raise FslError(
                    f"{k_shot}-shot {q_query}-query episodes need {k_shot + q_query} distinct photos per "
                    f"class (near-duplicates count once); too few in: {', '.join(few)}. Use fewer "
                    "shots/queries, drop those classes, or a higher --near-duplicates threshold"
                )
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

    def sample(self, n_episodes: int, picked: np.ndarray | None = None) -> Episodes:
        """`n_episodes` episodes; `picked` ([E, N] indices into the class list) chooses each episode's
        classes in order, where a set's kind fixes them (hard open-set episodes: episodes.siblings)."""
        n_classes, width = self.members.shape
        if picked is None:
            picked = torch.rand(n_episodes, n_classes, generator=self.generator).topk(self.n_way, dim=1).indices
        else:
            picked = torch.as_tensor(np.asarray(picked), dtype=torch.int64)
            if picked.shape != (n_episodes, self.n_way) or picked.min() < 0 or picked.max() >= n_classes:
                raise FslError(f"picked classes must be [{n_episodes}, {self.n_way}] indices below {n_classes}")
        keys = torch.rand(n_episodes, self.n_way, width, generator=self.generator)
        keys.masked_fill_(torch.arange(width) >= self.counts[picked].unsqueeze(-1), 2.0)  # padding last
        if self.groups is None:
            slots = keys.topk(self.k_shot + self.q_query, dim=-1, largest=False).indices  # [E, N, K+Q]
            support_slots, query_slots = slots[..., : self.k_shot], slots[..., self.k_shot :]
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
                raise FslError(
                    f"after leaving out the near-duplicates of the support, too few products remain for "
                    f"{self.q_query} queries in: {', '.join(names)}. Use fewer shots/queries or drop "
                    "those classes"
                )
        support = self.members[picked.unsqueeze(-1), support_slots].reshape(n_episodes, -1)
        query = self.members[picked.unsqueeze(-1), query_slots].reshape(n_episodes, -1)
        return Episodes(support.numpy(), query.numpy(), picked.numpy(), self.n_way, self.k_shot, self.q_query)

"""Known negatives: categories a catalog already knows compete with the taught ones as "other".

A user's classifier only compares a photo with the taught categories, so an untaught sports shoe
beside taught heels is answered "Heels" with confidence: no threshold on a score separates close
neighbours well (episodes/siblings.py draws such episodes). A catalog knows what a sports shoe
looks like. Each known negative is a prototype (the mean features of a catalog class). A photo's
lead is its cosine to the nearest negative minus its cosine to the nearest taught category's mean
(in the head's embedded, unit-normalised features). How far a catalog class sits from a taught one
differs from category to category, so a lead is judged against the taught category's own support:
the largest lead among its support photos, each against its category's mean without it. A photo
nearer a negative than any taught category, whose lead exceeds that of its nearest category's
support by more than `margin` (>= 0), is answered "unknown", and the answer names the negative it
looks like. (A fixed margin on the lead itself, chosen on selection episodes, held the taught photos
on some splits' novel classes and cost 21 points of them on another: benchmarks/hard_open_set.py.)

A negative that is a taught category under its own or another name is left out: its name is a
taught one, case aside, or its prototype lies within `same_as` cosine of a taught category's mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from fsl.errors import FslError

MARGIN = 0.005  # over the taught category's own support leads: chosen on split 0's select-hard-7w5s episodes
SAME_AS = 0.95  # a negative this close to a taught category's mean is that category, not a negative


@dataclass(frozen=True)
class KnownNegatives:
    """Catalog classes as "other" categories: `names` [B] with their `prototypes` [B, D], in the
    features the head reads (what HeadInputs gives for a photo)."""

    names: tuple[str, ...]
    prototypes: torch.Tensor
    margin: float = MARGIN
    same_as: float = SAME_AS

    def __post_init__(self) -> None:
        if len(self.names) != len(self.prototypes):
            raise FslError(f"{len(self.names)} negative names but {len(self.prototypes)} prototypes", "negatives")
        if not self.margin >= 0:
            raise FslError(f"margin must be >= 0, got {self.margin}", "margin")

    def without(self, left_out: Sequence[str]) -> KnownNegatives:
        """These negatives less the named ones."""
        keep = [i for i, name in enumerate(self.names) if name not in set(left_out)]
        return replace(self, names=tuple(self.names[i] for i in keep), prototypes=self.prototypes[keep])

    def taught_among(self, classes: Sequence[str], class_means: torch.Tensor) -> list[str]:
        """The negatives that are a taught category (`classes`, their means [N, D'] in the space of
        these prototypes): named alike, case aside, or within `same_as` cosine of a taught mean."""
        taught = {name.casefold() for name in classes}
        near = (F.normalize(self.prototypes.double(), dim=-1) @ F.normalize(class_means.double(), dim=-1).T).amax(1)
        return [name for name, cosine in zip(self.names, near) if name.casefold() in taught or cosine >= self.same_as]

    def for_support(self, support: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> NegativeRule:
        """The rule for one taught support (embedded [S, D'] with labels [S] over `classes`), these
        prototypes embedded the same way: the negatives that are no taught category, the taught
        means, and each category's reference lead from its own support."""
        unit = F.normalize(support.double(), dim=-1)
        n_way = len(classes)
        sums = torch.zeros(n_way, unit.shape[1], dtype=unit.dtype).index_add_(0, labels, unit)
        counts = torch.bincount(labels, minlength=n_way)
        means = F.normalize(sums, dim=-1)
        left_out = self.taught_among(classes, means)
        kept = self.without(left_out)
        rule = NegativeRule(kept, left_out, means, torch.zeros(n_way, dtype=unit.dtype))
        if not kept.names:
            return rule
        to_means = unit @ means.T  # [S, N]; each photo against its own category's mean without it:
        own = F.normalize(sums[labels] - unit, dim=-1)
        to_means[torch.arange(len(unit)), labels] = (unit * own).sum(-1)
        leads = (unit @ F.normalize(kept.prototypes.double(), dim=-1).T).amax(1) - to_means.amax(1)
        alone = counts[labels] < 2  # one photo: no mean without it, the reference stays 0
        rule.references = torch.stack([
            leads[(labels == c) & ~alone].max() if ((labels == c) & ~alone).any() else leads.new_zeros(())
            for c in range(n_way)
        ])  # fmt: skip
        return rule


@dataclass
class NegativeRule:
    """Known negatives fitted to one taught support: `negatives` kept (embedded prototypes), those
    `left_out` as taught categories, the taught categories' unit means [N, D'], and `references`
    [N]: the largest lead among each category's support photos."""

    negatives: KnownNegatives
    left_out: list[str]
    class_means: torch.Tensor
    references: torch.Tensor

    def judge(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded queries [Q, D'] -> (excess [Q]: the lead over the nearest taught category's
        reference; lead [Q]; the nearest negative [Q])."""
        unit = F.normalize(query.double(), dim=-1)
        to_negatives = unit @ F.normalize(self.negatives.prototypes.double(), dim=-1).T
        to_taught = unit @ self.class_means.T
        lead = to_negatives.amax(1) - to_taught.amax(1)
        return lead - self.references[to_taught.argmax(1)], lead, to_negatives.argmax(1)


def turned_away(excess: torch.Tensor, lead: torch.Tensor, margin: float) -> torch.Tensor:
    """[Q] whether the negatives answer a photo "unknown": nearer a negative than any taught category,
    by more than its nearest category's own support leads plus `margin`."""
    return (excess > margin) & (lead > 0)

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
on some splits' novel classes and cost 28 points of them on another: benchmarks/hard_open_set.py.)

A negative that is a taught category under its own or another name is left out: its name is a
taught one, case aside, or its prototype lies within `same_as` cosine of a taught category's mean.

`CatalogNegatives` is the file that carries them (safetensors: each class's mean image and text
features for one encoder; `fsl negatives` writes one from any catalog, and the offline encoder's, from
the Fashion Product Images catalog, ships with the package), so a support folder alone finds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fsl.errors import FslError
from fsl.files import atomic_path
from fsl.paths import USER_NEGATIVES_DIR, negatives_dirs, negatives_path

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


@dataclass(frozen=True, eq=False)  # (tensors: compared by identity)
class CatalogNegatives:
    """Every class of a catalog as a known negative for one encoder: `names` [B], the mean `image`
    [B, Di] and `text` [B, Dt] features of each class's products, how many products each (`counts`),
    the catalog's fingerprint and the label column the classes come from."""

    names: tuple[str, ...]
    image: torch.Tensor
    text: torch.Tensor
    counts: torch.Tensor
    encoder: str
    catalog: str
    column: str
    path: Path | None = None

    def __post_init__(self) -> None:
        sizes = {len(self.names), len(self.image), len(self.text), len(self.counts)}
        where = self.path or "known negatives"
        if len(sizes) != 1 or self.image.ndim != 2 or self.text.ndim != 2:
            raise FslError(
                f"{where}: {len(self.names)} names, image {tuple(self.image.shape)}, text {tuple(self.text.shape)}, "
                f"counts {tuple(self.counts.shape)}: expected one row of each per class; run `fsl negatives` again"
            )
        if not (torch.isfinite(self.image).all() and torch.isfinite(self.text).all()):
            raise FslError(f"{where}: the prototypes hold NaN or infinite values; run `fsl negatives` again")

    def for_head(self, fused: bool) -> KnownNegatives:
        """The prototypes in the features a head reads: [image] for an image-only head, [image | text]
        for a fused one."""
        prototypes = torch.cat([self.image, self.text], 1) if fused else self.image
        return KnownNegatives(self.names, prototypes.float())

    def describe(self) -> str:
        """Which negatives, in words (the first line `fsl predict` prints)."""
        return f"{len(self.names)} known negatives ({self.column} classes of catalog {self.catalog})"

    def save(self, root: str | os.PathLike = USER_NEGATIVES_DIR) -> Path:
        """Written atomically to the encoder's file under `root`; returns its path."""
        path = negatives_path(root, self.encoder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"image": self.image.float().contiguous(), "text": self.text.float().contiguous(),
                   "counts": self.counts.long().contiguous()}  # fmt: skip
        meta = {"names": json.dumps(list(self.names)), "encoder": self.encoder, "catalog": self.catalog,
                "column": self.column}  # fmt: skip
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CatalogNegatives:
        """A file `save` wrote; a damaged or foreign one is an error naming it."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as file:
                meta = file.metadata() or {}
                tensors = {name: file.get_tensor(name) for name in ("image", "text", "counts")}
            names = json.loads(meta["names"])
            made_by = (meta["encoder"], meta["catalog"], meta["column"])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
            raise FslError(
                f"{path} is not a known-negatives file ({type(error).__name__}: {error}); run `fsl negatives` again"
            ) from None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise FslError(f"{path}: its class names are damaged; run `fsl negatives` again")
        return cls(tuple(names), tensors["image"], tensors["text"], tensors["counts"], *made_by, path=path)


def find_negatives(encoder_id: str, chosen: str | os.PathLike | None = None) -> CatalogNegatives | None:
    """The known negatives made for this encoder, if any: in `chosen` (a folder) when given, else the
    user's own (`fsl negatives`) first, then the shipped ones."""
    for root in negatives_dirs(chosen):
        path = negatives_path(root, encoder_id)
        if path.is_file():
            negatives = CatalogNegatives.load(path)
            if negatives.encoder != encoder_id:
                raise FslError(f"{path} holds negatives for encoder {negatives.encoder}, not {encoder_id}; remove it")
            return negatives
    return None

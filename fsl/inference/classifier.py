"""The one support-set classifier core: a head with its support set embedded answers queries.

Every way of answering a photo wraps it: your own categories (`fsl.FewShotClassifier`, `fsl predict
--support`, the demo's Teach and Predict tabs) and a catalog head (`fsl predict --config/--checkpoint`,
the demo's checkpoint mode). A photo and its product text become the features the head reads
(`HeadInputs`: an image-only head reads the image part; a fused head reads the text too, its category
names masked as in training), the head gives logits over the taught categories, and the calibration
turns them into confidences and the "none of these" answer (`Answer`; `answer_record` is its CSV row).
Categories taught under parent categories (`Hierarchy`: a nested support folder, a catalog's parent
column) answer with the parent where the rule turns the category down but accepts the parent: "Footwear:
Heels or Flats?" rather than "unknown" for a photo that is surely footwear."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch

from fsl.config import UNKNOWN
from fsl.data.catalog import mask_label_words
from fsl.errors import FslError
from fsl.inference.calibration import Calibration
from fsl.inference.negatives import KnownNegatives, NegativeRule, turned_away
from fsl.methods import FewShotHead


@dataclass
class Answer:
    """One photo's answer: `label` is a category, a parent category (`level` "parent": the rule
    accepts the parent, not any one of its categories) or "unknown" (the calibration's rule); `best`
    the closest category whatever the rule; `confidence` that of `label` (of `best` when "unknown");
    `top` the categories and confidences, best first."""

    label: str
    best: str
    confidence: float
    top: list[tuple[str, float]]
    known_score: float | None = None  # the calibration's "none of these" score, where calibrated
    looks_like: str | None = None  # the known negative an "unknown" photo is nearer than any category
    level: str = "category"  # "category", "parent" or "unknown"
    candidates: list[str] = field(default_factory=list)  # a parent answer's categories, likeliest first


def answer_record(answer: Answer, top_k: int) -> dict:
    """The CSV cells of one answer (`fsl predict`): the answer after the rule and its level (category,
    parent or unknown), a parent answer's categories ("Heels or Flats"), the known-ness score (None when
    uncalibrated), the known negative an "unknown" photo looks like ("" when none) and the `top_k` best
    categories with their confidences."""
    record = {
        "answer": answer.label,
        "level": answer.level,
        "candidates": " or ".join(answer.candidates),
        "score": None if answer.known_score is None else round(answer.known_score, 6),
        "looks_like": answer.looks_like or "",
    }
    for rank, (label, confidence) in enumerate(answer.top[:top_k], 1):
        record[f"label_{rank}"] = label
        record[f"confidence_{rank}"] = round(confidence, 4)
    return record


@dataclass
class HeadInputs:
    """How embedded photos and their texts become the features a head reads: [image] for a head
    built on image features alone, [image | zeros] for an image-only head built on a store's
    [image | text] features, [image | text] for a fused head, whose texts have the label words
    (`mask`) masked as its training texts had."""

    name: str  # the head's, for messages
    fused: bool
    text_dim: int  # the zero text part an image-only head built on a store's features reads (0: none)
    embed_texts: Callable[[list[str]], np.ndarray]  # [n] texts -> [n, text_dim]
    mask: re.Pattern | None = None

    def __call__(self, image_features: np.ndarray, texts: Sequence[str] | None = None) -> torch.Tensor:
        image = torch.from_numpy(np.asarray(image_features, dtype=np.float32))
        if not self.fused:
            return torch.cat([image, torch.zeros(len(image), self.text_dim)], 1) if self.text_dim else image
        texts = list(texts) if texts is not None else [""] * len(image)
        if len(texts) != len(image):
            raise FslError(f"{len(image)} photos but {len(texts)} texts; give one text per photo")
        missing = sum(not text for text in texts)
        if missing:
            raise FslError(
                f"{self.name} reads a photo and its product text, but {missing} of {len(texts)} have no text; "
                "give every photo a text, or use an image-only head"
            )
        if self.mask is not None:
            texts = [mask_label_words(text, self.mask) for text in texts]
        return torch.cat([image, torch.from_numpy(np.asarray(self.embed_texts(texts), dtype=np.float32))], 1)


@dataclass(frozen=True)
class Hierarchy:
    """Taught categories under parent categories: `parents[i]` is the parent of category i, None for a
    category under none (a flat folder's). A parent holding two or more categories can be answered."""

    parents: tuple[str | None, ...]

    def __post_init__(self) -> None:
        named = {parent.casefold() for parent in self.parents if parent is not None}
        if UNKNOWN in named:
            raise FslError(f'"{UNKNOWN}" cannot name a parent category: it is the answer for none of them')

    def check(self, classes: Sequence[str]) -> None:
        """One parent (or None) per category, and no parent named like a category (an answer must say
        which level it is)."""
        if len(self.parents) != len(classes):
            raise FslError(f"{len(classes)} categories but {len(self.parents)} parents; give one parent per category")
        clash = sorted({p for p in self.parents if p is not None} & set(classes))
        if clash:
            raise FslError(f"{', '.join(clash)}: a parent category cannot also be a category; rename one")

    @classmethod
    def of_catalog(cls, classes: Sequence[str], parents: dict[str, str]) -> Hierarchy:
        """The hierarchy a catalog's parent column gives `classes` (`parents`: each class's parent); a
        class whose parent is named like a class (Watches under Watches) is under none."""
        return cls(tuple(None if parents.get(c, c) in classes else parents[c] for c in classes))

    @cached_property
    def groups(self) -> list[tuple[str | None, list[int]]]:
        """(parent, its categories) for every parent, and each category under none alone, in first-seen order."""
        grouped: dict[object, list[int]] = {}
        for index, parent in enumerate(self.parents):
            grouped.setdefault(parent if parent is not None else ("", index), []).append(index)
        return [(key if isinstance(key, str) else None, members) for key, members in grouped.items()]

    @property
    def answers_parents(self) -> bool:
        """Whether some parent holds two or more categories (else no answer can be a parent)."""
        return any(parent is not None and len(members) >= 2 for parent, members in self.groups)

    def parent_logits(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """[Q, N] category logits -> [Q, groups]: T·logsumexp(logits / T) over each group's categories, so
        that softmax(parent logits / T) is the sum of its categories' calibrated confidences."""
        return torch.stack(
            [temperature * torch.logsumexp(logits[:, members] / temperature, -1) for _, members in self.groups], -1
        )

    def group_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """[S] category labels -> [S] group labels (for the feature scores of the parents)."""
        group_of = torch.empty(len(self.parents), dtype=torch.long)
        for group, (_, members) in enumerate(self.groups):
            group_of[members] = group
        return group_of[labels]


class SupportSetClassifier:
    """A head (built, trained or fitted as its config asks) with its taught examples' features
    [S, D] and labels [S] over `classes`; `calibration` None answers with softmax(logits /
    `uncalibrated_temperature`) and never "unknown". With `negatives` (catalog classes, in the features
    the head reads), a photo that leads towards one of them more than its nearest category's own support
    does is "unknown" too, and says which it looks like (`negative_rule`: fsl/inference/negatives.py).
    Heads keep no state between calls, so the support is read again for each batch."""

    def __init__(
        self,
        head: FewShotHead,
        classes: Sequence[str],
        support: torch.Tensor,
        labels: torch.Tensor,
        calibration: Calibration | None,
        uncalibrated_temperature: float = 1.0,
        negatives: KnownNegatives | None = None,
        hierarchy: Hierarchy | None = None,
    ):
        if len(classes) < 2:
            raise FslError(f"{len(classes)} categories taught; a choice needs at least two")
        self.head = head.eval()
        self.classes = list(classes)
        self.use_hierarchy(hierarchy)
        self.support = support
        self.labels = torch.as_tensor(labels)
        self.calibration = calibration
        self.uncalibrated_temperature = uncalibrated_temperature
        self.negative_rule: NegativeRule | None = None
        if negatives is not None and negatives.names:
            with torch.no_grad():
                embedded = replace(negatives, prototypes=self.head.embed(negatives.prototypes))
                self.negative_rule = embedded.for_support(self.head.embed(support), self.labels, self.classes)

    def use_hierarchy(self, hierarchy: Hierarchy | None) -> None:
        """Answer parents from now on (checked against the categories); kept only where some parent
        holds two categories or more."""
        if hierarchy is not None:
            hierarchy.check(self.classes)
        self.hierarchy = hierarchy if hierarchy is not None and hierarchy.answers_parents else None

    @property
    def negatives_answer(self) -> bool:
        """Whether known negatives can answer "unknown": some were given and not all left out as taught."""
        return self.negative_rule is not None and bool(self.negative_rule.negatives.names)

    @property
    def answering_calibration(self) -> Calibration | None:
        """The calibration the rule answers with: beside known negatives, its thresholds fitted with them."""
        if self.calibration is None or not self.negatives_answer:
            return self.calibration
        return self.calibration.answering_with_negatives()

    @torch.no_grad()
    def logits(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, D] query features -> [Q, categories]."""
        return self.head(self.support[None], self.labels[None], queries[None], len(self.classes))[0]

    @torch.no_grad()
    def answer(self, queries: torch.Tensor) -> list[Answer]:
        """One Answer per query [Q, D]: every category by calibrated confidence, and the label after
        the calibration's rule for this many taught categories (`answering_calibration`) and the
        known negatives."""
        logits, embedded = self.logits(queries), self.head.embed(queries)
        calibration = self.answering_calibration
        if calibration is None:
            probabilities, scores, known = torch.softmax(logits / self.uncalibrated_temperature, -1), None, None
        else:
            probabilities = calibration.probabilities(logits)
            support = self.head.embed(self.support)
            scores = calibration.scores(logits, support, self.labels, embedded)
            known = calibration.known(scores, len(self.classes))
        rule = self.negative_rule if self.negatives_answer else None
        if rule is not None:
            excess, lead, nearest = rule.judge(embedded)
            away = turned_away(excess, lead, rule.negatives.margin)
        coarse = calibration is not None and self.hierarchy is not None
        parents = self.parent_answers(logits, support, embedded, calibration) if coarse else None
        # ranked by logits, not probabilities: a confident head underflows the others' probabilities to 0,
        # and their order (the second and third guesses) is still the logits'
        order = torch.argsort(logits, dim=-1, descending=True, stable=True)
        answers = []
        for i in range(len(queries)):
            top = [(self.classes[int(j)], float(probabilities[i, j])) for j in order[i]]
            best, confidence = top[0]
            other = rule is not None and bool(away[i])
            label = best if (known is None or bool(known[i])) and not other else UNKNOWN
            looks_like, level, candidates = None, "category" if label != UNKNOWN else UNKNOWN, []
            if rule is not None and label == UNKNOWN and lead[i] > 0:  # nearer a catalog class than any taught one
                looks_like = rule.negatives.names[int(nearest[i])]
            if parents is not None and label == UNKNOWN and not other and parents[i] is not None:
                (label, confidence, candidates), level = parents[i], "parent"
            score = None if scores is None else float(scores[i])
            answers.append(Answer(label, best, confidence, top, score, looks_like, level, candidates))
        return answers

    def parent_answers(
        self, logits: torch.Tensor, support: torch.Tensor, embedded: torch.Tensor, calibration: Calibration
    ) -> list[tuple[str, float, list[str]] | None]:
        """Per query ([Q, N] logits; the head's embedded support and queries): (its likeliest parent, that
        parent's confidence, its categories likeliest first) where the rule read over the parents accepts
        it and it holds two categories or more, else None."""
        groups = self.hierarchy.groups
        parent_logits = self.hierarchy.parent_logits(logits, calibration.temperature)
        scores = calibration.scores(parent_logits, support, self.hierarchy.group_labels(self.labels), embedded)
        known = calibration.known(scores, len(groups))
        probabilities = calibration.probabilities(parent_logits)
        out = []
        for i, group in enumerate(parent_logits.argmax(-1).tolist()):
            parent, members = groups[group]
            if parent is None or len(members) < 2 or not known[i]:
                out.append(None)
                continue
            likeliest = sorted(members, key=lambda m: -float(logits[i, m]))  # stable: ties keep their order
            out.append((parent, float(probabilities[i, group]), [self.classes[m] for m in likeliest]))
        return out

"""The one support-set classifier core: a head with its support set embedded answers queries.

Every way of answering a photo wraps it: your own categories (`fsl.FewShotClassifier`, `fsl predict
--support`, the demo's Teach and Predict tabs) and a catalog head (`fsl predict --config/--checkpoint`,
the demo's checkpoint mode). A photo and its product text become the features the head reads
(`HeadInputs`: an image-only head reads the image part; a fused head reads the text too, its category
names masked as in training), the head gives logits over the taught categories, and the calibration
turns them into confidences and the "none of these" answer (`Answer`; `answer_record` is its CSV row)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

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
    """One photo's answer: `label` is a category or "unknown" (the calibration's rule); `best` the
    closest category whatever the rule; `top` the categories and confidences, best first."""

    label: str
    best: str
    confidence: float
    top: list[tuple[str, float]]
    known_score: float | None = None  # the calibration's "none of these" score, where calibrated
    looks_like: str | None = None  # the known negative an "unknown" photo is nearer than any category


def answer_record(answer: Answer, top_k: int) -> dict:
    """The CSV cells of one answer (`fsl predict`): the answer after the rule, the known-ness score
    (None when uncalibrated), the known negative an "unknown" photo looks like ("" when none) and the
    `top_k` best categories with their confidences."""
    record = {
        "answer": answer.label,
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
    ):
        if len(classes) < 2:
            raise FslError(f"{len(classes)} categories taught; a choice needs at least two")
        self.head = head.eval()
        self.classes = list(classes)
        self.support = support
        self.labels = torch.as_tensor(labels)
        self.calibration = calibration
        self.uncalibrated_temperature = uncalibrated_temperature
        self.negative_rule: NegativeRule | None = None
        if negatives is not None and negatives.names:
            with torch.no_grad():
                embedded = replace(negatives, prototypes=self.head.embed(negatives.prototypes))
                self.negative_rule = embedded.for_support(self.head.embed(support), self.labels, self.classes)

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
            scores = calibration.scores(logits, self.head.embed(self.support), self.labels, embedded)
            known = calibration.known(scores, len(self.classes))
        rule = self.negative_rule if self.negatives_answer else None
        if rule is not None:
            excess, lead, nearest = rule.judge(embedded)
            away = turned_away(excess, lead, rule.negatives.margin)
        # ranked by logits, not probabilities: a confident head underflows the others' probabilities to 0,
        # and their order (the second and third guesses) is still the logits'
        order = torch.argsort(logits, dim=-1, descending=True, stable=True)
        answers = []
        for i in range(len(queries)):
            top = [(self.classes[int(j)], float(probabilities[i, j])) for j in order[i]]
            best, confidence = top[0]
            other = rule is not None and bool(away[i])
            label = best if (known is None or bool(known[i])) and not other else UNKNOWN
            looks_like = None
            if rule is not None and label == UNKNOWN and lead[i] > 0:  # nearer a catalog class than any taught one
                looks_like = rule.negatives.names[int(nearest[i])]
            answers.append(
                Answer(label, best, confidence, top, None if scores is None else float(scores[i]), looks_like)
            )
        return answers

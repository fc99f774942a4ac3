"""A calibration at answer time: confidences that mean something and a "none of these" answer.

A calibration holds a temperature T (softmax(logits / T) is the confidence shown; Guo et al., ICML
2017), the known-ness score it thresholds (fsl/inference/open_set.py) and a threshold for each
number of taught categories. `fsl calibrate` (fsl/harness/calibration.py) fits one per config on
selection episodes and saves it; here it is read, checked, found again by what it was fitted for
(head, options, fusion, encoder, checkpoint: `config_key`), applied to an answer's logits, or fitted
on a user's own support (`calibrate_on_support`: leave one category out). The shipped calibrations
travel with the package; a user's own, under the cache, are found first."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score

from fsl.config import UNKNOWN, ExperimentConfig
from fsl.errors import FslError, shown
from fsl.files import NUMBER, check_record, read_json, write_json
from fsl.inference.open_set import DEFAULT_SCORE, SCORES, check_score, known_scores
from fsl.paths import USER_CALIBRATION_DIR, calibration_dirs

FALSE_ACCEPT = 0.2  # default target: 1 in 5 photos of an untaught class still gets a (wrong) answer


@dataclass
class Calibration:
    config: str  # the name of the config it was fitted for (for people; lookup is by `key`)
    key: str
    encoder: str
    temperature: float
    threshold: float  # the known-ness score below which the answer is "unknown"
    false_accept: float  # the target the threshold was chosen for
    validation: dict = field(default_factory=dict)
    novel: dict = field(default_factory=dict)  # reported after the calibration was saved; {} until then
    score: str = DEFAULT_SCORE  # which known-ness score the threshold applies to (fsl/inference/open_set.py)
    fitted_on: str = "validation classes"  # in words: what the temperature and threshold were fitted on
    support_digest: str = ""  # fitted on a support: the digest of its examples (support_digest), "" otherwise
    # thresholds by the number of categories taught ("2", "3", "5", "8"), each for the false-accept target:
    # with more categories an untaught photo is nearer one of them, so one threshold lets more through
    thresholds: dict = field(default_factory=dict)
    # the same target reached with known negatives answering too (fsl/inference/negatives.py): they turn
    # some untaught photos away, so the thresholds can let more taught ones through. {"threshold": pooled,
    # "thresholds": by count}; {} where fitted without them
    with_negatives: dict = field(default_factory=dict)
    # a floor of taught photos right and answered on the selection episodes (0: none): where the false-accept
    # target's threshold would answer fewer, the threshold is lowered to keep it (a user teaching categories
    # wants most of their photos named; the floor is what they are promised, the false accepts what it costs)
    taught_right: float = 0.0
    path: str = field(default="", compare=False)  # the file it was read from (not saved)

    def answering_with_negatives(self) -> Calibration:
        """The calibration as it answers beside known negatives: its thresholds fitted with them, where
        `fsl calibrate` fitted them (else unchanged)."""
        if not self.with_negatives:
            return self
        return dataclasses.replace(
            self,
            threshold=self.with_negatives["threshold"],
            thresholds=self.with_negatives["thresholds"],
            fitted_on=f"{self.fitted_on}, thresholds fitted with the known negatives",
            with_negatives={},
        )

    def threshold_at(self, taught: int | None = None) -> float:
        """The threshold for `taught` categories: the fitted one at that count, interpolated in log(count)
        between two fitted counts, the nearest fitted one outside them; `threshold` (every count pooled)
        without per-count thresholds or a count."""
        if not self.thresholds or taught is None:
            return self.threshold
        fitted = sorted((int(count), value) for count, value in self.thresholds.items())
        counts = np.log([count for count, _ in fitted])
        return float(np.interp(np.log(max(taught, 1)), counts, [value for _, value in fitted]))

    def known(self, scores: torch.Tensor | np.ndarray, taught: int | None) -> np.ndarray:
        """[Q] whether each score clears the threshold for `taught` categories (else the answer is "unknown")."""
        return np.asarray(scores) >= self.threshold_at(taught)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)

    def scores(
        self,
        logits: torch.Tensor,
        support: torch.Tensor | None = None,
        support_labels: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[Q] known-ness scores of one episode's queries; below the threshold the answer is "unknown".
        The feature scores read the head's embedded support [S, D], its labels [S] and queries [Q, D]."""
        return known_scores(self.score, logits, self.temperature, support, support_labels, query)

    def rule(self, taught: int | None = None) -> str:
        """The rule in words, at `taught` categories where the thresholds depend on it."""
        percent = self.score == "max-softmax"

        def shown(value: float) -> str:
            return f"{value:.0%}" if percent else f"{value:.4g}"

        if self.thresholds and taught is None:
            each = ", ".join(f"{shown(value)} for {count}" for count, value in sorted(
                self.thresholds.items(), key=lambda item: int(item[0])))  # fmt: skip
            below = f"below its threshold for the number of categories taught ({each})"
        else:
            count = f" for {taught} categories" if self.thresholds else ""
            below = f"below {shown(self.threshold_at(taught))}{count}"
        return f'"{UNKNOWN}" {below} confidence' if percent else f'"{UNKNOWN}" when the {self.score} score is {below}'

    def verdict(self, score: float, named: bool = True, taught: int | None = None) -> str:
        """A score beside the threshold (for `taught` categories), in the rule's terms and with the digits
        that tell them apart ("93.6% < 94.0%", not "94%" against "below 94%"; "energy -3.2 < -2.9"; `named`:
        with the score's name)."""
        threshold = self.threshold_at(taught)
        percent = self.score == "max-softmax"
        for digits in range(0, 5) if percent else range(2, 8):
            shown = [f"{v:.{digits}%}" if percent else plain_number(v, digits) for v in (score, threshold)]
            if shown[0] != shown[1]:
                break
        relation = "<" if score < threshold else ">="
        return f"{'' if percent or not named else self.score + ' '}{shown[0]} {relation} {shown[1]}"

    def describe(self, paths: bool = True) -> str:
        """The calibration in words; `paths`: name the file it was read from (not on a web page)."""
        where = f"calibration {self.path}" if self.path and paths else f"calibration {self.config}"
        return f"{where}, fitted on {self.fitted_on}: temperature {self.temperature:.3g}, {self.rule()}"

    def save(self, root: str | os.PathLike = USER_CALIBRATION_DIR) -> Path:
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "path"}
        return write_json(Path(root) / f"{self.config}.json", record)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        return cls.from_record(read_json(path, "calibration"), path)

    @classmethod
    def from_record(cls, record: object, path: str | os.PathLike, fix: str = "rerun `fsl calibrate`") -> Calibration:
        """A calibration from its JSON record (a calibration file, or a saved classifier's), every field
        checked: types, a finite temperature > 0, finite thresholds (within 0-1 for max-softmax), a
        false-accept target within (0, 1), a known score. Anything else names the file and the field."""
        fields = {"config": (str,), "key": (str,), "encoder": (str,), "temperature": NUMBER, "threshold": NUMBER,
                  "false_accept": NUMBER}  # fmt: skip
        values = check_record(record, fields, path, "calibration", fix)
        optional = {"validation": (dict,), "novel": (dict,), "score": (str,), "fitted_on": (str,),
                    "support_digest": (str,), "thresholds": (dict,), "with_negatives": (dict,),
                    "taught_right": NUMBER}  # fmt: skip
        check_record(values, {k: v for k, v in optional.items() if k in values}, path, "calibration", fix)
        check_score(values.get("score", DEFAULT_SCORE), f"{path}: score")
        numbers = {name: finite(values[name]) for name in ("temperature", "threshold", "false_accept")}
        if "taught_right" in values:
            numbers["taught_right"] = finite(values["taught_right"])
            if not 0 <= numbers["taught_right"] < 1:
                raise FslError(
                    f"{path}: the calibration is damaged (taught_right {shown(values['taught_right'])}: expected a "
                    f"floor of taught photos right within [0, 1)); {fix}"
                )
        bounded = values.get("score", DEFAULT_SCORE) != "max-softmax" or 0 <= numbers["threshold"] <= 1
        if not (numbers["temperature"] > 0 and math.isfinite(numbers["threshold"]) and bounded
                and 0 < numbers["false_accept"] < 1):  # fmt: skip
            raise FslError(
                f"{path}: the calibration is damaged (temperature {shown(values['temperature'])}, threshold "
                f"{shown(values['threshold'])}, false_accept {shown(values['false_accept'])}: expected a finite "
                f"temperature > 0, a finite threshold, within 0-1 for max-softmax, and a false-accept target "
                f"between 0 and 1); {fix}"
            )
        negatives = values.get("with_negatives", {})
        if negatives:
            check_record(
                negatives, {"threshold": NUMBER, "thresholds": (dict,)}, path, "calibration with_negatives", fix
            )
            if not math.isfinite(finite(negatives["threshold"])):
                raise FslError(f"{path}: the calibration is damaged (with_negatives.threshold is not finite); {fix}")
        for count, value in [*values.get("thresholds", {}).items(), *negatives.get("thresholds", {}).items()]:
            number = finite(value) if isinstance(value, NUMBER) and not isinstance(value, bool) else math.nan
            if not (
                count.isdigit()
                and int(count) >= 1
                and math.isfinite(number)
                and (values.get("score", DEFAULT_SCORE) != "max-softmax" or 0 <= number <= 1)
            ):
                raise FslError(
                    f"{path}: the calibration is damaged (thresholds[{shown(count)}] = {shown(value)}: expected a "
                    f"count of categories and a finite threshold); {fix}"
                )
        try:
            return cls(**{**values, **numbers, "path": str(path)})
        except TypeError as error:
            raise FslError(f"{path} is not a calibration ({error}); {fix}") from None


def plain_number(value: float, digits: int) -> str:
    """`digits` significant digits, whole numbers written out ("-6311", not "-6.3e+03")."""
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def finite(value: int | float) -> float:
    """A JSON number as a float; NaN for one that is not finite or too large for a float (a
    400-digit integer), so that every range check refuses it."""
    try:
        number = float(value)
    except OverflowError:
        return math.nan
    return number if math.isfinite(number) else math.nan


def config_key(config: ExperimentConfig, encoder_id: str, checkpoint: str | os.PathLike | None = None) -> str:
    """What the scores depend on: head, options, fusion, text variant, encoder, trained weights."""
    fused = config.fusion != "image"
    parts = {
        "method": config.method,
        "method_options": config.method_options,
        "fusion": config.fusion,
        "fusion_options": config.fusion_options,
        "text_variant": config.text_variant if fused else "-",
        "class_prompt": config.class_prompt,
        "label_column": config.label_column,
        "encoder": encoder_id,
    }
    if config.test_time_views:  # (absent when empty: the keys of calibrations fitted before it existed hold)
        parts["test_time_views"] = list(config.test_time_views)
    if checkpoint is not None:
        parts["weights"] = hashlib.sha256((Path(checkpoint) / "head.safetensors").read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_calibration(key: str, chosen: str | os.PathLike | None = None) -> Calibration | None:
    """The calibration fitted for `key` (see config_key), if any: in `chosen` (a calibration folder)
    when given, else the user's own first, then the shipped ones."""
    for root in calibration_dirs(chosen):
        for path in sorted(Path(root).glob("*.json")):
            calibration = Calibration.load(path)
            if calibration.key == key:
                return calibration
    return None


# Fitting on a support -----------------------------------------------------------------------------


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T > 0 minimising the mean negative log-likelihood of softmax(logits / T): [M, N], [M]."""
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / np.exp(log_t), labels))

    return float(np.exp(minimize_scalar(nll, bounds=(-9.0, 9.0), method="bounded").x))


def threshold_for(unknown_confidence: np.ndarray, false_accept: float) -> float:
    """The smallest threshold that accepts at most `false_accept` of the unknown queries."""
    return float(np.quantile(np.asarray(unknown_confidence, dtype=np.float64), 1 - false_accept, method="higher"))


def threshold_for_floor(right_scores: np.ndarray, taught: int, taught_right: float) -> float:
    """The highest threshold that answers at least `taught_right` of `taught` taught queries right, from
    the scores of the ones the head names right (`right_scores`); the lowest of those where fewer are
    right than the floor asks (every right one answered: the most any threshold keeps)."""
    ranked = np.sort(np.asarray(right_scores, dtype=np.float64))[::-1]
    if len(ranked) == 0:
        raise FslError("a floor of taught photos right needs taught queries the head names right; it named none")
    needed = math.ceil(taught_right * taught - 1e-9)  # (a floor of 0.88 on 100 queries: 88, not 89 by rounding)
    return float(ranked[min(max(needed, 1), len(ranked)) - 1])


# A user's own support -----------------------------------------------------------------------------

MIN_SUPPORT_CATEGORIES = 3  # one plays "unknown" in turn, and a choice needs two taught ones
MIN_SUPPORT_PHOTOS = 3  # per category: one is held out as a query, two stay taught


@torch.no_grad()
def calibrate_on_support(
    config: ExperimentConfig,
    head,
    features: torch.Tensor,
    labels: torch.Tensor,
    key: str,
    encoder_id: str,
    where: str,
    false_accept: float = FALSE_ACCEPT,
    score: str = "auto",
    fallback_temperature: float = 1.0,
) -> Calibration:
    """A temperature, a "none of these" score and its threshold from the support itself ([S, D] raw
    features, [S] labels), for categories a validation-class calibration may not transfer to.

    Leave one category out: each category in turn plays the unknown one, and the others' photos are
    queries in folds (fold f holds out each taught category's f-th photo, which the rest of its
    photos then predict). T minimises the taught queries' NLL; when every one of them is right the
    NLL has no minimum (T -> 0 makes every confidence 100%), so T is `fallback_temperature` (the
    validation-class calibration's). `auto` keeps the score with the best AUROC, taught vs untaught.
    The threshold accepts `false_accept` of the untaught queries; the false-accept estimate judges
    each held-out category by the threshold the other rounds chose (the score choice itself is made
    on all rounds, so the AUROC is slightly optimistic)."""
    if score != "auto":
        check_score(score)
    if not 0 < false_accept < 1:
        raise FslError(f"false_accept must lie strictly between 0 and 1, got {false_accept}", "false_accept")
    labels = torch.as_tensor(labels)
    n_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_classes)
    if n_classes < MIN_SUPPORT_CATEGORIES or int(counts.min()) < MIN_SUPPORT_PHOTOS:
        raise FslError(
            f"calibrating on the support needs at least {MIN_SUPPORT_CATEGORIES} categories of at least "
            f"{MIN_SUPPORT_PHOTOS} photos each (one category plays the unknown one in turn, one photo per "
            f"category is held out); {where}: {n_classes} categories, the smallest with {int(counts.min())} "
            "photo(s). Teach more photos or categories first"
        )
    position = torch.zeros_like(labels)  # each photo's index within its category: fold f holds out position f
    for c in range(n_classes):
        position[labels == c] = torch.arange(int(counts[c]))
    rounds = []  # per fold: (unknown category, logits, query labels (-1: untaught), support, its labels, queries)
    for unknown in range(n_classes):
        taught = [c for c in range(n_classes) if c != unknown]
        relabel = torch.full((n_classes,), -1, dtype=torch.long)
        relabel[taught] = torch.arange(len(taught))
        for fold in range(int(counts[taught].max())):
            held = (labels != unknown) & (position == fold)
            if not held.any():
                continue
            kept = (labels != unknown) & ~held
            queries = held | (labels == unknown)
            logits = head(features[kept][None], relabel[labels[kept]][None], features[queries][None], len(taught))[0]
            rounds.append((unknown, logits, relabel[labels[queries]], head.embed(features[kept]),
                           relabel[labels[kept]], head.embed(features[queries])))  # fmt: skip
    known_logits = torch.cat([logits[q >= 0] for _, logits, q, *_ in rounds])
    known_labels = torch.cat([q[q >= 0] for _, _, q, *_ in rounds])
    all_right = bool((known_logits.argmax(-1) == known_labels).all())
    temperature = fallback_temperature if all_right else fit_temperature(known_logits, known_labels)
    known = np.concatenate([(q >= 0).numpy() for _, _, q, *_ in rounds])
    per_score = {
        name: [known_scores(name, logits, temperature, s, sl, qf).numpy() for _, logits, _, s, sl, qf in rounds]
        for name in (SCORES if score == "auto" else (score,))
    }
    aurocs = {name: float(roc_auc_score(known, np.concatenate(values))) for name, values in per_score.items()}
    chosen = max(aurocs, key=aurocs.get) if score == "auto" else score
    scores = np.concatenate(per_score[chosen])
    threshold = threshold_for(scores[~known], false_accept)
    unknown_of = np.concatenate([np.full(len(q), u) for u, _, q, *_ in rounds])
    untaught = [scores[~known & (unknown_of == u)] for u in range(n_classes)]
    cross_validated = [
        float((untaught[u] >= threshold_for(np.concatenate(untaught[:u] + untaught[u + 1 :]), false_accept)).mean())
        for u in range(n_classes)
    ]
    figures = {
        "auroc": aurocs[chosen],
        "score_aurocs": aurocs,
        "estimated_false_accept": float(np.mean(cross_validated)),
        "taught_answered": float((scores[known] >= threshold).mean()),
        "taught_right": float((known_logits.argmax(-1) == known_labels).double().mean()),
        "temperature_from": "validation classes (every held-out taught photo was right)" if all_right else "support",
        "categories": n_classes,
        "photos": int(len(labels)),
    }
    return Calibration(
        f"{config.name}@support",
        key,
        encoder_id,
        temperature,
        threshold,
        false_accept,
        figures,
        score=chosen,
        fitted_on=f"{where} (leave one category out: {n_classes} categories, {len(labels)} photos)",
    )

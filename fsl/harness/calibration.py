"""Confidences that mean something, and a "none of these" answer, fitted without novel classes.

Temperature scaling (Guo et al., ICML 2017): one scalar T per config minimises the negative
log-likelihood of selection-episode queries; softmax(logits / T) is the confidence shown. The
"none of these" rule thresholds a known-ness score (fsl/harness/open_set.py: the calibrated top
confidence, energy, distance to the support, Mahalanobis): `fsl calibrate` compares the scores on
open-set selection episodes (2, 3, 5 or 8 classes taught, the queries of the others unknown), keeps
the best, and sets a threshold for each count of taught classes that accepts a target fraction of
the unknown queries (false accepts): with more taught classes an untaught photo is nearer one of them.
Selection episodes are drawn over base and validation classes (22 in split 0, not 6: enough to
rank the scores as novel classes do) for a head that learns nothing from base classes, over
validation classes for one that did.

`fsl calibrate` saves the calibration before it reads a novel-class episode; the novel figures
(ECE before and after, AUROC known vs unknown, accuracy and unknown rate at the threshold) are only
reported. A calibration is found again by what it was fitted for (head, options, fusion, encoder,
checkpoint), not by file name, so an image-only fallback finds the image-only config's calibration.
The shipped calibrations travel with the package; a user's own, under the cache, are found first."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from fsl.config import UNKNOWN, ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.sampler import Episodes
from fsl.errors import FslError, shown
from fsl.files import NUMBER, check_record, read_json, write_json
from fsl.harness.evaluate import episode_logits
from fsl.harness.experiment import (
    check_alignment,
    check_validation_only,
    class_text_table,
    experiment_head,
    load_episode_set,
    selection_sets,
)
from fsl.harness.open_set import DEFAULT_SCORE, SCORES, best_score, check_score, compare_scores, known_scores
from fsl.harness.select import power_line
from fsl.paths import (
    DEFAULT_EPISODES_DIR,
    FEATURES_ROOT,
    USER_CALIBRATION_DIR,
    calibration_dirs,
    checkpoint_dir,
    episode_set_path,
)
from fsl.store.rows import store_rows

KNOWN_WAYS = 5  # classes taught in a reported open-set episode; the rest of the episode's classes are unknown
# Open-set selection episodes teach each of these many classes (those below the set's ways): a user
# teaches two categories or eight, and a score chosen at one count alone can collapse at another.
TAUGHT_COUNTS = (2, 3, 5, 8)
FALSE_ACCEPT = 0.2  # default target: 1 in 5 photos of an untaught class still gets a (wrong) answer
# (over base ∪ validation classes, validation classes only): the first for configs that learned nothing
# from base classes, the second for those that did (experiment.selection_sets); of each, the first set
# drawn is used (a small catalog's pool may hold too few classes for 15-way episodes)
TEMPERATURE_SETS = (("select-5w5s",), ("val-5w5s",))
OPEN_SELECTION_SETS = (("select-15w5s", "select-allway-5s"), ("val-allway-5s",))
REPORT_SETS = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
OPEN_NOVEL_SET = "novel-15w5s"


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
    score: str = DEFAULT_SCORE  # which known-ness score the threshold applies to (fsl/harness/open_set.py)
    fitted_on: str = "validation classes"  # in words: what the temperature and threshold were fitted on
    support_digest: str = ""  # fitted on a support: the digest of its examples (support_digest), "" otherwise
    # thresholds by the number of categories taught ("2", "3", "5", "8"), each for the false-accept target:
    # with more categories an untaught photo is nearer one of them, so one threshold lets more through
    thresholds: dict = field(default_factory=dict)
    path: str = field(default="", compare=False)  # the file it was read from (not saved)

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
                    "support_digest": (str,), "thresholds": (dict,)}  # fmt: skip
        check_record(values, {k: v for k, v in optional.items() if k in values}, path, "calibration", fix)
        check_score(values.get("score", DEFAULT_SCORE), f"{path}: score")
        numbers = {name: finite(values[name]) for name in ("temperature", "threshold", "false_accept")}
        bounded = values.get("score", DEFAULT_SCORE) != "max-softmax" or 0 <= numbers["threshold"] <= 1
        if not (numbers["temperature"] > 0 and math.isfinite(numbers["threshold"]) and bounded
                and 0 < numbers["false_accept"] < 1):  # fmt: skip
            raise FslError(
                f"{path}: the calibration is damaged (temperature {shown(values['temperature'])}, threshold "
                f"{shown(values['threshold'])}, false_accept {shown(values['false_accept'])}: expected a finite "
                f"temperature > 0, a finite threshold, within 0-1 for max-softmax, and a false-accept target "
                f"between 0 and 1); {fix}"
            )
        thresholds = values.get("thresholds", {})
        for count, value in thresholds.items():
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
    """The calibration fitted for `key` (see config_key), if any: in `chosen` (--calibration-dir)
    when given, else the user's own first, then the shipped ones."""
    for root in calibration_dirs(chosen):
        for path in sorted(Path(root).glob("*.json")):
            calibration = Calibration.load(path)
            if calibration.key == key:
                return calibration
    return None


# The statistics --------------------------------------------------------------------------------


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T > 0 minimising the mean negative log-likelihood of softmax(logits / T): [M, N], [M]."""
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / np.exp(log_t), labels))

    return float(np.exp(minimize_scalar(nll, bounds=(-9.0, 9.0), method="bounded").x))


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """|accuracy - confidence| of the top answer, averaged over equal-width confidence bins, weighted
    by the queries in each (Naeini et al., 2015; the figure Guo et al. report)."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).double()
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.double().mean() * (correct[members].mean() - confidence[members].double().mean()).abs()
    return float(error)


def open_set_episodes(episodes: Episodes, known: int = KNOWN_WAYS) -> tuple[Episodes, np.ndarray]:
    """Open-set episodes from N-way ones: the support of the first `known` classes of each episode,
    the queries of all N. Returns them and the query labels [N*Q], -1 where the class is unknown."""
    if not 2 <= known < episodes.n_way:
        raise FslError(f"open-set episodes need 2 <= known ways < {episodes.n_way} (the set's ways); got {known}")
    support = episodes.support[:, : known * episodes.k_shot]
    labels = np.where(episodes.query_labels < known, episodes.query_labels, -1)
    return Episodes(
        support, episodes.query, episodes.classes[:, :known], known, episodes.k_shot, episodes.q_query
    ), labels


def threshold_for(unknown_confidence: np.ndarray, false_accept: float) -> float:
    """The smallest threshold that accepts at most `false_accept` of the unknown queries."""
    return float(np.quantile(np.asarray(unknown_confidence, dtype=np.float64), 1 - false_accept, method="higher"))


def open_set_figures(
    predicted: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray
) -> dict:
    """AUROC of known vs unknown by the known-ness score, and what the threshold (one, or one per
    query) does to each kind (predicted: each query's top class)."""
    predicted = np.asarray(predicted)
    known = labels >= 0
    accepted = scores >= threshold
    correct = predicted == labels
    return {
        "auroc": float(roc_auc_score(known, scores)),
        "known_accuracy": float((correct & accepted)[known].mean()),  # answered, and right
        "known_accuracy_without_rule": float(correct[known].mean()),
        "known_unknown_rate": float((~accepted)[known].mean()),  # taught classes answered "unknown"
        "false_accept": float(accepted[~known].mean()),  # untaught classes given a taught name
    }


# One config ------------------------------------------------------------------------------------


@dataclass
class OpenSetScores:
    """Open-set episodes under a head, pooled over the taught counts they were built with, one entry
    per episode: each query's predicted class, each score's values, the query labels (-1: a class
    outside the support) and the number of classes the episode taught."""

    predicted: list[np.ndarray]
    scores: dict[str, list[np.ndarray]]
    labels: list[np.ndarray]
    taught: list[int]

    def only(self, taught: int) -> OpenSetScores:
        """The episodes that taught `taught` classes."""
        keep = [e for e, count in enumerate(self.taught) if count == taught]
        return OpenSetScores(
            [self.predicted[e] for e in keep],
            {name: [values[e] for e in keep] for name, values in self.scores.items()},
            [self.labels[e] for e in keep],
            [taught] * len(keep),
        )

    def figures(self, score: str, threshold_at: Callable[[int], float]) -> dict:
        """The rule over every query, each episode judged by the threshold for its taught count, and per
        taught count where there are several."""
        thresholds = [np.full(len(labels), threshold_at(count)) for labels, count in zip(self.labels, self.taught)]
        figures = open_set_figures(
            np.concatenate(self.predicted),
            np.concatenate(self.scores[score]),
            np.concatenate(self.labels),
            np.concatenate(thresholds),
        )
        counts = sorted(set(self.taught))
        if len(counts) > 1:
            figures["by_taught"] = {str(c): self.only(c).figures(score, threshold_at) for c in counts}
        else:
            figures["threshold"] = threshold_at(counts[0])
        return figures

    def unknown_scores(self, score: str) -> np.ndarray:
        """The score's values on the queries of untaught classes."""
        return np.concatenate(self.scores[score])[np.concatenate(self.labels) < 0]

    def comparison(self) -> dict[str, dict]:
        return compare_scores(self.scores, [labels >= 0 for labels in self.labels])

    def power(self, chosen: str) -> dict:
        """The chosen score against the runner-up, paired over the same episodes' per-episode AUROCs
        (select.power_line)."""
        known = [labels >= 0 for labels in self.labels]
        usable = [e for e, k in enumerate(known) if 0 < k.sum() < len(k)]
        names = sorted(self.scores)
        each = [np.array([roc_auc_score(known[e], self.scores[name][e]) for e in usable]) for name in names]
        return power_line(names, each, names.index(chosen), unit="AUROC")


def set_logits(
    head, features, store, config: ExperimentConfig, episodes: Episodes, classes: list[str], batch_size: int
) -> torch.Tensor:
    """[E, Q, N] logits of a head over `episodes` (classes: the set's class list, for class texts)."""

    class_text = class_text_table(config, classes, store) if head.needs_class_text else None
    out = torch.empty(len(episodes), episodes.query.shape[1], episodes.n_way)
    for start, stop, logits in episode_logits(head, features, store.ids, episodes, batch_size, False, class_text):
        out[start:stop] = logits
    return out


@torch.no_grad()
def episode_scores(
    head, features, store, episodes: Episodes, logits: torch.Tensor, temperature: float, scores=SCORES
) -> dict[str, np.ndarray]:
    """Each known-ness score of every query of `episodes` ([E, Q] per score), from the head's logits
    and its embedded features (the feature scores compare a query with its episode's support)."""
    support_rows, query_rows = store_rows(store.ids, episodes.support), store_rows(store.ids, episodes.query)
    labels = torch.as_tensor(episodes.support_labels)
    out = {name: np.empty(logits.shape[:2]) for name in scores}
    for e in range(len(episodes)):
        support = head.embed(torch.from_numpy(np.asarray(features[support_rows[e]], dtype=np.float32)))
        query = head.embed(torch.from_numpy(np.asarray(features[query_rows[e]], dtype=np.float32)))
        for name in scores:
            out[name][e] = known_scores(name, logits[e], temperature, support, labels, query).numpy()
    return out


def calibrate(
    config: ExperimentConfig,
    catalog: Catalog,
    store_root=None,
    checkpoints_root="checkpoints",
    episodes_root=DEFAULT_EPISODES_DIR,
    root: str | os.PathLike = USER_CALIBRATION_DIR,
    false_accept: float = FALSE_ACCEPT,
    temperature_set: str = "auto",
    open_selection_set: str = "auto",
    report_sets: tuple[str, ...] = REPORT_SETS,
    open_novel_set: str = OPEN_NOVEL_SET,
    known: int = KNOWN_WAYS,
    score: str = "auto",
    taught_counts: tuple[int, ...] = TAUGHT_COUNTS,
) -> Calibration:
    """Fit T, choose the known-ness score (`auto`: the best pooled AUROC on the open-set selection
    episodes, every taught count together) and its "unknown" threshold, save, then report on novel
    classes. `auto` sets: over base ∪ validation classes where the config learned nothing from base
    classes (experiment.selection_sets), else over validation classes."""

    if not 0 < false_accept < 1:
        raise FslError(f"false_accept must lie strictly between 0 and 1, got {false_accept}")
    if score != "auto":
        check_score(score)

    def first_drawn(candidates: tuple[str, ...]) -> str:
        drawn = (n for n in candidates if episode_set_path(catalog, config.label_column, n, episodes_root).is_file())
        return next(drawn, candidates[-1])

    if temperature_set == "auto":
        temperature_set = first_drawn(selection_sets(config, *TEMPERATURE_SETS))
    if open_selection_set == "auto":
        open_selection_set = first_drawn(selection_sets(config, *OPEN_SELECTION_SETS))
    check_validation_only(
        config, catalog, (temperature_set, open_selection_set), episodes_root, "fsl calibrate", "the val-* sets"
    )
    split_seed = load_episode_set(config, catalog, temperature_set, episodes_root).meta["split_seed"]
    store, features, head = experiment_head(
        config, catalog, store_root or FEATURES_ROOT, checkpoints_root, episodes_root
    )
    checkpoint = checkpoint_dir(config.name, checkpoints_root) / "best" if config.train is not None else None

    def logits_of(name: str):
        episode_set = load_episode_set(config, catalog, name, episodes_root)
        check_alignment(store, episode_set)
        episodes = episode_set.episodes
        logits = set_logits(head, features, store, config, episodes, episode_set.meta["classes"], config.batch_size)
        return logits.reshape(-1, logits.shape[-1]), torch.as_tensor(np.tile(episodes.query_labels, len(episodes)))

    def open_set_of(name: str, temperature: float, counts: tuple[int, ...]) -> OpenSetScores:
        episode_set = load_episode_set(config, catalog, name, episodes_root)
        check_alignment(store, episode_set)
        n_way = episode_set.episodes.n_way  # a count at or above it teaches all but one class instead
        counts = tuple(sorted({min(count, n_way - 1) for count in counts}))
        open_set = OpenSetScores([], {}, [], [])
        for count in counts:
            episodes, query_labels = open_set_episodes(episode_set.episodes, count)
            classes = episode_set.meta["classes"]
            logits = set_logits(head, features, store, config, episodes, classes, config.batch_size)
            for score_name, values in episode_scores(head, features, store, episodes, logits, temperature).items():
                open_set.scores.setdefault(score_name, []).extend(values)
            open_set.predicted.extend(logits.argmax(-1).numpy())
            open_set.labels.extend([query_labels] * len(episodes))
            open_set.taught.extend([count] * len(episodes))
        return open_set

    logits, labels = logits_of(temperature_set)
    temperature = fit_temperature(logits, labels)
    open_selection = open_set_of(open_selection_set, temperature, taught_counts)
    comparison = open_selection.comparison()
    chosen = best_score(comparison) if score == "auto" else score
    threshold = threshold_for(open_selection.unknown_scores(chosen), false_accept)  # every count pooled
    counts = sorted(set(open_selection.taught))
    thresholds = {str(c): threshold_for(open_selection.only(c).unknown_scores(chosen), false_accept) for c in counts}
    calibration = Calibration(
        config.name,
        config_key(config, store.encoder_id, checkpoint),
        store.encoder_id,
        temperature,
        threshold,
        false_accept,
        score=chosen,
        thresholds=thresholds,
    )
    validation = {
        "temperature_set": temperature_set,
        "open_set": open_selection_set,
        "taught_counts": counts,
        "nll_before": float(torch.nn.functional.cross_entropy(logits, labels)),
        "nll_after": float(torch.nn.functional.cross_entropy(logits / temperature, labels)),
        "ece_before": expected_calibration_error(torch.softmax(logits, -1), labels),
        "ece_after": expected_calibration_error(torch.softmax(logits / temperature, -1), labels),
        "scores": comparison,
        "power": open_selection.power(chosen),
        **open_selection.figures(chosen, calibration.threshold_at),
    }
    pool = "base and validation classes" if temperature_set.startswith("select") else "validation classes"
    calibration.validation = validation
    calibration.fitted_on = (
        f"{pool} ({temperature_set}, open-set {open_selection_set} teaching {'/'.join(map(str, counts))} classes, "
        f"a threshold for each; {catalog.fingerprint} split {split_seed})"
    )
    calibration.save(root)  # chosen: only now is a novel-class episode read, to report

    for name in report_sets:
        logits, labels = logits_of(name)
        calibration.novel[name] = {
            "ece_before": expected_calibration_error(torch.softmax(logits, -1), labels),
            "ece_after": expected_calibration_error(calibration.probabilities(logits), labels),
        }
    open_novel = open_set_of(open_novel_set, temperature, tuple(sorted({known, *counts})))
    reported = open_novel.only(max(c for c in open_novel.taught if c <= known))  # comparable across versions
    calibration.novel[f"open-{open_novel_set}"] = {
        "taught": reported.taught[0],
        "scores": reported.comparison(),
        **reported.figures(chosen, calibration.threshold_at),
        "by_taught": open_novel.figures(chosen, calibration.threshold_at).get("by_taught", {}),  # one count: none
        "rank_agreement": rank_agreement(comparison, reported.comparison()),
    }
    calibration.save(root)
    return calibration


def rank_agreement(selection: dict[str, dict], novel: dict[str, dict]) -> float | None:
    """Spearman's rank correlation between the scores' AUROCs on the selection episodes and on the
    reported novel episodes: whether selection ranks the scores as the test set would.
    None with fewer than three scores, or where either side ties them all."""
    names = sorted(set(selection) & set(novel))
    if len(names) < 3:
        return None
    ours, theirs = [selection[n]["auroc"] for n in names], [novel[n]["auroc"] for n in names]
    if len(set(ours)) < 2 or len(set(theirs)) < 2:  # a side that ties every score has no order to agree with
        return None
    correlation = spearmanr(ours, theirs).statistic
    return None if not math.isfinite(correlation) else float(correlation)


def best_for_own_categories(calibrations: list[Calibration]) -> Calibration:
    """Of calibrated heads fitted for one false-accept target, the one that answers the most taught
    photos right on its selection episodes (every taught count): how the default head of your own
    categories is chosen, never on novel classes."""
    targets = {c.false_accept for c in calibrations}
    if len(targets) != 1:
        raise FslError(f"heads are compared at one false-accept target; these were fitted for {sorted(targets)}")
    return max(calibrations, key=lambda c: (c.validation.get("known_accuracy", -1.0), c.config))


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
        raise FslError(f"--false-accept must lie strictly between 0 and 1, got {false_accept}")
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


def format_calibration(calibration: Calibration) -> str:
    """The figures a person reads: ECE before -> after per set, the scores compared, then the unknown
    rule on val and novel."""
    lines = [
        f"{calibration.config}: temperature {calibration.temperature:.4g}, {calibration.rule()} "
        f"(target false accepts {calibration.false_accept:.0%} on {calibration.fitted_on})"
    ]
    v = calibration.validation
    lines.append(f"  {v['temperature_set']}: ECE {100 * v['ece_before']:.1f} -> {100 * v['ece_after']:.1f} points")
    for name, figures in calibration.novel.items():
        if "ece_before" in figures:
            lines.append(f"  {name}: ECE {100 * figures['ece_before']:.1f} -> {100 * figures['ece_after']:.1f} points")
    for name, figures in [
        (f"{v['open_set']} (selection)", v),
        *[(k, f) for k, f in calibration.novel.items() if "auroc" in f],
    ]:
        for score, compared in figures.get("scores", {}).items():
            mark = "  <- chosen" if score == calibration.score else ""
            lines.append(
                f"  {name}, {score} score: AUROC {compared['auroc']:.3f} (per category set: mean "
                f"{compared['episode_auroc_mean']:.3f}, 10th percentile {compared['episode_auroc_p10']:.3f}); "
                f"{100 * compared['false_accept_at_taught_answered']:.1f}% false accepts at 80% taught answered{mark}"
            )
        lines.append(
            f"  {name}: AUROC {figures['auroc']:.3f}; taught classes {100 * figures['known_accuracy']:.1f}% "
            f"right and answered ({100 * figures['known_accuracy_without_rule']:.1f}% without the rule), "
            f'{100 * figures["known_unknown_rate"]:.1f}% "unknown"; untaught classes '
            f"{100 * figures['false_accept']:.1f}% falsely accepted"
        )
        for count, each in figures.get("by_taught", {}).items():
            lines.append(
                f"    {count} classes taught: {100 * each['known_accuracy']:.1f}% right and answered, "
                f"{100 * each['false_accept']:.1f}% of untaught accepted"
            )
    if "power" in v:
        lines.append(f"  the chosen score against the runner-up: {v['power']['verdict']}")
    for name, figures in calibration.novel.items():
        if figures.get("rank_agreement") is not None:
            lines.append(
                f"  the scores' ranking, selection vs {name}: Spearman {figures['rank_agreement']:+.2f} "
                "(1: the same order)"
            )
    return "\n".join(lines)

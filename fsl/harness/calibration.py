"""`fsl calibrate`: confidences that mean something, and a "none of these" answer, fitted without novel classes.

Temperature scaling (Guo et al., ICML 2017): one scalar T per config minimises the negative
log-likelihood of selection-episode queries; softmax(logits / T) is the confidence shown. The
"none of these" rule thresholds a known-ness score (fsl/inference/open_set.py: the calibrated top
confidence, energy, distance to the support, Mahalanobis): `fsl calibrate` compares the scores on
open-set selection episodes (2, 3, 5 or 8 classes taught, the queries of the others unknown), keeps
the best, and sets a threshold for each count of taught classes that accepts a target fraction of
the unknown queries (false accepts): with more taught classes an untaught photo is nearer one of them.
With a floor of taught photos right (`taught_right`), a threshold that would answer fewer of the
taught selection queries right is lowered to keep it: the floor is promised, the false accepts follow.
Selection episodes are drawn over base and validation classes (22 in split 0, not 6: enough to
rank the scores as novel classes do) for a head that learns nothing from base classes, over
validation classes for one that did.

`fsl calibrate` saves the calibration before it reads a novel-class episode; the novel figures
(ECE before and after, AUROC known vs unknown, accuracy and unknown rate at the threshold, on random
open-set episodes and on hard ones whose untaught classes are siblings of taught ones) are only
reported. What a calibration is at answer time (reading, finding, applying it, and fitting one on a
user's own support) lives in fsl/inference/calibration.py; this module is the job that fits one."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from fsl.config import ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.sampler import Episodes
from fsl.episodes.siblings import HARD_TAUGHT
from fsl.episodes.standard import load_episode_set
from fsl.errors import FslError
from fsl.harness.evaluate import episode_logits
from fsl.harness.experiment import check_alignment, check_validation_only, config_for_split, selection_sets
from fsl.harness.negatives import class_means, labels_by_row
from fsl.harness.select import power_line
from fsl.inference.calibration import (
    FALSE_ACCEPT,
    Calibration,
    config_key,
    fit_temperature,
    threshold_for,
    threshold_for_floor,
)
from fsl.inference.heads import class_text_table, experiment_head
from fsl.inference.negatives import KnownNegatives, turned_away
from fsl.inference.open_set import SCORES, best_score, check_score, compare_scores, known_scores
from fsl.paths import USER_CALIBRATION_DIR, Workspace, checkpoint_dir, episode_set_path
from fsl.store.rows import store_rows

KNOWN_WAYS = 5  # classes taught in a reported open-set episode; the rest of the episode's classes are unknown
# Open-set selection episodes teach each of these many classes (those below the set's ways): a user
# teaches two categories or eight, and a score chosen at one count alone can collapse at another.
TAUGHT_COUNTS = (2, 3, 5, 8)
# (over base ∪ validation classes, validation classes only): the first for configs that learned nothing
# from base classes, the second for those that did (experiment.selection_sets); of each, the first set
# drawn is used (a small catalog's pool may hold too few classes for 15-way episodes)
TEMPERATURE_SETS = (("select-5w5s",), ("val-5w5s",))
OPEN_SELECTION_SETS = (("select-15w5s", "select-allway-5s"), ("val-allway-5s",))
REPORT_SETS = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
OPEN_NOVEL_SET = "novel-15w5s"
HARD_NOVEL_SET = "novel-hard-7w5s"  # close neighbours: every untaught class a sibling of a taught one
# the trade-off curve: untaught photos answered "unknown" where a threshold answers this share of taught ones right
# (0.85: issue 36's floor among close neighbours; 0.88: issue 33's for the own-categories default)
CURVE_TAUGHT = (0.75, 0.8, 0.85, 0.88, 0.9)


# The statistics --------------------------------------------------------------------------------


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
    away: list[np.ndarray]  # whether the known negatives answer each query "unknown"
    negatives_answer: bool = False  # `with_negatives`: the queries they turn away are never answered

    def only(self, taught: int) -> OpenSetScores:
        """The episodes that taught `taught` classes."""
        keep = [e for e, count in enumerate(self.taught) if count == taught]
        return OpenSetScores(
            [self.predicted[e] for e in keep],
            {name: [values[e] for e in keep] for name, values in self.scores.items()},
            [self.labels[e] for e in keep],
            [taught] * len(keep),
            [self.away[e] for e in keep],
            self.negatives_answer,
        )

    def with_negatives(self, score: str) -> OpenSetScores:
        """These episodes answered with the known negatives too: `score` alone, pushed below every
        threshold where the negatives turn a query away (so a threshold on it is the combined rule)."""
        floor = min(values.min() for values in self.scores[score]) - 1.0
        pushed = [np.where(away, floor, values) for values, away in zip(self.scores[score], self.away)]
        return OpenSetScores(self.predicted, {score: pushed}, self.labels, self.taught, self.away, True)

    def threshold(self, score: str, false_accept: float, taught_right: float = 0.0) -> float:
        """The threshold on `score` that accepts at most `false_accept` of the untaught queries, lowered
        where that answers fewer than `taught_right` of the taught ones right (0: no floor)."""
        threshold = threshold_for(self.unknown_scores(score), false_accept)
        if taught_right > 0:
            labels = np.concatenate(self.labels)
            right = np.concatenate(self.predicted) == labels  # (a right answer is a taught class's)
            if self.negatives_answer:
                right &= ~np.concatenate(self.away)
            values = np.concatenate(self.scores[score])[right]
            threshold = min(threshold, threshold_for_floor(values, int((labels >= 0).sum()), taught_right))
        return threshold

    def thresholds(self, score: str, false_accept: float, taught_right: float = 0.0) -> dict:
        """{"threshold": every taught count pooled, "thresholds": one per taught count} for the targets."""
        return {
            "threshold": self.threshold(score, false_accept, taught_right),
            "thresholds": {
                str(c): self.only(c).threshold(score, false_accept, taught_right) for c in sorted(set(self.taught))
            },
        }

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

    def curve(self, score: str, negatives: bool, taught_right: tuple[float, ...] = CURVE_TAUGHT) -> list[float | None]:
        """The trade-off of a rule (`score` alone, or with the known negatives answering too): for each
        share of taught photos right and answered, the most untaught photos answered "unknown" by any one
        threshold that reaches it, pooled over episodes; None where no threshold reaches it."""
        scores, labels = np.concatenate(self.scores[score]), np.concatenate(self.labels)
        away = np.concatenate(self.away) if negatives else np.zeros(len(labels), dtype=bool)
        known, right = labels >= 0, np.concatenate(self.predicted) == labels
        order = np.argsort(-scores, kind="stable")  # a threshold at each score accepts every query above it
        answered = ~away[order]
        right_answered = np.cumsum(answered & right[order] & known[order]) / max(known.sum(), 1)
        untaught_unknown = 1 - np.cumsum(answered & ~known[order]) / max((~known).sum(), 1)
        curve = []
        for target in taught_right:
            reached = right_answered >= target
            curve.append(float(untaught_unknown[reached].max()) if reached.any() else None)
        return curve

    def curves(self) -> dict:
        """Every score's trade-off curve, alone and with the known negatives, at CURVE_TAUGHT: what any
        threshold on any score could do on these episodes (a description, never a choice)."""
        return {
            "curve_taught_right": list(CURVE_TAUGHT),
            "curves": {
                name: {"alone": self.curve(name, False), "with_negatives": self.curve(name, True)}
                for name in self.scores
            },
        }

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


def selection_turned_away(
    negatives: KnownNegatives,
    support: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    query: torch.Tensor,
    q_query: int,
) -> np.ndarray:
    """[Q] whether the known negatives answer each query of one selection episode "unknown" as the one
    core does (fsl/inference/negatives.py). `names`: the episode's classes, its taught ones first (as
    many as the support's labels count), and its queries class-major, `q_query` each. Selection
    classes are themselves known negatives; each query meets every one but the taught classes and its
    own, as a photo at answer time meets every negative of a catalog that does not hold its category:
    a taught photo meets the untaught classes of its episode too."""
    taught = names[: int(labels.max()) + 1]
    query_class = np.repeat(np.arange(len(names)), q_query)
    if len(query_class) != len(query):
        raise FslError(f"{len(query)} queries for {len(names)} classes of {q_query} queries each")
    # (queries, the negatives they meet): a query of a class that is itself a negative meets all but it;
    # every other query meets them all (for_support leaves the taught classes out)
    own = [c for c in range(len(taught), len(names)) if names[c] in negatives.names]
    groups = [(~np.isin(query_class, own), negatives)]
    groups += [(query_class == c, negatives.without([names[c]])) for c in own]
    away = np.zeros(len(query), dtype=bool)
    for rows, met in groups:
        rule = met.for_support(support, labels, taught)
        if rule.negatives.names and rows.any():
            excess, lead, _ = rule.judge(query[rows])
            away[rows] = turned_away(excess, lead, negatives.margin).numpy()
    return away


@torch.no_grad()
def episode_scores(
    head,
    features,
    store,
    episodes: Episodes,
    logits: torch.Tensor,
    temperature: float,
    names: list[list[str]],
    negatives: KnownNegatives,
    scores=SCORES,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each known-ness score of every query of `episodes` ([E, Q] per score), from the head's logits
    and its embedded features (the feature scores compare a query with its episode's support), and
    [E, Q] whether the known negatives (prototypes embedded by the head) answer each query "unknown"
    (selection_turned_away; `names` [E][N']: each episode's taught classes first, then the untaught
    ones)."""
    support_rows, query_rows = store_rows(store.ids, episodes.support), store_rows(store.ids, episodes.query)
    labels = torch.as_tensor(episodes.support_labels)
    out = {name: np.empty(logits.shape[:2]) for name in scores}
    away = np.zeros(episodes.query.shape[:2], dtype=bool)
    for e in range(len(episodes)):
        support = head.embed(torch.from_numpy(np.asarray(features[support_rows[e]], dtype=np.float32)))
        query = head.embed(torch.from_numpy(np.asarray(features[query_rows[e]], dtype=np.float32)))
        for name in scores:
            out[name][e] = known_scores(name, logits[e], temperature, support, labels, query).numpy()
        away[e] = selection_turned_away(negatives, support, labels, names[e], query, episodes.q_query)
    return out, away


def calibrate(
    config: ExperimentConfig,
    catalog: Catalog,
    workspace: Workspace = Workspace(),
    out: str | os.PathLike = USER_CALIBRATION_DIR,
    split_seed: int = 0,
    false_accept: float = FALSE_ACCEPT,
    temperature_set: str = "auto",
    open_selection_set: str = "auto",
    report_sets: tuple[str, ...] = REPORT_SETS,
    open_novel_set: str = OPEN_NOVEL_SET,
    known: int = KNOWN_WAYS,
    score: str = "auto",
    taught_counts: tuple[int, ...] = TAUGHT_COUNTS,
    report: bool = True,
    taught_right: float = 0.0,
) -> Calibration:
    """Fit T, choose the known-ness score (`auto`: the best pooled AUROC on the open-set selection
    episodes, every taught count together) and its "unknown" threshold on class split `split_seed`,
    save under `out`, then report on novel classes (not with `report` False: a benchmark that reads
    them its own way). `taught_right` > 0: each threshold lowered where the false-accept target would
    answer fewer of the taught selection queries right (the target alone is reported beside it,
    `without_floor`). `auto` sets: over base ∪ validation classes where the config learned nothing
    from base classes (experiment.selection_sets), else over validation classes."""
    split_episodes = workspace.episodes_of(split_seed)
    config = config_for_split(config, split_seed)  # an adapted encoder: that split's adaptation
    if not 0 < false_accept < 1:
        raise FslError(f"false_accept must lie strictly between 0 and 1, got {false_accept}")
    if not 0 <= taught_right < 1:
        raise FslError(f"taught_right (a floor of taught photos right) must lie within [0, 1), got {taught_right}")
    if score != "auto":
        check_score(score)

    def first_drawn(candidates: tuple[str, ...]) -> str:
        drawn = (n for n in candidates if episode_set_path(catalog, config.label_column, n, split_episodes).is_file())
        return next(drawn, candidates[-1])

    if temperature_set == "auto":
        temperature_set = first_drawn(selection_sets(config, *TEMPERATURE_SETS, split_seed))
    if open_selection_set == "auto":
        open_selection_set = first_drawn(selection_sets(config, *OPEN_SELECTION_SETS, split_seed))
    check_validation_only(
        config, catalog, (temperature_set, open_selection_set), split_episodes, "fsl calibrate", "the val-* sets"
    )
    store, features, head = experiment_head(config, catalog, workspace, split_seed)
    # known negatives: the classes the open-set selection episodes are drawn over (never a novel one),
    # each query meeting every one but its episode's taught classes and its own
    drawn_over = list(load_episode_set(config, catalog, open_selection_set, split_episodes).meta["classes"])
    means = class_means(features, labels_by_row(catalog, store, config.label_column), drawn_over)
    with torch.no_grad():
        negatives = KnownNegatives(tuple(drawn_over), head.embed(means))
    trained = checkpoint_dir(config.name, workspace.checkpoints_of(split_seed)) / "best"
    checkpoint = trained if config.train is not None else None

    def logits_of(name: str):
        episode_set = load_episode_set(config, catalog, name, split_episodes)
        check_alignment(store, episode_set)
        episodes = episode_set.episodes
        logits = set_logits(head, features, store, config, episodes, episode_set.meta["classes"], config.batch_size)
        return logits.reshape(-1, logits.shape[-1]), torch.as_tensor(np.tile(episodes.query_labels, len(episodes)))

    def open_set_of(name: str, temperature: float, counts: tuple[int, ...]) -> OpenSetScores:
        episode_set = load_episode_set(config, catalog, name, split_episodes)
        check_alignment(store, episode_set)
        n_way = episode_set.episodes.n_way  # a count at or above it teaches all but one class instead
        counts = tuple(sorted({min(count, n_way - 1) for count in counts}))
        open_set = OpenSetScores([], {}, [], [], [])
        classes = episode_set.meta["classes"]
        names = [[classes[c] for c in row] for row in episode_set.episodes.classes]  # taught first
        for count in counts:
            episodes, query_labels = open_set_episodes(episode_set.episodes, count)
            logits = set_logits(head, features, store, config, episodes, classes, config.batch_size)
            scores, away = episode_scores(head, features, store, episodes, logits, temperature, names, negatives)
            for score_name, values in scores.items():
                open_set.scores.setdefault(score_name, []).extend(values)
            open_set.predicted.extend(logits.argmax(-1).numpy())
            open_set.labels.extend([query_labels] * len(episodes))
            open_set.taught.extend([count] * len(episodes))
            open_set.away.extend(away)
        return open_set

    logits, labels = logits_of(temperature_set)
    temperature = fit_temperature(logits, labels)
    open_selection = open_set_of(open_selection_set, temperature, taught_counts)
    comparison = open_selection.comparison()
    chosen = best_score(comparison) if score == "auto" else score
    counts = sorted(set(open_selection.taught))
    beside = open_selection.with_negatives(chosen)  # the same targets, the known negatives answering too
    alone = open_selection.thresholds(chosen, false_accept, taught_right)
    calibration = Calibration(
        config.name,
        config_key(config, store.encoder_id, checkpoint),
        store.encoder_id,
        temperature,
        alone["threshold"],
        false_accept,
        score=chosen,
        thresholds=alone["thresholds"],
        with_negatives=beside.thresholds(chosen, false_accept, taught_right),
        taught_right=taught_right,
    )
    answering = calibration.answering_with_negatives()
    # the false-accept target alone: what the floor changed, reported beside the rule (without one, the rule)
    unfloored = calibration
    if taught_right:
        targets = open_selection.thresholds(chosen, false_accept)
        unfloored = replace(
            calibration, **targets, with_negatives=beside.thresholds(chosen, false_accept), taught_right=0.0
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
        "with_negatives": beside.figures(chosen, answering.threshold_at),
    }
    if taught_right:
        validation["without_floor"] = without_floor(open_selection, chosen, unfloored)
    pool = "base and validation classes" if temperature_set.startswith("select") else "validation classes"
    adapted_on = store.manifest.get("adaptation", {}).get("classes", "base")
    seen = f", all seen by its tower (adapted on {adapted_on} classes)" if adapted_on in ("selection", "all") else ""
    calibration.validation = validation
    calibration.fitted_on = (
        f"{pool}{seen} ({temperature_set}, open-set {open_selection_set} teaching {'/'.join(map(str, counts))} "
        f"classes, a threshold for each; {catalog.fingerprint} split {split_seed})"
    )
    if taught_right:
        calibration.fitted_on += f", each kept to answer at least {taught_right:.0%} of taught photos right"
    calibration.save(out)  # chosen: only now is a novel-class episode read, to report
    if adapted_on == "all" or not report:  # all: its tower trained on the novel classes, none is left to report on
        return calibration

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
        "with_negatives": reported.with_negatives(chosen).figures(chosen, answering.threshold_at),
        **reported.curves(),
    }
    if taught_right:
        calibration.novel[f"open-{open_novel_set}"]["without_floor"] = without_floor(reported, chosen, unfloored)
    if episode_set_path(catalog, config.label_column, HARD_NOVEL_SET, split_episodes).is_file():
        hard = open_set_of(HARD_NOVEL_SET, temperature, (HARD_TAUGHT,))
        calibration.novel[f"open-{HARD_NOVEL_SET}"] = {
            "taught": hard.taught[0],  # HARD_TAUGHT, or all but one class of a smaller set
            "scores": hard.comparison(),
            **hard.figures(chosen, calibration.threshold_at),
            "with_negatives": hard.with_negatives(chosen).figures(chosen, answering.threshold_at),
            **hard.curves(),
        }
    calibration.save(out)
    return calibration


def without_floor(open_set: OpenSetScores, score: str, unfloored: Calibration) -> dict:
    """The figures of the false-accept target alone (no floor of taught photos right) on these episodes,
    alone and beside the known negatives, with the thresholds: what a calibration's floor changed."""
    answering = unfloored.answering_with_negatives()
    return {
        **open_set.figures(score, unfloored.threshold_at),
        "thresholds": unfloored.thresholds,
        "with_negatives": {
            **open_set.with_negatives(score).figures(score, answering.threshold_at),
            "thresholds": answering.thresholds,
        },
    }


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
    """Of calibrated heads fitted for one false-accept target and one floor of taught photos right, the one
    that answers the most taught photos right on its selection episodes (every taught count) or, with a
    floor, that of those keeping it accepts the fewest untaught photos there: how the default head of your
    own categories is chosen, never on novel classes."""
    targets = {(c.false_accept, c.taught_right) for c in calibrations}
    if len(targets) != 1:
        said = ", ".join(
            f"{fa:.0%} false accepts" + (f" with {tr:.0%} taught right" if tr else "") for fa, tr in sorted(targets)
        )
        raise FslError(f"heads are compared at one target; these were fitted for {said}")
    floor = calibrations[0].taught_right

    def merit(c: Calibration) -> tuple:
        taught = c.validation.get("known_accuracy", -1.0)
        if not floor:
            return (taught, c.config)
        return (taught >= floor, -c.validation.get("false_accept", 1.0), taught, c.config)

    return max(calibrations, key=merit)


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
    for name, figures in [("selection", v), *calibration.novel.items()]:
        if "without_floor" in figures:
            alone = figures["without_floor"]
            lines.append(
                f"  {name}, the false-accept target alone (no floor): taught classes "
                f"{100 * alone['known_accuracy']:.1f}% right and answered, untaught "
                f"{100 * alone['false_accept']:.1f}% accepted"
            )
    for name, figures in calibration.novel.items():
        if figures.get("rank_agreement") is not None:
            lines.append(
                f"  the scores' ranking, selection vs {name}: Spearman {figures['rank_agreement']:+.2f} "
                "(1: the same order)"
            )
    return "\n".join(lines)

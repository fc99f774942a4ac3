"""Confidences that mean something, and a "none of these" answer, fitted on validation classes only.

Temperature scaling (Guo et al., ICML 2017): one scalar T per config minimises the negative
log-likelihood of validation-episode queries; softmax(logits / T) is the confidence shown. The
unknown rule is the maximum-softmax baseline (Hendrycks & Gimpel, ICLR 2017): a query whose
calibrated top confidence is below a threshold is answered "unknown". The threshold accepts a
target fraction of the queries of classes outside the support (false accepts) in open-set
validation episodes: 5 validation classes taught, the queries of the others unknown.

`fsl calibrate` saves the calibration before it reads a novel-class episode; the novel figures
(ECE before and after, AUROC known vs unknown, accuracy and unknown rate at the threshold) are only
reported. A calibration is found again by what it was fitted for (head, options, fusion, encoder,
checkpoint), not by file name, so an image-only fallback finds the image-only config's calibration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score

from fsl.config import ExperimentConfig
from fsl.data.catalog import Catalog
from fsl.episodes.sampler import Episodes
from fsl.errors import FslError
from fsl.files import NUMBER, check_record, read_json, write_json
from fsl.harness.evaluate import episode_logits
from fsl.harness.experiment import (
    check_alignment,
    check_validation_only,
    class_text_table,
    experiment_head,
    load_episode_set,
)
from fsl.paths import CALIBRATION_DIR, DEFAULT_EPISODES_DIR, FEATURES_ROOT, checkpoint_dir

UNKNOWN = "unknown"
KNOWN_WAYS = 5  # classes taught in an open-set episode; the rest of the episode's classes are unknown
FALSE_ACCEPT = 0.2  # default target: 1 in 5 photos of an untaught class still gets a (wrong) answer
TEMPERATURE_SET = "val-5w5s"
OPEN_VAL_SET = "val-allway-5s"
REPORT_SETS = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
OPEN_NOVEL_SET = "novel-15w5s"


@dataclass
class Calibration:
    config: str  # the name of the config it was fitted for (for people; lookup is by `key`)
    key: str
    encoder: str
    temperature: float
    threshold: float  # calibrated top confidence below which the answer is "unknown"
    false_accept: float  # the target the threshold was chosen for, on validation classes
    validation: dict = field(default_factory=dict)
    novel: dict = field(default_factory=dict)  # reported after the calibration was saved; {} until then

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)

    def describe(self) -> str:
        return (
            f"calibrated on validation classes (temperature {self.temperature:.3g}; "
            f'"{UNKNOWN}" below {self.threshold:.0%} confidence)'
        )

    def save(self, root: str | os.PathLike = CALIBRATION_DIR) -> Path:
        return write_json(Path(root) / f"{self.config}.json", dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        fields = {"config": (str,), "key": (str,), "encoder": (str,), "temperature": NUMBER, "threshold": NUMBER,
                  "false_accept": NUMBER}  # fmt: skip
        values = check_record(read_json(path, "calibration"), fields, path, "calibration", "rerun `fsl calibrate`")
        try:
            calibration = cls(**values)
        except TypeError as error:
            raise FslError(f"{path} is not a calibration file ({error}); rerun `fsl calibrate`") from None
        if not (calibration.temperature > 0 and 0 <= calibration.threshold <= 1):
            raise FslError(
                f"{path}: temperature {calibration.temperature} or threshold {calibration.threshold} "
                "is out of range; rerun `fsl calibrate`"
            )
        return calibration


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
    if checkpoint is not None:
        parts["weights"] = hashlib.sha256((Path(checkpoint) / "head.safetensors").read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_calibration(key: str, root: str | os.PathLike = CALIBRATION_DIR) -> Calibration | None:
    """The calibration fitted for `key` (see config_key), if any."""
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


def open_set_figures(probabilities: torch.Tensor, labels: np.ndarray, threshold: float) -> dict:
    """AUROC of known vs unknown by top confidence, and what the threshold does to each kind."""
    confidence, predicted = (t.numpy() for t in probabilities.max(-1))
    known = labels >= 0
    accepted = confidence >= threshold
    correct = predicted == labels
    return {
        "auroc": float(roc_auc_score(known, confidence)),
        "known_accuracy": float((correct & accepted)[known].mean()),  # answered, and right
        "known_accuracy_without_rule": float(correct[known].mean()),
        "known_unknown_rate": float((~accepted)[known].mean()),  # taught classes answered "unknown"
        "false_accept": float(accepted[~known].mean()),  # untaught classes given a taught name
        "threshold": threshold,
    }


# One config ------------------------------------------------------------------------------------


def set_logits(
    head, features, store, config: ExperimentConfig, episodes: Episodes, classes: list[str], batch_size: int
) -> torch.Tensor:
    """[E, Q, N] logits of a head over `episodes` (classes: the set's class list, for class texts)."""

    class_text = class_text_table(config, classes, store) if head.needs_class_text else None
    out = torch.empty(len(episodes), episodes.query.shape[1], episodes.n_way)
    for start, stop, logits in episode_logits(head, features, store.ids, episodes, batch_size, False, class_text):
        out[start:stop] = logits
    return out


def calibrate(
    config: ExperimentConfig,
    catalog: Catalog,
    store_root=None,
    checkpoints_root="checkpoints",
    episodes_root=DEFAULT_EPISODES_DIR,
    root: str | os.PathLike = CALIBRATION_DIR,
    false_accept: float = FALSE_ACCEPT,
    temperature_set: str = TEMPERATURE_SET,
    open_val_set: str = OPEN_VAL_SET,
    report_sets: tuple[str, ...] = REPORT_SETS,
    open_novel_set: str = OPEN_NOVEL_SET,
    known: int = KNOWN_WAYS,
) -> Calibration:
    """Fit T and the unknown threshold on validation episodes, save, then report on novel ones."""

    if not 0 < false_accept < 1:
        raise FslError(f"--false-accept must lie strictly between 0 and 1, got {false_accept}")
    check_validation_only(
        config, catalog, (temperature_set, open_val_set), episodes_root, "fsl calibrate", "the val-* sets"
    )
    store, features, head = experiment_head(
        config, catalog, store_root or FEATURES_ROOT, checkpoints_root, episodes_root
    )
    checkpoint = checkpoint_dir(config.name, checkpoints_root) / "best" if config.train is not None else None

    def logits_of(name: str, open_set: bool = False):
        episode_set = load_episode_set(config, catalog, name, episodes_root)
        check_alignment(store, episode_set)
        episodes, labels = episode_set.episodes, episode_set.episodes.query_labels
        if open_set:
            episodes, labels = open_set_episodes(episodes, min(known, episodes.n_way - 1))
        logits = set_logits(head, features, store, config, episodes, episode_set.meta["classes"], config.batch_size)
        return logits.reshape(-1, logits.shape[-1]), torch.as_tensor(np.tile(labels, len(episodes)))

    logits, labels = logits_of(temperature_set)
    temperature = fit_temperature(logits, labels)
    open_logits, open_labels = logits_of(open_val_set, open_set=True)
    open_probabilities = torch.softmax(open_logits / temperature, -1)
    threshold = threshold_for(open_probabilities.max(-1).values[open_labels < 0].numpy(), false_accept)
    validation = {
        "temperature_set": temperature_set,
        "open_set": open_val_set,
        "nll_before": float(torch.nn.functional.cross_entropy(logits, labels)),
        "nll_after": float(torch.nn.functional.cross_entropy(logits / temperature, labels)),
        "ece_before": expected_calibration_error(torch.softmax(logits, -1), labels),
        "ece_after": expected_calibration_error(torch.softmax(logits / temperature, -1), labels),
        **open_set_figures(open_probabilities, open_labels.numpy(), threshold),
    }
    calibration = Calibration(
        config.name,
        config_key(config, store.encoder_id, checkpoint),
        store.encoder_id,
        temperature,
        threshold,
        false_accept,
        validation,
    )
    calibration.save(root)  # chosen: only now is a novel-class episode read, to report

    for name in report_sets:
        logits, labels = logits_of(name)
        calibration.novel[name] = {
            "ece_before": expected_calibration_error(torch.softmax(logits, -1), labels),
            "ece_after": expected_calibration_error(calibration.probabilities(logits), labels),
        }
    open_logits, open_labels = logits_of(open_novel_set, open_set=True)
    calibration.novel[f"open-{open_novel_set}"] = open_set_figures(
        calibration.probabilities(open_logits), open_labels.numpy(), threshold
    )
    calibration.save(root)
    return calibration


def format_calibration(calibration: Calibration) -> str:
    """The figures a person reads: ECE before -> after per set, then the unknown rule on val and novel."""
    lines = [
        f"{calibration.config}: temperature {calibration.temperature:.4g}, unknown below "
        f"{calibration.threshold:.1%} (target false accepts {calibration.false_accept:.0%} on validation classes)"
    ]
    v = calibration.validation
    lines.append(f"  {v['temperature_set']}: ECE {100 * v['ece_before']:.1f} -> {100 * v['ece_after']:.1f} points")
    for name, figures in calibration.novel.items():
        if "ece_before" in figures:
            lines.append(f"  {name}: ECE {100 * figures['ece_before']:.1f} -> {100 * figures['ece_after']:.1f} points")
    for name, figures in [
        (f"{v['open_set']} (validation)", v),
        *[(k, f) for k, f in calibration.novel.items() if "auroc" in f],
    ]:
        lines.append(
            f"  {name}: AUROC {figures['auroc']:.3f}; taught classes {100 * figures['known_accuracy']:.1f}% "
            f"right and answered ({100 * figures['known_accuracy_without_rule']:.1f}% without the rule), "
            f'{100 * figures["known_unknown_rate"]:.1f}% "unknown"; untaught classes '
            f"{100 * figures['false_accept']:.1f}% falsely accepted"
        )
    return "\n".join(lines)

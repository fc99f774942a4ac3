""" "None of these" scores: how much a query looks like one of the taught categories (higher: more
known). `fsl calibrate` compares them on open-set validation episodes and keeps the best; the
threshold that turns a score into an "unknown" answer is fitted on the same validation episodes.

- max-softmax: the calibrated top confidence (Hendrycks & Gimpel, ICLR 2017), the baseline.
- energy: T·logsumexp(logits / T), the negative free energy (Liu et al., NeurIPS 2020): it keeps the
  logits' scale, which the softmax throws away.
- nearest-support: minus the cosine distance to the nearest support example, divided by the
  support's own nearest-neighbour distance (a tight support needs a closer query).
- mahalanobis: minus the smallest Mahalanobis distance to a class mean under the support's shared
  within-class covariance (Lee et al., NeurIPS 2018), shrunk by Ledoit-Wolf since a support has far
  fewer examples than dimensions.

The feature scores read the head's embedded features (its fusion's output), unit-normalised."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.metrics import roc_auc_score

from fsl.config import UNKNOWN_SCORES as SCORES
from fsl.errors import FslError

DEFAULT_SCORE = "max-softmax"
TAUGHT_ANSWERED = 0.8  # the fixed share of taught-category photos answered at which false accepts are compared


def check_score(name: str, source: str = "score") -> str:
    if name not in SCORES:
        raise FslError(f"{source} {name!r}: choose one of {', '.join(SCORES)}", "score" if source == "score" else None)
    return name


def nearest_support(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """[S, D], [Q, D] -> [Q]: minus the distance to the nearest support example over the support's
    mean nearest-neighbour distance (leave-one-out within the support)."""
    support, query = F.normalize(support.double(), dim=-1), F.normalize(query.double(), dim=-1)
    distance = 1 - (query @ support.T).max(-1).values
    within = 1 - support @ support.T
    within.fill_diagonal_(float("inf"))
    spread = within.min(-1).values.mean().clamp_min(1e-6) if len(support) > 1 else torch.tensor(1.0)
    return -(distance / spread)


def mahalanobis(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
    """[S, D], [S], [Q, D] -> [Q]: minus the smallest Mahalanobis distance to a class mean.

    The covariance is Ledoit-Wolf's, (1 - a)·XᵀX/S + a·m·I with X the class-centred support, and its
    inverse is taken through the S×S Gram matrix (Woodbury), since S is far below D."""
    support = F.normalize(support.double(), dim=-1)
    query = F.normalize(query.double(), dim=-1)
    means = torch.stack([support[labels == c].mean(0) for c in range(n_way)])
    centred = support - means[labels]  # X [S, D]
    shrinkage = float(ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))
    n, dim = centred.shape
    ridge = shrinkage * float((centred**2).sum()) / n / dim  # a·m, m = tr(XᵀX/S)/D
    if ridge <= 0:  # one example per class: no spread to learn from, so Euclidean distance
        ridge, shrinkage = 1.0, 1.0
    # Σ = c·XᵀX + r·I with c = (1 - a)/S  =>  Σ⁻¹ = (I - Xᵀ (r/c·I + XXᵀ)⁻¹ X) / r
    c = (1 - shrinkage) / n
    inner = torch.linalg.inv(ridge / c * torch.eye(n, dtype=support.dtype) + centred @ centred.T) if c > 0 else None
    differences = query[:, None, :] - means[None]  # [Q, N, D]
    squared = (differences**2).sum(-1)
    if inner is not None:
        projected = differences @ centred.T  # [Q, N, S]
        squared = squared - torch.einsum("qns,st,qnt->qn", projected, inner, projected)
    return -(squared / ridge).min(-1).values


def known_scores(
    name: str,
    logits: torch.Tensor,
    temperature: float,
    support: torch.Tensor | None = None,
    support_labels: torch.Tensor | None = None,
    query: torch.Tensor | None = None,
) -> torch.Tensor:
    """One episode's scores [Q]: logits [Q, N]; the feature scores also read the embedded support
    [S, D] with labels [S] and the embedded queries [Q, D]."""
    if name == "max-softmax":
        return torch.softmax(logits.double() / temperature, -1).max(-1).values
    if name == "energy":
        return temperature * torch.logsumexp(logits.double() / temperature, -1)
    if support is None or support_labels is None or query is None:
        raise FslError(f"the {name} score needs the support and query features")
    if name == "nearest-support":
        return nearest_support(support, query)
    if name == "mahalanobis":
        return mahalanobis(support, support_labels, query, logits.shape[-1])
    raise FslError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")


def false_accept_at(known: np.ndarray, scores: np.ndarray, taught_answered: float = TAUGHT_ANSWERED) -> float:
    """The share of untaught queries accepted by the threshold that answers `taught_answered` of the
    taught ones: a comparison of scores at one operating point."""
    threshold = np.quantile(scores[known], 1 - taught_answered, method="lower")
    return float((scores[~known] >= threshold).mean())


def compare_scores(per_episode: dict[str, list[np.ndarray]], known: list[np.ndarray]) -> dict[str, dict]:
    """Each score's AUROC pooled over episodes (one threshold serves them all), its per-episode AUROC
    (mean and 10th percentile: a user's one category set can sit far from the mean) and its false
    accepts at TAUGHT_ANSWERED. `per_episode[score]` and `known` hold one array per episode."""
    pooled_known = np.concatenate(known)
    out = {}
    for name, episodes in per_episode.items():
        pooled = np.concatenate(episodes)
        each = [roc_auc_score(k, s) for k, s in zip(known, episodes) if 0 < k.sum() < len(k)]
        out[name] = {
            "auroc": float(roc_auc_score(pooled_known, pooled)),
            "episode_auroc_mean": float(np.mean(each)),
            "episode_auroc_p10": float(np.percentile(each, 10)),
            "false_accept_at_taught_answered": false_accept_at(pooled_known, pooled),
        }
    return out


def best_score(comparison: dict[str, dict]) -> str:
    """The score with the highest pooled AUROC (a single threshold has to serve every category set)."""
    return max(comparison, key=lambda name: comparison[name]["auroc"])

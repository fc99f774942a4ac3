"""The maths heads share: option checks, class means, inner products and distances, cosines,
rectified prototypes, learned projections. One place, so a head file reads like its paper's equation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fsl.errors import FslError

ZERO_SHOT_SCALE = 100.0  # CLIP's logit scale


def check_positive(head: str, allow_zero: bool = False, **options) -> None:
    """Refuse a non-numeric, infinite or out-of-range option before any episode runs: a YAML typo
    (`lr: 1e-4` read as text, a negative step count) must not reach the maths."""
    for name, value in options.items():
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise FslError(f"{head} {name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


def inner_products(query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """query [E, Q, D] · rows [E, N, D] -> [E, Q, N], computed as (R Qᵀ)ᵀ: with few rows (classes)
    BLAS runs it faster than Q Rᵀ when the rows (classes) are few; contiguous, so the argmax that
    usually follows reads it in order."""
    return (rows @ query.transpose(1, 2)).transpose(1, 2).contiguous()


def squared_distances(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """[E, Q, D], [E, N, D] -> [E, Q, N] as |q|² - 2 q·p + |p|²: one matmul, no [E, Q, N, D] tensor,
    and norms without a squared copy of the queries ."""
    norm = torch.linalg.vector_norm
    return (
        norm(query, dim=-1, keepdim=True).square()
        - 2 * inner_products(query, prototypes)
        + norm(prototypes, dim=-1).square().unsqueeze(1)
    )


class Diagonal(nn.Module):
    """A learned per-feature scale (a diagonal metric), starting at 1: few parameters, hard to overfit."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.scale


def make_projection(kind: str, dim: int, projection_dim: int | None) -> nn.Module:
    """none | diagonal | linear (to projection_dim, starting as the truncated identity)."""
    if kind == "diagonal":
        return Diagonal(dim)
    if kind == "linear":
        layer = nn.Linear(dim, projection_dim or dim)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(projection_dim or dim, dim))
            layer.bias.zero_()
        return layer
    if kind == "none":
        return nn.Identity()
    raise FslError(f"unknown protonet projection {kind!r}; choose none, diagonal or linear")


def cosine(x: torch.Tensor, prototypes: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """[E, X, D], [E, N, D] -> [E, X, N]; with shift [E, 1, D], the cosines of x + shift. Computed as
    x·p̂ / |x|, never forming a normalised or shifted copy of x."""
    unit = F.normalize(prototypes, dim=-1)
    dots = inner_products(x, unit)  # [E, X, N]
    squared_norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()  # [E, X, 1]
    if shift is not None:  # (x + s)·p = x·p + s·p;  |x + s|² = |x|² + 2 x·s + |s|²
        dots = dots + shift @ unit.transpose(1, 2)
        squared_norms = squared_norms + 2 * (x @ shift.transpose(1, 2)) + shift.square().sum(-1, keepdim=True)
    return dots / squared_norms.sqrt().clamp_min(1e-12)


def rectified_prototypes(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int, temperature: float
) -> torch.Tensor:
    """[E, N, D] prototypes after BD-CSPN's two corrections (LaplacianShot starts from them too)."""
    prototypes = mean_prototypes(support, support_labels, n_way)  # [E, N, D]
    shift = support.mean(1, keepdim=True) - query.mean(1, keepdim=True)  # the queries move by it: [E, 1, D]
    support_weights = (temperature * cosine(support, prototypes)).exp() * F.one_hot(support_labels, n_way)
    query_scores = (temperature * cosine(query, prototypes, shift)).exp()
    query_weights = query_scores * F.one_hot(query_scores.argmax(-1), n_way)  # pseudo-labels
    total = support_weights.sum(1) + query_weights.sum(1)  # [E, N]
    shifted_sum = query_weights.transpose(1, 2) @ query + query_weights.sum(1).unsqueeze(-1) * shift  # Σ w (q + s)
    return (support_weights.transpose(1, 2) @ support + shifted_sum) / total.unsqueeze(-1)


def mean_prototypes(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean support feature per class: [E, N*K, D] -> [E, N, D]."""
    one_hot = nn.functional.one_hot(support_labels, n_way).to(support.dtype)  # [E, N*K, N]
    return one_hot.transpose(1, 2) @ support / one_hot.sum(dim=1).unsqueeze(-1)

"""The maths heads share: option checks, class means, inner products and distances, cosines,
rectified prototypes, learned projections. One place, so a head file reads like its paper's equation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fsl.errors import FslError, shown

ZERO_SHOT_SCALE = 100.0  # CLIP's logit scale


@dataclass(frozen=True)
class Option:
    """One YAML option of a head or a fusion, declared once on its class: its type, its range or
    choices, and what it does. `create_head` and `create_fusion` check every given value against it
    before anything is built, and the class docstring's option list is written from it."""

    kind: type  # float, int, bool or str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the range excludes `low` itself
    high_open: bool = False
    choices: tuple = ()
    optional: bool = False  # None is allowed (e.g. a projection_dim that defaults to the feature size)

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.kind is bool:
            return "true or false"
        what = "a whole number" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return (
                f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return what

    def check(self, owner: str, name: str, value: Any) -> Any:
        """The value, typed (YAML 1.1 reads 3e-4 as text: numeric text becomes a number), or an
        FslError naming the owner, the option, what it must be and what it got."""
        if value is None and self.optional:
            return value
        if self.kind is float and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        numeric = type(value) is int or (self.kind is float and type(value) is float)
        if self.choices:
            ok = value in self.choices
        elif self.kind is bool:
            ok = type(value) is bool
        elif self.kind in (int, float):
            ok = numeric and math.isfinite(value)
            ok = ok and (self.low is None or (value > self.low if self.low_open else value >= self.low))
            ok = ok and (self.high is None or (value < self.high if self.high_open else value <= self.high))
        else:
            ok = isinstance(value, self.kind)
        if not ok:
            raise FslError(f"{owner} {name} must be {self.describe()}, got {shown(value, 60)}")
        return float(value) if self.kind is float else value


def check_options(owner: str, declared: dict[str, Option], given: dict[str, Any]) -> dict[str, Any]:
    """Every given option known and valid (typed, in range) before a head or fusion is built."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise FslError(f"{owner} has no option {unknown[0]!r}; its options are {sorted(declared) or 'none'}")
    return {name: declared[name].check(owner, name, value) for name, value in given.items()}


def describe_options(declared: dict[str, Option], header: str) -> str:
    """The docstring section listing a class's declared options."""
    lines = [f"- `{name}` ({option.describe()}): {option.help}" for name, option in declared.items()]
    return f"\n\n{header}\n" + ("\n".join(lines) if lines else "none")


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

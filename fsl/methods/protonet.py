"""Prototypical networks (Snell et al., 2017).

Each class is the mean of its support features; a query's logits are its negative squared
Euclidean distances to those prototypes. Without a projection this is nearest-prototype
classification on frozen features; with one (a diagonal metric or a linear map, both starting as
the identity), the projection is meta-trained on base classes."""


from __future__ import annotations

import torch
from torch import nn

from fsl.errors import FslError
from fsl.methods.base import FewShotHead, inner_products
from fsl.methods.fusion import Fusion


def squared_distances(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """[E, Q, D], [E, N, D] -> [E, Q, N] as |q|² - 2 q·p + |p|²: one matmul, no [E, Q, N, D] tensor,
    and norms without a squared copy of the queries (20x faster on a batch of 15-way episodes)."""
    norm = torch.linalg.vector_norm
    return (norm(query, dim=-1, keepdim=True).square() - 2 * inner_products(query, prototypes)
            + norm(prototypes, dim=-1).square().unsqueeze(1))


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


class ProtoNet(FewShotHead):
    def __init__(self, fusion: Fusion, projection: str = "none", projection_dim: int | None = None):
        super().__init__(fusion)
        self.projection = make_projection(projection, fusion.out_dim, projection_dim)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.fusion(features))

    def classify(self, support, support_labels, query, n_way, class_text=None):
        prototypes = self.prototypes(support, support_labels, n_way)  # [E, N, D']
        return -squared_distances(query, prototypes)  # [E, Q, N]

    @staticmethod
    def logits_from_gram(gram: torch.Tensor, support_rows: torch.Tensor, query_rows: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """The same logits from a precomputed Gram matrix [P, P] of the features and row indices
        (support [E, N*K] class-major, query [E, Q]): |q - mean_k s_k|² needs only inner products,
        so an episode reads about Q*N*K numbers instead of (N*K + Q) * D."""
        n_episodes, width = support_rows.shape[0], gram.shape[0]
        support = support_rows.view(n_episodes, n_way, -1)  # [E, N, K]
        query_support = torch.take(gram, query_rows.unsqueeze(-1) * width + support_rows.unsqueeze(1))
        query_prototype = query_support.view(n_episodes, -1, n_way, support.shape[-1]).mean(-1)  # [E, Q, N]
        prototype_norm = torch.take(gram, support.unsqueeze(-1) * width + support.unsqueeze(-2)).mean((-1, -2))
        query_norm = torch.take(gram, query_rows * (width + 1)).unsqueeze(-1)  # [E, Q, 1]
        return -(query_norm - 2 * query_prototype + prototype_norm.unsqueeze(1))

"""Prototypical networks (Snell et al., 2017).

Each class is the mean of its support features; a query's logits are its negative squared
Euclidean distances to those prototypes. Without a projection this is nearest-prototype
classification on frozen features; with one (a diagonal metric or a linear map, both starting as
the identity), the projection is meta-trained on base classes."""

from __future__ import annotations

import torch

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, make_projection, mean_prototypes, squared_distances


class ProtoNet(FewShotHead):
    """Prototypical networks (Snell et al., NeurIPS 2017): negative squared distances to the class
    means of the support features.
    """

    name = "protonet"
    options = {
        "projection": Option(
            str,
            "a learned map before the distances, meta-trained by `fsl train`",
            choices=("none", "diagonal", "linear"),
        ),
        "projection_dim": Option(
            int, "output size of the linear projection (default: the fused feature size)", low=1, optional=True
        ),
    }

    def __init__(self, fusion: Fusion, projection: str = "none", projection_dim: int | None = None):
        super().__init__(fusion)
        self.projection = make_projection(projection, fusion.out_dim, projection_dim)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.fusion(features))

    def classify(self, support, support_labels, query, n_way, class_text=None):
        prototypes = mean_prototypes(support, support_labels, n_way)  # [E, N, D']
        return -squared_distances(query, prototypes)  # [E, Q, N]

    @staticmethod
    def logits_from_gram(
        gram: torch.Tensor, support_rows: torch.Tensor, query_rows: torch.Tensor, n_way: int
    ) -> torch.Tensor:
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

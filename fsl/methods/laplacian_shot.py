"""LaplacianShot (Ziko, Dolz, Granger & Ben Ayed, ICML 2020: "Laplacian Regularized Few-Shot
Learning"). Transductive: it reads every query of an episode.

Queries are softly assigned to the prototypes (rectified as in BD-CSPN) with a Laplacian term that
pulls each query's assignment towards those of its k nearest query neighbours; the assignments come
from the paper's bound updates (Algorithm 1), each episode stopping when its bound stops moving.
easyfsl's LaplacianShot keeps k − 1 neighbours for its `knn: k` (its top-k includes the point
itself): our `knn: 3` is its `knn=4`. The logits are the log soft assignments."""

from __future__ import annotations

import torch

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, rectified_prototypes, squared_distances


class LaplacianShot(FewShotHead):
    """LaplacianShot (Ziko et al., ICML 2020): soft assignments to rectified prototypes with a
    Laplacian term over each query's nearest query neighbours. Transductive.
    """

    name = "laplacian_shot"
    transductive = True
    options = {
        "knn": Option(int, "query neighbours in the Laplacian", low=1),
        "lambda_regularization": Option(float, "weight of the Laplacian term", low=0),
        "steps": Option(int, "bound updates at most", low=1),
        "temperature": Option(float, "sharpness of the rectification's pseudo-label weights", low=0, low_open=True),
        "tolerance": Option(float, "relative change of the bound that stops an episode", low=0, low_open=True),
    }

    def __init__(
        self,
        fusion: Fusion,
        knn: int = 3,
        lambda_regularization: float = 0.7,
        steps: int = 20,
        temperature: float = 1.0,
        tolerance: float = 1e-6,
    ):
        super().__init__(fusion)
        self.knn, self.lam, self.steps = knn, lambda_regularization, int(steps)
        self.temperature, self.tolerance = temperature, tolerance

    def neighbours(self, query: torch.Tensor) -> torch.Tensor:
        """[E, Q, Q] affinity W: row i has 1 at its k nearest other queries."""
        distances = squared_distances(query, query)
        distances.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # a query is not its own neighbour
        nearest = distances.topk(min(self.knn, query.shape[1] - 1), dim=-1, largest=False).indices
        return torch.zeros_like(distances).scatter_(2, nearest, 1.0)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        prototypes = rectified_prototypes(support, support_labels, query, n_way, self.temperature)
        scores = squared_distances(query, prototypes)  # a_q: [E, Q, N]
        kernel = self.neighbours(query)
        assignments = (-scores).softmax(-1)
        active = torch.ones(len(query), dtype=torch.bool)
        previous = torch.full((len(query),), float("inf"))
        for step in range(self.steps):
            updated = (self.lam * kernel @ assignments - scores).softmax(-1)
            assignments = torch.where(active[:, None, None], updated, assignments)
            bound = (
                assignments * (assignments + 1e-12).log()
                + scores * assignments
                - self.lam * (kernel @ assignments) * assignments
            ).sum((1, 2))  # Eq. 7, per episode
            if step > 1:
                active &= (bound - previous).abs() > self.tolerance * previous.abs()
            previous = bound
            if not active.any():
                break
        return (assignments + 1e-12).log()  # [E, Q, N]
